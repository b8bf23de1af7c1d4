"""In-process delivery (`proxy_addr = "inprocess"`) makes the same request and reads the answer by the
same rule as HTTP delivery; each test here runs in both modes and expects the same outcome."""

from __future__ import annotations

import time

import pytest

from freedom.testing import wait_until, write_config
from tests.services.event_app import Delivery, Journal, event_service
from tests.services.kafka_tools import committed, produce


def test_the_handler_gets_the_same_request_in_both_modes(
    apache_kafka, new_topic, tmp_path, delivery
):
    bootstrap = apache_kafka.bootstrap
    topic = new_topic(bootstrap)
    journal = Journal()
    svc = event_service(tmp_path, bootstrap, journal, topic, delivery=delivery)
    with svc:
        produce(
            bootstrap,
            topic,
            [
                {
                    "key": "K ü?#%".encode(),
                    "value": b'{"ID": 3}',
                    "headers": [("X-Action", "购买".encode()), ("content-length", b"999")],
                }
            ],
        )
        call = wait_until(journal.of, 20, what="the delivery")[0]
    assert call.key == "K ü?#%"  # percent-encoded in the path, decoded for the handler
    assert call.body == b'{"ID": 3}'
    assert call.headers["x-action"] == "购买"
    assert call.headers["x-message-key"] == "K ü?#%" and call.headers["x-retry-count"] == "0"
    assert call.headers["content-length"] == "9"  # the record's own content-length is not forwarded


def _raises_first(call: Delivery) -> None:
    if call.nth == 0:
        raise RuntimeError("a bug in the handler")


def test_an_exception_escaping_the_handler_is_a_failed_delivery(
    apache_kafka, new_topic, tmp_path, delivery
):
    """Over HTTP the server answers 500; in-process the proxy does the same: retried, then committed."""
    bootstrap = apache_kafka.bootstrap
    topic = new_topic(bootstrap)
    journal = Journal()
    svc = event_service(
        tmp_path,
        bootstrap,
        journal,
        topic,
        _raises_first,
        delivery=delivery,
        retry_count=1,
        retry_interval_sec=0.2,
        group_id=f"g-raise-{time.time_ns()}",
    )
    group = svc.app.kafka_config.consumer_clients[0].group_id
    with svc:
        produce(bootstrap, topic, [{"key": b"K-BUG", "value": b"x"}])
        wait_until(lambda: len(journal.of()) == 2, 30, what="the retry after the exception")
        wait_until(lambda: committed(bootstrap, group, topic)[0] == 1, 20, what="the commit")
    assert [c.headers["x-retry-count"] for c in journal.of()] == ["0", "1"]


@pytest.mark.parametrize(
    "consumer, message",
    [
        (
            {"proxy_addr": "asgi://app"},
            'consumer.proxy_addr: must start with "http://" or "https://" (or be "inprocess"',
        ),
        (
            {"proxy_addr": "inprocess", "proxy_http2": True},
            'consumer.proxy_http2: has no effect with proxy_addr = "inprocess"',
        ),
    ],
)
def test_a_wrong_proxy_addr_gets_one_clear_error(tmp_path, consumer, message):
    from freedom.config.loading import load_kafka_config
    from freedom.errors import ConfigError

    write_config(
        tmp_path,
        kafka={
            "consumer": {"open": True, **consumer},
            "consumer_clients": [{"servers": ["127.0.0.1:9092"]}],
        },
    )
    with pytest.raises(ConfigError) as err:
        load_kafka_config(tmp_path)
    assert message in str(err.value) and "kafka.toml" in str(err.value)
