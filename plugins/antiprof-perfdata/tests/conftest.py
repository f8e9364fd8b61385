"""Fixtures for the perfdata tests: a private perf build-id cache and a real ELF to symbolize."""

from __future__ import annotations

from pathlib import Path

import pytest

from antiprof_core.model import Frame, FrameKind, Host, Mapping, Process, ProfileWindow, Sample
from antiprof_core.sources.synthetic import synthetic_host
from antiprof_core.testing.workloads import build_two_function_workload


@pytest.fixture
def buildid_dir(tmp_path: Path) -> Path:
    """PERF_BUILDID_DIR for every perf run, so tests never touch ~/.debug."""
    path = tmp_path / "perf-buildid-cache"
    path.mkdir()
    return path


@pytest.fixture(scope="session")
def two_function_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_two_function_workload(tmp_path_factory.mktemp("workload"))


PIE_BASE = 0x5555_5555_4000
PAGE = 0x1000


class ElfWindows:
    """Windows whose user frames point into a real ELF file, as if it ran at PIE_BASE."""

    def __init__(self, binary: Path) -> None:
        from elftools.elf.elffile import ELFFile
        from elftools.elf.sections import NoteSection, SymbolTableSection

        with binary.open("rb") as handle:
            elf = ELFFile(handle)
            symtab = elf.get_section_by_name(".symtab")
            assert isinstance(symtab, SymbolTableSection)
            self.symbols = {s.name: s["st_value"] for s in symtab.iter_symbols() if s["st_info"]["type"] == "STT_FUNC"}
            text = next(s for s in elf.iter_segments() if s["p_type"] == "PT_LOAD" and s["p_flags"] & 1)
            note = elf.get_section_by_name(".note.gnu.build-id")
            assert isinstance(note, NoteSection)
            self.build_id = next(n for n in note.iter_notes() if n["n_type"] == "NT_GNU_BUILD_ID")["n_desc"]
        start = PIE_BASE + (text["p_vaddr"] & ~(PAGE - 1))
        end = PIE_BASE + ((text["p_vaddr"] + text["p_memsz"] + PAGE - 1) & ~(PAGE - 1))
        self.binary = binary
        self.mapping = Mapping(
            start, end, text["p_offset"] & ~(PAGE - 1), str(binary), self.build_id, binary.stat().st_ino
        )

    def frame(self, symbol: str, offset: int = 4) -> Frame:
        return Frame(PIE_BASE + self.symbols[symbol] + offset, FrameKind.NATIVE, symbol, offset, self.mapping)

    def window(
        self,
        stacks: dict[tuple[str, ...], int],
        host: Host | None = None,
        kernel: tuple[Frame, ...] = (),
        pid: int = 4242,
        start_ns: int = 1_700_000_000_000_000_000,
        frequency_hz: int = 99,
    ) -> ProfileWindow:
        """``stacks`` maps leaf-first function names to counts; ``kernel`` frames go under every stack."""
        process = Process(pid, "two_functions", str(self.binary), (str(self.binary), "5"), None, (self.mapping,))
        samples = tuple(
            Sample(pid, pid, index % 2, "two_functions", kernel + tuple(self.frame(name) for name in names), count)
            for index, (names, count) in enumerate(stacks.items())
        )
        return ProfileWindow(
            start_ns=start_ns,
            end_ns=start_ns + 1_000_000_000,
            frequency_hz=frequency_hz,
            host=host or synthetic_host(),
            samples=samples,
            processes={pid: process},
        )


@pytest.fixture(scope="session")
def elf_windows(two_function_binary: Path) -> ElfWindows:
    return ElfWindows(two_function_binary)
