"""The wire contract with Go freedom services (the 2020-era framework, `8treenet/freedom`) on the same topics.

Records are shaped exactly as that service writes them (infra/kafka/msg.go, retry.go there): the
key is a version-1 UUID's 32 hex digits in upper case; the headers are `x-freedom-bus` (the bus as
JSON, the trace id under `TRACE-ID`) and the publisher's own, raw UTF-8 (`x-action: 购买`); no
content-type; a retry record carries only a decimal `x-retry-count`. Both directions through the
retry topics: a Go retry record read by the Python proxy's retry group, and the retry record the
Python proxy writes, checked for what the Go retry consumer reads (the topic `{retry_prefix}T`,
the key and value as they were, one `x-retry-count` that `strconv.Atoi` takes, the record time
for its delay, header values its HTTP client can send). The Go TRACE-ID is the trace of the
handler's runtime, of the proxy's JSON log lines and of its `process` spans (the SDK's in-memory
exporter).
"""

from __future__ import annotations

import io
import json
import logging
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from starlette.responses import Response

import freedom
from freedom.observability import spans
from freedom.observability.json_logs import JsonFormatter
from freedom.observability.tracing import TraceContext, inject_trace
from freedom.testing import ServiceThread, free_port, kafka_config, wait_until, write_config
from tests.services.kafka_tools import create_topic, headers_of, produce, read_all, wait_drained

ACTION = "购买".encode()  # the Go example's x-action ("buy"), raw UTF-8


def go_key() -> bytes:
    """A message key as Go freedom makes one: a version-1 UUID, dashes removed, upper case."""
    return uuid.uuid1().hex.upper().encode()


def go_bus(trace_id: str) -> bytes:
    """The `x-freedom-bus` header of a Go freedom service whose trace middleware set TRACE-ID."""
    return b'{"TRACE-ID":"' + trace_id.encode() + b'"}'


@dataclass
class Seen:
    key: str
    headers: dict[str, str]
    body: bytes
    trace_id: str
    bus: dict[str, Any]


@dataclass
class Service:
    topic: str
    bootstrap: str
    seen: list[Seen]
    fail: dict[str, int]  # key -> how many deliveries fail before one succeeds
    exporter: InMemorySpanExporter  # the spans of the service's consumer proxy
    logs: io.StringIO  # the proxy's log lines, as JSON
    reads: dict[str, list[str]]  # its groups and the topics they read (kafka_tools.wait_drained)

    def json_lines(self, key: bytes) -> list[dict[str, Any]]:
        """The proxy's JSON log lines about the records whose key is `key`."""
        lines = [json.loads(line) for line in self.logs.getvalue().splitlines() if line]
        return [line for line in lines if key.decode() in line["message"]]

    def process_spans(self, key: bytes) -> list[Any]:
        return [
            s
            for s in self.exporter.get_finished_spans()
            if s.name.startswith("process ")
            and s.attributes.get("messaging.kafka.message.key") == key.decode()
        ]


@pytest.fixture(scope="module")
def tracing() -> Iterator[tuple[InMemorySpanExporter, io.StringIO]]:
    """freedom's spans into an in-memory exporter, the proxy's log lines formatted as JSON."""
    provider = TracerProvider()
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    spans.set_tracer_provider(provider)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    proxy_log = logging.getLogger("freedom.kafka.proxy")
    proxy_log.addHandler(handler)
    try:
        yield exporter, stream
    finally:
        proxy_log.removeHandler(handler)
        spans.set_tracer_provider(None)
        provider.shutdown()


