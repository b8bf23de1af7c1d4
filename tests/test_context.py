"""Context propagation (docs/contract.md, "The bus and the trace"): bus and trace from an HTTP request through A -> B -> C, and untrusted input."""

from __future__ import annotations

import json
import logging
import threading
import uuid
from typing import Any

import httpx
import pytest

import freedom
from freedom.infra import kafka
from freedom.observability import tracing
from freedom.testing import ServiceThread, free_port, kafka_config, wait_until, write_config
from freedom.wire.context import MAX_BUS_BYTES

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def chain_app(
    config_dir, topic_b: str, topic_c: str, seen: list[dict[str, Any]]
) -> freedom.Application:
    """A publishes to B's topic from an HTTP request; B (a plain def) publishes to C's; C records what it got."""
    lock = threading.Lock()

    class AController:
        runtime: freedom.Runtime
        producer: kafka.Producer

        async def get_by(self, id: int) -> str:
            self.runtime.bus["user"] = "u1"
            self.runtime.logger.info("hop A: order %s", id)
            await (
                self.producer.new_msg(topic_b, json.dumps({"order": id}))
                .set_runtime(self.runtime)
                .publish()
            )
            return "ok"

    class BController:
        runtime: freedom.Runtime
        producer: kafka.Producer

        def post_hop_by(self, event_id: str) -> str:  # synchronous: runs in the threadpool
            self.runtime.bus["via"] = "B"
            self.runtime.logger.info("hop B: event %s", event_id)
            self.producer.new_msg(topic_c, event_id).set_runtime(self.runtime).publish_sync(
                timeout=30
            )
            return "ok"

    class CController:
        runtime: freedom.Runtime

        async def post_hop_by(self, event_id: str) -> str:
            self.runtime.logger.info("hop C: event %s", event_id)
            with lock:
                seen.append(
                    {
                        "bus": dict(self.runtime.bus),
                        "trace_id": self.runtime.trace_id,
                        "tracestate": self.runtime.request.headers.get("tracestate"),
                    }
                )
            return "ok"

    def prepare(initiator: freedom.Initiator) -> None:
        initiator.bind_controller("/a", AController)
        initiator.bind_controller("/b", BController)
        initiator.bind_controller("/c", CController)
        initiator.listen_event(topic_b, "BController.post_hop_by")
        initiator.listen_event(topic_c, "CController.post_hop_by")

    return freedom.Application(config_dir=config_dir, prepare=[prepare])


def run_chain(
    tmp_path, bootstrap: str, new_topic, headers: dict[str, str]
) -> tuple[dict[str, Any], list[logging.LogRecord]]:
    topic_b, topic_c = new_topic(bootstrap), new_topic(bootstrap)
    port = free_port()
    write_config(
        tmp_path,
        app={"listen_addr": f"127.0.0.1:{port}"},
        kafka=kafka_config(
            bootstrap,
            port,
            group_id=f"g-{uuid.uuid4().hex[:8]}",
            settings={"session.timeout.ms": 6000},
        ),
    )
    seen: list[dict[str, Any]] = []
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep(logging.INFO)
    logger = logging.getLogger("freedom")
    old_level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        with ServiceThread(chain_app(tmp_path, topic_b, topic_c, seen)) as svc:
            assert httpx.get(f"{svc.base_url}/a/7", headers=headers, timeout=30).text == "ok"
            wait_until(lambda: seen, 40, what="the event to reach C through B")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    assert len(seen) == 1, seen
    return seen[0], records


def hop_lines(records: list[logging.LogRecord]) -> dict[str, logging.LogRecord]:
    return {r.getMessage().split("hop ")[1][0]: r for r in records if "hop " in r.getMessage()}


def test_bus_and_trace_travel_a_to_b_to_c(apache_kafka, new_topic, tmp_path):
    headers = {
        "traceparent": f"00-{TRACE}-00f067aa0ba902b7-01",
        "tracestate": "vendor=abc",
        "x-freedom-bus": json.dumps({"tenant": "acme"}),
    }
    c, records = run_chain(tmp_path, apache_kafka.bootstrap, new_topic, headers)
    assert c["bus"] == {"tenant": "acme", "user": "u1", "via": "B"}
    assert c["trace_id"] == TRACE
    assert c["tracestate"] == "vendor=abc"  # OpenTelemetry's propagator carries tracestate on
    lines = hop_lines(records)
    assert sorted(lines) == ["A", "B", "C"]
    for hop, record in lines.items():
        assert record.trace_id == TRACE, hop  # type: ignore[attr-defined]
        assert record.getMessage().startswith(f"[trace {TRACE}] hop {hop}")


