"""One consumer group's loop: fetching, flow control, the delivery modes and safe commits.

It knows nothing of HTTP or retries: for each record it awaits `handle(record, plan, lost)`,
which returns True once the record is finished (delivered, or acknowledged on its retry or
dead-letter topic) and False when it gave the record up because the partition is going away.

Threading: every call into the librdkafka consumer happens on one dedicated thread (the
"consumer thread"), so the client is never used concurrently; rebalance callbacks run there
too, inside `consume()`. The consumer thread runs its own loop (fetch, hand the records to the
asyncio loop, commit) and never waits for the asyncio loop, except to drain revoked partitions.
Deliveries run on the asyncio loop. They never touch the consumer: they record the offset to
commit and the partitions to pause or resume, and the consumer thread applies that on its next
round (at most COMMIT_INTERVAL later while records are handled, `poll_timeout` when idle).

Commits (the redelivery bound after a crash): finished records are committed asynchronously,
at most one request every COMMIT_INTERVAL and at most COMMITS_IN_FLIGHT unanswered per group,
from the consumer thread's own rounds. So a saturated event loop (in-process handlers keeping it
busy) cannot delay commits (with SWITCH_INTERVAL, the consumer thread also gets the GIL promptly),
and commit requests cannot pile up at a slow broker: a record that has finished, with every
record before it in its partition, is committed within about COMMIT_INTERVAL plus a commit round
trip. A failed commit is sent again (unless a newer offset
was sent meanwhile); it is never a loss, only a redelivery.

Delivery modes, per topic (`TopicPlan.mode`):
- `sequential`: one record at a time per partition, in offset order;
- `concurrent`: up to `max_in_flight` records of the topic at once, finishing in any order;
- `key-ordered`: as concurrent, but a record waits for the previous record with the same key.
Whatever the order of completion, the committed offset of a partition never passes a record
that is not finished (:class:`OffsetTracker`).

Flow control: the consumer thread takes from librdkafka only as many records as some partition has
room for in its backlog of fetched-but-not-started records (its bound), and waits for room when
every partition is full; librdkafka's own prefetch is capped by `queued.max.messages.kbytes`. A
partition that still overflows (the consumer thread polls now and then even when all are full, to
serve rebalances) is paused at its bound plus one fetch batch and resumed at half its bound.
Pausing is the last resort: librdkafka drops what it prefetched for a paused partition and takes
about half a second to fetch again after the resume. A partition with UNCOMMITTED_WINDOW times
its bound of records not committable yet (a slow record holding the commit back) is paused too,
so memory stays bounded however large the backlog. In a retry group (`delay_sec` set) a partition
whose next record is not due yet is paused until it is, then resumed: no busy polling, no
consumer re-creation, and other partitions keep flowing.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import confluent_kafka
from confluent_kafka import TopicPartition

from freedom.config.librdkafka import CONSUMER_DEFAULTS
from freedom.kafka.consumer.commits import OffsetTracker
from freedom.kafka.consumer.delivery import EventRoute

log = logging.getLogger("freedom.kafka.proxy")

TP = tuple[str, int]


#: A partition stops fetching when this many times its backlog bound of records are uncommitted
#: (one slow record holding the commit back while later ones finish), so that memory and the
#: redeliveries after a crash stay bounded.
UNCOMMITTED_WINDOW = 4

#: How long one fetch round waits for records while some partition is paused for its backlog: the
#: consumer thread applies a resume only between rounds, and a partition that drains its backlog
#: should not sit idle for a whole `poll_timeout`.
FLOW_POLL_TIMEOUT = 0.01

#: Finished records are committed (asynchronously, in one request) on the consumer thread's next
#: round; while deliveries run, a round comes at least this often, and commit requests are sent
#: at most this often, one at a time.
COMMIT_INTERVAL = 0.02

#: At most this many commit requests of a group unanswered at once: a slow broker gets fewer,
#: larger commits instead of a queue of stale ones.
COMMITS_IN_FLIGHT = 4

#: Unanswered commit requests older than this no longer hold the next one back (a broker that went
#: away answers only at librdkafka's request timeout).
COMMIT_ACK_TIMEOUT = 1.0

#: The bound the chaos tests hold the proxy to (docs/reliability.md): after a SIGKILL, a record
#: is delivered again only if it was in flight, waited behind a record of its partition that was in
#: flight, or became committable (its handler and those of every record before it answered) less
#: than this long before the kill. The commit takes COMMIT_INTERVAL plus a round trip (20-50 ms);
#: the rest is room for a loaded machine.
COMMIT_LAG_BOUND = 0.25

#: The interpreter's thread switch interval while a consumer group runs (Python's default is
#: 5 ms). Handlers that keep the event loop busy hold the GIL; the consumer thread needs it a few
#: times per round (each return from librdkafka), and waited up to 5 ms each time: rounds, and so
#: commits, came only every 60-450 ms. With 1 ms they come every 20-25 ms.
SWITCH_INTERVAL = 0.001


@dataclass(frozen=True)
class TopicPlan:
    """How the records of one subscribed topic are delivered."""

    route: EventRoute
    source_topic: str  # the listened topic T (for a retry topic: the topic it retries)
    mode: str = "sequential"
    max_in_flight: int = 500


Handler = Callable[[Any, TopicPlan, asyncio.Event], Awaitable[bool]]


async def wait_event(event: asyncio.Event, seconds: float) -> bool:
    """Wait up to `seconds` for `event`; True when it was set."""
    try:
        await asyncio.wait_for(event.wait(), seconds)
        return True
    except TimeoutError:
        return event.is_set()


def _done_ok(task: asyncio.Task[bool]) -> bool:
    """True when a finished delivery task finished its record (not given up, failed or cancelled)."""
    return not task.cancelled() and task.exception() is None and task.result()


@dataclass
class _Partition:
    """One assigned partition: records fetched and not started, their offsets, the deliveries running."""

    tp: TP
    plan: TopicPlan
    backlog_bound: int
    pending: collections.deque[Any] = field(default_factory=collections.deque)
    tracker: OffsetTracker = field(default_factory=OffsetTracker)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    lost: asyncio.Event = field(default_factory=asyncio.Event)  # revoked, or the group stops
    worker: asyncio.Task[None] | None = None
    inflight: set[asyncio.Task[bool]] = field(default_factory=set)
    last_of_key: dict[bytes, asyncio.Task[bool]] = field(default_factory=dict)
    pause_reasons: set[str] = field(default_factory=set)  # "backlog", "window", "delay"
    paused: bool = False  # what the consumer was last asked


class GroupLoop:
    """One consumer group: fetches the subscribed topics and hands each record to `handle`."""

    def __init__(
        self,
        group_id: str,
        settings: dict[str, Any],
        plans: dict[str, TopicPlan],
        handle: Handler,
        *,
        initial_offset: str = "latest",
        delay_sec: float | None = None,
        drain_timeout: float = 10.0,
        fetch_batch: int = 500,
        sequential_backlog: int = 100,
        poll_timeout: float = 0.2,
    ) -> None:
        self.group_id = group_id
        self.plans = plans
        self.handle = handle
        self.initial_offset = initial_offset
        self.delay_sec = delay_sec
        self.drain_timeout = drain_timeout
        self.fetch_batch = fetch_batch
        self.sequential_backlog = sequential_backlog
        self.poll_timeout = poll_timeout
        self.settings = {
            **CONSUMER_DEFAULTS,
            **settings,
            "group.id": group_id,
            "auto.offset.reset": initial_offset,
        }
        self.assigned = asyncio.Event()  # set at the first partition assignment
        self._parts: dict[TP, _Partition] = {}
        self._slots: dict[str, asyncio.Semaphore] = {}  # topic -> deliveries in flight
        self._to_commit: dict[TP, int] = {}
        self._to_pause: set[TP] = set()
        self._to_resume: set[TP] = set()
        self._lock = threading.Lock()  # guards the three above between the two threads
        self._backlog_paused: set[TP] = set()  # loop side; the consumer thread only reads its truth
        self._assigned: set[TP] = set()  # consumer thread; the loop only reads its size
        self._room = (
            threading.Event()
        )  # set (loop side) when some partition's backlog has room again
        self._running = (
            0  # deliveries started and not finished (loop side; the consumer thread reads it)
        )
        self._handed = 0  # records handed to the loop (consumer thread) ...
        self._dispatched = 0  # ... and dispatched there (loop side): the difference is on its way
        # Commits in flight (consumer thread only): when each unanswered one was sent, oldest first.
        self._commits_sent: collections.deque[float] = collections.deque()
        self._commit_sent_at = 0.0
        self._newest_sent: dict[TP, int] = {}  # the newest offset sent per partition
        self._acked: dict[TP, int] = {}  # the newest offset the broker confirmed per partition
        self._commit_failures = 0  # failed commits in a row (logged once per streak)
        # Offsets finished here whose commit failed after their partition was revoked (e.g. the
        # broker restarted and forgot this member): committed when the partition comes back, if
        # nobody committed further meanwhile, so that finished records are not delivered again.
        self._unsaved: dict[TP, int] = {}
        # ... and, once such a partition is assigned again, the records below that offset are
        # finished without a delivery (also if committing the offset failed again), until the first
        # record at or above it comes (guarded by the lock; the loop reads it in _dispatch).
        self._finished_below: dict[TP, int] = {}
        self._stop = threading.Event()
        #: When the consumer thread last began a round (time.monotonic()): /livez fails when it stops (health.py).
        self.last_round = time.monotonic()
        self._consumer: confluent_kafka.Consumer | None = None
        self._task: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix=f"freedom-consumer-{group_id}"
        )

    # ------------------------------------------------------------------ lifecycle (loop side)

    async def start(self) -> None:
        if sys.getswitchinterval() > SWITCH_INTERVAL:  # process-wide; only ever lowered
            sys.setswitchinterval(SWITCH_INTERVAL)
        self._loop = asyncio.get_running_loop()
        await self._call(self._open)
        self._task = self._loop.run_in_executor(self._thread, self._pump)  # until stop()

    async def stop(self) -> None:
        """Stop fetching, let in-flight deliveries finish within the drain timeout, commit, close."""
        self._stop.set()
        self._room.set()  # wake the consumer thread if it waits for room
        if self._task is not None:
            await self._task
        await self._release(list(self._parts))
        if self._loop is not None:
            await self._call(self._close)
        self._thread.shutdown(wait=True)

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        assert self._loop is not None
        return await self._loop.run_in_executor(self._thread, fn, *args)

    # ------------------------------------------------------------------ consumer thread

    def _room_for(self) -> int:
        """How many records to fetch: the most room any assigned partition has in its backlog, less
        what is on its way to the loop. Reads loop-side sizes: an estimate, which is all it needs."""
        on_the_way = self._handed - self._dispatched
        parts = list(self._parts.values())  # one C-level copy: safe while the loop changes the dict
        if len(parts) < len(self._assigned):
            return self.fetch_batch - on_the_way  # a partition with nothing fetched yet
        room = 0
        for part in parts:
            room = max(room, part.backlog_bound - len(part.pending))
        return min(room, self.fetch_batch) - on_the_way

    def _busy(self) -> bool:
        """Records handed out and not committed yet: commits are due soon, poll in short slices."""
        return bool(
            self._running
            or self._to_commit
            or self._handed != self._dispatched
            or any(len(p.tracker) for p in list(self._parts.values()))
        )

    def _pump(self) -> None:
        """The consumer thread's loop, until stop(): commit, pause/resume, fetch as room allows."""
        while not self._stop.is_set():
            try:
                self._round()
            except Exception:  # never let the consumer thread die silently
                log.exception("consumer group %r: fetch failed; retrying", self.group_id)
                self._stop.wait(1.0)

    def _round(self) -> None:
        self.last_round = time.monotonic()
        consumer = self._consumer
        assert consumer is not None and self._loop is not None
        self._commit_due()
        with self._lock:
            pause, self._to_pause = self._to_pause, set()
            resume, self._to_resume = self._to_resume, set()
        for tps, action in ((pause, consumer.pause), (resume, consumer.resume)):
            if tps:
                try:
                    action([TopicPartition(t, p) for t, p in tps])
                except confluent_kafka.KafkaException as exc:  # e.g. revoked meanwhile
                    log.debug(
                        "consumer group %r: %s %s: %s", self.group_id, action.__name__, tps, exc
                    )
        n = self._room_for()
        if n <= 0:
            # Every partition's backlog is full: wait for room, but poll now and then anyway (one
            # record) so that rebalances are served; commits go on meanwhile.
            self._room.clear()
            if self._room_for() <= 0:
                self._room.wait(COMMIT_INTERVAL if self._busy() else self.poll_timeout)
            if self._stop.is_set():
                return
            self._commit_due()
            n = max(self._room_for(), 1)
        # What is already fetched, at once; else wait for the first record only (consume(n, t) would
        # wait for n records or the whole timeout), then take what came with it. While a partition is
        # paused for its backlog, wait briefly: its resume is applied only on the next round.
        batch = consumer.consume(n, 0)
        if not batch:
            if self._backlog_paused:
                timeout = FLOW_POLL_TIMEOUT
            elif self._busy():
                timeout = COMMIT_INTERVAL
            else:
                timeout = self.poll_timeout
            batch = consumer.consume(1, timeout)
            if batch and n > 1:
                batch.extend(consumer.consume(n - 1, 0))
        out = []
        for record in batch:
            err = record.error()
            if err is None:
                out.append(record)
            elif err.code() != confluent_kafka.KafkaError._PARTITION_EOF:
                log.warning("consumer group %r: %s", self.group_id, err.str())
        if out:
            self._handed += len(out)
            self._loop.call_soon_threadsafe(self._dispatch_all, out)

    def _commit_due(self) -> None:
        """Send the finished offsets, unless a commit was sent less than COMMIT_INTERVAL ago or
        COMMITS_IN_FLIGHT are unanswered (then they go with the next one: offsets only move forward)."""
        if not self._to_commit:
            return
        now = time.monotonic()
        if now - self._commit_sent_at < COMMIT_INTERVAL:
            return
        sent = self._commits_sent
        while sent and now - sent[0] > COMMIT_ACK_TIMEOUT:
            sent.popleft()  # its answer will come late, if at all
        if len(sent) >= COMMITS_IN_FLIGHT:
            return
        self._commit_pending(asynchronous=True)

    def _on_commit(self, err: Any, partitions: list[TopicPartition]) -> None:
        """librdkafka's answer to an asynchronous commit (served on the consumer thread, inside
        consume()): the next commit may go; what failed is sent again unless already superseded."""
        if self._commits_sent:
            self._commits_sent.popleft()
        failed = [tp for tp in partitions if err is not None or tp.error is not None]
        log.debug(
            "consumer group %r: commit answered (%s): %s",
            self.group_id,
            err,
            [(tp.topic, tp.partition, tp.offset, tp.error) for tp in partitions],
        )
        if err is None:
            self._check_order(tp for tp in partitions if tp.error is None)
        if not failed:
            if self._commit_failures:
                log.info(
                    "consumer group %r: commits succeed again (after %d failed)",
                    self.group_id,
                    self._commit_failures,
                )
                self._commit_failures = 0
            return
        self._commit_failures += 1
        if self._commit_failures == 1:
            reason = (
                err.str() if err is not None else next(tp.error.str() for tp in failed if tp.error)
            )
            log.warning("consumer group %r: commit failed (%s); will retry", self.group_id, reason)
        with self._lock:
            for tp in failed:
                key = (tp.topic, tp.partition)
                if self._newest_sent.get(key) != tp.offset:
                    continue  # a newer offset went after it
                if key not in self._assigned:
                    self._unsaved[key] = max(tp.offset, self._unsaved.get(key, -1))
                elif key not in self._to_commit:  # else a newer one waits
                    self._to_commit[key] = tp.offset

    def _check_order(self, confirmed: Iterable[TopicPartition]) -> None:
        """Commit the newest offset again when an older commit was confirmed after it.

        librdkafka holds the commits sent while the coordinator is away and sends them when it is
        back, possibly after newer ones: the broker then keeps the older offset (measured in the
        chaos test: 145 confirmed, then 51), and finished records would be delivered again.
        """
        rewound = {}
        for tp in confirmed:
            key = (tp.topic, tp.partition)
            if key not in self._assigned:
                continue  # a late answer for a partition given up (its offsets were forgotten)
            newest = self._acked.get(key, -1)
            if tp.offset < newest:
                rewound[key] = newest
            else:
                self._acked[key] = tp.offset
        if not rewound:
            return
        log.debug(
            "consumer group %r: older commits confirmed after newer ones; committing again: %s",
            self.group_id,
            rewound,
        )
        with self._lock:
            for key, newest in rewound.items():
                if key in self._assigned and newest > self._to_commit.get(key, -1):
                    self._to_commit[key] = newest

    def _resend_newest(self, tps: Iterable[TP]) -> None:
        """Queue the newest offsets sent for `tps` once more, for the last (waiting) commit these
        partitions get from this member: an older commit still held by librdkafka (see
        `_check_order`) must not be the last word."""
        with self._lock:
            for tp in tps:
                newest = self._newest_sent.get(tp)
                if newest is not None and newest > self._to_commit.get(tp, -1):
                    self._to_commit[tp] = newest

    def _forget_sent(self, tps: Iterable[TP]) -> None:
        """After a revocation: another member may commit further meanwhile, so an offset this member
        sent earlier must never be sent again for these partitions."""
        for tp in tps:
            self._newest_sent.pop(tp, None)
            self._acked.pop(tp, None)

    def _open(self) -> None:
        self._consumer = confluent_kafka.Consumer({**self.settings, "on_commit": self._on_commit})
        self._consumer.subscribe(
            list(self.plans),
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_revoke,
        )

    def _commit_pending(self, *, asynchronous: bool, only: set[TP] | None = None) -> None:
        with self._lock:
            if only is None:
                pending, self._to_commit = self._to_commit, {}
            else:
                pending = {tp: o for tp, o in self._to_commit.items() if tp in only}
                for tp in pending:
                    del self._to_commit[tp]
        if not pending:
            return
        offsets = [TopicPartition(t, p, o) for (t, p), o in pending.items()]
        self._newest_sent.update(pending)
        log.debug(
            "consumer group %r: commit%s %s",
            self.group_id,
            "" if asynchronous else " (waiting)",
            pending,
        )
        if asynchronous:
            self._commit_sent_at = time.monotonic()
            self._commits_sent.append(self._commit_sent_at)
        try:
            self._consumer.commit(offsets=offsets, asynchronous=asynchronous)  # type: ignore[union-attr, call-overload]
        except confluent_kafka.KafkaException as exc:
            if asynchronous:
                self._commits_sent.pop()
            # Not committed means delivered again later: never a loss. Keep the offsets for the next
            # round, or (partitions revoked meanwhile) for when they come back.
            log.warning(
                "consumer group %r: commit failed (%s); will retry",
                self.group_id,
                exc.args[0].str(),
            )
            with self._lock:
                for tp, o in pending.items():
                    if tp in self._assigned:
                        self._to_commit.setdefault(tp, o)
                    else:
                        self._unsaved[tp] = max(o, self._unsaved.get(tp, -1))

    def _on_assign(
        self, consumer: confluent_kafka.Consumer, partitions: list[TopicPartition]
    ) -> None:
        with self._lock:
            for tp in partitions:
                unsaved = self._unsaved.pop((tp.topic, tp.partition), None)
                if unsaved is not None:
                    self._finished_below[(tp.topic, tp.partition)] = unsaved
        self._pin_new_partitions(consumer, partitions)
        self._assigned |= {(tp.topic, tp.partition) for tp in partitions}
        if partitions:
            # A partition paused before it was revoked starts afresh here: fetching, no backlog.
            try:
                consumer.resume(partitions)
            except confluent_kafka.KafkaException as exc:
                log.debug("consumer group %r: resume on assign: %s", self.group_id, exc)
        log.info(
            "consumer group %r assigned %s",
            self.group_id,
            ", ".join(f"{tp.topic}[{tp.partition}]" for tp in partitions) or "no partitions",
        )
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self.assigned.set)

    def _pin_new_partitions(
        self, consumer: confluent_kafka.Consumer, partitions: list[TopicPartition]
    ) -> None:
        """Commit the start offset of partitions this group has never committed on, and the offsets
        finished here whose commit failed at the revocation (see `_finished_below`).

        Otherwise a group that starts at the end of a topic and stops before its first commit
        would start at the (new) end again, skipping what was published in between.
        """
        if not partitions:
            return
        try:
            pin = []
            for tp in consumer.committed(partitions, timeout=10):
                start = tp.offset
                if tp.offset < 0:
                    low, high = consumer.get_watermark_offsets(tp, timeout=10)
                    tp.offset = high if self.initial_offset == "latest" else low
                # Every record below an unsaved offset finished here: committing it keeps the commit rule.
                unsaved = self._finished_below.get((tp.topic, tp.partition))
                if unsaved is not None and unsaved > tp.offset:
                    tp.offset = unsaved
                if tp.offset != start:
                    pin.append(tp)
            if pin:
                consumer.commit(offsets=pin, asynchronous=False)
        except confluent_kafka.KafkaException as exc:
            log.warning(
                "consumer group %r: could not pin start offsets (%s)",
                self.group_id,
                exc.args[0].str(),
            )

    def _on_revoke(
        self, consumer: confluent_kafka.Consumer, partitions: list[TopicPartition]
    ) -> None:
        tps = {(tp.topic, tp.partition) for tp in partitions}
        self._assigned -= tps
        loop = self._loop
        if loop is not None and loop.is_running() and tps:
            future = asyncio.run_coroutine_threadsafe(self._release(list(tps)), loop)
            try:
                future.result(self.drain_timeout + 5.0)
            except Exception:  # noqa: BLE001 - a late drain only means a redelivery
                log.warning(
                    "consumer group %r: draining revoked partitions did not finish", self.group_id
                )
        self._resend_newest(tps)
        self._commit_pending(asynchronous=False, only=tps)
        self._forget_sent(tps)
        with self._lock:
            self._to_pause -= tps
            self._to_resume -= tps
            for tp in tps:
                self._finished_below.pop(tp, None)
        if tps:
            log.info(
                "consumer group %r revoked %s",
                self.group_id,
                ", ".join(f"{t}[{p}]" for t, p in sorted(tps)),
            )

    def _close(self) -> None:
        if self._consumer is None:
            return
        self._resend_newest(self._assigned)
        self._commit_pending(asynchronous=False)
        self._consumer.close()
        self._consumer = None

    # ------------------------------------------------------------------ dispatch (loop side)

    def _dispatch_all(self, records: list[Any]) -> None:
        self._dispatched += len(records)
        for record in records:
            self._dispatch(record)

    def _dispatch(self, record: Any) -> None:
        tp = (record.topic(), record.partition())
        part = self._parts.get(tp)
        if part is None:
            plan = self.plans[tp[0]]
            if plan.mode == "sequential":  # a batch topic's partition holds at least one batch
                bound = max(
                    self.sequential_backlog, plan.route.batch.max_records if plan.route.batch else 0
                )
            else:
                bound = max(plan.max_in_flight, 1)
            part = self._parts[tp] = _Partition(tp, plan, bound)
            part.worker = asyncio.create_task(
                self._work(part), name=f"freedom-partition-{tp[0]}-{tp[1]}"
            )
        if self._finished_below and tp in self._finished_below:
            with self._lock:
                below = self._finished_below.get(tp, -1)
                if record.offset() >= below:
                    self._finished_below.pop(tp, None)
            if record.offset() < below:
                # Finished here before a rebalance whose commit the broker refused: not delivered again.
                part.tracker.add(record.offset())
                offset = part.tracker.finish(record.offset())
                if offset is not None:
                    with self._lock:
                        self._to_commit[tp] = offset
                return
        part.tracker.add(record.offset())
        part.pending.append(record)
        part.wake.set()
        if len(part.pending) >= part.backlog_bound + self.fetch_batch:
            self._pause(part, "backlog")  # overflowing despite the fetch gate (see the module doc)
        if len(part.tracker) >= UNCOMMITTED_WINDOW * part.backlog_bound:
            self._pause(
                part, "window"
            )  # a slow record holds the commit back: do not run far ahead of it

    def _pause(self, part: _Partition, reason: str) -> None:
        part.pause_reasons.add(reason)
        if reason == "backlog":
            self._backlog_paused.add(part.tp)
        self._apply_pause(part)

    def _unpause(self, part: _Partition, reason: str) -> None:
        part.pause_reasons.discard(reason)
        if reason == "backlog":
            self._backlog_paused.discard(part.tp)
        self._apply_pause(part)

    def _apply_pause(self, part: _Partition) -> None:
        want = bool(part.pause_reasons)
        if want == part.paused or part.lost.is_set():
            return
        part.paused = want
        with self._lock:
            (self._to_pause if want else self._to_resume).add(part.tp)
            (self._to_resume if want else self._to_pause).discard(part.tp)

    def _taken(self, part: _Partition) -> Any:
        record = part.pending.popleft()
        if len(part.pending) < part.backlog_bound and not self._room.is_set():
            self._room.set()
        if "backlog" in part.pause_reasons and len(part.pending) <= part.backlog_bound // 2:
            self._unpause(part, "backlog")
        return record

    async def _work(self, part: _Partition) -> None:
        """Start the partition's records in order, as its mode, its bound and (retries) their due time allow."""
        mode = part.plan.mode
        slots = None
        if mode != "sequential":
            slots = self._slots.setdefault(part.tp[0], asyncio.Semaphore(part.plan.max_in_flight))
        while not part.lost.is_set():
            if not part.pending:
                part.wake.clear()
                await part.wake.wait()
                continue
            if self.delay_sec is not None:
                wait = self._due(part.pending[0]) - self.now()
                if wait > 0:
                    self._pause(part, "delay")  # fetch nothing more until this one is due
                    await self._wait_due(part.lost, wait)
                    self._unpause(part, "delay")
                    continue
            if slots is None:
                # One record at a time; for a batch topic (batching.py) up to max_records fetched
                # (and due) records at once, all finished before the next ones start.
                most = part.plan.route.batch.max_records if part.plan.route.batch is not None else 1
                tasks = {self._start(part, self._taken(part), None, None)}
                while (
                    part.pending
                    and len(tasks) < most
                    and (self.delay_sec is None or self._due(part.pending[0]) <= self.now())
                ):
                    tasks.add(self._start(part, self._taken(part), None, None))
                await asyncio.wait(tasks)  # not cancelled with the worker: they drain on their own
                continue
            await slots.acquire()
            if part.lost.is_set():
                slots.release()
                return
            record = self._taken(part)
            key = record.key() if mode == "key-ordered" else None
            task = self._start(
                part, record, part.last_of_key.get(key) if key is not None else None, slots
            )
            if key is not None:
                part.last_of_key[key] = task

    def now(self) -> float:
        """The time a retry record is due by: the wall clock (freedom.testing's broker simulates it)."""
        return time.time()

    async def _wait_due(self, lost: asyncio.Event, seconds: float) -> None:
        """Wait for the next record of a partition to be due: `seconds`, or until `lost` is set."""
        await wait_event(lost, seconds)

    def _due(self, record: Any) -> float:
        kind, ms = record.timestamp()
        if kind == confluent_kafka.TIMESTAMP_NOT_AVAILABLE or ms <= 0:
            return 0.0
        return float(ms) / 1000.0 + (self.delay_sec or 0.0)

    def _start(
        self,
        part: _Partition,
        record: Any,
        after: asyncio.Task[bool] | None,
        slots: asyncio.Semaphore | None,
    ) -> asyncio.Task[bool]:
        task = asyncio.create_task(self._run_one(part, record, after, slots))
        self._running += 1
        part.inflight.add(task)
        task.add_done_callback(part.inflight.discard)
        task.add_done_callback(self._finished)  # also when cancelled before it ran
        return task

    def _finished(self, _task: asyncio.Task[bool]) -> None:
        self._running -= 1

    async def _run_one(
        self,
        part: _Partition,
        record: Any,
        after: asyncio.Task[bool] | None,
        slots: asyncio.Semaphore | None,
    ) -> bool:
        """Handle one record (after the previous one of its key); True once it is finished."""
        finished = False
        try:
            if after is not None and not after.done():
                await asyncio.wait({after})  # the previous record with the same key
            if part.lost.is_set() and after is not None and not _done_ok(after):
                # The previous record of the key was given up: keep the key's order for the next
                # owner. (When it finished, this one is delivered during the drain, as any in flight.)
                return False
            try:
                finished = await self.handle(record, part.plan, part.lost)
            except Exception:  # a bug in the handling: leave it uncommitted, to be delivered again
                log.exception(
                    "consumer group %r: handling %s[%d]@%d failed",
                    self.group_id,
                    record.topic(),
                    record.partition(),
                    record.offset(),
                )
                finished = False
            if finished:
                offset = part.tracker.finish(record.offset())
                if offset is not None:  # also while draining: the revoke commits it
                    with self._lock:
                        self._to_commit[part.tp] = offset
                    if (
                        "window" in part.pause_reasons
                        and len(part.tracker) <= UNCOMMITTED_WINDOW * part.backlog_bound // 2
                    ):
                        self._unpause(part, "window")
        finally:
            if slots is not None:
                slots.release()
            key = record.key()
            if key is not None and part.last_of_key.get(key) is asyncio.current_task():
                del part.last_of_key[key]
        return finished

    async def _release(self, tps: list[TP]) -> None:
        """Give partitions up: in-flight deliveries may finish within the drain timeout, the rest is
        abandoned uncommitted (delivered again later)."""
        parts = [self._parts.pop(tp) for tp in tps if tp in self._parts]
        for part in parts:
            part.lost.set()
            part.wake.set()
            self._backlog_paused.discard(part.tp)
        workers = [p.worker for p in parts if p.worker is not None]
        for worker in workers:
            worker.cancel()
        inflight = [t for p in parts for t in p.inflight]
        if inflight:
            _, late = await asyncio.wait(inflight, timeout=self.drain_timeout)
            for task in late:
                task.cancel()
            if late:
                log.warning(
                    "consumer group %r: abandoned %d in-flight deliveries at the drain deadline; "
                    "they will be delivered again",
                    self.group_id,
                    len(late),
                )
                await asyncio.gather(*late, return_exceptions=True)
        await asyncio.gather(*workers, return_exceptions=True)
