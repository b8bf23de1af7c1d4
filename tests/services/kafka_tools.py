"""Small helpers the consumer-proxy tests use to put records on a topic and read them back."""

from __future__ import annotations

import time
import uuid
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic


def create_topic(bootstrap: str, name: str, partitions: int = 1, timeout: float = 30.0) -> str:
    """Create topic `name` and wait until every partition has a leader; returns the name."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(name, partitions, 1)])[name].result(timeout)
    deadline = time.monotonic() + timeout
    while True:
        md = admin.list_topics(name, timeout=5).topics.get(name)
        if (
            md is not None
            and md.error is None
            and len(md.partitions) == partitions
            and all(p.leader >= 0 for p in md.partitions.values())
        ):
            return name
        if time.monotonic() > deadline:
            raise TimeoutError(f"topic {name} not ready after {timeout}s: {md}")
        time.sleep(0.05)


def topic_size(bootstrap: str, topic: str, partitions: int = 1) -> int:
    """How many records the topic holds (sum of high watermarks)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"size-{uuid.uuid4().hex[:6]}"})
    try:
        return sum(
            c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in range(partitions)
        )
    finally:
        c.close()


def read_partition(
    bootstrap: str, topic: str, partition: int = 0, timeout: float = 30.0
) -> list[Any]:
    """Every record of one partition, from the start to its current end (high watermark)."""
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"read-{uuid.uuid4().hex[:6]}",
            "enable.auto.commit": False,
        }
    )
    try:
        end = c.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)[1]
        c.assign([TopicPartition(topic, partition, 0)])
        out: list[Any] = []
        deadline = time.monotonic() + timeout
        while len(out) < end:
            if time.monotonic() > deadline:
                raise TimeoutError(f"read {len(out)} of {end} records of {topic}[{partition}]")
            record = c.poll(0.5)
            if record is not None and record.error() is None:
                out.append(record)
        return out
    finally:
        c.close()


def produce(bootstrap: str, topic: str, records: list[dict[str, Any]]) -> list[Any]:
    """Produce `records` (produce() keyword arguments) and wait for every ack; returns the delivered messages."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    delivered: list[Any] = []

    def report(err: Any, msg: Any) -> None:
        assert err is None, err
        delivered.append(msg)

    for r in records:
        while True:
            try:
                producer.produce(topic, on_delivery=report, **r)
                break
            except BufferError:
                producer.poll(0.05)
    assert producer.flush(60) == 0
    return delivered


def partitions_of(bootstrap: str, topic: str) -> int:
    md = AdminClient({"bootstrap.servers": bootstrap}).list_topics(topic, timeout=10)
    return len(md.topics[topic].partitions)


def read_topic(
    bootstrap: str, topic: str, *, expect: int, timeout: float = 30.0, settle: float = 1.0
) -> list[Any]:
    """Every record of `topic` from the start: waits for `expect` of them, then `settle` seconds more
    so that an unexpected extra one shows up too."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"check-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
        }
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions_of(bootstrap, topic))])
    out: list[Any] = []
    deadline = time.monotonic() + timeout
    settle_until = None
    try:
        while True:
            msg = consumer.poll(0.2)
            if msg is not None and msg.error() is None:
                out.append(msg)
            now = time.monotonic()
            if len(out) >= expect and settle_until is None:
                settle_until = now + settle
            if settle_until is not None and now >= settle_until:
                return out
            if now >= deadline:
                return out
    finally:
        consumer.close()


def committed(bootstrap: str, group: str, topic: str, partitions: int = 1) -> list[int]:
    """The group's committed offsets of `topic` (negative: none yet)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        return [
            tp.offset
            for tp in c.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
        ]
    finally:
        c.close()


def headers_of(msg: Any) -> dict[str, str]:
    return {k: (v or b"").decode() for k, v in msg.headers() or []}