@pytest.fixture(scope="module")
def service(
    apache_kafka: Any,
    tmp_path_factory: pytest.TempPathFactory,
    tracing: tuple[InMemorySpanExporter, io.StringIO],
) -> Iterator[Service]:
    """A Python freedom service on topic T with retry_count 2, whose handler notes what it saw."""
    bootstrap = apache_kafka.bootstrap
    topic = create_topic(bootstrap, f"go-{uuid.uuid4().hex[:8]}")
    create_topic(bootstrap, f"retry-{topic}")
    create_topic(bootstrap, f"fail-{topic}")
    seen: list[Seen] = []
    fail: dict[str, int] = {}

    class StoreController:
        runtime: freedom.Runtime

        async def post_goods_by(self, event_id: str) -> Response:
            rt = self.runtime
            seen.append(
                Seen(
                    event_id,
                    dict(rt.request.headers.items()),
                    await rt.request.body(),
                    rt.trace_id,
                    dict(rt.bus),
                )
            )
            left = fail.get(event_id, 0)
            if left:
                fail[event_id] = left - 1
                return Response(status_code=500)
            return Response(status_code=200)

    def prepare(initiator: freedom.Initiator) -> None:
        initiator.bind_controller("/store", StoreController)
        initiator.listen_event(topic, "StoreController.post_goods_by")

    port = free_port()
    group = f"go-{uuid.uuid4().hex[:8]}"
    config = write_config(
        Path(tmp_path_factory.mktemp("go")),
        app={"listen_addr": f"127.0.0.1:{port}"},
        kafka=kafka_config(
            bootstrap,
            port,
            group_id=group,
            retry_group_id=f"r-{group}",
            retry_count=2,
            retry_interval_sec=0.5,
            initial_offset="earliest",
            settings={"session.timeout.ms": 6000},
        ),
    )
    with ServiceThread(freedom.Application(config_dir=config, prepare=[prepare])):
        reads = {group: [topic], f"r-{group}": [f"retry-{topic}"]}
        yield Service(topic, bootstrap, seen, fail, *tracing, reads)


def _valid_http_value(value: bytes) -> bool:
    """What Go's net/http sends as a header value: no control characters but tab."""
    return not re.search(rb"[\x00-\x08\x0a-\x1f\x7f]", value)


def test_a_go_record_is_delivered_with_its_trace_id_and_its_python_retry_record_is_what_go_reads(
    service,
):
    key, trace = go_key(), uuid.uuid1().hex
    service.fail[key.decode()] = 1
    sent = time.time()
    produce(
        service.bootstrap,
        service.topic,
        [
            {
                "key": key,
                "value": b'{"goodsId":1,"num":2}',
                "headers": [("x-freedom-bus", go_bus(trace)), ("x-action", ACTION)],
            }
        ],
    )
    calls = wait_until(
        lambda: (
            [s for s in service.seen if s.key == key.decode()][:2]
            if len([s for s in service.seen if s.key == key.decode()]) >= 2
            else None
        ),
        30,
        what="the Go record's delivery and its retry",
    )
    first, again = calls
    assert first.body == b'{"goodsId":1,"num":2}'
    assert first.headers["x-message-key"] == key.decode() and first.headers["x-action"] == "购买"
    assert (
        first.headers["content-type"] == "application/json"
    )  # the Go side sends none: JSON is assumed
    assert (
        first.trace_id == trace and again.trace_id == trace
    )  # TRACE-ID becomes the Python trace id
    assert first.bus == {"TRACE-ID": trace}
    assert [first.headers["x-retry-count"], again.headers["x-retry-count"]] == ["0", "1"]
    # What the Python proxy publishes on goes on in the same trace.
    assert inject_trace(TraceContext(first.trace_id))["traceparent"].split("-")[1] == trace
    # The proxy's JSON log line of the failed delivery, and its process spans, are in that trace too.
    [logged] = service.json_lines(key)
    assert (logged["topic"], logged["outcome"], logged["trace_id"]) == (
        service.topic,
        "retry",
        trace,
    )
    processed = wait_until(
        lambda: service.process_spans(key) if len(service.process_spans(key)) == 2 else None,
        30,
        what="the process spans of the Go record and of its retry",
    )
    assert {s.name for s in processed} == {
        f"process {service.topic}",
        f"process retry-{service.topic}",
    }
    assert {f"{s.context.trace_id:032x}" for s in processed} == {trace}
    first_process = next(s for s in processed if s.name == f"process {service.topic}")
    assert first_process.links == ()  # the Go side has no span to link to: its parent is a stand-in

    # The retry record the Python proxy wrote, as the Go retry consumer reads it (retry.go); once
    # the record and its retry are committed, no other retry record of it can still come.
    wait_drained(service.bootstrap, service.reads, 30, what="the record and its retry settled")
    [record] = [r for r in read_all(service.bootstrap, f"retry-{service.topic}") if r.key() == key]
    assert record.topic() == "retry-" + service.topic  # the topic is the prefix trimmed off
    assert record.value() == b'{"goodsId":1,"num":2}'  # key and value as they were
    raw = record.headers()
    counts = [v for k, v in raw if k == "x-retry-count"]
    assert counts == [b"1"] and int(counts[0].decode()) == 1  # one, decimal: strconv.Atoi takes it
    assert (
        dict(raw)["x-freedom-bus"] == go_bus(trace) and dict(raw)["x-action"] == ACTION
    )  # byte for byte
    assert not any(k.lower() == "content-type" for k, _ in raw)  # nothing the Go side did not send
    assert all(_valid_http_value(v or b"") for _, v in raw), (
        raw
    )  # its HTTP client can send every header
    kind, stamp = record.timestamp()
    assert (
        kind == 1 and sent - 5 <= stamp / 1000 <= time.time() + 5
    )  # CreateTime, now: its delay counts from it


