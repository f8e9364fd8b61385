"""Native unwinding from ELF unwind information: tables of rows per file, built off the hot path.

``build_table(path)`` parses .eh_frame (and .debug_frame, here or in the debug file found by
build ID) into an :class:`UnwindTable`; :class:`TableCache` keeps tables on disk by build ID;
:class:`UnwindTableBuilder` builds them in a worker; ``walker`` steps one frame with a table
(the reference the BPF walk is checked against).
"""

from antiprof_core.sources.unwind.build import build_table
from antiprof_core.sources.unwind.elfsections import UnwindInputError
from antiprof_core.sources.unwind.rows import CfaKind, RbpKind, Row
from antiprof_core.sources.unwind.table import UnwindTable

__all__ = ["CfaKind", "RbpKind", "Row", "UnwindInputError", "UnwindTable", "build_table"]
