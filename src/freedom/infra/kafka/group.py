"""One consumer group's loop: fetching, flow control, the delivery modes and safe commits.

It knows nothing of HTTP or retries: for each record it awaits `handle(record, plan, lost)`,
which returns True once the record is finished (delivered, or acknowledged on its retry or
dead-letter topic) and False when it gave the record up because the partition is going away.

Threading: every call into the librdkafka consumer happens on one dedicated thread (the
"consumer thread"), so the client is never used concurrently; rebalance callbacks run there
too, inside `consume()`. Deliveries run on the asyncio loop. They never touch the consumer:
they record the offset to commit and the partitions to pause or resume, and the consumer
thread applies that on its next round (at most `poll_timeout` later).

Delivery modes, per topic (`TopicPlan.mode`):
- `sequential`: one record at a time per partition, in offset order;
- `concurrent`: up to `max_in_flight` records of the topic at once, finishing in any order;
- `key-ordered`: as concurrent, but a record waits for the previous record with the same key.
Whatever the order of completion, the committed offset of a partition never passes a record
that is not finished (:class:`OffsetTracker`).

Flow control: the fetch loop takes from librdkafka only as many records as some partition has
room for in its backlog of fetched-but-not-started records (its bound), and waits for room when
every partition is full; librdkafka's own prefetch is capped by `queued.max.messages.kbytes`. A
partition that still overflows (the fetch loop polls now and then even when all are full, to
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
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import confluent_kafka
from confluent_kafka import TopicPartition

from .delivery import EventRoute
from .offsets import OffsetTracker

log = logging.getLogger("freedom.kafka.proxy")

TP = tuple[str, int]

CONSUMER_DEFAULTS: dict[str, Any] = {
    "enable.auto.commit": False,
    "enable.auto.offset.store": False,
    "enable.partition.eof": False,
    "session.timeout.ms": 30000,
    "max.poll.interval.ms": 300000,
    # librdkafka's prefetch queue (default 64 MB) counts towards the proxy's memory: keep it modest.
    "queued.max.messages.kbytes": 16384,
}


#: A partition stops fetching when this many times its backlog bound of records are uncommitted
#: (one slow record holding the commit back while later ones finish), so that memory and the
#: redeliveries after a crash stay bounded.
UNCOMMITTED_WINDOW = 4

#: How long one fetch round waits for records while some partition is paused for its backlog: the
#: consumer thread applies a resume only between rounds, and a partition that drains its backlog
#: should not sit idle for a whole `poll_timeout`.
FLOW_POLL_TIMEOUT = 0.01

#: Finished records are committed (asynchronously, in one request) on the consumer thread's next
#: round; while deliveries run, a round comes at least this often, so the committed offset trails
#: the finished records by about this long (what a crash would deliver again).
COMMIT_INTERVAL = 0.02


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
    except asyncio.TimeoutError:
        return event.is_set()


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
    inflight: set[asyncio.Task[None]] = field(default_factory=set)
    last_of_key: dict[bytes, asyncio.Task[None]] = field(default_factory=dict)
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
        self._room = asyncio.Event()  # set when some partition's backlog has room again
        self._running = 0  # deliveries started and not finished (loop side; the consumer thread reads it)
        self._stop = asyncio.Event()
        self._consumer: confluent_kafka.Consumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"freedom-consumer-{group_id}")

    # ------------------------------------------------------------------ lifecycle (loop side)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self._call(self._open)
        self._task = asyncio.create_task(self._fetch_loop(), name=f"freedom-group-{self.group_id}")

    async def stop(self) -> None:
        """Stop fetching, let in-flight deliveries finish within the drain timeout, commit, close."""
        self._stop.set()
        if self._task is not None:
            await self._task
        await self._release(list(self._parts))
        if self._loop is not None:
            await self._call(self._close)
        self._thread.shutdown(wait=True)

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        assert self._loop is not None
        return await self._loop.run_in_executor(self._thread, fn, *args)

    def _room_for(self) -> int:
        """How many records to fetch: the most room any assigned partition has in its backlog."""
        if len(self._parts) < len(self._assigned):
            return self.fetch_batch  # a partition with nothing fetched yet
        room = 0
        for part in self._parts.values():
            room = max(room, part.backlog_bound - len(part.pending))
        return min(room, self.fetch_batch)

    async def _fetch_loop(self) -> None:
        while not self._stop.is_set():
            n = self._room_for()
            if n <= 0:
                # Every partition's backlog is full: wait for room, but poll now and then anyway
                # (one record) so that rebalances and commits are served.
                self._room.clear()
                await wait_event(self._room, COMMIT_INTERVAL if self._running or self._to_commit else self.poll_timeout)
                n = max(self._room_for(), 1)
            try:
                records = await self._call(self._poll_once, n)
            except Exception:  # never let the fetch loop die silently
                log.exception("consumer group %r: fetch failed; retrying", self.group_id)
                await wait_event(self._stop, 1.0)
                continue
            for record in records:
                self._dispatch(record)

    # ------------------------------------------------------------------ consumer thread

    def _open(self) -> None:
        self._consumer = confluent_kafka.Consumer(self.settings)
        self._consumer.subscribe(list(self.plans), on_assign=self._on_assign,
                                 on_revoke=self._on_revoke, on_lost=self._on_revoke)

    def _poll_once(self, n: int) -> list[Any]:
        consumer = self._consumer
        assert consumer is not None
        self._commit_pending(asynchronous=True)
        with self._lock:
            pause, self._to_pause = self._to_pause, set()
            resume, self._to_resume = self._to_resume, set()
        for tps, action in ((pause, consumer.pause), (resume, consumer.resume)):
            if tps:
                try:
                    action([TopicPartition(t, p) for t, p in tps])
                except confluent_kafka.KafkaException as exc:  # e.g. revoked meanwhile
                    log.debug("consumer group %r: %s %s: %s", self.group_id, action.__name__, tps, exc)
        # What is already fetched, at once; else wait for the first record only (consume(n, t) would
        # wait for n records or the whole timeout), then take what came with it. While a partition is
        # paused for its backlog, wait briefly: its resume is applied only on the next round.
        batch = consumer.consume(n, 0)
        if not batch:
            if self._backlog_paused:
                timeout = FLOW_POLL_TIMEOUT
            elif self._running or self._to_commit:
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
        return out

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
        try:
            self._consumer.commit(offsets=offsets, asynchronous=asynchronous)  # type: ignore[union-attr, call-overload]
        except confluent_kafka.KafkaException as exc:
            # Not committed means delivered again later: never a loss. Keep the offsets for the next round.
            log.warning("consumer group %r: commit failed (%s); will retry", self.group_id, exc.args[0].str())
            if only is None:
                with self._lock:
                    for tp, o in pending.items():
                        self._to_commit.setdefault(tp, o)

    def _on_assign(self, consumer: confluent_kafka.Consumer, partitions: list[TopicPartition]) -> None:
        self._pin_new_partitions(consumer, partitions)
        self._assigned |= {(tp.topic, tp.partition) for tp in partitions}
        if partitions:
            # A partition paused before it was revoked starts afresh here: fetching, no backlog.
            try:
                consumer.resume(partitions)
            except confluent_kafka.KafkaException as exc:
                log.debug("consumer group %r: resume on assign: %s", self.group_id, exc)
        log.info("consumer group %r assigned %s", self.group_id,
                 ", ".join(f"{tp.topic}[{tp.partition}]" for tp in partitions) or "no partitions")
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self.assigned.set)

    def _pin_new_partitions(self, consumer: confluent_kafka.Consumer, partitions: list[TopicPartition]) -> None:
        """Commit the start offset of partitions this group has never committed on.

        Otherwise a group that starts at the end of a topic and stops before its first commit
        would start at the (new) end again, skipping what was published in between.
        """
        if not partitions:
            return
        try:
            committed = consumer.committed(partitions, timeout=10)
            fresh = [tp for tp in committed if tp.offset < 0]
            for tp in fresh:
                low, high = consumer.get_watermark_offsets(tp, timeout=10)
                tp.offset = high if self.initial_offset == "latest" else low
            if fresh:
                consumer.commit(offsets=fresh, asynchronous=False)
        except confluent_kafka.KafkaException as exc:
            log.warning("consumer group %r: could not pin start offsets (%s)", self.group_id, exc.args[0].str())

    def _on_revoke(self, consumer: confluent_kafka.Consumer, partitions: list[TopicPartition]) -> None:
        tps = {(tp.topic, tp.partition) for tp in partitions}
        self._assigned -= tps
        loop = self._loop
        if loop is not None and loop.is_running() and tps:
            future = asyncio.run_coroutine_threadsafe(self._release(list(tps)), loop)
            try:
                future.result(self.drain_timeout + 5.0)
            except Exception:  # noqa: BLE001 - a late drain only means a redelivery
                log.warning("consumer group %r: draining revoked partitions did not finish", self.group_id)
        self._commit_pending(asynchronous=False, only=tps)
        with self._lock:
            self._to_pause -= tps
            self._to_resume -= tps
        if tps:
            log.info("consumer group %r revoked %s", self.group_id, ", ".join(f"{t}[{p}]" for t, p in sorted(tps)))

    def _close(self) -> None:
        if self._consumer is None:
            return
        self._commit_pending(asynchronous=False)
        self._consumer.close()
        self._consumer = None

    # ------------------------------------------------------------------ dispatch (loop side)

    def _dispatch(self, record: Any) -> None:
        tp = (record.topic(), record.partition())
        part = self._parts.get(tp)
        if part is None:
            plan = self.plans[tp[0]]
            bound = self.sequential_backlog if plan.mode == "sequential" else max(plan.max_in_flight, 1)
            part = self._parts[tp] = _Partition(tp, plan, bound)
            part.worker = asyncio.create_task(self._work(part), name=f"freedom-partition-{tp[0]}-{tp[1]}")
        part.tracker.add(record.offset())
        part.pending.append(record)
        part.wake.set()
        if len(part.pending) >= part.backlog_bound + self.fetch_batch:
            self._pause(part, "backlog")  # overflowing despite the fetch gate (see the module doc)
        if len(part.tracker) >= UNCOMMITTED_WINDOW * part.backlog_bound:
            self._pause(part, "window")  # a slow record holds the commit back: do not run far ahead of it

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
                wait = self._due(part.pending[0]) - time.time()
                if wait > 0:
                    self._pause(part, "delay")  # fetch nothing more until this one is due
                    await wait_event(part.lost, wait)
                    self._unpause(part, "delay")
                    continue
            if slots is None:
                task = self._start(part, self._taken(part), None, None)
                await asyncio.wait({task})  # not cancelled with the worker: it drains on its own
                continue
            await slots.acquire()
            if part.lost.is_set():
                slots.release()
                return
            record = self._taken(part)
            key = record.key() if mode == "key-ordered" else None
            task = self._start(part, record, part.last_of_key.get(key) if key is not None else None, slots)
            if key is not None:
                part.last_of_key[key] = task

    def _due(self, record: Any) -> float:
        kind, ms = record.timestamp()
        if kind == confluent_kafka.TIMESTAMP_NOT_AVAILABLE or ms <= 0:
            return 0.0
        return ms / 1000.0 + (self.delay_sec or 0.0)

    def _start(self, part: _Partition, record: Any, after: asyncio.Task[None] | None,
               slots: asyncio.Semaphore | None) -> asyncio.Task[None]:
        task = asyncio.create_task(self._run_one(part, record, after, slots))
        self._running += 1
        part.inflight.add(task)
        task.add_done_callback(part.inflight.discard)
        task.add_done_callback(self._finished)  # also when cancelled before it ran
        return task

    def _finished(self, _task: asyncio.Task[None]) -> None:
        self._running -= 1

    async def _run_one(self, part: _Partition, record: Any, after: asyncio.Task[None] | None,
                       slots: asyncio.Semaphore | None) -> None:
        try:
            if after is not None and not after.done():
                await asyncio.wait({after})  # the previous record with the same key
            if part.lost.is_set() and after is not None:
                return  # the chain is being abandoned: keep the key's order for the next owner
            try:
                finished = await self.handle(record, part.plan, part.lost)
            except Exception:  # a bug in the handling: leave it uncommitted, to be delivered again
                log.exception("consumer group %r: handling %s[%d]@%d failed", self.group_id,
                              record.topic(), record.partition(), record.offset())
                finished = False
            if finished:
                offset = part.tracker.finish(record.offset())
                if offset is not None:  # also while draining: the revoke commits it
                    with self._lock:
                        self._to_commit[part.tp] = offset
                    if "window" in part.pause_reasons and len(part.tracker) <= UNCOMMITTED_WINDOW * part.backlog_bound // 2:
                        self._unpause(part, "window")
        finally:
            if slots is not None:
                slots.release()
            key = record.key()
            if key is not None and part.last_of_key.get(key) is asyncio.current_task():
                del part.last_of_key[key]

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
                log.warning("consumer group %r: abandoned %d in-flight deliveries at the drain deadline; "
                            "they will be delivered again", self.group_id, len(late))
                await asyncio.gather(*late, return_exceptions=True)
        await asyncio.gather(*workers, return_exceptions=True)
