"""The reference Python stack walk, in user space, over /proc/PID/mem.

It does what the BPF program will do per sample: from ``_PyRuntime`` to the interpreters, their
thread states, the one whose ``native_thread_id`` is the sampled tid, then its chain of
``_PyInterpreterFrame``\\ s through ``previous``, recording (code object, instruction offset) and
skipping the C-stack shim frames, at most ``max_depth`` of them. Every loop is bounded, so a
cycle in hostile memory ends the walk instead of spinning.
"""

from __future__ import annotations

import attrs
from attrs import frozen

from antiprof_core.symbolize.python.detect import PythonProcess
from antiprof_core.symbolize.python.errors import PythonReadError
from antiprof_core.symbolize.python.memory import ProcessMemory

DEFAULT_MAX_PYTHON_DEPTH = 64
MAX_INTERPRETERS = 64
MAX_THREADS = 4096
MAX_SKIPPED_SHIMS = 64
MAX_CODE_BYTES = 1 << 24  # an instruction pointer further than this from its code's start is garbage
UNKNOWN_OFFSET = -1


@frozen
class RawPythonFrame:
    """What the BPF program records per Python frame."""

    code_address: int
    instruction_offset: int  # bytes into co_code_adaptive; -2 before the first instruction ran, -1 unknown
    # The first frame of one _PyEval_EvalFrameDefault call (called from C): where the Python frames
    # of one native interpreter frame end, so the two stacks can be interleaved.
    entry: bool = False


@frozen
class PythonStack:
    tid: int
    frames: tuple[RawPythonFrame, ...]  # leaf first
    truncated: bool  # max_depth reached with frames left


class PythonWalker:
    def __init__(self, process: PythonProcess, memory: ProcessMemory) -> None:
        self.process = process
        self.memory = memory
        self.offsets = process.offsets

    def thread_states(self) -> dict[int, int]:
        """native thread id -> PyThreadState address, over every interpreter.

        The native id is the tid in the process's own PID namespace; for a process in a container
        the sampler's host tid differs, and :meth:`thread_states_by_pthread` is the key to use.
        """
        return {tid: tstate for tstate, (tid, _) in self._thread_list().items()}

    def thread_states_by_pthread(self) -> dict[int, int]:
        """pthread_self() -> PyThreadState: on x86-64 glibc that is the thread's fsbase, which a
        BPF program reads from the task, so it matches threads across PID namespaces."""
        return {pthread: tstate for tstate, (_, pthread) in self._thread_list().items()}

    def _thread_list(self) -> dict[int, tuple[int, int]]:
        """PyThreadState address -> (native thread id, pthread id), over every interpreter."""
        memory, offsets = self.memory, self.offsets
        found: dict[int, tuple[int, int]] = {}  # insertion order: newest thread first, as CPython links them
        interpreter = memory.u64(self.process.runtime_address + offsets.runtime_interpreters_head)
        seen_interpreters = 0
        while interpreter and seen_interpreters < MAX_INTERPRETERS:
            seen_interpreters += 1
            tstate = memory.u64(interpreter + offsets.interp_threads_head)
            seen_threads = 0
            while tstate and seen_threads < MAX_THREADS and tstate not in found:  # a cycle ends the list
                seen_threads += 1
                found[tstate] = (
                    memory.u64(tstate + offsets.tstate_native_thread_id),
                    memory.u64(tstate + offsets.tstate_thread_id),
                )
                tstate = memory.u64(tstate + offsets.tstate_next)
            interpreter = memory.u64(interpreter + offsets.interp_next)
        return found

    def gil_holder(self) -> int | None:
        """3.11 only: the PyThreadState holding the GIL (later versions keep the current one in TLS)."""
        if self.offsets.runtime_tstate_current is None:
            return None
        return self.memory.u64(self.process.runtime_address + self.offsets.runtime_tstate_current) or None

    def current_frame(self, tstate: int) -> int:
        offsets = self.offsets
        if offsets.tstate_cframe is not None:
            cframe = self.memory.u64(tstate + offsets.tstate_cframe)
            return self.memory.u64(cframe + offsets.current_frame) if cframe else 0
        return self.memory.u64(tstate + offsets.current_frame)

    def walk(self, tid: int, max_depth: int = DEFAULT_MAX_PYTHON_DEPTH) -> PythonStack:
        """The Python frames thread ``tid`` is running, leaf first; PythonReadError on a bad read."""
        tstate = self.thread_states().get(tid)
        if tstate is None:
            raise PythonReadError("no_thread_state", f"thread {tid} has no Python thread state")
        return self.walk_thread_state(tid, tstate, max_depth)

    def walk_thread_state(self, tid: int, tstate: int, max_depth: int = DEFAULT_MAX_PYTHON_DEPTH) -> PythonStack:
        memory, offsets = self.memory, self.offsets
        frame = self.current_frame(tstate)
        frames: list[RawPythonFrame] = []
        shims = 0
        while frame and len(frames) < max_depth:
            if offsets.owner_cstack is not None and memory.u8(frame + offsets.frame_owner) == offsets.owner_cstack:
                shims += 1
                if shims > MAX_SKIPPED_SHIMS:
                    raise PythonReadError("frame_loop", f"more than {MAX_SKIPPED_SHIMS} shim frames")
                if frames:  # the frame above a shim is the first of its interpreter call
                    frames[-1] = attrs.evolve(frames[-1], entry=True)
            else:
                code = memory.u64(frame + offsets.frame_code)
                instruction = memory.u64(frame + offsets.frame_instr)
                start = code + offsets.code_adaptive
                offset = instruction - start if start - 2 <= instruction < start + MAX_CODE_BYTES else UNKNOWN_OFFSET
                entry = offsets.frame_is_entry is not None and memory.u8(frame + offsets.frame_is_entry) != 0
                frames.append(RawPythonFrame(code, offset, entry))
            frame = memory.u64(frame + offsets.frame_previous)
        return PythonStack(tid, tuple(frames), truncated=bool(frame))
