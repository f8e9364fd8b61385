"""CPython frames: detect the interpreter, walk its frames, name its code objects.

The user-space half of Python support. :func:`detect` finds a CPython 3.11+ in a process and
the addresses and struct offsets a walk needs (the same ones the BPF program will get);
:class:`PythonWalker` is the reference walk over /proc/PID/mem that the BPF walk must agree with;
:class:`CodeNamer` turns (code object, instruction offset) into name, file and line.
"""

from antiprof_core.symbolize.python.detect import PythonProcess, Unsupported, detect
from antiprof_core.symbolize.python.errors import PythonReadError
from antiprof_core.symbolize.python.memory import ProcessMemory
from antiprof_core.symbolize.python.naming import CodeNamer, PythonFrameName
from antiprof_core.symbolize.python.offsets import PythonOffsets
from antiprof_core.symbolize.python.walker import DEFAULT_MAX_PYTHON_DEPTH, PythonStack, PythonWalker, RawPythonFrame

__all__ = [
    "DEFAULT_MAX_PYTHON_DEPTH",
    "CodeNamer",
    "ProcessMemory",
    "PythonFrameName",
    "PythonOffsets",
    "PythonProcess",
    "PythonReadError",
    "PythonStack",
    "PythonWalker",
    "RawPythonFrame",
    "Unsupported",
    "detect",
]
