"""The Kafka consumer group as a record source, and the reader of dead letters a replay check uses:
the only module of the consumer core that builds a confluent-kafka `Consumer` (the admin and
producer clients have their own adapters).

Threading: every call into the librdkafka consumer happens on one dedicated thread (the "consumer
thread"), so the client is never used concurrently; rebalance callbacks run there too, inside
`consume()`. The consumer thread runs its own loop (commit, pause/resume, fetch as the group has
room) and never waits for the event loop, except to drain revoked partitions. Records go to the
group in one call per fetched batch (`call_soon_threadsafe`), with as little Python per record on
this thread as the error check needs.

Commits (the redelivery bound after a crash): finished records are committed asynchronously from
the consumer thread's own rounds, as the ledger allows (ledger.py: at most one request every
COMMIT_INTERVAL and COMMITS_IN_FLIGHT unanswered). So a saturated event loop cannot delay
commits (with SWITCH_INTERVAL the consumer thread also gets the GIL promptly), and commit requests
cannot pile up at a slow broker. A failed commit is sent again (unless a newer offset was sent
meanwhile); it is never a loss, only a redelivery.

Flow control: the consumer thread takes from librdkafka only as many records as the group has room
for (`Sink.room`), and waits for room when there is none, polling now and then anyway (one record)
so that rebalances are served. A partition the group pauses (lanes.py says why) is paused here on
the next round.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import confluent_kafka
from confluent_kafka import TopicPartition

from freedom.config.librdkafka import CONSUMER_DEFAULTS
from freedom.kafka.consumer.ledger import COMMIT_INTERVAL, TP
from freedom.kafka.consumer.replays import READ_TIMEOUT_SEC, WINDOW
from freedom.kafka.consumer.sources import OffsetSource, Sink
from freedom.kafka.settings import connection_settings

log = logging.getLogger("freedom.kafka.proxy")

#: How long one fetch round waits for records while some partition is paused for its backlog: the
#: consumer thread applies a resume only between rounds, and a partition that drains its backlog
#: should not sit idle for a whole `poll_timeout`.
FLOW_POLL_TIMEOUT = 0.01

#: The interpreter's thread switch interval while a consumer group runs (Python's default is
#: 5 ms). Handlers that keep the event loop busy hold the GIL; the consumer thread needs it a few
#: times per round (each return from librdkafka), and waited up to 5 ms each time: rounds, and so
#: commits, came only every 60-450 ms. With 1 ms they come every 20-25 ms.
SWITCH_INTERVAL = 0.001


class KafkaSource(OffsetSource):
    """One classic consumer group on Kafka: fetches the subscribed topics for a Sink."""

    def __init__(
        self,
        group_id: str,
        settings: dict[str, Any],
        topics: list[str],
        *,
        initial_offset: str = "latest",
        drain_timeout: float = 10.0,
        poll_timeout: float = 0.2,
    ) -> None:
        super().__init__()
        self.group_id = group_id
        self.topics = topics
        self.initial_offset = initial_offset
        self.drain_timeout = drain_timeout
        self.poll_timeout = poll_timeout
        self.settings = {
            **CONSUMER_DEFAULTS,
            **settings,
            "group.id": group_id,
            "auto.offset.reset": initial_offset,
        }
        self._sink: Sink | None = None
        self._lock = threading.Lock()  # guards the two sets below between the two threads
        self._to_pause: set[TP] = set()
        self._to_resume: set[TP] = set()
        self._flow_paused: set[TP] = set()  # paused for their backlog (loop side; read here)
        self._assigned: set[TP] = set()  # consumer thread
        self._room = threading.Event()  # set (loop side) when some partition has room again
        self._stop = threading.Event()
        self._consumer: confluent_kafka.Consumer | None = None
        self._task: asyncio.Future[None] | None = None
        self._thread = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix=f"freedom-consumer-{group_id}"
        )

    # ------------------------------------------------------------------ the port (loop side)

    async def start(self, sink: Sink) -> None:
        if sys.getswitchinterval() > SWITCH_INTERVAL:  # process-wide; only ever lowered
            sys.setswitchinterval(SWITCH_INTERVAL)
        self._sink = sink
        self._loop = asyncio.get_running_loop()
        await self._call(self._open)
        self._task = self._loop.run_in_executor(self._thread, self._pump)  # until stop()

    async def stop(self) -> None:
        self._stop.set()
        self._room.set()  # wake the consumer thread if it waits for room
        if self._task is not None:
            await self._task

    async def close(self) -> None:
        if self._loop is not None:
            await self._call(self._close)
        self._thread.shutdown(wait=True)

    def alive(self) -> bool | None:
        if self._task is None or self._stop.is_set():
            return None
        return not self._task.done()

    def pause(self, tp: TP) -> None:
        with self._lock:
            self._to_pause.add(tp)
            self._to_resume.discard(tp)

    def resume(self, tp: TP) -> None:
        with self._lock:
            self._to_resume.add(tp)
            self._to_pause.discard(tp)

    def flow_paused(self, tp: TP, paused: bool) -> None:
        """The group paused `tp` for its backlog (or resumed it): fetch rounds are short meanwhile."""
        (self._flow_paused.add if paused else self._flow_paused.discard)(tp)

    def room_freed(self) -> None:
        if not self._room.is_set():
            self._room.set()

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        assert self._loop is not None
        return await self._loop.run_in_executor(self._thread, fn, *args)

    # ------------------------------------------------------------------ the consumer thread

    def _open(self) -> None:
        self._consumer = confluent_kafka.Consumer({**self.settings, "on_commit": self._on_commit})
        self._consumer.subscribe(
            self.topics,
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_revoke,
        )

    def _pump(self) -> None:
        """The consumer thread's loop, until stop(): commit, pause/resume, fetch as room allows."""
        while not self._stop.is_set():
            try:
                self._round()
            except Exception:  # never let the consumer thread die silently
                log.exception("consumer group %r: fetch failed; retrying", self.group_id)
                self._stop.wait(1.0)

    def _busy(self) -> bool:
        assert self._sink is not None
        return self._sink.busy() or self.ledger.busy()

    def _round(self) -> None:
        self.last_round = time.monotonic()
        consumer, sink, loop = self._consumer, self._sink, self._loop
        assert consumer is not None and sink is not None and loop is not None
        if self.ledger.due():
            self._commit(asynchronous=True)
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
        n = sink.room(len(self._assigned))
        if n <= 0:
            # No room anywhere: wait for some, but poll now and then anyway (one record) so that
            # rebalances are served; commits go on meanwhile.
            self._room.clear()
            if sink.room(len(self._assigned)) <= 0:
                self._room.wait(COMMIT_INTERVAL if self._busy() else self.poll_timeout)
            if self._stop.is_set():
                return
            if self.ledger.due():
                self._commit(asynchronous=True)
            n = max(sink.room(len(self._assigned)), 1)
        # What is already fetched, at once; else wait for the first record only (consume(n, t) would
        # wait for n records or the whole timeout), then take what came with it.
        batch = consumer.consume(n, 0)
        if not batch:
            if self._flow_paused:
                timeout = FLOW_POLL_TIMEOUT
            elif self._busy():
                timeout = COMMIT_INTERVAL
            else:
                timeout = self.poll_timeout
            batch = consumer.consume(1, timeout)
            if batch and n > 1:
                batch.extend(consumer.consume(n - 1, 0))
        if not batch:
            return
        out = [record for record in batch if record.error() is None]
        if len(out) != len(batch):
            for record in batch:
                err = record.error()
                if err is not None and err.code() != confluent_kafka.KafkaError._PARTITION_EOF:
                    log.warning("consumer group %r: %s", self.group_id, err.str())
        if out:
            sink.handing(len(out))
            loop.call_soon_threadsafe(sink.dispatch, out)

    def _commit(self, *, asynchronous: bool, only: set[TP] | None = None) -> None:
        pending = self.ledger.take(only)
        if not pending:
            return
        assert self._consumer is not None
        offsets = [TopicPartition(t, p, o) for (t, p), o in pending.items()]
        log.debug(
            "consumer group %r: commit%s %s",
            self.group_id,
            "" if asynchronous else " (waiting)",
            pending,
        )
        if asynchronous:
            self.ledger.sending()
        try:
            self._consumer.commit(offsets=offsets, asynchronous=asynchronous)  # type: ignore[call-overload]
        except confluent_kafka.KafkaException as exc:
            # Not committed means delivered again later: never a loss. Keep the offsets for the next
            # round, or (partitions revoked meanwhile) for when they come back.
            log.warning(
                "consumer group %r: commit failed (%s); will retry",
                self.group_id,
                exc.args[0].str(),
            )
            self.ledger.not_sent(pending, self._assigned, asynchronous=asynchronous)

    def _on_commit(self, err: Any, partitions: list[TopicPartition]) -> None:
        """librdkafka's answer to an asynchronous commit (on the consumer thread, inside consume())."""
        log.debug(
            "consumer group %r: commit answered (%s): %s",
            self.group_id,
            err,
            [(tp.topic, tp.partition, tp.offset, tp.error) for tp in partitions],
        )
        failed = self.ledger.answered(
            err is None,
            [((tp.topic, tp.partition), tp.offset, tp.error is not None) for tp in partitions],
            self._assigned,
        )
        if not failed:
            if self.ledger.failures:
                log.info(
                    "consumer group %r: commits succeed again (after %d failed)",
                    self.group_id,
                    self.ledger.failures,
                )
                self.ledger.failures = 0
            return
        self.ledger.failures += 1
        if self.ledger.failures == 1:
            reason = (
                err.str()
                if err is not None
                else next(tp.error.str() for tp in partitions if tp.error)
            )
            log.warning("consumer group %r: commit failed (%s); will retry", self.group_id, reason)

    def _on_assign(
        self, consumer: confluent_kafka.Consumer, partitions: list[TopicPartition]
    ) -> None:
        tps = [(tp.topic, tp.partition) for tp in partitions]
        self.ledger.assign(tps)
        self._pin_new_partitions(consumer, partitions)
        self._assigned.update(tps)
        if partitions:
            # A partition paused before it was revoked starts afresh here: fetching, no backlog.
            try:
                consumer.resume(partitions)
            except confluent_kafka.KafkaException as exc:
                log.debug("consumer group %r: resume on assign: %s", self.group_id, exc)
        log.info(
            "consumer group %r assigned %s",
            self.group_id,
            ", ".join(f"{t}[{p}]" for t, p in tps) or "no partitions",
        )
        assert self._loop is not None and self._sink is not None
        self._loop.call_soon_threadsafe(self._sink.assigned.set)

    def _pin_new_partitions(
        self, consumer: confluent_kafka.Consumer, partitions: list[TopicPartition]
    ) -> None:
        """Commit the start offset of partitions this group has never committed on, and the offsets
        finished here whose commit failed at the revocation (ledger.py, "unsaved").

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
                tp.offset = self.ledger.start_offset((tp.topic, tp.partition), tp.offset)
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
        loop, sink = self._loop, self._sink
        if loop is not None and sink is not None and loop.is_running() and tps:
            future = asyncio.run_coroutine_threadsafe(sink.release(list(tps)), loop)
            try:
                future.result(self.drain_timeout + 5.0)
            except Exception:  # noqa: BLE001 - a late drain only means a redelivery
                log.warning(
                    "consumer group %r: draining revoked partitions did not finish", self.group_id
                )
        self.ledger.resend_newest(tps)
        self._commit(asynchronous=False, only=tps)
        self.ledger.forget_sent(tps)
        with self._lock:
            self._to_pause -= tps
            self._to_resume -= tps
        if tps:
            log.info(
                "consumer group %r revoked %s",
                self.group_id,
                ", ".join(f"{t}[{p}]" for t, p in sorted(tps)),
            )

    def _close(self) -> None:
        if self._consumer is None:
            return
        self.ledger.resend_newest(self._assigned)
        self._commit(asynchronous=False)
        self._consumer.close()
        self._consumer = None


class KafkaDeadLetters:
    """A :class:`DeadLetterSource` on the consumer client's cluster: a consumer that never joins a
    group or commits, made at the first read."""

    def __init__(self, settings: dict[str, Any], timeout: float = READ_TIMEOUT_SEC) -> None:
        self._settings = {
            **connection_settings(settings),
            "group.id": f"{settings.get('group.id') or 'freedom'}.replay-check",  # never joined
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": True,
            "auto.offset.reset": "latest",  # an offset no longer there (or not yet): nothing
            "isolation.level": "read_committed",
            "queued.min.messages": WINDOW,
            "queued.max.messages.kbytes": 16384,
        }
        self._timeout = timeout
        self._consumer: Any = None
        self._lock = threading.Lock()

    def read(self, topic: str, partition: int, offset: int, count: int) -> list[Any]:
        with self._lock:
            if self._consumer is None:
                self._consumer = confluent_kafka.Consumer(self._settings)
            consumer = self._consumer
            consumer.assign([confluent_kafka.TopicPartition(topic, partition, offset)])
            out: list[Any] = []
            deadline = time.monotonic() + self._timeout
            try:
                while len(out) < count:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TimeoutError(f"no answer within {self._timeout:g} s")
                    msg = consumer.poll(min(left, 0.5))
                    if msg is None:
                        continue
                    err = msg.error()
                    if err is None:
                        out.append(msg)
                    elif err.code() == confluent_kafka.KafkaError._PARTITION_EOF:
                        break
                    elif not err.retriable():
                        raise confluent_kafka.KafkaException(err)
                return out
            finally:
                consumer.unassign()

    def close(self) -> None:
        with self._lock:
            if self._consumer is not None:
                self._consumer.close()
                self._consumer = None
