"""The consumer proxy's HTTP/1.1 transport against a real uvicorn server: the request the service
sees, keep-alive reuse after the server dropped an idle connection, and headers HTTP cannot carry."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
import uvicorn

from freedom.kafka.consumer.delivery import EventRoute
from freedom.kafka.transports.http1 import Http1Transport
from freedom.testing import free_port, wait_until
from freedom.web.runtime import Utf8Headers
from tests.services.asgi_parts import read_body

ROUTE = EventRoute("t", "/store/sell/goods/{event_id}", "event_id")


class _Recorder:
    """A raw ASGI app: keeps each request's path, headers and body; answers per `answer`."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.answer: tuple[int, list[tuple[bytes, bytes]]] = (200, [])

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = await read_body(receive)
        self.requests.append(
            {
                "path": scope["path"],
                "raw_path": scope["raw_path"],
                "headers": scope["headers"],
                "body": body,
            }
        )
        status, headers = self.answer
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"{}"})


@pytest.fixture
def server():
    app = _Recorder()
    port = free_port()
    srv = uvicorn.Server(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            log_level="warning",
            timeout_keep_alive=1,
            lifespan="off",
        )
    )
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    wait_until(lambda: srv.started, 10, what="uvicorn to start")
    yield app, f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(10)


async def test_the_service_gets_the_record_as_sent(server):
    app, addr = server
    transport = Http1Transport(addr, secret="s3cret")
    try:
        result = await transport.deliver(
            ROUTE, "a/b 1", b'{"n": 1}', [("x-action", "购买".encode()), ("x-raw", b"\xff\xfe")], 2
        )
    finally:
        await transport.aclose()
    assert result.ok and result.status == 200
    (req,) = app.requests
    assert (
        req["path"] == "/store/sell/goods/a/b 1"
        and req["raw_path"] == b"/store/sell/goods/a%2Fb%201"
    )
    headers = dict(req["headers"])
    assert headers[b"x-action"] == "购买".encode()  # the record's bytes, unchanged
    # Not valid UTF-8 (h2c could not carry it as it is): base64url, named in x-freedom-encoded,
    # and read back as the record's bytes through freedom's Request.headers.
    assert headers[b"x-raw"] == b"__4" and headers[b"x-freedom-encoded"] == b"x-raw"
    assert dict(Utf8Headers(raw=req["headers"]).record_raw())[b"x-raw"] == b"\xff\xfe"
    assert headers[b"x-message-key"] == b"a/b 1" and headers[b"x-retry-count"] == b"2"
    assert headers[b"x-freedom-secret"] == b"s3cret"
    assert req["body"] == b'{"n": 1}'


async def test_outcome_headers_and_status_are_read(server):
    app, addr = server
    app.answer = (
        200,
        [(b"x-freedom-outcome", b"dead-letter"), (b"x-freedom-reason", b"bad%20order")],
    )
    transport = Http1Transport(addr)
    try:
        result = await transport.deliver(ROUTE, "k", b"{}", [], 0)
        app.answer = (503, [])
        failed = await transport.deliver(ROUTE, "k", b"{}", [], 0)
    finally:
        await transport.aclose()
    assert result.outcome == "dead-letter" and result.reason == "bad order" and not result.ok
    assert failed.status == 503 and not failed.ok


async def test_a_connection_the_server_closed_while_idle_is_replaced(server):
    app, addr = server
    transport = Http1Transport(addr)
    try:
        assert (await transport.deliver(ROUTE, "k1", b"{}", [], 0)).ok
        assert transport.idle_connections == 1  # kept alive for the next delivery
        # uvicorn closes keep-alive connections idle for more than 1 s (timeout_keep_alive=1)
        deadline = asyncio.get_running_loop().time() + 10
        while transport.idle_connections:
            assert asyncio.get_running_loop().time() < deadline, (
                "the server never closed the idle connection"
            )
            await asyncio.sleep(0.05)
        assert (await transport.deliver(ROUTE, "k2", b"{}", [], 0)).ok
    finally:
        await transport.aclose()
    assert [r["path"] for r in app.requests] == ["/store/sell/goods/k1", "/store/sell/goods/k2"]


