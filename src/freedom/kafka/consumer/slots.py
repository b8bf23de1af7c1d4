"""The concurrency bound of a concurrent topic (`max_in_flight`), shared by its partitions' lanes
(lanes.py): a count of free slots and the lanes waiting for one, served in turn."""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from freedom.kafka.consumer.lanes import Lane


class TopicSlots:
    """The `max_in_flight` bound of one concurrent topic, shared by its lanes."""

    __slots__ = ("free", "waiting")

    def __init__(self, size: int) -> None:
        self.free = max(size, 1)
        self.waiting: collections.deque[Lane] = collections.deque()  # lanes with records to start

    def release(self, by: Lane, n: int = 1) -> None:
        """`n` records of lane `by` finished: their slots go to the lanes that have waited longest
        (in turn, so that no partition starves the others), `by` queueing up behind if it has more."""
        self.free += n
        if not self.waiting:
            return
        if by.pending and not by.waiting and not by.lost.is_set():
            by.waiting = True
            self.waiting.append(by)
        while self.waiting and self.free > 0:
            lane = self.waiting.popleft()
            lane.waiting = False
            if lane._pumping:  # it is starting records: its own loop takes the slots
                return
            lane.pump()
