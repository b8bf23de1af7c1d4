"""Publishing: acknowledged records, and a clear error within the timeout when the broker is down."""

from __future__ import annotations

import time

import pytest

import freedom
from freedom.kafka.embedded import EmbeddedBroker
from freedom.testing import write_config
from tests.kafka.broker import ApacheKafka


def producer_app(tmp_path, bootstrap: str, timeout_sec: float) -> freedom.Application:
    write_config(
        tmp_path,
        kafka={
            "producer": {"open": True},
            "producer_clients": [{"servers": [bootstrap], "delivery_timeout_sec": timeout_sec}],
        },
    )
    return freedom.Application(config_dir=tmp_path, prepare=[])


@pytest.mark.parametrize("kind", ["apache", "embedded"])
async def test_publish_to_a_broker_that_is_down_raises_within_the_timeout(kind, tmp_path):
    own = ApacheKafka() if kind == "apache" else EmbeddedBroker()
    own.start()
    app = producer_app(tmp_path, own.bootstrap, timeout_sec=3)
    await app.start()
    try:
        delivered = await app.producer.new_msg("down-test", b"before").publish()
        assert delivered.topic == "down-test" and delivered.offset >= 0
        own.stop()
        started = time.monotonic()
        with pytest.raises(freedom.PublishError) as info:
            await app.producer.new_msg("down-test", b"after").publish()
        elapsed = time.monotonic() - started
        assert elapsed < 3 + 5, f"publish took {elapsed:.1f} s with a 3 s delivery timeout"
        assert "was not delivered" in str(info.value) and "down-test" in str(info.value)
    finally:
        await app.stop()
        if kind == "apache":
            own.close()
        else:
            own.stop()


async def test_publish_after_stop_is_a_clear_error(apache_kafka, tmp_path):
    app = producer_app(tmp_path, apache_kafka.bootstrap, timeout_sec=10)
    await app.start()
    await app.stop()
    with pytest.raises(freedom.PublishError, match="the service has stopped"):
        await app.producer.new_msg("t", b"x").publish()


async def test_unknown_client_name_raises_at_the_call(apache_kafka, tmp_path):
    app = producer_app(tmp_path, apache_kafka.bootstrap, timeout_sec=10)
    await app.start()
    try:
        with pytest.raises(freedom.UnknownClientError, match="no producer client named 'south'"):
            app.producer.new_msg("t", b"x").select_client("south")
        with pytest.raises(freedom.UnknownClientError):
            app.producer.new_msg("t", b"x", client="south")
    finally:
        await app.stop()
