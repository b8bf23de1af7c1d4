"""Smoke tests: both test brokers do what the rest of the suite relies on."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import pytest
from confluent_kafka import Consumer, Message, Producer, TopicPartition

from tests.conftest import BrokerUnderTest
from tests.kafka.broker import ApacheKafka

pytestmark = pytest.mark.timeout(180)

# session.timeout.ms: 6000 is Apache's minimum; Tansu's first JoinGroup takes about half of it.
GROUP_CONF = {
    "enable.auto.commit": False,
    "auto.offset.reset": "earliest",
    "session.timeout.ms": 6000,
    "heartbeat.interval.ms": 1000,
}


def produce(
    bootstrap: str, topic: str, records: list[tuple[int, bytes, list[tuple[str, bytes]]]]
) -> None:
    """Produce (partition, value, headers) records and fail on any delivery error."""
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    errors: list[object] = []
    for partition, value, headers in records:
        producer.produce(
            topic,
            value=value,
            partition=partition,
            headers=headers,
            on_delivery=lambda err, _msg: errors.append(err) if err else None,
        )
    assert producer.flush(30) == 0, "records not delivered within 30 s"
    assert errors == []


def consume(consumer: Consumer, count: int, timeout: float = 60.0) -> list[Message]:
    """Poll until ``count`` records arrived or the deadline passed."""
    got: list[Message] = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is None:
            continue
        assert msg.error() is None, msg.error()
        got.append(msg)
    assert len(got) == count, f"got {len(got)} of {count} records within {timeout}s"
    return got


def committed(
    consumer: Consumer, topic: str, partitions: int, timeout: float = 30.0
) -> dict[int, int]:
    """Committed offsets per partition, retried until the group coordinator answers."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            tps = consumer.committed(
                [TopicPartition(topic, p) for p in range(partitions)], timeout=5
            )
            return {tp.partition: tp.offset for tp in tps}
        except Exception:
            if time.monotonic() > deadline:
                raise


def test_headers_group_and_manual_commit(
    broker: BrokerUnderTest, new_topic: Callable[..., str]
) -> None:
    topic = new_topic(broker.bootstrap, partitions=2)
    records = [
        (0, b"a", [("n", b"0"), ("dup", b"x"), ("dup", b"y")]),
        (1, b"b", [("n", b"1")]),
        (0, b"c", [("n", b"2")]),
    ]
    produce(broker.bootstrap, topic, records)

    consumer = Consumer(
        {
            "bootstrap.servers": broker.bootstrap,
            "group.id": f"g-{uuid.uuid4().hex[:8]}",
            **GROUP_CONF,
        }
    )
    try:
        consumer.subscribe([topic])
        got = consume(consumer, 3)
        by_value = {m.value(): m for m in got}
        assert set(by_value) == {b"a", b"b", b"c"}
        assert by_value[b"a"].headers() == [("n", b"0"), ("dup", b"x"), ("dup", b"y")]
        assert by_value[b"b"].partition() == 1 and by_value[b"b"].headers() == [("n", b"1")]
        assert [m.value() for m in got if m.partition() == 0] == [b"a", b"c"]

        result = consumer.commit(asynchronous=False)
        assert result is not None and all(tp.error is None for tp in result)
        assert committed(consumer, topic, 2) == {0: 2, 1: 1}
    finally:
        consumer.close()


def test_restart_keeps_data(apache_kafka: ApacheKafka, new_topic: Callable[..., str]) -> None:
    topic = new_topic(apache_kafka.bootstrap, partitions=1)
    group = f"g-{uuid.uuid4().hex[:8]}"
    produce(apache_kafka.bootstrap, topic, [(0, b"before-1", []), (0, b"before-2", [])])
    consumer = Consumer(
        {"bootstrap.servers": apache_kafka.bootstrap, "group.id": group, **GROUP_CONF}
    )
    try:
        consumer.assign([TopicPartition(topic, 0, 0)])
        first = consume(consumer, 1)[0]
        consumer.commit(message=first, asynchronous=False)
    finally:
        consumer.close()

    port = apache_kafka.bootstrap
    apache_kafka.restart()
    assert apache_kafka.bootstrap == port

    consumer = Consumer(
        {"bootstrap.servers": apache_kafka.bootstrap, "group.id": group, **GROUP_CONF}
    )
    try:
        assert committed(consumer, topic, 1) == {0: 1}
        consumer.subscribe([topic])
        assert [m.value() for m in consume(consumer, 1)] == [b"before-2"]
    finally:
        consumer.close()
