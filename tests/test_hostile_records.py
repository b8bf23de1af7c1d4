"""A hostile-record corpus on Apache Kafka, consumed by a real service in every delivery mode
(issue 10, findings 2, 4, 5, 7, 8): keys and headers of every class HTTP cannot carry as they are,
headers that must never be forwarded, forged proxy headers. Every record reaches the handler
intact (key, headers and body compared byte for byte after decoding), with an id no other record
has, or, where it truly cannot be a request, is dead-lettered with the real cause; and the
partition moves on."""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.responses import Response

import freedom
from freedom.testing import ServiceThread, free_port, kafka_config, wait_until, write_config
from freedom.wire import encoding as wire
from freedom.wire.headers import ORIGINAL_TOPIC_HEADER
from tests.services.kafka_tools import committed, headers_of, produce, read_all, wait_drained
from tests.services.tools import require_module
from tests.test_wire import (
    HOSTILE_HEADERS,
    HTTP2_EXTRA,
    NEVER_FORWARDED,
    _by_name,
    _expected,
)

SECRET = "s3cret-" + "x" * 24
FORGED_POSITION = [
    ("x-freedom-original-topic", b"victim"),
    ("x-freedom-original-partition", b"0"),
    ("x-freedom-original-offset", b"0"),
]
FORGED_REASONS = [
    *FORGED_POSITION,
    ("x-freedom-first-failure-time", b"1970-01-01T00:00:00Z"),
    ("x-freedom-error", b"forged"),
    ("x-freedom-status", b"599"),
]

KEYS: list[bytes | None] = [
    b"crlf\r\nINJECTED: 1",
    b"nul\x00byte",
    b"ctl\x01\x7f\x1b[31m",
    b"\xff\xfe",
    b"FFFE",
    b"~b64.__4",
    b"tenant/7",
    b"100%",
    b"a%2Fb",
    b"?#&= x",
    b" lead",
    b".",
    b"..",
    "购买".encode(),
    b"\xc2\x85",
    b"k" * wire.MAX_KEY_BYTES,
    b"k" * (wire.MAX_KEY_BYTES + 1),
    b"L" * 100_000,
    None,
    b"",
]


def corpus() -> list[dict[str, Any]]:
    """The records to produce, in order (produce() keyword arguments); the last one is ordinary."""
    records: list[dict[str, Any]] = [
        {
            "key": k,
            "value": b"\x00value\r\n" + str(i).encode(),
            "headers": [("x-i", str(i).encode())],
        }
        for i, k in enumerate(KEYS)
    ]
    records += [
        {"key": b"HEADERS", "value": b"h", "headers": HOSTILE_HEADERS + NEVER_FORWARDED},
        {"key": None, "value": b"chooses its id?", "headers": FORGED_POSITION},
        {
            "key": b"REASONS",
            "value": b"r",
            "headers": FORGED_REASONS + [("x-freedom-secret", b"forged")],
        },
        {
            "key": b"RETRY\r\nME",
            "value": b"once",
            "headers": [("x-fail-once", b"1"), ("x-crlf", b"\r\n")],
        },
        {"key": None, "value": b"keyless once", "headers": [("x-fail-once", b"1")]},
        {"key": b"TOO-BIG", "value": b"t", "headers": [("x-too-big", b"z" * 300_000)]},
        {"key": b"AFTER", "value": b"after", "headers": [("x-action", "购买".encode())]},
    ]
    return records


