"""Reading another process's memory through /proc/PID/mem, with every address and size checked first."""

from __future__ import annotations

import os
import stat
import struct
from types import TracebackType

from antiprof_core.symbolize.python.errors import PythonReadError
from antiprof_core.symbolize.python.files import OPEN_FLAGS

USER_SPACE_END = 1 << 47  # x86-64 user addresses (4-level paging); anything above is not a user pointer
MAX_READ = 1 << 20  # no single read of another process's memory is larger

_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")
_I32 = struct.Struct("<i")


def valid_pointer(address: int) -> bool:
    return 4096 <= address < USER_SPACE_END


class ProcessMemory:
    """An open /proc/PID/mem; the fd stays bound to that process's memory even if the PID is reused."""

    def __init__(self, pid: int, proc: str = "/proc") -> None:
        self.pid = pid
        try:
            self._fd = os.open(f"{proc}/{pid}/mem", OPEN_FLAGS)
        except OSError as error:
            raise PythonReadError("no_process", f"/proc/{pid}/mem: {error.strerror}") from None
        if not stat.S_ISREG(os.fstat(self._fd).st_mode):
            os.close(self._fd)
            raise PythonReadError("no_process", f"/proc/{pid}/mem is not a regular file")

    def read(self, address: int, size: int) -> bytes:
        if size < 0 or size > MAX_READ:
            raise PythonReadError("bad_size", f"{size} bytes at {address:#x}")
        if not valid_pointer(address) or address + size > USER_SPACE_END:
            raise PythonReadError("bad_pointer", f"{address:#x}")
        try:
            data = os.pread(self._fd, size, address)
        except OSError as error:
            raise PythonReadError("bad_read", f"{address:#x}: {error.strerror}") from None
        if len(data) != size:
            raise PythonReadError("bad_read", f"{address:#x}: {len(data)} of {size} bytes")
        return data

    def u64(self, address: int) -> int:
        return int(_U64.unpack(self.read(address, 8))[0])

    def u32(self, address: int) -> int:
        return int(_U32.unpack(self.read(address, 4))[0])

    def i32(self, address: int) -> int:
        return int(_I32.unpack(self.read(address, 4))[0])

    def u8(self, address: int) -> int:
        return self.read(address, 1)[0]

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> ProcessMemory:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()
