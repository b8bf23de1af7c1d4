"""How keys and header values travel from a record to the handler (freedom.wire.encoding, delivery.py, the
transports): injective event ids, the header encoding and its decoding by freedom's Request,
headers never forwarded, interim answers, log lines."""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import re
import socket
import threading
import time
from typing import Any

import pytest
import uvicorn

from freedom.kafka.consumer.delivery import (
    MAX_HEADER_BYTES,
    NOT_FORWARDED,
    EventRoute,
    request_headers,
)
from freedom.kafka.consumer.keys import EventId, record_key, where
from freedom.kafka.transports.asgi import AsgiTransport
from freedom.kafka.transports.http1 import Http1Transport
from freedom.testing import free_port, wait_until
from freedom.web.runtime import Request, Utf8Headers
from freedom.wire import encoding as wire
from freedom.wire.headers import CONTROL_HEADERS, REASON_HEADERS, REPLAY_HEADERS
from tests.services.asgi_parts import read_body, serve_lifespan
from tests.services.tools import require_module

ROUTE = EventRoute("t", "/store/event/{event_id}", "event_id")
#: How to get the h2c libraries (granian, pyreqwest) a test needs.
HTTP2_EXTRA = "the http2 extra: bash scripts/setup.sh installs it"


class Rec:
    """A consumed record's accessors (confluent_kafka.Message cannot be built in Python)."""

    def __init__(
        self,
        key: bytes | None,
        topic: str = "T",
        partition: int = 0,
        offset: int = 0,
        headers: list[tuple[str, bytes | None]] | None = None,
    ) -> None:
        self._key, self._topic, self._partition, self._offset, self._headers = (
            key,
            topic,
            partition,
            offset,
            headers,
        )

    def key(self) -> bytes | None:
        return self._key

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def headers(self) -> list[tuple[str, bytes | None]] | None:
        return self._headers


HOSTILE_KEYS: list[bytes] = [
    b"plain",
    b"FFFE",
    b"\xff\xfe",
    b"~b64.__4",
    b"~",
    b"~pos.T.0.1",
    b"~sha256." + b"0" * 64,
    b"crlf\r\nINJECTED",
    b"nul\x00",
    b"\x01",
    b"\x7f",
    b"\xc2\x85",
    "\u2028".encode(),
    b" lead",
    b"trail ",
    b".",
    b"..",
    b"tenant/7",
    b"100%",
    b"a%2Fb",
    "购买".encode(),
    b"x" * wire.MAX_KEY_BYTES,
    b"x" * (wire.MAX_KEY_BYTES + 1),
    b"y" * 100_000,
    b"\x00" * 10,
    bytes(range(256)),
]


# --------------------------------------------------------------------------- event ids


def test_event_ids_are_injective_and_give_the_key_back():
    ids = [wire.key_id(k) for k in HOSTILE_KEYS]
    assert wire.key_id(b"") == "~b64." and "~b64." not in ids  # never an empty path parameter
    assert len(set(ids)) == len(ids), [i for i in ids if ids.count(i) > 1]
    # The hex-collision pair of issue 10 (finding 5): a non-UTF-8 key and the text of its hex spelling.
    assert wire.key_id(b"\xff\xfe") != wire.key_id(b"FFFE") == "FFFE"
    # A text key that spells another key's id is encoded itself.
    assert wire.key_id(b"~b64.__4") != wire.key_id(b"\xff\xfe") == "~b64.__4"
    for key, eid in zip(HOSTILE_KEYS, ids):
        assert (
            eid.isprintable()
            and eid.strip() == eid
            and len(eid.encode()) <= 4 * wire.MAX_KEY_BYTES // 3 + 10
        )
        full = None if wire.is_key_itself(eid) else wire.b64encode(key)
        assert wire.key_of(eid, full) == key
        if not eid.startswith(wire.DIGEST_ID_PREFIX):
            assert wire.key_of(eid, None) == key  # the id alone gives it back, up to MAX_KEY_BYTES