def test_a_go_retry_record_is_delivered_by_the_retry_group_and_dead_lettered_without_invented_reasons(
    service,
):
    key, trace = go_key(), uuid.uuid1().hex
    service.fail[key.decode()] = 99
    # A Go service's retry record on its last retry (x-retry-count == retry_count: its next stop is fail-T).
    produce(
        service.bootstrap,
        f"retry-{service.topic}",
        [
            {
                "key": key,
                "value": b'{"goodsId":2}',
                "headers": [
                    ("x-freedom-bus", go_bus(trace)),
                    ("x-action", ACTION),
                    ("x-retry-count", b"2"),
                ],
            }
        ],
    )
    # Committed once its dead letter was acknowledged: every dead letter of it is there now.
    wait_until(lambda: [s for s in service.seen if s.key == key.decode()], 30, what="the delivery")
    wait_drained(service.bootstrap, service.reads, 30, what="the retry record settled")
    [dead] = [r for r in read_all(service.bootstrap, f"fail-{service.topic}") if r.key() == key]
    [call] = [s for s in service.seen if s.key == key.decode()]
    assert (
        call.headers["x-retry-count"] == "2"
        and call.trace_id == trace
        and call.headers["x-action"] == "购买"
    )
    h = headers_of(dead)
    assert dead.value() == b'{"goodsId":2}'
    assert h["x-freedom-original-topic"] == service.topic  # known: the topic retry-T retries
    # Not known, so not invented: the Go record never said where it was first read, or when it failed.
    assert not {
        "x-freedom-original-partition",
        "x-freedom-original-offset",
        "x-freedom-first-failure-time",
    } & set(h)
    assert (
        h["x-retry-count"] == "2"
        and h["x-freedom-status"] == "500"
        and h["x-freedom-error"] == "HTTP 500"
    )
    raw = dict(dead.headers())
    assert raw["x-freedom-bus"] == go_bus(trace) and raw["x-action"] == ACTION


def test_a_go_trace_id_that_is_not_32_hex_digits_starts_a_new_trace(service):
    """Go's trace middleware passes a client's TRACE-ID request header on verbatim: a value that is
    not 32 hex digits is not a trace id here (docs/migrating-from-go.md). The record starts a new
    trace (its process span's), which the handler and the proxy's log line carry."""
    key = go_key()
    service.fail[key.decode()] = 1
    produce(
        service.bootstrap,
        service.topic,
        [
            {
                "key": key,
                "value": b"{}",
                "headers": [("x-freedom-bus", go_bus("order-42")), ("x-action", ACTION)],
            }
        ],
    )
    calls = wait_until(
        lambda: (
            [s for s in service.seen if s.key == key.decode()][:2]
            if len([s for s in service.seen if s.key == key.decode()]) >= 2
            else None
        ),
        30,
        what="the record's delivery and its retry",
    )
    processed = wait_until(
        lambda: service.process_spans(key) if len(service.process_spans(key)) == 2 else None,
        30,
        what="the process spans of the record and of its retry",
    )
    [trace] = {
        f"{s.context.trace_id:032x}" for s in processed
    }  # one new trace, carried on by the retry
    assert [c.trace_id for c in calls] == [trace, trace] and "order-42" not in trace
    assert calls[0].bus == {
        "TRACE-ID": "order-42"
    }  # the Go bus itself reaches the handler as it was
    [logged] = service.json_lines(key)
    assert (logged["outcome"], logged["trace_id"]) == ("retry", trace)
