"""`log_format = "json"` in app.toml, on Apache Kafka: the service's log lines are JSON objects; the
consumer proxy's lines about a record carry its topic, partition, offset, outcome and trace id,
and a handler's `runtime.logger` lines the same trace id."""

from __future__ import annotations

import io
import json
import logging
import uuid

import pytest
from starlette.responses import Response

import freedom
from freedom.testing import ServiceThread, free_port, kafka_config, write_config
from tests.services.kafka_tools import produce, wait_drained

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"


@pytest.fixture
def log_output():
    """A plain stderr-like handler on the root logger (as `freedom run` has); the root logger's
    handlers get their formatters back afterwards."""
    root = logging.getLogger()
    saved = [(h, h.formatter) for h in root.handlers]
    level = root.level
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        for h, formatter in saved:
            h.setFormatter(formatter)


def test_json_lines_carry_the_record_and_the_trace(apache_kafka, new_topic, tmp_path, log_output):
    bootstrap = apache_kafka.bootstrap
    topic = new_topic(bootstrap)

    class StoreController:
        runtime: freedom.Runtime

        async def post_event_by(self, event_id: str) -> Response:
            self.runtime.logger.info("handling %s", event_id)
            return Response(status_code=503)

    def prepare(initiator: freedom.Initiator) -> None:
        initiator.bind_controller("/store", StoreController)
        initiator.listen_event(topic, "StoreController.post_event_by")

    port = free_port()
    group = f"g-{uuid.uuid4().hex[:8]}"
    conf = write_config(
        tmp_path,
        app={"listen_addr": f"127.0.0.1:{port}", "log_format": "json"},
        kafka=kafka_config(
            bootstrap,
            port,
            group_id=group,
            retry_group_id=f"r-{group}",
            retry_count=1,
            retry_interval_sec=0.2,
            settings={"session.timeout.ms": 6000},
        ),
    )
    with ServiceThread(freedom.Application(config_dir=conf, prepare=[prepare])):
        produce(
            bootstrap,
            topic,
            [
                {
                    "key": b"K-JSON",
                    "value": b"{}",
                    "headers": [("traceparent", f"00-{TRACE_ID}-b7ad6b7169203331-01".encode())],
                }
            ],
        )
        # The record and its retry committed: it is dead-lettered, every line about it written.
        wait_drained(
            bootstrap,
            {group: [topic], f"r-{group}": [f"retry-{topic}"]},
            30,
            what="the record dead-lettered",
        )
    lines = [line for line in log_output.getvalue().splitlines() if line]
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all({"time", "level", "logger", "message"} <= r.keys() for r in records)
    about = [r for r in records if r.get("topic") in (topic, f"retry-{topic}")]
    assert [
        (
            r["logger"],
            r["level"],
            r["topic"],
            r["partition"],
            r["offset"],
            r["outcome"],
            r["trace_id"],
        )
        for r in about
    ] == [
        ("freedom.kafka.proxy", "WARNING", topic, 0, 0, "retry", TRACE_ID),
        ("freedom.kafka.proxy", "WARNING", f"retry-{topic}", 0, 0, "dead_letter", TRACE_ID),
    ]
    assert "HTTP 503" in about[0]["message"] and f"fail-{topic}" in about[1]["message"]
    handled = [r for r in records if r["logger"] == "freedom" and "handling K-JSON" in r["message"]]
    assert [(r["level"], r["trace_id"]) for r in handled] == [("INFO", TRACE_ID)] * 2