def test_random_keys_never_collide_with_text_keys_or_each_other():
    rng = random.Random(10)
    keys = {bytes(rng.randrange(256) for _ in range(rng.randrange(1, 12))) for _ in range(20_000)}
    keys |= {wire.key_id(k).encode() for k in list(keys)}  # every id, as a text key of its own
    ids = {wire.key_id(k) for k in keys}
    assert len(ids) == len(keys)


def test_a_keyless_record_gets_its_position_and_cannot_choose_its_id_on_the_main_topic():
    forged = [
        ("x-freedom-original-topic", b"T"),
        ("x-freedom-original-partition", b"0"),
        ("x-freedom-original-offset", b"1"),
    ]
    main = record_key(Rec(None, "T", 0, 2, forged), from_retry_topic=False)
    victim = record_key(Rec(None, "T", 0, 1), from_retry_topic=False)
    assert main == "~pos.T.0.2" and victim == "~pos.T.0.1"
    # On the retry topic the proxy's own headers give the id of the first delivery.
    retry = record_key(Rec(None, "retry-T", 0, 0, forged), from_retry_topic=True)
    assert retry == victim and retry.proxy_written
    # A service listening on the dead-letter topic: written by the proxy too.
    dead = record_key(Rec(None, "fail-T", 0, 0, forged), False, dead_letter_prefix="fail-")
    assert dead == victim and dead.proxy_written
    assert not record_key(
        Rec(None, "T", 0, 2, forged), False, dead_letter_prefix="fail-"
    ).proxy_written
    # Malformed positions are not trusted: the retry record's own position.
    bad = record_key(
        Rec(None, "retry-T", 0, 5, [("x-freedom-original-topic", b"a/b"), *forged[1:]]), True
    )
    assert bad == "~pos.retry-T.0.5"
    # An empty key is no key either, but keeps its bytes for the handler.
    empty = record_key(Rec(b"", "T", 0, 3), False)
    assert empty == "~pos.T.0.3" and empty.key == b""
    # Position ids never equal a key's id.
    assert all(wire.key_id(k) != main for k in [main.encode(), b"T-0-2"])


def test_a_keyed_retry_has_the_id_of_the_original():
    for key in HOSTILE_KEYS:
        assert record_key(Rec(key, "T", 0, 9), False) == record_key(Rec(key, "retry-T", 0, 0), True)


# --------------------------------------------------------------------------- headers


HOSTILE_HEADERS: list[tuple[str, bytes | None]] = [
    ("x-plain", b"ok"),
    ("x-utf8", "购买".encode()),
    ("x-ctl", b"\x01\x7f"),
    ("x-crlf", b"a\r\nx-injected: 1"),
    ("x-nul", b"\x00"),
    ("x-raw", b"\xff\xfe"),
    ("x-tab", b"a\tb"),
    ("x-space", b" lead"),
    ("x-empty", b""),
    ("x-dup", b"1"),
    ("x-dup", b"\x002"),
    ("x-dup", b"3"),
    ("bad name", b"v"),
    ("", b"empty name"),
    ("名前", b"jp"),
    ("x-colon:", b"c"),
    ("X-Upper", b"U"),
    ("x-freedom-hex-41", b"reserved prefix"),
    ("x-freedom-hex-", b"reserved too"),
    ("x_freedom_hex_41", b"reserved when _ is read as -"),
    ("x-huge", b"h" * 100_000),
]
NEVER_FORWARDED = [
    ("expect", b"100-continue"),
    ("connection", b"close"),
    ("content-length", b"999"),
    ("transfer-encoding", b"chunked"),
    ("host", b"evil"),
    ("x-forwarded-for", b"6.6.6.6"),
    ("X-Forwarded-Proto", b"https"),
    ("forwarded", b"for=6.6.6.6"),
    ("x-real-ip", b"6.6.6.6"),
    ("upgrade", b"h2c"),
    ("te", b"trailers"),
    ("keep-alive", b"timeout=1"),
    ("via", b"1.1 evil"),
    ("proxy-authorization", b"Basic eA=="),
    ("x-freedom-secret", b"forged"),
    ("x-message-key", b"forged"),
    ("x-retry-count", b"7"),
    ("x-freedom-key", b"Zm9yZ2Vk"),
    ("x-freedom-encoded", b"x-plain"),
    # The same names spelled with `_`: a WSGI server reads `x_forwarded_for` as x-forwarded-for
    # (HTTP_X_FORWARDED_FOR), so they are never forwarded either; nor is another spelling of a
    # control header (freedom writes them with `-`), from any topic.
    ("x_forwarded_for", b"6.6.6.6"),
    ("X_Real_IP", b"6.6.6.6"),
    ("proxy_authorization", b"Basic eA=="),
    ("content_length", b"999"),
    ("transfer_encoding", b"chunked"),
    ("x_freedom_secret", b"forged"),
    ("x_message_key", b"forged"),
    ("x_retry_count", b"7"),
    ("x_freedom_encoded", b"x-plain"),
    ("x_freedom_original_topic", b"victim"),
    ("x_freedom_replay_count", b"3"),
]


