"""Delayed retries through the retry topic, dead letters with their reasons, and the commit rule."""

from __future__ import annotations

import datetime
import logging
import time

import pytest
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
)

from freedom.testing import wait_until
from tests.services.event_app import Journal, event_service, reads_of
from tests.services.kafka_tools import committed, headers_of, produce, read_all, wait_drained


def test_failing_twice_is_delivered_three_times_with_the_retry_interval(
    broker, new_topic, tmp_path, delivery
):
    topic = new_topic(broker.bootstrap)
    journal = Journal()
    svc = event_service(
        tmp_path,
        broker.bootstrap,
        journal,
        topic,
        lambda c: 500 if c.nth < 2 else 200,
        retry_count=3,
        retry_interval_sec=2,
        delivery=delivery,
    )
    with svc:
        produce(
            broker.bootstrap,
            topic,
            [{"key": b"K-RETRY", "value": b'{"ID": 1}', "headers": [("x-action", b"buy")]}],
        )
        wait_until(lambda: len(journal.of()) >= 3, 40, what="three deliveries")
        # The original and both retry records committed: no fourth delivery can still come.
        wait_drained(
            broker.bootstrap,
            reads_of(svc.app, topic),
            30,
            what="the record and its retries settled",
        )
    calls = journal.of()
    assert [c.headers["x-retry-count"] for c in calls] == ["0", "1", "2"]
    assert all(
        c.key == "K-RETRY" and c.body == b'{"ID": 1}' and c.headers["x-action"] == "buy"
        for c in calls
    )
    gaps = [b.at - a.at for a, b in zip(calls, calls[1:])]
    assert all(2.0 <= g <= 4.0 for g in gaps), gaps


def test_always_failing_lands_in_the_dead_letter_topic_once_with_the_reasons(
    broker, new_topic, tmp_path, delivery
):
    topic = new_topic(broker.bootstrap)
    journal = Journal()
    svc = event_service(
        tmp_path,
        broker.bootstrap,
        journal,
        topic,
        lambda c: 500,
        retry_count=3,
        retry_interval_sec=0.3,
        delivery=delivery,
    )
    with svc:
        [original] = produce(
            broker.bootstrap,
            topic,
            [
                {
                    "key": b"K-POISON",
                    "value": b"\x00poison",
                    "headers": [("x-action", b"buy"), ("x-trace", b"t1")],
                }
            ],
        )
        wait_until(lambda: len(journal.of()) >= 4, 40, what="four failed deliveries")
        # Committed once its dead letter was acknowledged: every dead letter there will be is there.
        wait_drained(
            broker.bootstrap,
            reads_of(svc.app, topic),
            30,
            what="the record and its retries settled",
        )
        dead = read_all(broker.bootstrap, f"fail-{topic}")
    calls = journal.of()
    assert [c.headers["x-retry-count"] for c in calls] == ["0", "1", "2", "3"]
    assert len(dead) == 1, [headers_of(d) for d in dead]
    record = dead[0]
    assert record.key() == b"K-POISON" and record.value() == b"\x00poison"
    h = headers_of(record)
    assert h["x-action"] == "buy" and h["x-trace"] == "t1"
    assert h["x-retry-count"] == "3"
    assert h["x-freedom-original-topic"] == topic
    assert h["x-freedom-original-partition"] == str(original.partition())
    assert h["x-freedom-original-offset"] == str(original.offset())
    assert h["x-freedom-status"] == "500" and h["x-freedom-error"] == "HTTP 500"
    first = datetime.datetime.fromisoformat(
        h["x-freedom-first-failure-time"].replace("Z", "+00:00")
    ).timestamp()
    assert calls[0].at - 0.5 <= first <= calls[1].at, (first, calls[0].at)


def test_a_waiting_retry_does_not_hold_up_other_partitions_or_the_main_topic(
    apache_kafka, new_topic, tmp_path, delivery
):
    bootstrap = apache_kafka.bootstrap
    topic = new_topic(bootstrap, partitions=2)
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(f"retry-{topic}", 2, 1)])[f"retry-{topic}"].result(20)
    journal = Journal()
    interval = 6.0
    svc = event_service(
        tmp_path,
        bootstrap,
        journal,
        topic,
        lambda c: 500 if c.key == "SLOW" and c.nth == 0 else 200,
        retry_count=1,
        retry_interval_sec=interval,
        mode="concurrent",
        delivery=delivery,
    )
    with svc:
        produce(bootstrap, topic, [{"key": b"SLOW", "value": b"s", "partition": 0}])
        wait_until(lambda: journal.of(key="SLOW"), 20, what="the first delivery of SLOW")
        retry_partition = wait_until(
            lambda: _partition_holding(bootstrap, f"retry-{topic}"),
            10,
            what="the retry record of SLOW",
        )[0]
        failed_at = journal.of(key="SLOW")[0].at
        # While SLOW waits: a due retry record on the other retry partition, and main-topic records on both partitions.
        sent_at = time.time()
        produce(
            bootstrap,
            f"retry-{topic}",
            [
                {
                    "key": b"DUE",
                    "value": b"d",
                    "partition": 1 - retry_partition,
                    "headers": [("x-retry-count", b"1")],
                    "timestamp": int((sent_at - 60) * 1000),
                }
            ],
        )
        produce(
            bootstrap,
            topic,
            [{"key": f"M{i}".encode(), "value": b"m", "partition": i % 2} for i in range(10)],
        )
        others = wait_until(
            lambda: (
                [c for c in journal.of() if c.key != "SLOW"] if len(journal.of()) >= 12 else None
            ),
            interval,
            what="the other records while SLOW waits",
        )
        wait_until(lambda: len(journal.of(key="SLOW")) == 2, 20, what="the retry of SLOW")
    slow_retry = journal.of(key="SLOW")[1]
    latencies = [c.at - sent_at for c in others]
    assert max(latencies) < 3.0, latencies  # they flowed while SLOW waited...
    assert all(c.at < slow_retry.at for c in others)  # ...and did not wait for it
    assert {c.key for c in others} == {"DUE", *(f"M{i}" for i in range(10))}
    assert interval <= slow_retry.at - failed_at <= interval + 2.0


