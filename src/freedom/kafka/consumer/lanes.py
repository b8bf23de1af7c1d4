"""Per-partition lanes: when each fetched record of a partition starts, by its topic's delivery mode.

Delivery modes, per topic (`TopicPlan.mode`):
- `sequential`: one record at a time per partition, in offset order (a batch topic: up to its
  `max_records` due records at once, all finished before the next ones start);
- `concurrent`: up to `max_in_flight` records of the topic at once (over all its partitions),
  finishing in any order (a batch topic: started by chunks of up to `max_records`);
- `key-ordered`: as concurrent, but a record waits for the previous record with the same key (it
  holds its slot meanwhile, as a started record does).
Whatever the order of completion, the committed offset of a partition never passes a record that
is not finished (the source's ledger).

A lane has no task of its own and takes no lock or semaphore per record: it starts records when
they arrive and when a record finishes, from callbacks. Each record is one call of the group's
handler; on Python 3.12+ it starts as an eager task, so a delivery that completes without
suspending (a direct in-process handler that does not wait on I/O) never goes through the event
loop's queue, and a lane runs its records one after another in a loop, not by recursion. On 3.11
(no eager tasks) each record is a task, started at once.

A batch topic's lane (`chunked`: sequential or concurrent, the group having a `handle_batch`)
starts records by chunks: those fetched together, up to `max_records` (and the free slots), in one
task and one `handle_batch` call; each settles with its own answer when the call returns.

Flow control: a lane holds at most `bound + fetch batch` fetched records before its partition is
paused ("backlog"); it resumes at half the bound. A partition whose uncommitted records reach
UNCOMMITTED_WINDOW times the bound (a slow record holding the commit back) is paused too
("window"). In a retry group a partition whose next record is not due yet is paused until it is
("delay"), then resumed.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import sys
from collections.abc import Awaitable, Coroutine
from typing import TYPE_CHECKING, Any

from freedom.kafka.consumer.ledger import TP
from freedom.kafka.consumer.plan import TopicPlan
from freedom.kafka.consumer.slots import TopicSlots

if TYPE_CHECKING:
    from freedom.kafka.consumer.group import ConsumerGroup
    from freedom.kafka.consumer.sources import Cancellable

log = logging.getLogger("freedom.kafka.proxy")

#: A partition stops fetching when this many times its backlog bound of records are uncommitted.
UNCOMMITTED_WINDOW = 4

_EAGER = sys.version_info >= (3, 12)

#: A record's `timestamp()` kind when it has none (confluent_kafka.TIMESTAMP_NOT_AVAILABLE; the test
#: broker's records use it too): the lanes read records, they never build Kafka clients.
TIMESTAMP_NOT_AVAILABLE = 0


class Lane:
    """One assigned partition: its fetched records not started, and its deliveries."""

    def __init__(
        self, group: ConsumerGroup, tp: TP, plan: TopicPlan, bound: int, slots: TopicSlots | None
    ) -> None:
        self.group = group
        self.source = group.source
        self.tp = tp
        self.plan = plan
        self.bound = bound
        self.slots = slots
        self.keyed = plan.mode == "key-ordered"
        self.most = plan.route.batch.max_records if plan.route.batch else 1
        self.chunked = bool(plan.route.batch and not self.keyed and group.handle_batch is not None)
        self.pending: collections.deque[Any] = collections.deque()
        self.running = 0  # started (or waiting for their key) and not finished
        self.tasks: dict[asyncio.Task[None], int] = {}  # deliveries that waited: their records
        self.behind: dict[Any, collections.deque[Any]] = {}  # key -> records waiting behind it
        self._ready: collections.deque[Any] = collections.deque()  # their key's turn came
        self.lost = asyncio.Event()  # revoked, or the group stops
        self.pause_reasons: set[str] = set()  # "backlog", "window", "delay"
        self.paused = False  # what the source was last asked
        self.waiting = False  # in slots.waiting
        self._pumping = False
        self._timer: Cancellable | None = None
        self._idle: asyncio.Future[None] | None = None  # set when running drops to 0 after lost
        self._loop = asyncio.get_running_loop()

    # ------------------------------------------------------------------ records in

    def put(self, record: Any) -> None:
        """A fetched record (offset order): started now if the mode allows, else kept (a chunked
        lane's: started when the group pumps it, after the whole fetched batch is put)."""
        self.pending.append(record)
        n = len(self.pending)
        if n >= self.bound + self.group.fetch_batch:
            self.pause("backlog")  # overflowing despite the fetch gate
        if self.source.open_count(self.tp) >= UNCOMMITTED_WINDOW * self.bound:
            self.pause("window")  # a slow record holds the commit back: do not run far ahead
        if not self._pumping and not self.chunked:
            self.pump()

    def pump(self) -> None:
        """Start as many kept records as the mode, the slots and (retries) their due time allow;
        while draining, only the key successors that hold their slot already."""
        if self._pumping:
            return
        self._pumping = True
        try:
            pending, slots, ready = self.pending, self.slots, self._ready
            while True:
                while ready:  # the next record of a key whose previous one finished
                    self._start(ready.popleft(), counted=True)
                if self.lost.is_set() or not pending or (slots is None and self.running):
                    return
                if self.group.delay_sec is not None and not self._due_now():
                    return
                if slots is None:  # sequential: one (a batch: up to `most`) at a time
                    if self.chunked:
                        self._start_chunk(self.most)
                        continue
                    self._start(self._take())
                    while pending and self.running < self.most and self._head_due():
                        self._start(self._take())
                    continue
                if slots.free <= 0:
                    if not self.waiting:
                        self.waiting = True
                        slots.waiting.append(self)
                    return
                if self.chunked:
                    self._start_chunk(min(slots.free, self.most))
                    continue
                slots.free -= 1
                record = self._take()
                if self.keyed:
                    key = record.key()
                    queue = self.behind.get(key)
                    if queue is not None:  # the previous record of its key is running
                        queue.append(record)
                        self.running += 1
                        self.group.running += 1
                        continue
                    self.behind[key] = collections.deque()
                self._start(record)
        finally:
            self._pumping = False

    def _take(self) -> Any:
        record = self.pending.popleft()
        n = len(self.pending)
        if n < self.bound:
            self.source.room_freed()
        if n <= self.bound // 2 and "backlog" in self.pause_reasons:
            self.unpause("backlog")
        return record

    # ------------------------------------------------------------------ retry groups: due times

    def _due(self, record: Any) -> float:
        kind, ms = record.timestamp()
        if kind == TIMESTAMP_NOT_AVAILABLE or ms <= 0:
            return 0.0
        # The copy was written within the millisecond after `ms` (Kafka keeps whole milliseconds):
        # due from the end of it, so a retry never comes sooner than the interval after its copy.
        return float(ms + 1) / 1000.0 + (self.group.delay_sec or 0.0)

    def due_at(self) -> float | None:
        """When the next kept record is due (0: now); None when none is kept."""
        if not self.pending:
            return None
        return self._due(self.pending[0]) if self.group.delay_sec is not None else 0.0

    def _head_due(self) -> bool:
        return self.group.delay_sec is None or self._due(self.pending[0]) <= self.source.now()

    def _due_now(self) -> bool:
        """True when the next record is due; else pause the partition until it is."""
        wait = self._due(self.pending[0]) - self.source.now()
        if wait <= 0:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
                self.unpause("delay")
            return True
        if self._timer is None:
            self.pause("delay")  # fetch nothing more until this one is due
            self._timer = self.source.call_later(wait, self._due_came)
        return False

    def _due_came(self) -> None:
        self._timer = None
        if self.lost.is_set():
            return
        self.unpause("delay")
        self.pump()

    # ------------------------------------------------------------------ one delivery

    def _start(self, record: Any, *, counted: bool = False) -> None:
        if not counted:
            self.running += 1
            self.group.running += 1
        self._spawn(self._run(record), 1)

    def _start_chunk(self, most: int) -> None:
        """Start the next kept record (due) and those due after it, `most` at most, as one chunk."""
        chunk = [self._take()]
        while self.pending and len(chunk) < most and self._head_due():
            chunk.append(self._take())
        n = len(chunk)
        self.running += n
        self.group.running += n
        if self.slots is not None:
            self.slots.free -= n
        self._spawn(self._run_chunk(chunk), n)

    def _spawn(self, coro: Coroutine[Any, Any, None], n: int) -> None:
        if _EAGER:
            task: asyncio.Task[None] = asyncio.Task(coro, loop=self._loop, eager_start=True)  # type: ignore[call-arg, arg-type, unused-ignore]
        else:
            task = asyncio.ensure_future(coro)
        if not task.done():  # it waits: the drain may have to cancel it
            self.tasks[task] = n
            task.add_done_callback(self.tasks.pop)

    async def _run(self, record: Any, rest: Awaitable[bool] | None = None) -> None:
        """One delivery (or the `rest` of one begun in a chunk), settled as soon as it ends, inside
        its own task: a done-callback would run only after every task ready on the loop, and with
        handlers keeping the loop busy the commit would wait for all of them
        (tests/chaos/test_commit_lag.py)."""
        ok = False
        try:
            if rest is None:
                rest = self.group.handle(record, self.plan, self.lost)
            ok = bool(await rest)
        except asyncio.CancelledError:  # the drain deadline: delivered again later
            self.settle(record, False)
            raise
        except Exception:  # a bug in the handling: left uncommitted, delivered again later
            log.exception(
                "consumer group %r: handling %s[%d]@%d failed",
                self.group.group_id,
                record.topic(),
                record.partition(),
                record.offset(),
            )
        self.settle(record, ok)

    async def _run_chunk(self, records: list[Any]) -> None:
        """A chunk of a batch topic's records in one call. Those its answer finished settle at once,
        inside this task (as in `_run`); each of the others (a retry, a dead letter, a drop, a
        redelivery) goes on in a task of its own and settles when it ends, so a slow one holds
        back no other record. All are given up when the call failed or was cancelled."""
        assert self.group.handle_batch is not None
        try:
            outcomes = await self.group.handle_batch(records, self.plan, self.lost)
        except asyncio.CancelledError:  # the drain deadline: delivered again later
            self._settle_chunk(records, [])
            raise
        except Exception:  # a bug in the handling: left uncommitted, delivered again later
            log.exception(
                "consumer group %r: a chunk of %s[%d] failed", self.group.group_id, *self.tp
            )
            self._settle_chunk(records, [])
            return
        now = [(r, o) for r, o in zip(records, outcomes) if isinstance(o, bool)]
        if now:
            self._settle_chunk([r for r, _ in now], [o for _, o in now])
        for record, outcome in zip(records, outcomes):
            if not isinstance(outcome, bool):
                self._spawn(self._run(record, outcome), 1)

    def _settle_chunk(self, records: list[Any], oks: list[bool]) -> None:
        """As `settle` for each record of a chunk (`oks`: theirs; missing: given up), at once."""
        n = len(records)
        self.running -= n
        self.group.running -= n
        if any([self.source.settled(self.tp, r.offset()) for r, ok in zip(records, oks) if ok]):
            self._window_check()
        if len(oks) < n or not all(oks):
            for record, ok in itertools.zip_longest(records, oks[:n]):
                if not ok:
                    self.source.abandoned(self.tp, record.offset())
        if self.slots is not None:
            self.slots.release(self, n)
        self._next()

    def settle(self, record: Any, ok: bool) -> None:
        """`record` finished (`ok`: committable) or was given up; start what may start now."""
        self.running -= 1
        self.group.running -= 1
        if ok:
            if self.source.settled(self.tp, record.offset()):  # also while draining
                self._window_check()
        else:
            self.source.abandoned(self.tp, record.offset())
        if self.keyed:
            key = record.key()
            queue = self.behind.get(key)
            if queue:
                if ok or not self.lost.is_set():
                    # Its slot goes to the next record of the key (started by pump, not from here:
                    # a run of records finishing at once must not recurse).
                    self._ready.append(queue.popleft())
                    if not self._pumping:
                        self.pump()
                    return
                # The previous one was given up: keep the key's order for the next owner.
                self._give_up(queue)
            self.behind.pop(key, None)
        if self.slots is not None:
            self.slots.release(self)
        self._next()

    def _next(self) -> None:  # after a settlement: wake the drain, or start what may start now
        if self.lost.is_set():
            if self.running == 0 and self._idle is not None and not self._idle.done():
                self._idle.set_result(None)
        elif self.pending and not self._pumping:
            self.pump()

    def _window_check(self) -> None:
        if (
            "window" in self.pause_reasons
            and self.source.open_count(self.tp) <= UNCOMMITTED_WINDOW * self.bound // 2
        ):
            self.unpause("window")

    def _give_up(self, queue: collections.deque[Any]) -> None:
        n = len(queue)
        queue.clear()
        self.running -= n
        self.group.running -= n
        if self.slots is not None:
            self.slots.free += n

    # ------------------------------------------------------------------ flow control

    def pause(self, reason: str) -> None:
        self.pause_reasons.add(reason)
        if reason == "backlog":
            self.group.flow_paused(self.tp, True)
        self._apply_pause()

    def unpause(self, reason: str) -> None:
        self.pause_reasons.discard(reason)
        if reason == "backlog":
            self.group.flow_paused(self.tp, False)
        self._apply_pause()

    def _apply_pause(self) -> None:
        want = bool(self.pause_reasons)
        if want == self.paused or self.lost.is_set():
            return
        self.paused = want
        (self.source.pause if want else self.source.resume)(self.tp)

    # ------------------------------------------------------------------ giving the partition up

    async def drain(self, timeout: float) -> int:
        """Stop starting records; let those running finish within `timeout`, then cancel the rest.
        Returns how many records were abandoned at the deadline (a chunk's: all of them)."""
        self.lost.set()
        for record in self.pending:  # never started: a share group releases them at once
            self.source.abandoned(self.tp, record.offset())
        self.pending.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.waiting and self.slots is not None:
            self.waiting = False
            try:
                self.slots.waiting.remove(self)
            except ValueError:
                pass
        self.group.flow_paused(self.tp, False)
        if not self.running:
            return 0
        self._idle = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait_for(asyncio.shield(self._idle), timeout)
            return 0
        except TimeoutError:
            pass
        late, abandoned = list(self.tasks), sum(self.tasks.values())
        for queue in self.behind.values():
            self._give_up(queue)
        for task in late:
            task.cancel()
        if late:
            await asyncio.gather(*late, return_exceptions=True)
        if self.running:  # a task cancelled before its first step never settled its record
            self.group.running -= self.running
            self.running = 0
        return abandoned