@pytest.mark.parametrize(
    "header", [("x-a", b"one\r\nx-b: two"), ("bad name", b"v"), ("x-c", b"\x01\x7f")]
)
async def test_a_header_http_cannot_carry_as_it_is_travels_encoded(server, header):
    """Was: the delivery failed (finding 2 of issue 10). Now: the request is valid HTTP (no header
    injected) and the handler reads the record's header back."""
    app, addr = server
    transport = Http1Transport(addr)
    try:
        result = await transport.deliver(ROUTE, "k", b"{}", [header], 0)
    finally:
        await transport.aclose()
    assert result.ok
    (req,) = app.requests
    assert b"x-b" not in dict(req["headers"])
    name, value = header
    assert (name.encode(), value) in Utf8Headers(raw=req["headers"]).record_raw()


async def test_a_service_that_is_down_is_a_connection_error():
    transport = Http1Transport(f"http://127.0.0.1:{free_port()}")
    try:
        result = await transport.deliver(ROUTE, "k", b"{}", [], 0)
    finally:
        await transport.aclose()
    assert not result.ok and result.status is None and "Connect" in (result.error or "")


async def test_https_proxy_addr_is_served_over_tls(tmp_path, monkeypatch):
    """proxy_addr = "https://...": the connection is TLS, verified against the trusted CAs
    (here a test CA given through SSL_CERT_FILE, as an internal CA would be)."""
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    ca_file, cert_file = tmp_path / "ca.pem", tmp_path / "server.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    cert.private_key_and_cert_chain_pem.write_to_path(str(cert_file))
    app, port = _Recorder(), free_port()
    srv = uvicorn.Server(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            log_level="warning",
            lifespan="off",
            ssl_certfile=str(cert_file),
        )
    )
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    try:
        await asyncio.to_thread(wait_until, lambda: srv.started, 10, what="uvicorn to start")
        untrusted = Http1Transport(f"https://127.0.0.1:{port}")  # before the CA is trusted
        monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
        trusted = Http1Transport(f"https://127.0.0.1:{port}")
        try:
            refused = await untrusted.deliver(ROUTE, "k0", b"{}", [], 0)
            result = await trusted.deliver(ROUTE, "k1", b"{}", [], 0)
        finally:
            await untrusted.aclose()
            await trusted.aclose()
    finally:
        srv.should_exit = True
        thread.join(10)
    assert not refused.ok and "CERTIFICATE_VERIFY_FAILED" in (refused.error or "")
    assert result.ok and [r["path"] for r in app.requests] == ["/store/sell/goods/k1"]


class _Gathering:
    """A raw ASGI app answering 200 only once `n` requests are in progress at the same time (each
    waits for the others, up to 30 s; then 503): it passes only if that many connections are open."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.in_progress = 0
        self.most = 0
        self._all: asyncio.Event | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        self._all = self._all or asyncio.Event()
        self.in_progress += 1
        self.most = max(self.most, self.in_progress)
        if self.in_progress >= self.n:
            self._all.set()
        try:
            await asyncio.wait_for(self._all.wait(), 30)
            status = 200
        except TimeoutError:
            status = 503
        self.in_progress -= 1
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})


async def test_connections_follow_the_deliveries_in_progress_past_100():
    # The pool has no cap of its own (it had 100, whatever max_in_flight said): the proxy's
    # max_in_flight bounds the deliveries, and each one in progress gets a connection.
    app = _Gathering(150)
    port = free_port()
    srv = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    wait_until(lambda: srv.started, 10, what="uvicorn to start")
    transport = Http1Transport(f"http://127.0.0.1:{port}")
    try:
        results = await asyncio.gather(
            *(transport.deliver(ROUTE, f"k{i}", b"{}", [], 0) for i in range(150))
        )
        assert [r.status for r in results] == [200] * 150 and app.most == 150
    finally:
        await transport.aclose()
        srv.should_exit = True
        thread.join(10)
