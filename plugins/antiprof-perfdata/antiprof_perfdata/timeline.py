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


def sample_times(window: ProfileWindow, expand: bool = True) -> list[tuple[int, int]]:
    """``(time_ns, index into window.samples)`` for every SAMPLE record, sorted by time.

    ``expand``: one record per counted sample; otherwise one per distinct stack (the compact,
    period-weighted form). Trace samples always give one record per timestamp.
    """
    events: list[tuple[int, int]] = []
    spread: defaultdict[tuple[int, int], list[tuple[float, int]]] = defaultdict(list)
    trace = window.mode is SamplingMode.TRACE
    for index, sample in enumerate(window.samples):
        if trace and sample.timestamps:
            events.extend((time, index) for time in sample.timestamps)
            continue
        occurrences = spread[(sample.pid, sample.tid)]
        count = sample.count if expand else 1
        if count == 1:
            occurrences.append((0.5, index))
        else:
            occurrences.extend(((2 * n + 1) / (2 * count), index) for n in range(count))
    start, length = window.start_ns, max(window.end_ns - window.start_ns, 0)
    for occurrences in spread.values():
        occurrences.sort()
        doubled = 2 * len(occurrences)
        events.extend(
            (start + (2 * rank + 1) * length // doubled, index) for rank, (_, index) in enumerate(occurrences)
        )
    events.sort()
    return events
