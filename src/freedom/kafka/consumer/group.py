"""One consumer group: a record source (sources/), a lane per assigned partition (lanes.py) and
the handler each record is given to.

It knows nothing of HTTP or retries: for each record it starts `handle(record, plan, lost)`, which
returns True once the record is finished (delivered, or acknowledged on its retry or dead-letter
topic) and False when it gave the record up because the partition is going away. A batch topic's
records (in `sequential` or `concurrent` mode) go by chunks to `handle_batch(records, plan, lost)`
when it is given: one call, one bool per record. What the source does with a finished record
(commit its offset in order, or acknowledge it) is the source's.

The path of a record: the source's fetch loop hands a batch to `dispatch` (one call on the event
loop per batch); each record is handed to the source's ledger and put in its partition's lane,
which starts it at once when its mode allows; its end settles it with the source and starts the
next. `release` gives partitions up (a rebalance, the stop): their lanes drain within
`drain_timeout`, the rest is abandoned uncommitted (delivered again later).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from freedom.kafka.consumer.lanes import Lane
from freedom.kafka.consumer.ledger import COMMIT_INTERVAL, TP
from freedom.kafka.consumer.plan import BatchHandler, Handler, TopicPlan, wait_event
from freedom.kafka.consumer.slots import TopicSlots
from freedom.kafka.consumer.sources import RecordSource

__all__ = [
    "BatchHandler",
    "COMMIT_INTERVAL",
    "COMMIT_LAG_BOUND",
    "ConsumerGroup",
    "Handler",
    "TopicPlan",
    "wait_event",
]

log = logging.getLogger("freedom.kafka.proxy")

#: The bound the chaos tests hold the proxy to (docs/reliability.md): after a SIGKILL, a record
#: is delivered again only if it was in flight, waited behind a record of its partition that was in
#: flight, or became committable (its handler and those of every record before it answered) less
#: than this long before the kill. The commit takes COMMIT_INTERVAL plus a round trip (20-50 ms);
#: the rest is room for a loaded machine.
COMMIT_LAG_BOUND = 0.25


class ConsumerGroup:
    """One consumer group: fetches through its source and hands each record to `handle`."""

    def __init__(
        self,
        group_id: str,
        source: RecordSource,
        plans: dict[str, TopicPlan],
        handle: Handler,
        *,
        handle_batch: BatchHandler | None = None,
        delay_sec: float | None = None,
        drain_timeout: float = 10.0,
        fetch_batch: int = 500,
        sequential_backlog: int = 100,
    ) -> None:
        self.group_id = group_id
        self.source = source
        self.plans = plans
        self.handle = handle
        self.handle_batch = handle_batch
        self.delay_sec = delay_sec
        self.drain_timeout = drain_timeout
        self.fetch_batch = fetch_batch
        self.sequential_backlog = sequential_backlog
        self.assigned = asyncio.Event()  # set at the first partition assignment
        self.lanes: dict[TP, Lane] = {}
        self.running = 0  # deliveries started and not finished (loop side; read by the source)
        self._slots: dict[str, TopicSlots] = {}  # concurrent topics: deliveries in flight
        self._handed = 0  # records handed to the loop (source) ...
        self._dispatched = 0  # ... and dispatched here: the difference is on its way

    @property
    def last_round(self) -> float:
        """When the source's fetch loop last began a round (/livez)."""
        return self.source.last_round

    # ------------------------------------------------------------------ lifecycle (loop side)

    async def start(self) -> None:
        await self.source.start(self)

    async def stop(self) -> None:
        """Stop fetching, let in-flight deliveries finish within the drain timeout, settle, close."""
        await self.source.stop()
        await self.release(list(self.lanes))
        await self.source.close()

    # ------------------------------------------------------------------ the sink (sources/)

    def room(self, assigned: int) -> int:
        """How many records to fetch, the source holding `assigned` partitions: the most room any
        lane has in its backlog, less what is on its way to the loop (an estimate read from the
        fetch thread, which is all it needs)."""
        on_the_way = self._handed - self._dispatched
        lanes = list(self.lanes.values())  # one C-level copy: safe while the loop changes the dict
        if len(lanes) < assigned:
            return self.fetch_batch - on_the_way  # a partition with nothing fetched yet
        room = 0
        for lane in lanes:
            room = max(room, lane.bound - len(lane.pending))
        return min(room, self.fetch_batch) - on_the_way

    def busy(self) -> bool:
        """Records handed out and not finished: settlements are due soon."""
        return bool(self.running or self._handed != self._dispatched)

    def handing(self, n: int) -> None:
        """The source is about to dispatch `n` records (fetch thread)."""
        self._handed += n

    def dispatch(self, records: list[Any]) -> None:
        self._dispatched += len(records)
        lanes, source = self.lanes, self.source
        chunked: dict[Lane, None] = {}  # lanes that start their records by chunks: after the loop
        for record in records:
            tp = (record.topic(), record.partition())
            lane = lanes.get(tp)
            if lane is None:
                lane = self._lane(tp)
            offset = record.offset()
            if source.skip(tp, offset):
                continue  # finished here before a rebalance whose commit the broker refused
            source.handed(tp, offset)
            lane.put(record)
            if lane.chunked:
                chunked[lane] = None
        for lane in chunked:
            lane.pump()

    def _lane(self, tp: TP) -> Lane:
        plan = self.plans[tp[0]]
        slots = None
        if plan.mode == "sequential":  # a batch topic's partition holds at least one batch
            bound = max(
                self.sequential_backlog, plan.route.batch.max_records if plan.route.batch else 0
            )
        else:
            bound = max(plan.max_in_flight, 1)
            slots = self._slots.get(tp[0])
            if slots is None:
                slots = self._slots[tp[0]] = TopicSlots(plan.max_in_flight)
        lane = self.lanes[tp] = Lane(self, tp, plan, bound, slots)
        return lane

    def flow_paused(self, tp: TP, paused: bool) -> None:
        """A lane paused (or resumed) its partition for its backlog: the source fetches in short
        rounds meanwhile, so the resume is applied promptly."""
        self.source.flow_paused(tp, paused)

    async def release(self, tps: list[TP]) -> None:
        """Give partitions up: in-flight deliveries may finish within the drain timeout, the rest is
        abandoned uncommitted (delivered again later)."""
        lanes = [self.lanes.pop(tp) for tp in tps if tp in self.lanes]
        if not lanes:
            return
        late = await asyncio.gather(*(lane.drain(self.drain_timeout) for lane in lanes))
        if sum(late):
            log.warning(
                "consumer group %r: abandoned %d in-flight deliveries at the drain deadline; "
                "they will be delivered again",
                self.group_id,
                sum(late),
            )
        for lane in lanes:
            self.source.forget(lane.tp)
