"""The test broker's side of the consumer proxy's port (kafka/consumer/clients.py): a record source
per consumer group, the retry producer, the dead-letter reader and topic creation, all on the
in-memory broker. The proxy, its groups, lanes, ledger and delivery are the code that runs on Kafka.

A :class:`MemorySource` is one member that owns every partition of its topics (no rebalances). Its
fetch loop runs on the event loop; it commits through the same ledger as the Kafka source, and its
clock is the broker's (a retry record waits on it; :meth:`TestBroker.settle` moves it forward).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import confluent_kafka

from freedom.kafka.consumer.copy_producer import RETRY_PRODUCER_MAX_BYTES
from freedom.kafka.consumer.plan import wait_event
from freedom.kafka.consumer.replays import DeadLetterSource
from freedom.kafka.consumer.sources import (
    OffsetSource,
    RecordSource,
    ShareTerms,
    Sink,
)
from freedom.kafka.producing.client import ProducerClient
from freedom.testing.clock import SimulatedClock

if TYPE_CHECKING:
    from freedom.kafka.consumer.group import ConsumerGroup
    from freedom.testing.broker import MemoryRecord, TestBroker

TP = tuple[str, int]
RawHeaders = list[tuple[str, bytes | None]]


def raw_headers(
    headers: Iterable[tuple[str, str | bytes | None]] | Mapping[str, str | bytes] | None,
) -> RawHeaders:
    items = headers.items() if isinstance(headers, Mapping) else (headers or [])
    return [(k, v.encode() if isinstance(v, str) else v) for k, v in items]


def size_of(key: bytes | None, value: bytes | None, headers: RawHeaders) -> int:
    return (
        len(key or b"")
        + len(value or b"")
        + sum(len(k.encode()) + len(v or b"") for k, v in headers)
    )


def too_large(what: str) -> confluent_kafka.KafkaError:
    return confluent_kafka.KafkaError(confluent_kafka.KafkaError.MSG_SIZE_TOO_LARGE, what)


class MemoryProducer:
    """Stands in for a librdkafka `confluent_kafka.Producer`: `produce` appends to the broker and
    reports the delivery at once (the callers await the report as they would librdkafka's)."""

    def __init__(self, broker: TestBroker, max_bytes: int) -> None:
        self.broker = broker
        self.max_bytes = max_bytes

    def produce(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        partition: int = -1,
        on_delivery: Any = None,
        headers: Any = None,
        **_: Any,
    ) -> None:
        raw = raw_headers(headers)
        if (
            size_of(key, value, raw) > self.max_bytes
        ):  # librdkafka's local check (message.max.bytes)
            raise confluent_kafka.KafkaException(too_large("Message size too large"))
        err, record = self.broker._append(topic, key, value, raw, partition)
        if on_delivery is not None:
            on_delivery(err, record)

    def poll(self, timeout: float = 0) -> int:
        if timeout:
            time.sleep(min(timeout, 0.1))
        return 0

    def flush(self, timeout: float = 0) -> int:
        return 0

    def purge(self, *args: Any, **kwargs: Any) -> None:
        return None

    def __len__(self) -> int:
        return 0


class MemoryDeadLetters:
    """The dead letters a replay check reads (replays.DeadLetterSource), from the broker."""

    def __init__(self, broker: TestBroker) -> None:
        self._broker = broker

    def read(self, topic: str, partition: int, offset: int, count: int) -> list[MemoryRecord]:
        return self._broker.records(topic, partition)[offset : offset + count]

    def close(self) -> None:
        return None


class MemorySource(SimulatedClock, OffsetSource):
    """A consumer group's record source on the in-memory broker: one member, every partition."""

    def __init__(
        self, broker: TestBroker, group_id: str, topics: list[str], *, initial_offset: str
    ) -> None:
        super().__init__()
        self.broker = broker
        self.group_id = group_id
        self.topics = topics
        self.initial_offset = initial_offset
        self._group: ConsumerGroup | None = None
        self._assigned: set[TP] = set()
        self._positions: dict[TP, int] = {}  # the next offset to fetch, per assigned partition
        self._paused: set[TP] = set()
        self._poke = asyncio.Event()  # records, a finished delivery, a clock change, stop
        self._timers = set()
        self._pump_task: asyncio.Task[None] | None = None
        self._stopping = False

    # -- the port
    async def start(self, sink: Sink) -> None:
        from freedom.kafka.consumer.group import ConsumerGroup

        assert isinstance(sink, ConsumerGroup)
        self._group = sink
        self._loop = asyncio.get_running_loop()
        self.broker._join(self)
        self._assign()
        sink.assigned.set()
        self._pump_task = asyncio.create_task(
            self._run_pump(), name=f"freedom-memory-group-{self.group_id}"
        )

    async def stop(self) -> None:
        self._stopping = True
        self._poke.set()
        if self._pump_task is not None:
            await self._pump_task

    async def close(self) -> None:
        self._commit()
        self.broker._leave(self)

    def alive(self) -> bool | None:
        return None  # no fetch thread to watch

    def pause(self, tp: TP) -> None:
        self._paused.add(tp)

    def resume(self, tp: TP) -> None:
        self._paused.discard(tp)
        self._poke.set()

    def room_freed(self) -> None:
        self._poke.set()

    def settled(self, tp: TP, offset: int) -> bool:
        self._poke.set()
        return super().settled(tp, offset)

    def _assign(self) -> None:
        """Take the partitions of the subscribed topics not assigned yet, from the committed offset
        (a new group: the end, or the start with initial_offset = "earliest", which is committed at
        once, as the Kafka source pins a new group's start)."""
        for tp in self.broker._partitions_of(self.topics):
            if tp in self._assigned:
                continue
            start = self.broker.committed(tp[0], tp[1], group=self.group_id)
            if start is None:
                start = self.broker._end(tp) if self.initial_offset == "latest" else 0
                self.broker._commit(self.group_id, tp, start)
            self._positions[tp] = start
            self._assigned.add(tp)

    def _commit(self) -> None:
        for tp, offset in self.ledger.take().items():
            self.broker._commit(self.group_id, tp, offset)

    async def _run_pump(self) -> None:
        group = self._group
        assert group is not None
        while not self._stopping:
            self._poke.clear()
            self.last_round = time.monotonic()
            self._assign()
            self._commit()
            records = self._fetch(group.room(len(self._assigned)))
            if records:
                group.handing(len(records))
                group.dispatch(records)
                await asyncio.sleep(0)
                continue
            await wait_event(self._poke, 0.05)

    def _fetch(self, n: int) -> list[Any]:
        out: list[Any] = []
        for tp in sorted(self._assigned):
            if len(out) >= n:
                break
            if tp in self._paused:
                continue
            got = self.broker._read(tp, self._positions[tp], n - len(out))
            self._positions[tp] += len(got)
            out.extend(got)
        return out

    def pending_work(self) -> tuple[str | None, float | None]:
        """For TestBroker.settle: (what is still to do now, or None; the earliest time a waiting
        retry record is due)."""
        group = self._group
        if group is None:
            return None, None
        if group.busy():
            return f"group {self.group_id!r}: {group.running} deliveries running", None
        if self.ledger.queued():
            return f"group {self.group_id!r}: offsets to commit", None
        for tp in self._assigned:
            if tp not in self._paused and self.broker._end(tp) > self._positions[tp]:
                return f"group {self.group_id!r}: records of {tp[0]}[{tp[1]}] to fetch", None
        now = self.now()
        due: float | None = None
        for lane in list(group.lanes.values()):
            at = lane.due_at()
            if at is None:
                continue
            if at <= now:
                return (
                    f"group {self.group_id!r}: records of {lane.tp[0]}[{lane.tp[1]}] to deliver",
                    None,
                )
            due = at if due is None else min(due, at)
        return None, due


class MemoryClients:
    """The Kafka clients of a consumer proxy on the in-memory broker (clients.ProxyClients)."""

    def __init__(self, broker: TestBroker) -> None:
        self.broker = broker

    def source(
        self,
        group_id: str,
        settings: dict[str, Any],
        topics: list[str],
        *,
        initial_offset: str,
        drain_timeout: float,
        share: ShareTerms | None = None,
    ) -> RecordSource:
        if share is not None:  # a share group's member (memory_share.py)
            from freedom.testing.memory_share import MemoryShareSource

            return MemoryShareSource(
                self.broker, group_id, topics, share, initial_offset=initial_offset
            )
        return MemorySource(self.broker, group_id, topics, initial_offset=initial_offset)

    def retry_producer(self, settings: dict[str, Any], name: str) -> ProducerClient:
        client = MemoryProducer(self.broker, RETRY_PRODUCER_MAX_BYTES)
        return ProducerClient(name, settings, client=client, thread_name=name)

    def dead_letters(self, settings: dict[str, Any]) -> DeadLetterSource:
        return MemoryDeadLetters(self.broker)

    async def create_topics(
        self, settings: dict[str, Any], topics: list[str], like: dict[str, str]
    ) -> None:
        self.broker.create_topics(topics)
