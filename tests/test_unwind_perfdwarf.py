"""The perf --call-graph dwarf reference reads `perf script` as perf 6.1 prints it."""

from __future__ import annotations

from antiprof_core.testing.perfdwarf import PerfFrame, entry_share, parse_perf_script, reaches_entry

# perf script --no-inline -F pid,tid,ip,sym,dso, as perf 6.1 printed it on Debian 12.
SCRIPT = """\
 8868/8868  
\t          1009f1 PyObject_Free (/usr/bin/python3.11)
\t          1329ba _PyEval_EvalFrameDefault (/usr/bin/python3.11)
\t          247d96 [unknown] (/usr/bin/python3.11)
\t          227d36 Py_BytesMain (/usr/bin/python3.11)
\t           27249 __libc_start_call_main (/usr/lib/x86_64-linux-gnu/libc.so.6)
\t           27304 __libc_start_main@@GLIBC_2.34 (/usr/lib/x86_64-linux-gnu/libc.so.6)
\t          227bd0 _start (/usr/bin/python3.11)

 8868/8870  
\tffffffff821e86a7 clear_page_erms ([kernel.kallsyms])
\t            1692b [unknown] (/usr/lib/x86_64-linux-gnu/liblzma.so.5.4.1)
\t            4ca7 lzma_code+0x27 (/usr/lib/x86_64-linux-gnu/liblzma.so.5.4.1)
"""  # noqa: W291


def test_stacks_frames_and_names() -> None:
    first, second = parse_perf_script(SCRIPT)
    assert (first.pid, first.tid, second.tid) == (8868, 8868, 8870)
    assert len(first.frames) == 7
    assert first.frames[2] == PerfFrame(0x247D96, None, "/usr/bin/python3.11")
    assert first.symbols[-2:] == ["__libc_start_main", "_start"]  # the version suffix is not part of the name
    assert second.frames[0].dso == "[kernel.kallsyms]"
    assert second.symbols == ["clear_page_erms", "lzma_code"]  # offsets dropped, [unknown] left out


def test_a_stack_reaches_the_entry_only_through_main_or_the_start_code() -> None:
    first, second = parse_perf_script(SCRIPT)
    assert reaches_entry(first.symbols)
    assert not reaches_entry(second.symbols)
    assert reaches_entry(["compare", None, "qsort_r", "main"])
    assert reaches_entry(["worker", "start_thread", "clone3"])
    assert not reaches_entry(["maintain", "domain"])  # whole names only
    assert entry_share([first, second]) == 0.5
    assert entry_share([]) == 0.0
