"""A window from what was drained: pure, so tests can build one without BPF.

Input is the drained set as plain data (sample keys with counts and timestamps, stacks by hash,
counters by name); output is the ProfileWindow, with frames named by the symbolizer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from antiprof_core.model import Counters, Frame, Host, Process, ProfileWindow, Sample, SamplingMode
from antiprof_core.sources.bpf.program import PYTHON_COUNTER_NAMES, STACK_ERROR_NAMES, RawKey
from antiprof_core.sources.python.interleave import interleave
from antiprof_core.symbolize.symbolizer import Symbolizer

if TYPE_CHECKING:  # it imports the bpf package's maps: no import at run time, no cycle
    from antiprof_core.sources.python.processes import PythonProcesses

RawSample = tuple[RawKey, int, tuple[int, ...]]  # key, count, timestamps (trace mode)


def _comm(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode(errors="replace")


def build_window(
    raw: Sequence[RawSample],
    stacks: Mapping[int, tuple[int, ...]],
    counters: Mapping[str, int],
    start_ns: int,
    end_ns: int,
    *,
    symbolizer: Symbolizer,
    host: Host,
    frequency_hz: int,
    mode: SamplingMode,
    deadline: float | None = None,
    python: PythonProcesses | None = None,
) -> ProfileWindow:
    """Samples with named stacks (kernel frames first, then user frames), the processes they ran
    in, and the window's counters. A stack hash absent from ``stacks`` gives no frames. Past
    ``deadline`` (``time.monotonic()``), frames that need a file read stay raw and are counted.
    With ``python``, CPython frames the BPF walk recorded take the place of the interpreter's."""
    kernel_stacks: dict[int, tuple[Frame, ...]] = {}
    user_stacks: dict[tuple[int, int, int], tuple[Frame, ...]] = {}
    samples = []
    names: dict[int, str] = {}
    for key, _, _ in raw:
        if key[0] == key[1] or key[0] not in names:  # the main thread's comm names the process
            names[key[0]] = _comm(key[6])
    states = {pid: symbolizer.state(pid, name) for pid, name in names.items() if pid}
    thread_names: dict[bytes, str] = {}
    for key, count, timestamps in raw:
        tgid, tid, cpu, user_hash, kernel_hash, python_hash, comm = key
        thread_name = thread_names.get(comm)
        if thread_name is None:
            thread_name = thread_names[comm] = _comm(comm)
        kernel = kernel_stacks.get(kernel_hash)
        if kernel is None:
            addresses = stacks.get(kernel_hash, ()) if kernel_hash else ()
            kernel = tuple(symbolizer.kernel_frame(a, n == 0) for n, a in enumerate(addresses))
            kernel_stacks[kernel_hash] = kernel
        user = user_stacks.get((tgid, user_hash, python_hash))
        if user is None:
            addresses = stacks.get(user_hash, ()) if user_hash else ()
            user = symbolizer.user_stack(states[tgid], addresses, deadline) if addresses and tgid else ()
            recorded = stacks.get(python_hash, ()) if python_hash and python is not None else ()
            if recorded:
                assert python is not None
                user = interleave(user, python.frames(tgid, recorded, deadline))
            user_stacks[(tgid, user_hash, python_hash)] = user
        samples.append(
            Sample(
                pid=tgid,
                tid=tid,
                cpu=cpu,
                thread_name=thread_name,
                stack=kernel + user if kernel else user,
                count=count,
                timestamps=timestamps,
            )
        )
    processes: dict[int, Process] = {
        pid: Process(pid=0, name="swapper") if pid == 0 else symbolizer.process(pid, name)
        for pid, name in names.items()
    }
    return ProfileWindow(
        start_ns=start_ns,
        end_ns=end_ns,
        frequency_hz=frequency_hz,
        host=host,
        samples=tuple(samples),
        processes=processes,
        counters=Counters(
            samples_seen=counters["samples_seen"],
            samples_lost=counters["samples_lost"],
            stack_errors={name: counters[name] for name in STACK_ERROR_NAMES},
            python={name.removeprefix("python_"): counters[name] for name in PYTHON_COUNTER_NAMES},
        ),
        mode=mode,
    )


def overflow_warning(counters: Mapping[str, int], max_stacks: int) -> str | None:
    """The WARNING a person should act on when the maps were too small, or None.

    Stacks live in hash maps (no bucket collisions), so only a full map loses anything: a sample
    (counts map full, or the trace ring buffer full) or a stack (stacks map full).
    """
    lost = counters["samples_lost"]
    stacks_not_stored = counters["user_map_full"] + counters["kernel_map_full"]
    if not lost and not stacks_not_stored:
        return None
    return (
        f"window overflowed: {lost} of {counters['samples_seen']} samples lost, {stacks_not_stored} stacks not"
        f" stored (map full); raise sampler.max_stacks (now {max_stacks})"
    )
