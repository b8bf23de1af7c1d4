"""The consumer proxy: reads the listened topics of one consumer group and delivers each record
to the service's route, committing an offset only after its record was handled.

Threading: every call into the librdkafka consumer happens on one dedicated thread (the
"consumer thread"), so the client is never used concurrently; rebalance callbacks run there
too, inside `consume()`. Deliveries run on the asyncio loop, one worker per partition, which
keeps records of a partition in order. Workers never touch the consumer: they record the next
offset to commit, and the consumer thread commits it on its next round.

Flow control: a partition whose queue of fetched-but-unhandled records reaches
`max_queued_per_partition` is paused, and resumed when the queue drains to half, so memory
stays bounded however large the backlog.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import confluent_kafka
from confluent_kafka import TopicPartition

from ...config import ConsumerClientConfig
from .delivery import DeliveryResult, EventRoute, HttpDelivery

log = logging.getLogger("freedom.kafka.proxy")

TP = tuple[str, int]

CONSUMER_DEFAULTS: dict[str, Any] = {
    "enable.auto.commit": False,
    "enable.auto.offset.store": False,
    "enable.partition.eof": False,
    "session.timeout.ms": 30000,
    "max.poll.interval.ms": 300000,
}


def record_key(record: Any) -> str:
    """The message key as text; a record published without a key gets `topic-partition-offset`."""
    key = record.key()
    if key:
        try:
            return key.decode("utf-8")
        except UnicodeDecodeError:
            return key.hex().upper()
    return f"{record.topic()}-{record.partition()}-{record.offset()}"


async def _first_of(*events: asyncio.Event) -> None:
    """Wait until any of `events` is set."""
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()


@dataclass
class _Partition:
    """Records of one assigned partition waiting to be delivered, and their worker."""

    tp: TP
    queue: collections.deque[Any] = field(default_factory=collections.deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    worker: asyncio.Task[None] | None = None
    busy: bool = False
    paused: bool = False
    revoked: bool = False


class ConsumerProxy:
    """One consumer group of one cluster, delivering records of the listened topics over HTTP."""

    def __init__(
        self,
        config: ConsumerClientConfig,
        settings: dict[str, Any],
        routes: dict[str, EventRoute],
        delivery: HttpDelivery,
        *,
        max_queued_per_partition: int = 100,
        drain_timeout: float = 10.0,
        fetch_batch: int = 500,
    ) -> None:
        self.config = config
        self.routes = routes
        self.delivery = delivery
        self.max_queued = max_queued_per_partition
        self.drain_timeout = drain_timeout
        self.fetch_batch = fetch_batch
        self.settings = {
            **CONSUMER_DEFAULTS,
            "group.id": config.group_id,
            "auto.offset.reset": config.initial_offset,
            **settings,
        }
        self.assigned = asyncio.Event()  # set at the first partition assignment
        self._parts: dict[TP, _Partition] = {}
        self._to_commit: dict[TP, int] = {}
        self._to_pause: set[TP] = set()
        self._to_resume: set[TP] = set()
        self._lock = threading.Lock()  # guards the three dicts/sets above between the two threads
        self._stop = asyncio.Event()
        self._service_up = asyncio.Event()  # set once the service accepts connections
        self._consumer: confluent_kafka.Consumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"freedom-consumer-{config.group_id}")

    # ------------------------------------------------------------------ lifecycle (loop side)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self._call(self._open)
        self._task = asyncio.create_task(self._run(), name=f"freedom-proxy-{self.config.group_id}")

    async def stop(self) -> None:
        """Stop fetching, let in-flight deliveries finish within the drain timeout, commit, close."""
        self._stop.set()
        if self._task is not None:
            await self._task
        await self._release(list(self._parts))
        await self._call(self._close)
        self._thread.shutdown(wait=True)

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        assert self._loop is not None
        return await self._loop.run_in_executor(self._thread, fn, *args)

    async def _wait_for_service(self) -> None:
        """Hold deliveries until the service listens (it starts after the proxy), at most 60 s."""
        deadline = self._loop.time() + 60.0  # type: ignore[union-attr]
        if not await self.delivery.wait_until_reachable(deadline, self._stop) and not self._stop.is_set():
            log.error("the service at %s did not accept connections within 60 s; delivering anyway",
                      self.delivery.proxy_addr)
        self._service_up.set()

    async def _run(self) -> None:
        waiter = asyncio.create_task(self._wait_for_service())
        try:
            await self._fetch_loop()
        finally:
            waiter.cancel()

    async def _fetch_loop(self) -> None:
        while not self._stop.is_set():
            try:
                records = await self._call(self._poll_once)
            except Exception:  # never let the fetch loop die silently
                log.exception("consumer group %r: fetch failed; retrying", self.config.group_id)
                await asyncio.sleep(1.0)
                continue
            for record in records:
                self._dispatch(record)

    # ------------------------------------------------------------------ consumer thread

    def _open(self) -> None:
        self._consumer = confluent_kafka.Consumer(self.settings)
        self._consumer.subscribe(list(self.routes), on_assign=self._on_assign,
                                 on_revoke=self._on_revoke, on_lost=self._on_revoke)

    def _poll_once(self) -> list[Any]:
        consumer = self._consumer
        assert consumer is not None
        self._commit_pending(asynchronous=True)
        with self._lock:
            pause, self._to_pause = self._to_pause, set()
            resume, self._to_resume = self._to_resume, set()
        if pause:
            consumer.pause([TopicPartition(t, p) for t, p in pause])
        if resume:
            consumer.resume([TopicPartition(t, p) for t, p in resume])
        out = []
        for record in consumer.consume(self.fetch_batch, 0.2):
            err = record.error()
            if err is None:
                out.append(record)
            elif err.code() != confluent_kafka.KafkaError._PARTITION_EOF:
                log.warning("consumer group %r: %s", self.config.group_id, err.str())
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
            self._consumer.commit(offsets=offsets, asynchronous=asynchronous)  # type: ignore[union-attr]
        except confluent_kafka.KafkaException as exc:
            # Not committed means delivered again later: never a loss. Keep the offsets for the next round.
            log.warning("consumer group %r: commit failed (%s); will retry", self.config.group_id, exc.args[0].str())
            with self._lock:
                for tp, o in pending.items():
                    self._to_commit.setdefault(tp, o)

    def _on_assign(self, consumer: confluent_kafka.Consumer, partitions: list[TopicPartition]) -> None:
        self._pin_new_partitions(consumer, partitions)
        log.info("consumer group %r assigned %s", self.config.group_id,
                 ", ".join(f"{tp.topic}[{tp.partition}]" for tp in partitions))
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self.assigned.set)

    def _pin_new_partitions(self, consumer: confluent_kafka.Consumer, partitions: list[TopicPartition]) -> None:
        """Commit the start offset of partitions this group has never committed on.

        Otherwise a group that starts at the end of a topic and stops before its first commit
        would start at the (new) end again, skipping what was published in between.
        """
        try:
            committed = consumer.committed(partitions, timeout=10)
            fresh = [tp for tp in committed if tp.offset < 0]
            for tp in fresh:
                low, high = consumer.get_watermark_offsets(tp, timeout=10)
                tp.offset = high if self.config.initial_offset == "latest" else low
            if fresh:
                consumer.commit(offsets=fresh, asynchronous=False)
        except confluent_kafka.KafkaException as exc:
            log.warning("consumer group %r: could not pin start offsets (%s)", self.config.group_id, exc.args[0].str())

    def _on_revoke(self, consumer: confluent_kafka.Consumer, partitions: list[TopicPartition]) -> None:
        tps = {(tp.topic, tp.partition) for tp in partitions}
        loop = self._loop
        if loop is not None and loop.is_running():
            future = asyncio.run_coroutine_threadsafe(self._release(list(tps)), loop)
            try:
                future.result(self.drain_timeout + 5.0)
            except Exception:  # noqa: BLE001 - a late drain only means a redelivery
                log.warning("consumer group %r: draining revoked partitions did not finish", self.config.group_id)
        self._commit_pending(asynchronous=False, only=tps)
        with self._lock:
            self._to_pause -= tps
            self._to_resume -= tps

    def _close(self) -> None:
        if self._consumer is None:
            return
        self._commit_pending(asynchronous=False)
        self._consumer.close()
        self._consumer = None

    # ------------------------------------------------------------------ delivery (loop side)

    def _dispatch(self, record: Any) -> None:
        tp = (record.topic(), record.partition())
        part = self._parts.get(tp)
        if part is None:
            part = self._parts[tp] = _Partition(tp)
            part.worker = asyncio.create_task(self._work(part), name=f"freedom-partition-{tp[0]}-{tp[1]}")
        part.queue.append(record)
        part.wake.set()
        if len(part.queue) >= self.max_queued and not part.paused:
            part.paused = True
            with self._lock:
                self._to_pause.add(tp)
                self._to_resume.discard(tp)

    async def _work(self, part: _Partition) -> None:
        while not part.revoked:
            if not part.queue:
                part.wake.clear()
                await part.wake.wait()
                continue
            record = part.queue[0]
            part.busy = True
            try:
                handled = await self._handle(record, part)
            finally:
                part.busy = False
            if not handled:
                return  # revoked or stopping: the record stays uncommitted and is delivered again later
            part.queue.popleft()
            with self._lock:
                self._to_commit[part.tp] = record.offset() + 1
                if part.paused and len(part.queue) <= self.max_queued // 2:
                    part.paused = False
                    self._to_resume.add(part.tp)
                    self._to_pause.discard(part.tp)

    async def _handle(self, record: Any, part: _Partition) -> bool:
        """Deliver until it succeeds; False when given up because the partition is going away."""
        route = self.routes[record.topic()]
        key = record_key(record)
        headers = record.headers() or []
        backoff = 0.5
        if not self._service_up.is_set():
            await _first_of(self._service_up, self._stop)
            if self._stop.is_set():
                return False
        while True:
            result = await self.delivery.deliver(route, key, record.value() or b"", headers, 0)
            if result.ok:
                return True
            if part.revoked or self._stop.is_set():
                return False
            log.warning("delivery of %s[%d]@%d (key %s) to %s failed: %s; delivering again in %.1f s",
                        record.topic(), record.partition(), record.offset(), key, route.path,
                        result.describe(), backoff)
            if await self._wait_or_stop(part, backoff):
                return False
            backoff = min(backoff * 2, 10.0)

    async def _wait_or_stop(self, part: _Partition, seconds: float) -> bool:
        """Sleep `seconds` unless the proxy stops first; True when it stopped."""
        try:
            await asyncio.wait_for(self._stop.wait(), seconds)
            return True
        except asyncio.TimeoutError:
            return part.revoked

    async def _release(self, tps: list[TP]) -> None:
        """Give partitions up: let a delivery in progress finish within the drain timeout, drop the rest."""
        parts = [self._parts.pop(tp) for tp in tps if tp in self._parts]
        for part in parts:
            part.revoked = True
            part.wake.set()
        workers = [p.worker for p in parts if p.worker is not None]
        if not workers:
            return
        done, pending = await asyncio.wait(workers, timeout=self.drain_timeout)
        for task in pending:
            task.cancel()
        if pending:
            log.warning("consumer group %r: abandoned %d in-flight deliveries at the drain deadline; "
                        "they will be delivered again", self.config.group_id, len(pending))
            await asyncio.gather(*pending, return_exceptions=True)
