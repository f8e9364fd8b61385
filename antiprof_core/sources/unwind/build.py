"""One file's unwind table: .eh_frame, its own .debug_frame, and the debug file's .debug_frame."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from antiprof_core.sources.unwind.cfi import Fde, FrameSectionError, parse_frames
from antiprof_core.sources.unwind.elfsections import ElfSections, Section, UnwindInputError, read_sections
from antiprof_core.sources.unwind.table import UnwindTable, assemble
from antiprof_core.symbolize.elf import DEBUG_ROOT, debug_file_candidates

MAX_ROWS = 4_000_000  # 80 MiB of table: above any real binary (python3.11: 65k), a bound for hostile ones


def build_table(
    path: str, debug_root: Path = DEBUG_ROOT, name: str | None = None, sections: ElfSections | None = None
) -> UnwindTable:
    """Parse ``path``'s unwind information; raises UnwindInputError (one line) on a bad file.

    ``name`` is the file's path as its process sees it, when ``path`` reaches it another way
    (``/proc/PID/root/...``): the debug file is looked for next to ``name``. ``sections``, when
    given, are the file's, already read (an image with no file, like the vDSO).
    """
    if sections is None:
        sections = read_sections(path)
    counts: Counter[str] = Counter()
    sources: list[list[Fde]] = []
    _add(path, sections.eh_frame, True, sources, counts)
    _add(path, sections.debug_frame, False, sources, counts)
    for kind, where in debug_file_candidates(name or path, sections.build_id, sections.debuglink):
        candidate = debug_root / where if kind == "debug" else Path(where)
        try:
            debug = read_sections(str(candidate))
        except UnwindInputError:
            continue
        if sections.build_id and debug.build_id not in (None, sections.build_id):
            continue
        if debug.debug_frame is not None:
            _add(str(candidate), debug.debug_frame, False, sources, counts)
            counts["debug_file_fdes"] += 1
        break
    if not sources:
        raise UnwindInputError(path, "no .eh_frame or .debug_frame (here or in a debug file)")
    return assemble(sections.build_id, sources, counts)


def _add(path: str, section: Section | None, is_eh: bool, sources: list[list[Fde]], counts: Counter[str]) -> None:
    if section is None or not section.data:
        return
    budget = MAX_ROWS - sum(len(fde[2]) for source in sources for fde in source)
    try:
        fdes, section_counts = parse_frames(section.data, section.address, is_eh, budget)
    except FrameSectionError as error:
        raise UnwindInputError(path, f"{section.name}: {error}") from None
    sources.append(fdes)
    counts.update(section_counts)
