"""Publishing APIs for real code: sync, batch, flush at shutdown, and bad input raised at the call."""

from __future__ import annotations

import asyncio
import logging
import os
import uuid

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

import freedom
from freedom.config.librdkafka import PRODUCER_DEFAULTS
from freedom.infra import kafka
from freedom.kafka.producer import (
    ProducerClient,
    ProducerClosedError,
    RecordTooLargeError,
)
from freedom.testing import ServiceThread, free_port, wait_until, write_config
from tests.services.kafka_tools import read_partition

N = 10_000


def producer_service(tmp_path, bootstrap: str, **client) -> ServiceThread:
    """A service with only a producer (no consumer proxy), on a free port."""
    port = free_port()
    write_config(
        tmp_path,
        app={"listen_addr": f"127.0.0.1:{port}"},
        kafka={
            "producer": {"open": True},
            "producer_clients": [{"servers": [bootstrap], **client}],
        },
    )
    return ServiceThread(freedom.Application(config_dir=tmp_path, prepare=[]))


def test_batch_of_10000_all_arrive_with_a_result_each(apache_kafka, new_topic, tmp_path):
    topic = new_topic(apache_kafka.bootstrap)
    with producer_service(tmp_path, apache_kafka.bootstrap) as svc:
        producer = svc.app.producer
        msgs = [producer.new_msg(topic, f"record {i}") for i in range(N)]
        result = svc.run(producer.publish_batch(msgs), timeout=120)
    assert result.ok, result.failed[:3]
    assert len(result.results) == N
    assert [d.key for d in result.delivered] == [m.key for m in msgs]
    assert sorted(d.offset for d in result.delivered) == list(range(N))
    records = read_partition(apache_kafka.bootstrap, topic)
    assert len(records) == N
    assert {r.key().decode() for r in records} == {m.key for m in msgs}


def test_stopping_right_after_accepting_a_batch_loses_none(apache_kafka, new_topic, tmp_path):
    topic = new_topic(apache_kafka.bootstrap)
    svc = producer_service(tmp_path, apache_kafka.bootstrap).start()
    producer = svc.app.producer
    msgs = [producer.new_msg(topic, f"record {i}") for i in range(N)]
    pending = producer.accept_batch(
        msgs
    )  # returns once queued, long before the broker has them all
    svc.stop()  # flushes at shutdown
    result = pending.result(timeout=5)
    assert result.ok, result.failed[:3]
    records = read_partition(apache_kafka.bootstrap, topic)
    assert len(records) == N
    assert [r.value().decode() for r in records] == [
        f"record {i}" for i in range(N)
    ]  # in order, too


def test_publish_sync_from_a_script_and_not_on_the_loop(apache_kafka, new_topic, tmp_path):
    topic = new_topic(apache_kafka.bootstrap)
    with producer_service(tmp_path, apache_kafka.bootstrap) as svc:
        delivered = (
            svc.app.producer.new_msg(topic, b"from a script").set_key("K1").publish_sync(timeout=30)
        )
        assert (delivered.topic, delivered.offset, delivered.key) == (topic, 0, "K1")

        async def on_the_loop() -> None:
            svc.app.producer.new_msg(topic, b"x").publish_sync()

        with pytest.raises(
            RuntimeError,
            match=r"publish_sync\(\) would block the event loop: .*await msg.publish\(\)",
        ):
            svc.run(on_the_loop())
    records = read_partition(apache_kafka.bootstrap, topic)
    assert [(r.key(), r.value()) for r in records] == [(b"K1", b"from a script")]


def test_undeliverable_records_at_close_are_reported_not_dropped(caplog):
    # Nothing listens on port 1: the records stay queued, and closing must report each one.
    client = ProducerClient(
        "lost", {"bootstrap.servers": "127.0.0.1:1", **PRODUCER_DEFAULTS, "log_level": 0}
    )
    producer = kafka.Producer({"lost": client})
    msgs = [producer.new_msg("nowhere", f"r{i}") for i in range(3)]
    pending = producer.accept_batch(msgs)
    with caplog.at_level(logging.ERROR, logger="freedom.kafka.producer"):
        failures = producer.close(timeout=0.5)
    assert sorted(k for _, k, _ in failures) == sorted(m.key for m in msgs)
    result = pending.result(timeout=5)
    assert len(result.failed) == 3
    assert all(isinstance(e, ProducerClosedError) for _, e in result.failed)
    assert "the service stopped before the broker acknowledged it" in str(result.failed[0][1])
    log = caplog.text
    assert "producer client 'lost' stopped with 3 records not delivered" in log
    assert all(m.key in log for m in msgs)


# ----------------------------------------------------------------------------- bad input (point 6)


@pytest.fixture
def running(apache_kafka, tmp_path):
    with producer_service(tmp_path, apache_kafka.bootstrap) as svc:
        yield svc