def test_a_new_trace_started_by_a_travels_with_plain_w3c_headers(
    apache_kafka, new_topic, tmp_path, monkeypatch
):
    monkeypatch.setattr(tracing, "otel_propagate", None)  # as without opentelemetry-api installed
    c, records = run_chain(tmp_path, apache_kafka.bootstrap, new_topic, {})
    lines = hop_lines(records)
    started = lines["A"].trace_id  # type: ignore[attr-defined]
    assert len(started) == 32 and started != TRACE
    assert c["trace_id"] == started
    assert [lines[h].trace_id for h in "BC"] == [started, started]  # type: ignore[attr-defined]
    assert c["bus"] == {"user": "u1", "via": "B"}


# ----------------------------------------------------------------------------- untrusted bus header


@pytest.fixture
def echo(tmp_path):
    class EchoController:
        runtime: freedom.Runtime

        async def post_echo(self) -> dict[str, Any]:
            return dict(self.runtime.bus)

    def prepare(initiator: freedom.Initiator) -> None:
        initiator.bind_controller("/x", EchoController)

    app = freedom.Application(config_dir=tmp_path, prepare=[prepare])
    with httpx.Client(transport=_SyncASGI(app), base_url="http://svc") as client:
        yield client


class _SyncASGI(httpx.BaseTransport):
    """Calls the ASGI app in-process (no Kafka here, so no lifespan is needed)."""

    def __init__(self, app: Any) -> None:
        self._asgi = httpx.ASGITransport(app=app)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        import asyncio

        async def call() -> httpx.Response:
            request.stream = httpx.ByteStream(request.read())
            response = await self._asgi.handle_async_request(request)
            return httpx.Response(
                response.status_code, headers=response.headers, content=await response.aread()
            )

        return asyncio.run(call())


@pytest.mark.parametrize(
    "value, warning",
    [
        ('{"tenant": ', "not valid JSON"),
        ('["a", "b"]', "not a JSON object"),
        (json.dumps({"blob": "x" * MAX_BUS_BYTES}), f"over the {MAX_BUS_BYTES}-byte limit"),
    ],
)
def test_bad_bus_header_is_ignored_with_a_warning(echo, caplog, value, warning):
    with caplog.at_level(logging.WARNING, logger="freedom.wire.context"):
        r = echo.post("/x/echo", headers={"x-freedom-bus": value})
    assert r.status_code == 200 and r.json() == {}
    assert warning in caplog.text and "x-freedom-bus" in caplog.text


def test_good_bus_header_reaches_the_runtime(echo):
    r = echo.post("/x/echo", headers={"x-freedom-bus": json.dumps({"tenant": "acme", "n": 2})})
    assert r.json() == {"tenant": "acme", "n": 2}


# ----------------------------------------------------------------------------- trace headers


@pytest.mark.parametrize("otel", [True, False])
def test_inject_continues_the_trace_with_a_new_span(monkeypatch, otel):
    if not otel:
        monkeypatch.setattr(tracing, "otel_propagate", None)
    incoming = tracing.extract_trace({"traceparent": f"00-{TRACE}-00f067aa0ba902b7-01"})
    assert incoming.trace_id == TRACE
    out = tracing.inject_trace(incoming)
    version, trace_id, span_id, flags = out["traceparent"].split("-")
    assert (version, trace_id, flags) == ("00", TRACE, "01")
    assert span_id != "00f067aa0ba902b7" and len(span_id) == 16
    assert tracing.extract_trace(out).trace_id == TRACE


@pytest.mark.parametrize("otel", [True, False])
@pytest.mark.parametrize(
    "value", [None, "garbage", f"00-{'0' * 32}-00f067aa0ba902b7-01", f"00-{TRACE}-{'0' * 16}-01"]
)
def test_invalid_traceparent_starts_a_new_trace(monkeypatch, otel, value):
    if not otel:
        monkeypatch.setattr(tracing, "otel_propagate", None)
    headers = {"traceparent": value} if value else {}
    trace = tracing.extract_trace(headers)
    assert len(trace.trace_id) == 32 and trace.trace_id not in (TRACE, "0" * 32)
    assert tracing.extract_trace(tracing.inject_trace(trace)).trace_id == trace.trace_id
