"""A share group's member on the test broker: the in-memory counterpart of sources/share.py.

A :class:`MemoryShareSource` is one member of a share group (KIP-932). Every member reads every
partition of its topics here (Kafka's assignor shares a partition only between more members than
partitions; the test broker does not model that), and one per replica (the service fetches with
two on Kafka: sources/share.py); the group's share-partitions (share_partitions.py) hand
each record to one member at a time under a lock, so several members (several proxies of the same
`group_id`, e.g. replicas on one TestBroker) share the records.

It keeps the real share consumer's rules, so that what runs on it runs on Kafka:

- it fetches only once every record of its last fetch is acknowledged (a ShareConsumer refuses to
  poll before), at most `min(max_records, room)` records, and each record it hands out carries
  its `delivery_count()` (1 the first time);
- `settled` is the record's ACCEPT, `abandoned` its RELEASE (available again at once, to any
  member), `forget` releases what it holds of a partition and `close` what it still holds;
- an acknowledgement that comes after the record's lock ran out is ignored by the broker (logged):
  the record was given back, and another member may have it;
- a member dropped without `close` (:meth:`MemoryShareSource.crash`, a killed process) holds its
  records until their locks run out on the broker's clock; then they are available again.

Its fetch loop runs on the event loop, its clock is the broker's (retry records and locks wait on
it; :meth:`TestBroker.settle` moves it forward, to a lock's end too).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from typing import TYPE_CHECKING, Any

from freedom.kafka.consumer.plan import wait_event
from freedom.kafka.consumer.sources import ShareTerms, Sink
from freedom.testing.clock import SimulatedClock

if TYPE_CHECKING:
    from freedom.kafka.consumer.group import ConsumerGroup
    from freedom.testing.broker import TestBroker

log = logging.getLogger("freedom.testing")

TP = tuple[str, int]


class MemoryShareSource(SimulatedClock):
    """One member of a share group on the in-memory broker (a RecordSource)."""

    shared: bool = True

    def __init__(
        self,
        broker: TestBroker,
        group_id: str,
        topics: list[str],
        share: ShareTerms,
        *,
        initial_offset: str,
    ) -> None:
        self.broker = broker
        self.group_id = group_id
        self.topics = topics
        self.terms = share
        self.initial_offset = initial_offset
        self.last_round = time.monotonic()
        #: The group's record lock once started (share.record.lock.duration.ms, seconds).
        self.lock_sec = share.lock_sec
        #: The group's share.auto.offset.reset (it sets it at start-up).
        self.offset_reset: str | None = initial_offset
        #: Acknowledgements sent, by (topic, "accept" | "release" | "reject").
        self.acknowledgements: collections.Counter[tuple[str, str]] = collections.Counter()
        #: Records handed out, by (topic, delivery count).
        self.delivery_counts: collections.Counter[tuple[str, int]] = collections.Counter()
        self._share = broker.share_group(group_id)
        self._group: ConsumerGroup | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tps: list[TP] = []  # every partition of the topics
        self._held: dict[TP, set[int]] = {}  # acquired, not acknowledged
        self._poke = asyncio.Event()  # records, an acknowledgement, a clock change, stop
        self._timers = set()
        self._pump_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._crashed = False

    @property
    def delivery_limit(self) -> int:
        """The group's share.delivery.count.limit (the proxy dead-letters a failed record whose
        delivery count reached it, rather than release it to be archived)."""
        return self._share.delivery_count_limit

    # ------------------------------------------------------------------ the port

    async def start(self, sink: Sink) -> None:
        from freedom.kafka.consumer.group import ConsumerGroup

        assert isinstance(sink, ConsumerGroup)
        self._group = sink
        self._loop = asyncio.get_running_loop()
        self.broker._join(self)
        try:
            self._share.join(self, self.terms.lock_sec, self.initial_offset)
        except BaseException:
            self.broker._leave(self)
            raise
        self.lock_sec, self.offset_reset = self._share.lock_sec, self._share.offset_reset
        self._subscribe()
        sink.assigned.set()  # no assignment to wait for: every member reads every partition
        self._pump_task = asyncio.create_task(
            self._run_pump(), name=f"freedom-memory-share-{self.group_id}"
        )

    async def stop(self) -> None:
        self._stopping = True
        self._poke.set()
        if self._pump_task is not None:
            await self._pump_task

    async def close(self) -> None:
        """Release what it still holds and leave the group (a crashed member does neither)."""
        if self._crashed:
            return
        for tp in list(self._held):
            self.forget(tp)
        self._share.leave(self)
        self.broker._leave(self)

    def alive(self) -> bool | None:
        return None  # no fetch thread to watch

    def flow_paused(self, tp: TP, paused: bool) -> None:
        return None

    def pause(self, tp: TP) -> None:
        return None  # nothing to pause: it fetches only once its last fetch is acknowledged

    def resume(self, tp: TP) -> None:
        return None

    def room_freed(self) -> None:
        self._poke.set()

    def handed(self, tp: TP, offset: int) -> None:
        return None  # held since it was acquired

    def settled(self, tp: TP, offset: int) -> bool:
        self._acknowledge(tp, offset, "accept")
        return False  # no committed position

    def abandoned(self, tp: TP, offset: int) -> None:
        self._acknowledge(tp, offset, "release")

    def skip(self, tp: TP, offset: int) -> bool:
        return False

    def lock_left(self, tp: TP, offset: int) -> float:
        end = self._share.lock_end(self, tp, offset)
        return 0.0 if end is None else end - self.now()

    def open_count(self, tp: TP) -> int:
        return len(self._held.get(tp, ()))

    def forget(self, tp: TP) -> None:
        """Release every record of `tp` it holds."""
        for offset in sorted(self._held.get(tp, ())):
            self._acknowledge(tp, offset, "release")
        self._held.pop(tp, None)

    # ------------------------------------------------------------------ acknowledgements

    def _acknowledge(self, tp: TP, offset: int, kind: str) -> None:
        if self._crashed:
            return  # a dead process sends nothing
        held = self._held.get(tp)
        if held is None or offset not in held:
            return
        held.discard(offset)
        self.acknowledgements[(tp[0], kind)] += 1
        if not self._share.finish(self, tp, offset, kind, self.now()):
            log.warning(
                "share group %r: the broker ignored the %s of %s[%d]@%d: its lock (%g s) ran out "
                "before, and it was given back to the group",
                self.group_id,
                kind,
                tp[0],
                tp[1],
                offset,
                self.lock_sec,
            )
        self._poke.set()

    # ------------------------------------------------------------------ crashing

    def crash(self) -> None:
        """Drop this member as a killed process is dropped (from any thread): no close, no
        acknowledgement or release ever again; what it holds stays locked until the lock runs out
        on the broker's clock. Its records not started never start, and deliveries running see
        their partition lost (their outcome is never acknowledged)."""
        self._crashed = True
        self._share.leave(self)
        self.broker._leave(self)
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self._cut)
            except RuntimeError:  # the loop closed meanwhile
                pass

    def _cut(self) -> None:  # on the loop
        self._poke.set()
        group = self._group
        if group is None:
            return
        for lane in list(group.lanes.values()):
            lane.pending.clear()
            lane.lost.set()

    # ------------------------------------------------------------------ the broker's side

    def _subscribe(self) -> None:
        """Every partition of the topics (a new one starts as the group's offset reset says)."""
        tps = self.broker._partitions_of(self.topics)
        if len(tps) != len(self._tps):
            self._share.see(tps)
            self._tps = tps

    def _holding(self) -> bool:
        return any(self._held.values())

    async def _run_pump(self) -> None:
        group = self._group
        assert group is not None
        while not (self._stopping or self._crashed):
            self._poke.clear()
            self.last_round = time.monotonic()
            self._subscribe()
            records = self._fetch(group)
            if records:
                group.handing(len(records))
                group.dispatch(records)
                await asyncio.sleep(0)
                continue
            await wait_event(self._poke, 0.05)

    def _fetch(self, group: ConsumerGroup) -> list[Any]:
        """Acquire records, once every record of the last fetch is acknowledged."""
        if self._holding():
            return []
        n = min(self.terms.max_records, group.room(len(self._tps)))
        if n <= 0:
            return []
        records = self._share.acquire(self, self._tps, n, self.now())
        for r in records:
            self._held.setdefault((r.topic(), r.partition()), set()).add(r.offset())
            self.delivery_counts[(r.topic(), r.delivery_count() or 1)] += 1
        return records

    def pending_work(self) -> tuple[str | None, float | None]:
        """For TestBroker.settle: (what is still to do now, or None; the earliest time something
        waits for: a retry record due, or a record lock running out)."""
        group = self._group
        if group is None or self._stopping or self._crashed:
            return None, None
        name = f"share group {self.group_id!r}"
        if group.busy():
            return f"{name}: {group.running} deliveries running", None
        now = self.now()
        if not self._holding() and self._share.available(self._tps, now):
            return f"{name}: records to acquire", None
        due: float | None = None
        for lane in list(group.lanes.values()):
            at = lane.due_at()
            if at is None:
                continue
            if at <= now:
                return f"{name}: records of {lane.tp[0]}[{lane.tp[1]}] to deliver", None
            due = at if due is None else min(due, at)
        expiry = self._share.next_expiry(self._tps)
        if expiry is not None:
            due = expiry if due is None else min(due, expiry)
        return None, due