def _partition_holding(bootstrap: str, topic: str) -> list[int]:
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "watermarks"})
    try:
        return [
            p
            for p in range(2)
            if c.get_watermark_offsets(TopicPartition(topic, p), timeout=5)[1] > 0
        ]
    finally:
        c.close()


def test_a_retry_record_the_broker_refuses_keeps_the_original_uncommitted(
    apache_kafka, new_topic, tmp_path, delivery, caplog
):
    """A refusal that is not about the record is retried: here INVALID_TIMESTAMP (the topic takes no
    record older than 0 ms; the retry producer stamps its own time, so a clock or topic-config matter).
    A refusal about the record itself (too large) is not: see test_settle.py."""
    bootstrap = apache_kafka.bootstrap
    topic = new_topic(bootstrap)
    admin = AdminClient({"bootstrap.servers": bootstrap})
    retry_topic = f"retry-{topic}"
    admin.create_topics(
        [NewTopic(retry_topic, 1, 1, config={"message.timestamp.before.max.ms": "0"})]
    )[retry_topic].result(20)
    journal = Journal()
    svc = event_service(
        tmp_path,
        bootstrap,
        journal,
        topic,
        lambda c: 500 if c.nth == 0 else 200,
        retry_count=2,
        retry_interval_sec=0.5,
        group_id=f"g-refused-{time.time_ns()}",
        delivery=delivery,
    )
    group = svc.app.kafka_config.consumer_clients[0].group_id
    big = bytes(range(256)) * 4
    caplog.set_level(logging.ERROR, logger="freedom.kafka.proxy")

    def refusals() -> int:
        return sum("the record stays uncommitted, trying again" in m for m in caplog.messages)

    with svc:
        before = committed(bootstrap, group, topic)[0]
        produce(bootstrap, topic, [{"key": b"K-BIG", "value": big}])
        wait_until(lambda: journal.of(), 20, what="the first delivery")
        # The proxy keeps trying to produce the retry record (0.5 s, 1 s, 2 s apart), and must not
        # commit meanwhile: three refused tries are well past any commit of the first refusal.
        wait_until(lambda: refusals() >= 3, 30, what="three refused tries of the retry record")
        assert committed(bootstrap, group, topic)[0] == before
        assert len(journal.of()) == 1
        # The broker accepts it again: the retry goes through, then the original is committed.
        resource = ConfigResource(
            "topic",
            retry_topic,
            incremental_configs=[
                ConfigEntry(
                    "message.timestamp.before.max.ms",
                    str(2**63 - 1),
                    incremental_operation=AlterConfigOpType.SET,
                )
            ],
        )
        for f in admin.incremental_alter_configs([resource]).values():
            f.result(20)
        wait_until(
            lambda: committed(bootstrap, group, topic)[0] == before + 1,
            30,
            what="the commit after the ack",
        )
        wait_until(lambda: len(journal.of()) == 2, 30, what="the retry delivery")
    assert journal.of()[1].headers["x-retry-count"] == "1"
    assert journal.of()[1].body == big


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"mode": "parallel"}, "mode: must be one of"),
        ({"max_in_flight": 0}, "max_in_flight: must be 1 or more"),
        (
            {"retry_count": 2, "retry_fail_prefix": ""},
            "retry_fail_prefix: must not be empty when retry_count > 0",
        ),
        ({"retry_prefix": "retry:"}, "retry_prefix: has characters Kafka topic names do not allow"),
        ({"topics": {"event-sell": {"mode": "fast"}}}, 'topics."event-sell".mode: must be one of'),
        (
            {"topics": {"event-sell": {"moed": "concurrent"}}},
            'topics."event-sell".moed: unknown key',
        ),
        ({"drain_timeout_sec": 0}, "drain_timeout_sec: must be greater than 0"),
    ],
)
def test_bad_consumer_settings_get_one_clear_error(tmp_path, bad, message):
    from freedom.config.loading import load_kafka_config
    from freedom.errors import ConfigError
    from freedom.testing import write_config

    write_config(
        tmp_path,
        kafka={
            "consumer": {"open": True},
            "consumer_clients": [{"servers": ["127.0.0.1:9092"], **bad}],
        },
    )
    with pytest.raises(ConfigError) as err:
        load_kafka_config(tmp_path)
    assert (
        message in str(err.value)
        and "consumer_clients[0]." in str(err.value)
        and "kafka.toml" in str(err.value)
    )