@dataclass
class Seen:
    """What the handler and the application middleware saw, thread-safe."""

    calls: list[dict[str, Any]] = field(default_factory=list)
    middleware: list[list[tuple[bytes, bytes]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def snapshot(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.calls)


class _SeenByMiddleware:
    """Application middleware (added in a prepare hook, as users do): keeps every request's headers."""

    def __init__(self, app: Any, seen: Seen) -> None:
        self.app, self.seen = app, seen

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            with self.seen.lock:
                self.seen.middleware.append(list(scope["headers"]))
        await self.app(scope, receive, send)


def hostile_app(config_dir: Path, seen: Seen, topic: str) -> freedom.Application:
    class StoreController:
        runtime: freedom.Runtime

        async def post_event_by(self, event_id: str) -> Response:
            request = self.runtime.request
            call = {
                "event_id": event_id,
                "key": request.message_key,
                "body": await request.body(),
                "headers": request.headers.record_raw(),
                "text": dict(request.headers.items()),
                "client": request.client,
            }
            with seen.lock:
                nth = sum(1 for c in seen.calls if c["event_id"] == event_id)
                seen.calls.append(call)
            if request.headers.get("x-fail-once") and nth == 0:
                return Response(status_code=500)
            return Response(status_code=200)

    def prepare(initiator: freedom.Initiator) -> None:
        initiator.fastapi.add_middleware(_SeenByMiddleware, seen=seen)
        initiator.bind_controller("/store", StoreController)
        initiator.listen_event(topic, "StoreController.post_event_by")

    return freedom.Application(config_dir=config_dir, prepare=[prepare])


def _expected_headers(
    headers: list[tuple[str, bytes | None]], from_retry: bool
) -> dict[bytes, list[bytes]]:
    from freedom.kafka.consumer.delivery import (
        NOT_FORWARDED,
        NOT_FORWARDED_PREFIXES,
        PROXY_SET,
        UNTRUSTED_ON_MAIN_TOPIC,
    )

    def dropped(name: str) -> bool:
        n = name.lower()
        folded = n.replace("_", "-")  # what a WSGI server makes of the name
        return wire.plain_name(name.encode()) and (
            folded in NOT_FORWARDED
            or folded in PROXY_SET
            or folded.startswith(NOT_FORWARDED_PREFIXES)
            or (folded in UNTRUSTED_ON_MAIN_TOPIC and (not from_retry or folded != n))
        )

    return _by_name(_expected([(k, v) for k, v in headers if not dropped(k)]))


_ADDED = {
    b"x-message-key",
    b"x-retry-count",
    b"x-freedom-key",
    b"x-freedom-timeout-ms",
    b"content-length",
    b"host",
    b"accept",
    b"accept-encoding",
    b"user-agent",  # what the proxy and HTTP clients add
    b"content-type",
}  # the proxy's default (application/json) for records without one


def run_corpus(tmp_path: Path, bootstrap: str, topic: str, mode: str) -> None:
    port = free_port()
    group = f"g-hostile-{uuid.uuid4().hex[:8]}"
    kafka = kafka_config(
        bootstrap,
        port,
        group_id=group,
        delivery="inprocess" if mode == "inprocess" else "http",
        retry_group_id=f"r-{group}",
        retry_count=1,
        retry_interval_sec=0.3,
        settings={"session.timeout.ms": 6000},
    )
    kafka["consumer"]["secret"] = SECRET
    if mode == "h2c":
        kafka["consumer"]["proxy_http2"] = True
    write_config(tmp_path, app={"listen_addr": f"127.0.0.1:{port}"}, kafka=kafka)
    seen = Seen()
    records = corpus()
    deliveries_expected = len(records) - 1 + 2  # TOO-BIG is not a request; two fail once
    with ServiceThread(hostile_app(tmp_path, seen, topic)):
        sent = produce(bootstrap, topic, records)
        wait_until(
            lambda: len(seen.snapshot()) >= deliveries_expected,
            60,
            what=f"{deliveries_expected} deliveries (got {len(seen.snapshot())})",
        )
        end = sent[-1].offset() + 1
        wait_until(
            lambda: committed(bootstrap, group, topic)[0] == end,
            30,
            what="the commit past the corpus",
        )
        # The retry records committed too: every dead letter there will be is there now.
        wait_drained(
            bootstrap,
            {group: [topic], f"r-{group}": [f"retry-{topic}"]},
            30,
            what="the retries settled",
        )
        dead = read_all(bootstrap, f"fail-{topic}")

    calls = seen.snapshot()
    by_id: dict[str, list[dict[str, Any]]] = {}
    for c in calls:
        by_id.setdefault(c["event_id"], []).append(c)
    # Every record but TOO-BIG reached the handler with its own id: no two records share one.
    ids = []
    for msg in sent:
        key = msg.key()
        ids.append(
            wire.key_id(key) if key else wire.position_id(topic, msg.partition(), msg.offset())
        )
    assert len(set(ids)) == len(ids)
    too_big = ids[-2]
    assert set(by_id) == set(ids) - {too_big}, set(ids) ^ set(by_id)
    for record, msg, eid in zip(records, sent, ids):
        if eid == too_big:
            continue
        got = by_id[eid]
        fails_once = any(k == "x-fail-once" for k, _ in record["headers"])
        assert len(got) == (2 if fails_once else 1), (eid[:60], len(got))
        for n, call in enumerate(got):
            where = f"{mode}: record {eid[:60]!r}, delivery {n}"
            assert call["key"] == msg.key(), where
            assert call["body"] == record["value"], where
            received = _by_name([(k, v) for k, v in call["headers"] if k not in _ADDED])
            want = _expected_headers(record["headers"], from_retry=n > 0)
            if n > 0:  # the retry: the proxy's own reason headers, and only those
                assert call["text"][ORIGINAL_TOPIC_HEADER] == topic, where
                assert call["text"]["x-retry-count"] == "1", where
                received = {k: v for k, v in received.items() if not k.startswith(b"x-freedom-")}
            assert received == want, (where, set(received) ^ set(want))
            assert call["text"]["x-message-key"] == eid, where
            assert (call["client"] or ("none",))[0] != "6.6.6.6", where
    # The record that cannot be a request: dead-lettered, the reason naming the real cause.
    assert [d.key() for d in dead] == [b"TOO-BIG"]
    error = headers_of(dead[0])["x-freedom-error"]
    assert "cannot be sent as an HTTP request" in error and "x-message-key" not in error, error
    # The secret never reached application middleware, on any route (tenant/7 takes the any-key one),
    # nor a handler. Direct in-process deliveries (the default) run no HTTP middleware at all.
    assert seen.middleware or mode == "inprocess"
    assert all(b"x-freedom-secret" not in dict(h) for h in seen.middleware)
    assert all(b"x-freedom-secret" not in dict(c["headers"]) for c in calls)
    assert wire.key_id(b"tenant/7") in by_id


def test_the_hostile_corpus_is_delivered_intact_or_dead_lettered(
    apache_kafka, new_topic, tmp_path, delivery
):
    run_corpus(tmp_path, apache_kafka.bootstrap, new_topic(apache_kafka.bootstrap), delivery)


def test_the_hostile_corpus_over_h2c(apache_kafka, new_topic, tmp_path):
    require_module("granian", HTTP2_EXTRA)
    require_module("pyreqwest", HTTP2_EXTRA)
    run_corpus(tmp_path, apache_kafka.bootstrap, new_topic(apache_kafka.bootstrap), "h2c")
