"""Named producer clients: `north` on Apache Kafka, `south` on the embedded broker, in one service."""

from __future__ import annotations

import time
import uuid

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

import freedom
from freedom.testing import write_config


def make_topic(bootstrap: str, name: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(name, 1, 1)])[name].result(30)


def values(bootstrap: str, topic: str, timeout: float = 30.0) -> list[bytes]:
    """Every record value of partition 0 of `topic`, up to its high watermark (all publishes were acknowledged)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"check-{uuid.uuid4().hex[:6]}",
                  "session.timeout.ms": 6000, "enable.auto.commit": False})
    try:
        _, high = c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
        c.assign([TopicPartition(topic, 0, 0)])
        out: list[bytes] = []
        deadline = time.monotonic() + timeout
        while len(out) < high and time.monotonic() < deadline:
            out += [m.value() for m in c.consume(100, 0.2) if m.error() is None]
    finally:
        c.close()
    return out


async def test_select_client_routes_to_that_cluster_only(apache_kafka, embedded_kafka, tmp_path):
    topic = f"clusters-{uuid.uuid4().hex[:8]}"
    make_topic(apache_kafka.bootstrap, topic)
    make_topic(embedded_kafka.bootstrap, topic)
    write_config(tmp_path, kafka={
        "producer": {"open": True},
        "producer_clients": [
            {"name": "north", "servers": [apache_kafka.bootstrap]},
            {"name": "south", "servers": [embedded_kafka.bootstrap]},
        ],
    })
    app = freedom.Application(config_dir=tmp_path, prepare=[])
    await app.start()
    try:
        producer = app.producer
        south = await producer.new_msg(topic, b"to south").select_client("south").publish()
        south2 = await producer.new_msg(topic, b"to south, by new_msg", client="south").publish()
        north = await producer.new_msg(topic, b"to north").select_client("north").publish()
        default = await producer.new_msg(topic, b"default is the first").publish()
        batch = await producer.publish_batch([producer.new_msg(topic, b"batch south", client="south"),
                                             producer.new_msg(topic, b"batch north", client="north")])
        assert batch.ok
        assert (south.offset, south2.offset) == (0, 1)
        assert (north.offset, default.offset) == (0, 1)

        with pytest.raises(freedom.UnknownClientError) as info:
            producer.new_msg(topic, b"x").select_client("east")
        assert str(info.value) == "no producer client named 'east' in kafka.toml (known: 'north', 'south')"
        with pytest.raises(freedom.UnknownClientError, match="no producer client named 'east'"):
            producer.new_msg(topic, b"x", client="east")
    finally:
        await app.stop()
    assert values(embedded_kafka.bootstrap, topic) == [b"to south", b"to south, by new_msg", b"batch south"]
    assert values(apache_kafka.bootstrap, topic) == [b"to north", b"default is the first", b"batch north"]


async def test_the_unnamed_client_is_the_default(apache_kafka, embedded_kafka, tmp_path):
    topic = f"clusters-{uuid.uuid4().hex[:8]}"
    make_topic(apache_kafka.bootstrap, topic)
    make_topic(embedded_kafka.bootstrap, topic)
    write_config(tmp_path, kafka={
        "producer": {"open": True},
        "producer_clients": [
            {"name": "north", "servers": [apache_kafka.bootstrap]},
            {"servers": [embedded_kafka.bootstrap]},
        ],
    })
    app = freedom.Application(config_dir=tmp_path, prepare=[])
    await app.start()
    try:
        await app.producer.new_msg(topic, b"unnamed").publish()
    finally:
        await app.stop()
    assert values(embedded_kafka.bootstrap, topic) == [b"unnamed"]
    assert values(apache_kafka.bootstrap, topic) == []