@pytest.mark.parametrize(
    "topic, exc, message",
    [
        ("", ValueError, "topic name is empty"),
        ("Goods:Shopping", ValueError, "has characters Kafka does not allow (':')"),
        ("a b", ValueError, "has characters Kafka does not allow (' ')"),
        ("x" * 250, ValueError, "Kafka allows at most 249"),
        (None, TypeError, "topic must be a string, got NoneType"),
    ],
)
def test_bad_topic_raises_at_new_msg(running, topic, exc, message):
    with pytest.raises(exc) as info:
        running.app.producer.new_msg(topic, b"x")
    assert message in str(info.value)


@pytest.mark.parametrize(
    "headers, exc, message",
    [
        ({1: "x"}, TypeError, "header names must be str, got int"),
        ({"x-count": 5}, TypeError, "header 'x-count' must have a str or bytes value, got int"),
        (
            {"x-none": None},
            TypeError,
            "header 'x-none' must have a str or bytes value, got NoneType",
        ),
        ({"bad name": "x"}, ValueError, "header name 'bad name' is not a valid HTTP header name"),
        ({"动作": "x"}, ValueError, "is not a valid HTTP header name"),
        ({"x-a": "one\r\nx-b: two"}, ValueError, "header 'x-a' has a line break"),
        (["x-a", "b"], TypeError, "headers must be a mapping"),
        ({"X-Retry-Count": "3"}, ValueError, "header 'X-Retry-Count' is set by the consumer proxy"),
        ({"x-message-key": "k"}, ValueError, "header 'x-message-key' is set by the consumer proxy"),
        (
            {"content-length": "1"},
            ValueError,
            "header 'content-length' is an HTTP connection header",
        ),
    ],
)
def test_bad_headers_raise_at_set_headers(running, new_topic, headers, exc, message):
    msg = running.app.producer.new_msg("t", b"x")
    with pytest.raises(exc) as info:
        msg.set_headers(headers)
    assert message in str(info.value)


def test_utf8_header_values_are_fine(running, apache_kafka, new_topic):
    topic = new_topic(apache_kafka.bootstrap)
    running.app.producer.new_msg(topic, b"x").set_headers(
        {"x-action": "购买", "x-raw": b"\xff"}
    ).publish_sync(timeout=30)
    (record,) = read_partition(apache_kafka.bootstrap, topic)
    assert dict(record.headers()) == {"x-action": "购买".encode(), "x-raw": b"\xff"}


def test_content_of_the_wrong_type(running):
    # dicts, models and dataclasses are sent as JSON (tests/test_typed.py); what Pydantic cannot serialise is refused.
    with pytest.raises(TypeError, match=r"cannot serialise a value of type object as a message"):
        running.app.producer.new_msg("t", object())
    with pytest.raises(
        TypeError,
        match=r"cannot serialise a value of type NoneType as a message: None is no content",
    ):
        running.app.producer.new_msg("t", None)


def test_record_over_the_producer_limit_raises_at_publish(running, apache_kafka, new_topic):
    topic = new_topic(apache_kafka.bootstrap)
    msg = running.app.producer.new_msg(topic, os.urandom(2_000_000))
    with pytest.raises(RecordTooLargeError) as info:
        msg.publish_sync(timeout=30)
    text = str(info.value)
    assert f"message to {topic!r} is 2000" in text and "over the limit of 1000000 bytes" in text
    assert "message.max.bytes" in text
    with pytest.raises(RecordTooLargeError):
        running.run(msg.publish())


def test_record_over_the_topic_limit_is_rejected_by_the_broker(running, apache_kafka):
    topic = f"small-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": apache_kafka.bootstrap})
    admin.create_topics([NewTopic(topic, 1, 1, config={"max.message.bytes": "2000"})])[
        topic
    ].result(30)
    msg = running.app.producer.new_msg(
        topic, os.urandom(20_000)
    )  # random: compression cannot shrink it
    with pytest.raises(RecordTooLargeError) as info:
        running.run(msg.publish(), timeout=60)
    assert "the broker rejected it as too large" in str(info.value) and topic in str(info.value)


def test_publish_after_shutdown_raises(apache_kafka, new_topic, tmp_path):
    topic = new_topic(apache_kafka.bootstrap)
    svc = producer_service(tmp_path, apache_kafka.bootstrap).start()
    kept = svc.app.producer  # a reference taken while the service ran (a background task, say)
    svc.stop()
    with pytest.raises(freedom.PublishError, match="cannot publish: the service has stopped"):
        svc.app.producer.new_msg(topic, b"late").publish_sync()
    with pytest.raises(
        ProducerClosedError, match=f"cannot publish to '{topic}': the producer is closed"
    ):
        kept.new_msg(topic, b"late").publish_sync()
    with pytest.raises(ProducerClosedError):
        asyncio.run(kept.new_msg(topic, b"late").publish())
    result = kept.accept_batch([kept.new_msg(topic, b"late")]).result(5)
    assert isinstance(result.failed[0][1], ProducerClosedError)
    assert read_partition(apache_kafka.bootstrap, topic) == []


