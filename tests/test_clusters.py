"""Named producer clients: `north` on Apache Kafka, `south` on the embedded broker, in one service."""

from __future__ import annotations

import uuid

import pytest

import freedom
from freedom.testing import write_config
from tests.services.kafka_tools import create_topic, read_partition


def values(bootstrap: str, topic: str) -> list[bytes]:
    """Every record value of partition 0 of `topic`, up to its high watermark (all publishes were acknowledged)."""
    return [record.value() for record in read_partition(bootstrap, topic)]


def two_clusters(
    apache_kafka, embedded_kafka, tmp_path, south: dict
) -> tuple[freedom.Application, str]:
    """An app with producer clients `north` (Apache Kafka) and `south` (the embedded broker, named
    or not per `south`), and a topic made on both."""
    topic = f"clusters-{uuid.uuid4().hex[:8]}"
    create_topic(apache_kafka.bootstrap, topic)
    create_topic(embedded_kafka.bootstrap, topic)
    write_config(
        tmp_path,
        kafka={
            "producer": {"open": True},
            "producer_clients": [
                {"name": "north", "servers": [apache_kafka.bootstrap]},
                {**south, "servers": [embedded_kafka.bootstrap]},
            ],
        },
    )
    return freedom.Application(config_dir=tmp_path, prepare=[]), topic


async def test_select_client_routes_to_that_cluster_only(apache_kafka, embedded_kafka, tmp_path):
    app, topic = two_clusters(apache_kafka, embedded_kafka, tmp_path, {"name": "south"})
    await app.start()
    try:
        producer = app.producer
        south = await producer.new_msg(topic, b"to south").select_client("south").publish()
        south2 = await producer.new_msg(topic, b"to south, by new_msg", client="south").publish()
        north = await producer.new_msg(topic, b"to north").select_client("north").publish()
        default = await producer.new_msg(topic, b"default is the first").publish()
        batch = await producer.publish_batch(
            [
                producer.new_msg(topic, b"batch south", client="south"),
                producer.new_msg(topic, b"batch north", client="north"),
            ]
        )
        assert batch.ok
        assert (south.offset, south2.offset) == (0, 1)
        assert (north.offset, default.offset) == (0, 1)

        with pytest.raises(freedom.UnknownClientError) as info:
            producer.new_msg(topic, b"x").select_client("east")
        assert (
            str(info.value)
            == "no producer client named 'east' in kafka.toml (known: 'north', 'south')"
        )
        with pytest.raises(freedom.UnknownClientError, match="no producer client named 'east'"):
            producer.new_msg(topic, b"x", client="east")
    finally:
        await app.stop()
    assert values(embedded_kafka.bootstrap, topic) == [
        b"to south",
        b"to south, by new_msg",
        b"batch south",
    ]
    assert values(apache_kafka.bootstrap, topic) == [
        b"to north",
        b"default is the first",
        b"batch north",
    ]


async def test_the_unnamed_client_is_the_default(apache_kafka, embedded_kafka, tmp_path):
    app, topic = two_clusters(apache_kafka, embedded_kafka, tmp_path, {})
    await app.start()
    try:
        await app.producer.new_msg(topic, b"unnamed").publish()
    finally:
        await app.stop()
    assert values(embedded_kafka.bootstrap, topic) == [b"unnamed"]
    assert values(apache_kafka.bootstrap, topic) == []
