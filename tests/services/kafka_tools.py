"""Small helpers the consumer-proxy tests use to put records on a topic and read them back."""

from __future__ import annotations

import time
import uuid
from typing import Any

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from freedom.testing import wait_until


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
    """Every record of one partition, from the start to its current end (high watermark).

    Read until the consumer reports the end of the partition at that offset, not until as many
    records as the watermark says came: a transactional topic (`freedom dlq replay` writes in
    transactions) has commit markers between the records, which take offsets and are never handed
    out."""
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"read-{uuid.uuid4().hex[:6]}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    try:
        low, end = c.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
        if end <= low:
            return []
        c.assign([TopicPartition(topic, partition, low)])
        out: list[Any] = []
        deadline = time.monotonic() + timeout
        while True:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"read {len(out)} records of {topic}[{partition}], not to its end ({end})"
                )
            for record in c.consume(1000, 0.5):
                err = record.error()
                if err is None:
                    if record.offset() < end:
                        out.append(record)
                elif err.code() == KafkaError._PARTITION_EOF and record.offset() >= end:
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


def unfinished(bootstrap: str, group: str, topic: str) -> list[tuple[int, int, int]]:
    """The partitions of `topic` holding records `group` has not committed yet, as (partition,
    committed offset, high watermark); empty when the group committed every record there is (an
    empty partition, or a topic that does not exist, has nothing to commit)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        md = c.list_topics(timeout=10).topics.get(topic)
        if md is None or md.error is not None:
            return []
        # The committed offsets first, the ends after them: a record produced in between (a retry
        # the group made before committing the one it retries) counts as not committed yet.
        done = c.committed([TopicPartition(topic, p) for p in sorted(md.partitions)], timeout=10)
        out = []
        for tp in done:
            end = c.get_watermark_offsets(TopicPartition(topic, tp.partition), timeout=10)[1]
            if end > 0 and tp.offset < end:
                out.append((tp.partition, tp.offset, end))
        return out
    finally:
        c.close()


def wait_drained(
    bootstrap: str, reads: dict[str, list[str]], timeout: float = 60.0, what: str = ""
) -> None:
    """Wait until each consumer group of `reads` (group -> the topics it reads) has committed every
    record of its topics. A consumer proxy commits a record only once it is finished (handled, or
    acknowledged on its retry or dead-letter topic), so from then on no delivery, retry or dead
    letter of what was produced before is still to come: the moment to assert that something
    did not happen. Name the topics upstream first (a topic before its retry topic, a group before
    its retry group): a record that a later-checked topic's record leads to is then counted."""
    last: dict[str, Any] = {}

    def done() -> bool:
        for group, topics in reads.items():
            for topic in topics:
                left = unfinished(bootstrap, group, topic)
                if left:
                    last.update(group=group, topic=topic, left=left)
                    return False
        return True

    try:
        wait_until(done, timeout, interval=0.2, what=what or "every record committed")
    except AssertionError as exc:
        raise AssertionError(
            f"{exc}; still uncommitted (partition, committed, end): {last}"
        ) from None


def read_all(bootstrap: str, topic: str) -> list[Any]:
    """Every record of `topic` there is now (each partition from its start to its high watermark),
    partition by partition; no waiting for more: wait for what proves they were written first."""
    return [
        r
        for p in range(partitions_of(bootstrap, topic))
        for r in read_partition(bootstrap, topic, p)
    ]


def headers_of(msg: Any) -> dict[str, str]:
    return {k: (v or b"").decode() for k, v in msg.headers() or []}
