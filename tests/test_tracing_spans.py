"""OpenTelemetry spans, checked with the SDK's in-memory exporter, on Apache Kafka: a request publishes
(`send T`, child of the request's trace), the record fails once (`process T` with error.type, then
`send retry-T` under it) and succeeds on its retry (`process retry-T`, linked to the first attempt);
an outbox row is published (`send`, child of the trace of the request that raised the event)."""

from __future__ import annotations

import uuid

import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from starlette.responses import Response

import freedom
from freedom.config.loading import load_kafka_config
from freedom.infra import kafka
from freedom.observability import spans
from freedom.ops.replay import replay
from freedom.ops.target import target_of
from freedom.testing import ServiceThread, free_port, kafka_config, wait_until, write_config
from tests.apps import Recorder
from tests.outbox.apps import shop_app
from tests.outbox.db import outbox_rows, unique_event
from tests.services.kafka_tools import produce, wait_drained

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
REQUEST_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{REQUEST_SPAN}-01"


@pytest.fixture
def exporter():
    provider = TracerProvider()
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    spans.set_tracer_provider(provider)
    try:
        yield exporter
    finally:
        spans.set_tracer_provider(None)
        provider.shutdown()


def finished(exporter: InMemorySpanExporter, name: str) -> list:
    return [s for s in exporter.get_finished_spans() if s.name == name]


def one(exporter: InMemorySpanExporter, name: str):
    found = wait_until(lambda: finished(exporter, name), 30, what=f"the span {name!r}")
    assert len(found) == 1, [s.name for s in exporter.get_finished_spans()]
    return found[0]