def test_bus_over_the_limit_raises_at_set_runtime(running):
    class FakeRequestRuntime:  # only the attributes set_runtime reads
        bus = freedom.Bus({"blob": "x" * 10_000})
        trace = None

    with pytest.raises(ValueError, match=r"bus is 100\d\d bytes as JSON, over the 8192-byte limit"):
        running.app.producer.new_msg("t", b"x").set_runtime(FakeRequestRuntime())  # type: ignore[arg-type]


async def test_settings_librdkafka_refuses_are_a_config_error(apache_kafka, tmp_path):
    write_config(
        tmp_path,
        kafka={
            "producer": {"open": True},
            "producer_clients": [
                {"name": "north", "servers": [apache_kafka.bootstrap], "settings": {"lingr.ms": 5}}
            ],
        },
    )
    app = freedom.Application(config_dir=tmp_path, prepare=[])
    with pytest.raises(freedom.ConfigError) as info:
        await app.start()
    assert str(info.value) == (
        f"{tmp_path}/infra/kafka.toml: producer_clients[0].settings.lingr.ms: "
        'librdkafka refuses it: No such configuration property: "lingr.ms"'
    )


def _unreachable() -> tuple[kafka.Producer, kafka.Msg]:
    """A producer whose broker does not exist (its records fail after 1 s), and a message of it."""
    client = ProducerClient(
        "lost",
        {
            "bootstrap.servers": "127.0.0.1:1",
            **PRODUCER_DEFAULTS,
            "message.timeout.ms": 1000,
            "log_level": 0,
        },
    )
    producer = kafka.Producer({"lost": client})
    return producer, producer.new_msg("nowhere", b"x")


def test_a_failure_after_the_waiter_gave_up_is_logged(caplog):
    producer, msg = _unreachable()
    try:
        with caplog.at_level(logging.ERROR, logger="freedom.kafka.producer"):
            with pytest.raises(
                freedom.PublishError,
                match=r"was not acknowledged within 0\.\d s; it may still be delivered",
            ):
                msg.publish_sync(timeout=0.2)
            wait_until(
                lambda: "nobody was waiting for it any more" in caplog.text,
                20,
                what="the late failure's log line",
            )
        assert f"message to 'nowhere' (key {msg.key}) was not delivered" in caplog.text
    finally:
        producer.close(timeout=0.1)


def test_a_script_starts_the_app_publishes_synchronously_and_stops(
    apache_kafka, new_topic, tmp_path
):
    topic = new_topic(apache_kafka.bootstrap)
    write_config(
        tmp_path,
        kafka={
            "producer": {"open": True},
            "producer_clients": [{"servers": [apache_kafka.bootstrap]}],
        },
    )
    app = freedom.Application(config_dir=tmp_path, prepare=[])
    asyncio.run(app.start())
    try:
        results = app.producer.accept_batch(
            [app.producer.new_msg(topic, f"s{i}") for i in range(3)]
        ).result(30)
        single = app.producer.new_msg(topic, b"s3").publish_sync(timeout=30)
    finally:
        asyncio.run(app.stop())
    assert results.ok and single.offset == 3
    assert [r.value() for r in read_partition(apache_kafka.bootstrap, topic)] == [
        b"s0",
        b"s1",
        b"s2",
        b"s3",
    ]


def test_many_awaited_publishes_in_flight_each_get_their_own_answer(
    running, apache_kafka, new_topic
):
    # The delivery reports reach the waiters in bulk (one loop wake-up for many): each must still
    # get its own record's answer.
    topic = new_topic(apache_kafka.bootstrap)
    producer = running.app.producer
    msgs = [producer.new_msg(topic, f"r{i}") for i in range(2_000)]

    async def publish_all() -> list:
        return await asyncio.gather(*(m.publish() for m in msgs))

    delivered = running.run(publish_all(), timeout=60)
    assert [d.key for d in delivered] == [m.key for m in msgs]
    assert sorted(d.offset for d in delivered) == list(range(len(msgs)))
    by_offset = {r.offset(): r for r in read_partition(apache_kafka.bootstrap, topic)}
    assert all(by_offset[d.offset].key().decode() == d.key for d in delivered)


async def test_a_failure_after_an_awaited_publish_was_cancelled_is_logged(caplog):
    producer, msg = _unreachable()
    try:
        with caplog.at_level(logging.ERROR, logger="freedom.kafka.producer"):
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(msg.publish(), 0.2)
            # Waited for in a thread: the late report reaches the log through this (free) loop.
            await asyncio.to_thread(
                wait_until,
                lambda: "nobody was waiting for it any more" in caplog.text,
                20,
                what="the late failure's log line",
            )
        assert f"message to 'nowhere' (key {msg.key}) was not delivered" in caplog.text
        assert "nobody was waiting for it any more" in caplog.text
    finally:
        await asyncio.to_thread(producer.close, 0.1)
