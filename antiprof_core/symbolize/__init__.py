"""Naming frames: kallsyms, ELF symbol tables, JIT perf maps and /proc, behind one Symbolizer."""

from antiprof_core.symbolize.symbolizer import Symbolizer

__all__ = ["Symbolizer"]
