"""HTTP/1.1 delivery over keep-alive connections: the request written in one piece, the answer
parsed by httptools (llhttp, the C parser uvicorn uses).

Why not a general HTTP client: the consumer proxy makes one kind of call (a POST with a known
body to one service), and a general client's per-request machinery (URL objects, cookie jars,
auto headers, tracing hooks, redirect and auth layers) was 40% of the service's CPU per
delivery with aiohttp, 70% with httpx (bench/perf-log.md). Here a delivery is: take an idle
connection (or open one), write `POST path HTTP/1.1` + headers + body, and let the parser pick
the status and the two outcome headers out of the answer; the answer's body is read and dropped.

The request's path and headers are `delivery.request_headers`'s, by the encoding rule of
`freedom.wire.encoding` (the same in every transport): whatever the record's key and headers, the request
is valid HTTP. An interim answer (1xx, such as `100 Continue`) is skipped; the final one counts.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from urllib.parse import urlsplit

import httptools

from freedom.errors import FreedomError
from freedom.kafka.consumer.delivery import (
    DEFAULT_TIMEOUT_SEC,
    MAX_FAILURE_BODY,
    DeliveryResult,
    EventRoute,
    RawAnswer,
    RecordHeaders,
    UnsendableRecord,
    deadline_of,
    keeps_body,
    proxy_wait,
    request_headers,
    result_of,
)
from freedom.wire.headers import (
    FAILURE_HEADER,
    OUTCOME_HEADER,
    REASON_HEADER,
    RETRY_AFTER_HEADER,
    SECRET_HEADER,
)

_OUTCOME = OUTCOME_HEADER.encode()
_REASON = REASON_HEADER.encode()
_RETRY_AFTER = RETRY_AFTER_HEADER.encode()
_FAILURE = FAILURE_HEADER.encode()
CONNECT_TIMEOUT_SEC = 5.0


async def wait_until_listening(proxy_addr: str, deadline: float, stop: asyncio.Event) -> bool:
    """Wait until the service accepts connections (it may still be starting); False at the deadline."""
    parts = urlsplit(proxy_addr)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    loop = asyncio.get_running_loop()
    while not stop.is_set() and loop.time() < deadline:
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(parts.hostname, port), 1.0)
            writer.close()
            return True
        except (TimeoutError, OSError):
            try:
                await asyncio.wait_for(stop.wait(), 0.1)
            except TimeoutError:
                pass
    return False


class _Answer:
    """What one response told: its status, the outcome headers, and whether the connection stays open."""

    __slots__ = ("status", "outcome", "reason", "keep_alive", "body", "retry_after", "failure")

    def __init__(self) -> None:
        self.status = 0
        self.outcome: bytes | None = None
        self.reason: bytes | None = None
        self.retry_after: bytes | None = None
        self.failure: bytes | None = None  # x-freedom-failure-id (observability/failures.py)
        self.keep_alive = True
        self.body: bytearray | None = (
            None  # the start of a 4xx/5xx answer's body (delivery.keeps_body)
        )


class _Connection(asyncio.Protocol):
    """One keep-alive connection to the service; one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.answered_bytes = False  # some bytes of the current answer arrived
        self._parser = httptools.HttpResponseParser(self)
        self._answer = _Answer()
        self._headers_done = False
        self._waiter: asyncio.Future[_Answer] | None = None
        self._keep = (
            0  # the current request keeps this many bytes of any answer's body (a batch answer)
        )

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.answered_bytes = True
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self._fail(ConnectionError(f"malformed HTTP answer: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._headers_done and self._waiter is not None and not self._waiter.done():
            self._answer.keep_alive = False  # an answer delimited by the end of the connection
            self._waiter.set_result(self._answer)
        self._fail(ConnectionError("the service closed the connection before answering"))

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == _OUTCOME:
            self._answer.outcome = value
        elif name == _REASON:
            self._answer.reason = value
        elif name == _RETRY_AFTER:
            self._answer.retry_after = value
        elif name == _FAILURE:
            self._answer.failure = value

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if status == 101:  # the server switched protocols, which the proxy never asks for
            self._fail(
                ConnectionError("the service answered 101 Switching Protocols to a delivery")
            )
            self.close()
            return
        if 100 <= status < 200:
            self._answer = _Answer()  # an interim answer (100 Continue, 103 Early Hints): not final
            return
        self._headers_done = True
        self._answer.status = status
        if self._keep or keeps_body(status):
            self._answer.body = bytearray()

    def on_body(self, body: bytes) -> None:
        kept = self._answer.body
        limit = self._keep or MAX_FAILURE_BODY
        if kept is not None and len(kept) < limit:
            kept += body[: limit - len(kept)]

    def on_message_complete(self) -> None:
        if not self._headers_done:
            return  # the end of an interim answer; the parser goes on to the next one
        self._answer.keep_alive = self._parser.should_keep_alive()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(self._answer)

    # use
    def _fail(self, exc: Exception) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)

    async def exchange(self, request: bytes, keep: int = 0) -> _Answer:
        """Send one request and wait for its whole answer (keeping `keep` bytes of any answer's body)."""
        assert self.transport is not None
        self._keep = keep
        self._answer = _Answer()
        self._headers_done = False
        self.answered_bytes = False
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return await self._waiter

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class Http1Transport:
    """POSTs records to the service over pooled HTTP/1.1 keep-alive connections."""

    def __init__(
        self,
        proxy_addr: str,
        *,
        timeout: float = DEFAULT_TIMEOUT_SEC,
        max_connections: int | None = None,
        secret: str | None = None,
    ) -> None:
        parts = urlsplit(proxy_addr)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise FreedomError(
                f"proxy_addr {proxy_addr!r}: expected http://host:port or https://host:port"
            )
        self.proxy_addr = proxy_addr
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._ssl = ssl.create_default_context() if parts.scheme == "https" else None
        self._prefix = parts.path.rstrip("/")
        self._timeout = timeout  # the deadline of a route without its own (EventRoute.timeout_sec)
        host = parts.netloc.rsplit("@", 1)[-1]
        # The part of every request that does not change: the Host header and the proxy's secret.
        try:
            self._fixed = b"Host: " + host.encode("ascii") + b"\r\n"
        except UnicodeEncodeError:
            raise FreedomError(
                f"proxy_addr {proxy_addr!r}: write the host name in ASCII (punycode)"
            ) from None
        if secret:
            self._fixed += SECRET_HEADER.encode() + b": " + secret.encode() + b"\r\n"
        self._idle: deque[_Connection] = deque()
        # No cap of its own by default: the consumer proxy bounds the deliveries of each topic (its
        # max_in_flight; sequential: one per partition), so the connections follow that setting, one
        # per delivery in progress, kept alive for the next. `max_connections` caps them on top
        # (freedom proxy: per subscription).
        self._slots = asyncio.Semaphore(max_connections) if max_connections is not None else None
        self._open: set[_Connection] = set()
        self._starts: dict[
            str, bytes
        ] = {}  # path -> b"POST <path> HTTP/1.1\r\n" + the fixed headers

    async def wait_until_reachable(self, deadline: float, stop: asyncio.Event) -> bool:
        return await wait_until_listening(self.proxy_addr, deadline, stop)

    @property
    def idle_connections(self) -> int:
        """Kept-alive connections waiting for the next delivery that the service has not closed;
        read-only, for tests and diagnostics."""
        return sum(1 for conn in self._idle if not conn.closed)

    def _request(
        self,
        route: EventRoute,
        key: str,
        value: bytes,
        headers: RecordHeaders,
        retry_count: int,
        deadline: float,
    ) -> bytes:
        """The request's bytes (raises UnsendableRecord when the record cannot be a request)."""
        lines = [self._start(route.url_path(key))]
        for name, val in request_headers(headers, key, retry_count, deadline):
            lines += (name, b": ", val, b"\r\n")
        lines += (b"Content-Length: ", str(len(value)).encode(), b"\r\n\r\n", value)
        return b"".join(lines)

    def _start(self, path: str) -> bytes:
        """The request line and the fixed headers for `path`, made once per path (a route without a
        key in its path has one; a keyed path is remembered while few paths were seen)."""
        start = self._starts.get(path)
        if start is None:
            start = (
                b"POST " + (self._prefix + path).encode("ascii") + b" HTTP/1.1\r\n" + self._fixed
            )
            if len(self._starts) < 256:  # keyed paths are one per key: do not keep them all
                self._starts[path] = start
        return start

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(CONNECT_TIMEOUT_SEC):
            _, conn = await loop.create_connection(
                _Connection, self._host, self._port, ssl=self._ssl
            )
        self._open.add(conn)
        return conn

    def _take_idle(self) -> _Connection | None:
        while self._idle:
            conn = self._idle.pop()  # the most recently used: the least likely to have timed out
            if not conn.closed:
                return conn
            self._open.discard(conn)
        return None

    def _drop(self, conn: _Connection | None) -> None:
        if conn is not None:
            conn.close()
            self._open.discard(conn)

    async def deliver(
        self, route: EventRoute, key: str, value: bytes, headers: RecordHeaders, retry_count: int
    ) -> DeliveryResult:
        """POST one record with the route's deadline; never raises for the service's or the
        network's faults."""
        deadline = deadline_of(route, self._timeout)
        try:
            request = self._request(route, key, value, headers, retry_count, deadline)
        except UnsendableRecord as exc:
            return exc.result()
        answer = await self._roundtrip(request, wait=proxy_wait(deadline))
        if isinstance(answer, DeliveryResult):
            return answer
        return result_of(
            answer.status,
            answer.outcome.decode("latin-1") if answer.outcome is not None else None,
            answer.reason.decode("latin-1") if answer.reason is not None else None,
            bytes(answer.body) if answer.body else None,
            answer.retry_after,
            answer.failure,
        )

    async def post(
        self,
        path: str,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        *,
        keep_body: int,
        wait: float | None = None,
    ) -> RawAnswer | DeliveryResult:
        """POST `body` to `path` (a batch, batching.py) and keep up to `keep_body` bytes of the answer;
        a DeliveryResult (the error) when no answer came within `wait` seconds."""
        lines = [self._start(path)]
        for name, val in headers:
            lines += (name, b": ", val, b"\r\n")
        lines += (b"Content-Length: ", str(len(body)).encode(), b"\r\n\r\n", body)
        answer = await self._roundtrip(
            b"".join(lines), keep_body, wait=wait if wait is not None else proxy_wait(self._timeout)
        )
        if isinstance(answer, DeliveryResult):
            return answer
        return RawAnswer(
            answer.status,
            answer.outcome.decode("latin-1") if answer.outcome is not None else None,
            answer.reason.decode("latin-1") if answer.reason is not None else None,
            bytes(answer.body or b""),
            answer.failure.decode("latin-1") if answer.failure is not None else None,
        )

    async def _roundtrip(
        self, request: bytes, keep: int = 0, *, wait: float
    ) -> _Answer | DeliveryResult:
        """Send `request` on a pooled connection and read its answer within `wait` seconds; a
        DeliveryResult on failure."""
        slots = (
            self._slots
        )  # None (no cap of its own): no semaphore, and no coroutine more, per delivery
        if slots is not None:
            await slots.acquire()
        conn: _Connection | None = None
        try:
            async with asyncio.timeout(wait):
                conn = self._take_idle()
                if conn is not None:
                    try:
                        answer = await conn.exchange(request, keep)
                    except ConnectionError:
                        # The service closed a kept-alive connection as it was reused (its idle
                        # timeout): nothing of the answer came, so send it once more on a new one.
                        if conn.answered_bytes:
                            raise
                        self._drop(conn)
                        conn = None
                if conn is None:
                    conn = await self._connect()
                    answer = await conn.exchange(request, keep)
        except TimeoutError:
            self._drop(conn)
            return DeliveryResult(error="timed out waiting for the handler")
        except (OSError, ssl.SSLError) as exc:  # ConnectionError is an OSError
            self._drop(conn)
            return DeliveryResult(error=f"{type(exc).__name__}: {exc}")
        except BaseException:  # cancelled (the partition was lost, the proxy stops): state unknown
            self._drop(conn)
            raise
        finally:
            if slots is not None:
                slots.release()
        if answer.keep_alive and not conn.closed:
            self._idle.append(conn)
        else:
            self._drop(conn)
        return answer

    async def aclose(self) -> None:
        for conn in list(self._open):
            conn.close()
        self._open.clear()
        self._idle.clear()
