"""librdkafka's own log lines reach Python logging (the `freedom.kafka.librdkafka` logger), not raw stderr."""

from __future__ import annotations

import logging

import confluent_kafka

from freedom.kafka.settings import client_settings
from freedom.testing import free_port, wait_until


def test_a_broker_that_is_down_is_reported_through_logging(caplog):
    caplog.set_level(logging.INFO, logger="freedom.kafka.librdkafka")
    settings = client_settings((f"127.0.0.1:{free_port()}",), "producer", "default", {}, {})
    producer = confluent_kafka.Producer(settings)
    try:

        def reported() -> list[logging.LogRecord]:
            producer.poll(0.1)  # librdkafka's log lines are handed over on poll
            return [
                r
                for r in caplog.records
                if r.name == "freedom.kafka.librdkafka" and "Connect" in r.getMessage()
            ]

        records = wait_until(reported, 20, what="librdkafka's connection failure in the log")
    finally:
        producer.flush(0)
    assert records[0].levelno >= logging.WARNING