def _expected(headers: list[tuple[str, bytes | None]]) -> list[tuple[bytes, bytes]]:
    """The record headers as the handler should read them: token names lowercased, None as empty."""
    out = []
    for k, v in headers:
        name = k.encode()
        out.append((name.lower() if wire.plain_name(name) else name, v or b""))
    return out


def _record_part(raw: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    added = {
        b"x-message-key",
        b"x-retry-count",
        b"x-freedom-key",
        b"content-length",
        b"host",
        b"x-freedom-secret",
        b"x-freedom-timeout-ms",  # the deadline the proxy sends
        b"accept",
        b"accept-encoding",
        b"user-agent",  # what HTTP clients add
        b"content-type",
    }  # the proxy's default, application/json, for a record without one (payloads.py)
    return [(k, v) for k, v in Utf8Headers(raw=raw).record_raw() if k not in added]


def test_every_header_is_valid_http_and_decodes_to_the_record_header():
    wire_headers = request_headers(HOSTILE_HEADERS + [("x-none", None)], EventId("k", b"k"), 0)
    for name, value in wire_headers:
        assert re.fullmatch(rb"[!#$%&'*+\-.^_`|~0-9a-z]+", name), name  # a lowercase HTTP token
        assert wire.plain_value(value), (name, value[:40])
    assert _record_part(wire_headers) == _expected(HOSTILE_HEADERS + [("x-none", None)])
    # Plain ones travel as they are, so a plain FastAPI Header() reads them too.
    assert (b"x-plain", b"ok") in wire_headers and (b"x-utf8", "购买".encode()) in wire_headers


def test_hop_by_hop_proxy_and_the_proxys_own_headers_are_never_forwarded():
    for from_retry in (False, True):
        sent = request_headers(
            NEVER_FORWARDED + [("x-keep", b"1")], EventId("k", b"k", from_retry), 3
        )
        names = [k for k, _ in sent]
        assert names == [b"x-keep", b"content-type", b"x-message-key", b"x-retry-count"], names
        assert dict(sent)[b"x-message-key"] == b"k" and dict(sent)[b"x-retry-count"] == b"3"
    assert {"expect", "forwarded", "content-length"} <= NOT_FORWARDED


def test_reason_headers_are_forwarded_only_from_a_retry_topic():
    reasons = [(h, b"evil") for h in REASON_HEADERS]
    main = request_headers(reasons, EventId("k", b"k", proxy_written=False), 0)
    retry = request_headers(reasons, EventId("k", b"k", proxy_written=True), 1)
    assert not {k.decode() for k, _ in main} & set(REASON_HEADERS)
    assert {k.decode() for k, _ in retry} >= set(REASON_HEADERS)


def test_control_headers_travel_only_from_topics_freedom_writes_or_on_a_checked_replay():
    forged = [(h, b"evil") for h in CONTROL_HEADERS] + [("x-freedom-bus", b"{}"), ("x-a", b"1")]
    main = request_headers(forged, EventId("k", b"k"), 0)
    assert [k for k, _ in main][:2] == [b"x-freedom-bus", b"x-a"]
    assert not {k.decode() for k, _ in main} & set(CONTROL_HEADERS)
    written = request_headers(forged, EventId("k", b"k", proxy_written=True), 1)
    assert {k.decode() for k, _ in written} >= set(CONTROL_HEADERS)
    replay = EventId("k", b"k")
    replay.verified_replay = True  # the proxy checked its replay headers (replays.py)
    kept = {k.decode() for k, _ in request_headers(forged, replay, 0)} & set(CONTROL_HEADERS)
    assert kept == set(REPLAY_HEADERS)
    # A name in freedom's hex-name space once `_` is read as `-` travels hex-encoded, as that does.
    assert not wire.plain_name(b"x_freedom_hex_41") and not wire.plain_name(b"X_FREEDOM_HEX_")
    assert wire.plain_name(b"x_freedom_hexagon")


def test_the_key_travels_in_the_path_and_in_x_freedom_key_when_the_id_is_not_the_key():
    for key in HOSTILE_KEYS:
        eid = record_key(Rec(key), False)
        sent = dict(request_headers([], eid, 0))
        path = ROUTE.url_path(eid)
        assert path.isascii() and path.isprintable() and " " not in path
        assert sent[b"x-message-key"] == eid.encode()
        request = Request({"type": "http", "headers": list(sent.items())})
        assert request.message_key == key
    keyless = Request(
        {"type": "http", "headers": request_headers([], record_key(Rec(None), False), 0)}
    )
    assert keyless.message_key is None


def test_a_record_too_large_for_a_request_is_a_permanent_failure_naming_the_cause():
    from freedom.kafka.consumer.delivery import UnsendableRecord

    with pytest.raises(UnsendableRecord) as caught:
        request_headers([("x-big", b"z" * MAX_HEADER_BYTES)], EventId("k", b"k"), 0)
    result = caught.value.result()
    assert result.permanent and not result.ok
    assert (
        "cannot be sent as an HTTP request" in result.error and "x-message-key" not in result.error
    )


def test_log_lines_escape_control_characters():
    assert wire.printable("a\r\nINFO forged") == "a\\r\\nINFO forged"
    assert wire.printable("\x00\x1b[31m\x7f\x85\u2028\\") == "\\x00\\x1b[31m\\x7f\\x85\\u2028\\\\"
    assert wire.printable("购买 ok") == "购买 ok"
    line = where(Rec(b"x"), "k\r\nERROR forged")
    assert "\n" not in line and "\r" not in line and "k\\r\\nERROR forged" in line


# --------------------------------------------------------------------------- the same in every transport


class _Recorder:
    """A raw ASGI app keeping what each request carried."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await serve_lifespan(receive, send)
            return
        body = await read_body(receive)
        self.requests.append(
            {
                "path": scope["path"],
                "headers": list(scope["headers"]),
                "body": body,
                "client": scope.get("client"),
            }
        )
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})


def _by_name(pairs: list[tuple[bytes, bytes]]) -> dict[bytes, list[bytes]]:
    """Headers grouped by name, in order within a name (HTTP/2 servers regroup across names)."""
    out: dict[bytes, list[bytes]] = {}
    for k, v in pairs:
        out.setdefault(k, []).append(v)
    return out


def _serve_uvicorn(app: Any) -> tuple[uvicorn.Server, threading.Thread, int]:
    port = free_port()
    srv = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    wait_until(lambda: srv.started, 10, what="uvicorn to start")
    return srv, thread, port


async def test_http1_h2c_and_inprocess_deliver_the_same_record():
    require_module("granian", HTTP2_EXTRA)
    require_module("pyreqwest", HTTP2_EXTRA)
    from freedom.kafka.transports.http import HttpTransport
    from freedom.runner.server import serve_granian

    headers = HOSTILE_HEADERS + NEVER_FORWARDED
    keys = [b"\xff\xfe", b"crlf\r\nX", b"y" * 100_000, b"tenant/7 %"]
    results: dict[str, list[dict[str, Any]]] = {}
    # HTTP/1.1 to uvicorn
    app = _Recorder()
    srv, thread, port = _serve_uvicorn(app)
    transport = Http1Transport(f"http://127.0.0.1:{port}")
    try:
        for key in keys:
            assert (
                await transport.deliver(ROUTE, record_key(Rec(key), False), b"\x00body", headers, 0)
            ).ok
    finally:
        await transport.aclose()
        srv.should_exit = True
        await asyncio.to_thread(thread.join, 10)
    results["http1"] = app.requests
    # h2c to granian
    app, port, shutdown = _Recorder(), free_port(), asyncio.Event()
    serving = asyncio.ensure_future(serve_granian(app, "127.0.0.1", port, shutdown))  # type: ignore[arg-type]
    h2 = HttpTransport(f"http://127.0.0.1:{port}")
    try:
        assert await h2.wait_until_reachable(
            asyncio.get_running_loop().time() + 20, asyncio.Event()
        )
        for key in keys:
            result = await h2.deliver(ROUTE, record_key(Rec(key), False), b"\x00body", headers, 0)
            assert result.ok, result
    finally:
        await h2.aclose()
        shutdown.set()
        await serving
    results["h2c"] = app.requests
    # in-process
    app = _Recorder()
    inproc = AsgiTransport(app)
    for key in keys:
        assert (
            await inproc.deliver(ROUTE, record_key(Rec(key), False), b"\x00body", headers, 0)
        ).ok
    results["inprocess"] = app.requests

    expected = _by_name(_expected(HOSTILE_HEADERS))
    for mode, requests in results.items():
        assert len(requests) == len(keys), mode
        for key, req in zip(keys, requests):
            assert req["body"] == b"\x00body", mode
            assert _by_name(_record_part(req["headers"])) == expected, mode
            assert Request({"type": "http", "headers": req["headers"]}).message_key == key, mode
            assert req["path"] == "/store/event/" + wire.key_id(key), mode
            assert (req["client"] or ("none",))[0] != "6.6.6.6", mode


# --------------------------------------------------------------------------- interim answers


class _RawServer:
    """A TCP server answering one request with the `answer` pieces, each in its own write, 0.3 s
    apart (an interim answer, then the handler's), to send what uvicorn would not."""

    def __init__(self, *answer: bytes) -> None:
        self.answer = answer
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.received = b""
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            while b"\r\n\r\n" not in self.received:
                self.received += conn.recv(65536)
            for i, piece in enumerate(self.answer):
                if i:
                    time.sleep(0.3)  # the handler at work: the interim answer arrives on its own
                conn.sendall(piece)
            conn.recv(1)  # until the client closes

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize(
    "interim",
    [
        b"HTTP/1.1 100 Continue\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n",
    ],
)
async def test_an_interim_answer_is_not_the_final_one(interim):
    server = _RawServer(interim, b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n\r\n")
    transport = Http1Transport(f"http://127.0.0.1:{server.port}")
    try:
        result = await transport.deliver(ROUTE, "k", b"{}", [], 0)
    finally:
        await transport.aclose()
        server.close()
    assert result.status == 500 and not result.ok  # before the fix: 100, taken as the answer


async def test_interim_then_200_is_success():
    server = _RawServer(
        b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
    )
    transport = Http1Transport(f"http://127.0.0.1:{server.port}")
    try:
        result = await transport.deliver(ROUTE, "k", b"{}", [], 0)
    finally:
        await transport.aclose()
        server.close()
    assert result.ok and result.status == 200


async def test_a_record_header_expect_100_continue_gets_the_handlers_answer():
    """uvicorn answers `100 Continue` to a request with `expect: 100-continue` once the handler reads
    the body; the record's header is not forwarded, and the handler's 200 is the answer."""
    app = _Recorder()
    srv, thread, port = _serve_uvicorn(app)
    transport = Http1Transport(f"http://127.0.0.1:{port}")
    try:
        result = await transport.deliver(ROUTE, "k", b"{}", [("expect", b"100-continue")], 0)
    finally:
        await transport.aclose()
        srv.should_exit = True
        await asyncio.to_thread(thread.join, 10)
    assert result.ok and result.status == 200
    assert b"expect" not in dict(app.requests[0]["headers"])


def test_request_headers_give_back_what_a_hostile_http_client_sends_without_raising():
    """Utf8Headers decodes whatever a caller sends (malformed encodings are left as they came)."""
    junk = [
        (b"x-freedom-encoded", b"x-a,x-freedom-hex-zz,,"),
        (b"x-a", b"not base64!"),
        (b"x-freedom-hex-zz", b"AA"),
        (b"x-message-key", b"~b64.***"),
        (b"x-freedom-key", b"%%"),
    ]
    h = Utf8Headers(raw=junk)
    assert h["x-a"] == "not base64!" and "x-freedom-encoded" not in h and len(h.items()) == 4
    assert Request({"type": "http", "headers": junk}).message_key is None
    for combo in itertools.permutations(junk, 3):
        Utf8Headers(raw=list(combo)).items()


def test_printable_is_used_for_refused_event_route_calls(caplog):
    """A forged call's path cannot forge a log line of the security logger."""
    from freedom.web.guard import DeliveryGuard

    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("must not be reached")

    guard = DeliveryGuard(app, secret="s" * 16, paths=["/store/event/{event_id}"])
    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)

    async def receive() -> Any:
        return {"type": "http.request", "body": b""}

    caplog.set_level(logging.WARNING, "freedom.web.guard")
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/store/event/x\nCRITICAL forged",
        "root_path": "",
        "headers": [],
        "client": ("127.0.0.1", 1),
    }
    asyncio.run(guard(scope, receive, send))
    assert sent[0]["status"] == 401
    assert "\n" not in caplog.records[0].getMessage() and "x\\nCRITICAL forged" in caplog.text


def test_a_reason_with_line_breaks_stays_on_one_log_line():
    from freedom.kafka.consumer.delivery import result_of

    result = result_of(200, "dead-letter", "bad%0D%0AERROR forged")
    assert result.describe() == "HTTP 200, handler asked: dead-letter (bad\\r\\nERROR forged)"


def test_random_headers_round_trip():
    """Any names and values (bytes of every class, in any mix) come back as the record had them."""
    from freedom.kafka.consumer.delivery import (
        NOT_FORWARDED_PREFIXES,
        PROXY_SET,
        UNTRUSTED_ON_MAIN_TOPIC,
    )

    rng = random.Random(2026)
    alphabet = "aZ-_:; \t\r\n\x00\x7f\x85é购~!"
    for _ in range(300):
        headers = [
            (
                "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 6))),
                bytes(rng.randrange(256) for _ in range(rng.randrange(0, 8)))
                if rng.random() < 0.5
                else rng.choice([b"ok", b"a b", b" ", b"", "购".encode()]),
            )
            for _ in range(rng.randrange(1, 6))
        ]
        sent = request_headers(headers, EventId("k", b"k"), 0)
        for name, value in sent:
            assert re.fullmatch(rb"[!#$%&'*+\-.^_`|~0-9a-z]+", name) and wire.plain_value(value), (
                headers,
                name,
            )
        kept = [
            (k, v)
            for k, v in headers
            if not (
                wire.plain_name(k.encode())
                and (
                    k.lower() in NOT_FORWARDED
                    or k.lower() in PROXY_SET
                    or k.lower().startswith(NOT_FORWARDED_PREFIXES)
                    or k.lower() in UNTRUSTED_ON_MAIN_TOPIC
                )
            )
        ]
        assert _record_part(sent) == _expected(kept), headers
