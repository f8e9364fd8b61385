"""When each SAMPLE record of a window happened, in the order ``perf script`` must print them.

Readers other than ``perf report`` trust time and lines, not ``period``: FlameGraph-style tools
count one line per sample, and speedscope weighs each sample by the time to its thread's
neighbours (and refuses a thread whose times go backwards). An aggregated window has lost the
real times, so each thread's samples are laid out evenly over the window, its stacks interleaved
in proportion to their counts: every sample of a thread then weighs the same in speedscope, and
the timeline looks like the steady mix it was. Trace windows keep their real times. Either way
the records come out sorted by time.
"""

from __future__ import annotations

from collections import defaultdict

from antiprof_core.model import ProfileWindow, SamplingMode

# Events are sorted as single ints, (time offset << _INDEX_BITS) | sample index: a list of ints
# sorts about a third faster than one of tuples, and windows have well under 2**24 distinct stacks.
_INDEX_BITS = 24
_INDEX_MASK = (1 << _INDEX_BITS) - 1
_SPREAD_SCALE = 1 << 20  # resolution of a stack's place in its thread's interleaving


def sample_times(window: ProfileWindow, expand: bool = True) -> list[tuple[int, int]]:
    """``(time_ns, index into window.samples)`` for every SAMPLE record, sorted by time.

    ``expand``: one record per counted sample; otherwise one per distinct stack (the compact,
    period-weighted form). Trace samples always give one record per timestamp.
    """
    if len(window.samples) > _INDEX_MASK:
        raise ValueError(f"a window of {len(window.samples)} distinct stacks is over {_INDEX_MASK}")
    trace = window.mode is SamplingMode.TRACE
    start = window.start_ns
    if trace:  # offsets from the earliest time there is, so a sample stamped before the window keeps its time
        start = min([start, *(min(sample.timestamps) for sample in window.samples if sample.timestamps)])
    keys: list[int] = []
    spread: defaultdict[tuple[int, int], list[int]] = defaultdict(list)  # per thread: place << bits | index
    for index, sample in enumerate(window.samples):
        if trace and sample.timestamps:
            keys.extend((time - start) << _INDEX_BITS | index for time in sample.timestamps)
            continue
        places = spread[(sample.pid, sample.tid)]
        count = sample.count if expand else 1
        if count == 1:
            places.append(_SPREAD_SCALE // 2 << _INDEX_BITS | index)
        else:  # the n-th of count occurrences sits at (n + 1/2) / count of the way through
            step = _SPREAD_SCALE // count
            places.extend((step * n + step // 2) << _INDEX_BITS | index for n in range(count))
    offset, length = window.start_ns - start, max(window.end_ns - window.start_ns, 0)
    for places in spread.values():
        places.sort()
        doubled = 2 * len(places)
        keys.extend(
            offset + (2 * rank + 1) * length // doubled << _INDEX_BITS | place & _INDEX_MASK
            for rank, place in enumerate(places)
        )
    keys.sort()
    return [(start + (key >> _INDEX_BITS), key & _INDEX_MASK) for key in keys]
