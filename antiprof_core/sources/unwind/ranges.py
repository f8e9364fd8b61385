"""Ranges of slots in a BPF array, handed out first-fit and given back one window late.

A BPF program may be reading a range at the very moment user space stops pointing at it, so a
range is never reused at once: ``retire`` puts it aside, and ``advance`` (called once per window,
after the sampler's window switch has waited for running programs) frees what was retired before
the previous call. Free ranges are kept sorted and merged with their neighbours, so a map of a few
hundred files holds a few hundred ranges at most.
"""

from __future__ import annotations

import bisect


class RangeAllocator:
    """Slots ``[0, capacity)``: ``allocate`` -> start or None, ``retire`` then two ``advance`` calls -> free."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._starts: list[int] = [0] if capacity else []  # free ranges, sorted, never touching
        self._lengths: list[int] = [capacity] if capacity else []
        self._retired: list[tuple[int, int]] = []  # retired since the last advance
        self._retiring: list[tuple[int, int]] = []  # retired before it: free at the next advance
        self.used = 0  # slots allocated and not yet retired

    @property
    def free(self) -> int:
        return sum(self._lengths)

    @property
    def pending(self) -> int:
        """Slots retired but not free yet."""
        return sum(length for _, length in self._retired + self._retiring)

    def largest_free(self) -> int:
        return max(self._lengths, default=0)

    def allocate(self, count: int) -> int | None:
        """The start of a free run of ``count`` slots (the lowest that fits), or None."""
        if count <= 0:
            return None
        for index, length in enumerate(self._lengths):
            if length >= count:
                start = self._starts[index]
                if length == count:
                    del self._starts[index], self._lengths[index]
                else:
                    self._starts[index] = start + count
                    self._lengths[index] = length - count
                self.used += count
                return start
        return None

    def retire(self, start: int, count: int) -> None:
        """``[start, start + count)`` is no longer pointed at; free it after the next window switch."""
        if count > 0:
            self._retired.append((start, count))
            self.used -= count

    def release(self, start: int, count: int) -> None:
        """Free at once a range nothing ever pointed at (a write that failed before its pointer)."""
        if count > 0:
            self.used -= count
            self._free(start, count)

    def advance(self) -> int:
        """A window switch has happened: free what was retired before the previous one; returns slots freed."""
        freed = 0
        for start, count in self._retiring:
            self._free(start, count)
            freed += count
        self._retiring, self._retired = self._retired, []
        return freed

    def could_fit(self, count: int) -> bool:
        """Whether ``count`` contiguous slots will be free once every retired range is."""
        starts = list(self._starts)
        lengths = list(self._lengths)
        for start, length in self._retired + self._retiring:
            _insert(starts, lengths, start, length)
        return max(lengths, default=0) >= count

    def _free(self, start: int, count: int) -> None:
        _insert(self._starts, self._lengths, start, count)


def _insert(starts: list[int], lengths: list[int], start: int, count: int) -> None:
    """Add a free range to sorted lists, merged with the ranges it touches."""
    index = bisect.bisect_left(starts, start)
    if index > 0 and starts[index - 1] + lengths[index - 1] > start:
        raise ValueError(f"range {start}+{count} overlaps a free range")
    if index < len(starts) and start + count > starts[index]:
        raise ValueError(f"range {start}+{count} overlaps a free range")
    if index > 0 and starts[index - 1] + lengths[index - 1] == start:  # merge with the one before
        index -= 1
        lengths[index] += count
    else:
        starts.insert(index, start)
        lengths.insert(index, count)
    if index + 1 < len(starts) and starts[index] + lengths[index] == starts[index + 1]:  # and the one after
        lengths[index] += lengths[index + 1]
        del starts[index + 1], lengths[index + 1]
