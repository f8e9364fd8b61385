"""Python frames in place of the interpreter's: the convention of the OpenTelemetry eBPF profiler.

Each native ``_PyEval_EvalFrameDefault`` frame ran the Python frames from where the previous one
stopped up to the frame marked as its call's entry; it is replaced by them, so a C extension
called from Python shows under the Python function that called it, and the interpreter's own
frames below (``PyEval_EvalCode``, ``Py_BytesMain``, ``main``) stay where they are.
"""

from __future__ import annotations

from antiprof_core.model import Frame
from antiprof_core.sources.python.layout import PythonFrames

EVAL_FUNCTION = "_PyEval_EvalFrameDefault"


def interleave(native: tuple[Frame, ...], python: PythonFrames) -> tuple[Frame, ...]:
    """``native`` (leaf first) with each interpreter frame replaced by its Python frames.

    Python frames left over (the native walk stopped early, or found no interpreter frame) go
    right after the last ones placed, or after every native frame: they are outer calls.
    """
    if not python:
        return native
    out: list[Frame] = []
    taken = 0
    insert_at = None
    for frame in native:
        if frame.symbol == EVAL_FUNCTION and taken < len(python):
            while taken < len(python):
                python_frame, entry = python[taken]
                out.append(python_frame)
                taken += 1
                if entry:
                    break
            insert_at = len(out)
        else:
            out.append(frame)
    if taken < len(python):
        position = len(out) if insert_at is None else insert_at
        out[position:position] = [frame for frame, _ in python[taken:]]
    return tuple(out)