def test_send_process_retry_spans_of_one_record(apache_kafka, new_topic, tmp_path, exporter):
    bootstrap = apache_kafka.bootstrap
    topic = new_topic(bootstrap)
    seen: list[
        tuple[str, str, str]
    ] = []  # (traceparent, x-retry-count, runtime.trace_id) per delivery

    class ShopController:
        runtime: freedom.Runtime
        producer: kafka.Producer

        async def get_by(self, id: int) -> str:
            await (
                self.producer.new_msg(topic, b'{"ID": 1}')
                .set_key(f"K-{id}")
                .set_runtime(self.runtime)
                .publish()
            )
            return "ok"

    class StoreController:
        runtime: freedom.Runtime

        async def post_event_by(self, event_id: str) -> Response:
            headers = self.runtime.request.headers
            seen.append((headers["traceparent"], headers["x-retry-count"], self.runtime.trace_id))
            return Response(status_code=500 if len(seen) == 1 else 200)

    def prepare(initiator: freedom.Initiator) -> None:
        initiator.bind_controller("/shop", ShopController)
        initiator.bind_controller("/store", StoreController)
        initiator.listen_event(topic, "StoreController.post_event_by")

    port = free_port()
    group = f"g-{uuid.uuid4().hex[:8]}"
    conf = write_config(
        tmp_path,
        app={"listen_addr": f"127.0.0.1:{port}"},
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
    with ServiceThread(freedom.Application(config_dir=conf, prepare=[prepare])) as svc:
        answer = httpx.get(
            f"{svc.base_url}/shop/7", headers={"traceparent": TRACEPARENT}, timeout=30
        )
        assert answer.status_code == 200
        retry_process = one(exporter, f"process retry-{topic}")
    send = one(exporter, f"send {topic}")
    process = one(exporter, f"process {topic}")
    retry_send = one(exporter, f"send retry-{topic}")
    trace_id = int(TRACE_ID, 16)
    assert {s.context.trace_id for s in (send, process, retry_send, retry_process)} == {trace_id}

    # send T: a producer span, child of the request's span, with where the broker stored it.
    assert send.kind == SpanKind.PRODUCER and send.parent.span_id == int(REQUEST_SPAN, 16)
    assert send.attributes["messaging.system"] == "kafka"
    assert send.attributes["messaging.destination.name"] == topic
    assert send.attributes["messaging.kafka.message.key"] == "K-7"
    assert send.attributes["messaging.destination.partition.id"] == "0"
    assert send.attributes["messaging.kafka.offset"] == 0

    # process T: a consumer span, child of and linked to the send span, failed with HTTP 500.
    assert process.kind == SpanKind.CONSUMER and process.parent.span_id == send.context.span_id
    assert [link.context.span_id for link in process.links] == [send.context.span_id]
    assert process.attributes["messaging.destination.name"] == topic
    assert process.attributes["messaging.destination.partition.id"] == "0"
    assert process.attributes["messaging.kafka.offset"] == 0
    assert process.attributes["messaging.kafka.message.key"] == "K-7"
    assert process.attributes["messaging.consumer.group.name"] == group
    assert (
        process.attributes["error.type"] == "500" and process.status.status_code == StatusCode.ERROR
    )
    assert process.attributes["freedom.outcome"] == "retry"

    # The produce to retry-T is a child of the process span; the retry's process span is its child,
    # linked to the first attempt's process span.
    assert (
        retry_send.kind == SpanKind.PRODUCER
        and retry_send.parent.span_id == process.context.span_id
    )
    assert retry_process.parent.span_id == retry_send.context.span_id
    links = {link.attributes["freedom.link"]: link.context.span_id for link in retry_process.links}
    assert links == {
        "creation": retry_send.context.span_id,
        "first_attempt": process.context.span_id,
    }
    assert retry_process.attributes["messaging.consumer.group.name"] == f"r-{group}"
    assert (
        "error.type" not in retry_process.attributes
        and retry_process.status.status_code != StatusCode.ERROR
    )

    # Each delivery carried its process span's context: the handler's trace is the request's.
    assert [(tp.split("-")[2], n, t) for tp, n, t in seen] == [
        (f"{process.context.span_id:016x}", "0", TRACE_ID),
        (f"{retry_process.context.span_id:016x}", "1", TRACE_ID),
    ]


def test_an_outbox_publish_is_a_send_span_in_the_trace_that_raised_the_event(
    apache_kafka, tmp_path, exporter
):
    name, topic = unique_event()
    db_url = f"sqlite+aiosqlite:///{tmp_path / 'service.db'}"
    port = free_port()
    conf = write_config(
        tmp_path / "conf",
        app={"listen_addr": f"127.0.0.1:{port}"},
        kafka=kafka_config(
            apache_kafka.bootstrap,
            port,
            group_id=f"g-{uuid.uuid4().hex[:8]}",
            initial_offset="earliest",
            settings={"session.timeout.ms": 6000},
        ),
    )
    recorder = Recorder()
    with ServiceThread(shop_app(conf, db_url, recorder, name)) as svc:
        answer = httpx.get(
            f"{svc.base_url}/shop/shopping/7", headers={"traceparent": TRACEPARENT}, timeout=30
        )
        assert answer.status_code == 200
        process = one(exporter, f"process {topic}")
        [row] = outbox_rows(db_url)
    send = one(exporter, f"send {topic}")
    assert send.kind == SpanKind.PRODUCER and send.context.trace_id == int(TRACE_ID, 16)
    assert send.attributes["messaging.message.id"] == row.event_id
    assert send.attributes["messaging.kafka.message.key"] == "7"
    assert process.parent.span_id == send.context.span_id
    assert [c.trace_id for c in recorder.snapshot()] == [TRACE_ID]


def test_a_replayed_dead_letter_is_linked_to_its_first_attempt(
    apache_kafka, new_topic, tmp_path, exporter
):
    # The record is dead-lettered at its first delivery; `freedom dlq replay` (its function) sends it
    # back to the topic, and the replay's process span links to that first attempt.
    bootstrap = apache_kafka.bootstrap
    topic = new_topic(bootstrap)
    replays: list[str | None] = []  # x-freedom-replay-count per delivery

    class StoreController:
        runtime: freedom.Runtime

        async def post_event_by(self, event_id: str) -> str:
            replays.append(self.runtime.request.headers.get("x-freedom-replay-count"))
            if len(replays) == 1:
                raise freedom.DeadLetter("broken until the fix")
            return "ok"

    def prepare(initiator: freedom.Initiator) -> None:
        initiator.bind_controller("/store", StoreController)
        initiator.listen_event(topic, "StoreController.post_event_by")

    port = free_port()
    group = f"g-{uuid.uuid4().hex[:8]}"
    conf = write_config(
        tmp_path,
        app={"listen_addr": f"127.0.0.1:{port}"},
        kafka=kafka_config(
            bootstrap,
            port,
            group_id=group,
            initial_offset="earliest",
            settings={"session.timeout.ms": 6000},
        ),
    )
    with ServiceThread(freedom.Application(config_dir=conf, prepare=[prepare])):
        produce(bootstrap, topic, [{"key": b"K-1", "value": b"{}"}])
        # Committed once its dead letter was acknowledged: the dead letter is there to replay.
        wait_drained(bootstrap, {group: [topic]}, 30, what="the record dead-lettered")
        report = replay(target_of(load_kafka_config(conf), [topic], str(conf)), topic)
        assert report.moved == 1, report
        wait_until(lambda: len(replays) == 2, 30, what="the replayed record's delivery")
        wait_until(
            lambda: len(finished(exporter, f"process {topic}")) == 2, 30, what="both process spans"
        )
    first, again = sorted(finished(exporter, f"process {topic}"), key=lambda s: s.start_time)
    assert replays == [None, "1"]
    assert first.attributes["freedom.outcome"] == "dead_letter"
    links = {link.attributes.get("freedom.link"): link.context.span_id for link in again.links}
    assert links["first_attempt"] == first.context.span_id
    assert again.attributes["messaging.kafka.offset"] == 1 and "error.type" not in again.attributes
