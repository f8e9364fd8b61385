"""``antiprof record``'s table of the hottest functions, from hand-made windows."""

from __future__ import annotations

from antiprof_core.model import Frame, FrameKind, Mapping, ProfileWindow, Sample
from antiprof_core.sources.synthetic import synthetic_host
from antiprof_core.summary import HottestFunctions
from antiprof_core.testing.python_windows import synthetic_python_window

PROGRAM = Mapping(0x400000, 0x500000, 0, "/usr/bin/two_functions")


def user(name: str, address: int) -> Frame:
    return Frame(address, FrameKind.NATIVE, name, mapping=PROGRAM)


def kernel(name: str, address: int) -> Frame:
    return Frame(address, FrameKind.KERNEL, name)


CALLERS = (user("cycle", 0x401100), user("main", 0x401200))
LIBC_START = (user("__libc_start_call_main", 0x402000), user("__libc_start_main", 0x402100), user("_start", 0x402200))


def window_of(*samples: tuple[tuple[Frame, ...], int]) -> ProfileWindow:
    return ProfileWindow(
        0,
        10**9,
        199,
        synthetic_host(),
        tuple(Sample(1, 1, 0, "two_functions", stack, count) for stack, count in samples),
    )


def test_rows_rank_by_self_then_total_and_count_a_recursive_function_once() -> None:
    heavy, light = user("work_heavy", 0x401000), user("work_light", 0x401050)
    table = HottestFunctions()
    table.consume(window_of(((heavy, *CALLERS), 20), ((light, heavy, heavy, *CALLERS), 10)))
    rows = {row.function: (row.self_samples, row.total_samples) for row in table.top()}
    assert rows == {"work_heavy": (20, 30), "work_light": (10, 10), "cycle": (0, 30), "main": (0, 30)}
    assert [row.function for row in table.top(2)] == ["work_heavy", "work_light"]
    assert table.samples == 30


def test_of_callers_that_cost_the_same_the_nearest_to_the_hot_code_comes_first() -> None:
    """Whole stacks put ``_start`` and libc's start-up under everything: a short table must keep
    ``cycle`` and ``main``, which say where the time goes, ahead of them."""
    heavy, light = user("work_heavy", 0x401000), user("work_light", 0x401050)
    interrupts = [kernel(f"irq_handler_{n}", 0xFFFFFFFF81000000 + n) for n in range(16)]
    table = HottestFunctions()
    table.consume(
        window_of(
            ((heavy, *CALLERS, *LIBC_START), 600),
            ((light, *CALLERS, *LIBC_START), 300),
            *(((irq, heavy, *CALLERS, *LIBC_START), 1) for irq in interrupts),
        )
    )
    top = [row.function for row in table.top(20)]
    assert top[:2] == ["work_heavy", "work_light"]
    assert top[18:] == ["cycle", "main"]  # 2 functions and 16 handlers with self samples come first
    full = [row.function for row in table.top(100)]
    assert full[-5:] == ["cycle", "main", "__libc_start_call_main", "__libc_start_main", "_start"]


def test_python_functions_are_named_with_their_source_file_and_their_lines_add_up() -> None:
    table = HottestFunctions()
    table.consume(synthetic_python_window())
    rows = {(row.function, row.module): (row.self_samples, row.total_samples) for row in table.top(100)}
    assert rows[("heavy_math", "two_functions.py")] == (60, 60)  # lines 12 and 13: one row
    assert rows[("light_strings", "two_functions.py")] == (30, 30)
    assert rows[("hash_block", "two_functions.py")] == (0, 10)
    assert rows[("main", "two_functions.py")] == (0, 101) and rows[("main", "python3.11")] == (0, 101)
    assert rows[("[unknown] 0x7f2000009000", "cpython")] == (1, 1)  # a code object that could not be read
    assert [row.function for row in table.top(2)] == ["heavy_math", "light_strings"]
