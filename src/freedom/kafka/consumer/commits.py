"""Which offset of a partition may be committed when records finish out of order.

Records of a partition are handed out in offset order but may finish in any order (concurrent
and key-ordered modes). The committed offset must never pass a record that is not finished,
or a crash would lose it. :class:`OffsetTracker` keeps the offsets handed out and not yet
committed, and tells when the lowest ones are all finished.
"""

from __future__ import annotations

import collections


class OffsetTracker:
    """The unfinished offsets of one partition, and the offset safe to commit."""

    def __init__(self) -> None:
        self._open: collections.deque[int] = collections.deque()  # handed-out offsets, in order
        self._finished: set[int] = set()  # finished, but some lower offset is not

    def __len__(self) -> int:
        """How many records were handed out and are not committable yet."""
        return len(self._open)

    def add(self, offset: int) -> None:
        """A record was fetched: its offset stays uncommittable until :meth:`finish`."""
        if self._open and offset <= self._open[-1]:
            raise ValueError(f"offset {offset} added after {self._open[-1]}: offsets must increase")
        self._open.append(offset)

    def finish(self, offset: int) -> int | None:
        """Mark `offset` finished; returns the new offset to commit (one past the last of an
        unbroken run of finished records from the lowest), or None when it did not move."""
        if not self._open or offset < self._open[0]:
            return None  # already committable (a duplicate call) or never added
        self._finished.add(offset)
        last = None
        while self._open and self._open[0] in self._finished:
            last = self._open.popleft()
            self._finished.discard(last)
        return None if last is None else last + 1
