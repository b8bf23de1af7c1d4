"""In-process delivery (`proxy_addr = "inprocess"`): the consumer proxy calls the service's ASGI
application directly, in the same process and on the same event loop, skipping the socket, the
HTTP client and the HTTP server.

The application gets the request it would get over HTTP (`POST`, the route path with the key,
the record headers plus the proxy's, the value as body), and the answer is read by the same rule
(`delivery.result_of`: the outcome header first, else 2xx is success). What the HTTP server would
answer when the application raises (500) and the HTTP transports' deadline hold here too: the
request carries `x-freedom-timeout-ms`, which freedom's event routes enforce (freedom/web/deadline.py),
and the call is cancelled `DEADLINE_GRACE_SEC` after it.
The call is a minimal ASGI exchange: build the scope, give the body through `receive`, keep the
status and the two outcome headers from `send`; the response body is dropped (of a 4xx/5xx answer
its start is kept: the failure's detail).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import quote, unquote

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
from freedom.kafka.consumer.keys import event_id
from freedom.wire.headers import (
    BODY_EXTENSION,
    FAILURE_HEADER,
    OUTCOME_HEADER,
    REASON_HEADER,
    RETRY_AFTER_HEADER,
    SECRET_HEADER,
)

log = logging.getLogger("freedom.kafka.delivery")

ASGIApp = Callable[
    [
        dict[str, Any],
        Callable[[], Awaitable[dict[str, Any]]],
        Callable[[dict[str, Any]], Awaitable[None]],
    ],
    Awaitable[None],
]

_OUTCOME = OUTCOME_HEADER.encode()
_REASON = REASON_HEADER.encode()
_RETRY_AFTER = RETRY_AFTER_HEADER.encode()
_FAILURE = FAILURE_HEADER.encode()
_ASGI = {"version": "3.0", "spec_version": "2.3"}


class Exchange:
    """One request/response exchange with the application: what `receive` gives and `send` keeps
    (also how direct delivery reads an answer it has to run as ASGI: a streaming response)."""

    __slots__ = (
        "body",
        "status",
        "outcome",
        "reason",
        "complete",
        "_done",
        "answer",
        "keep",
        "retry_after",
        "failure",
    )

    def __init__(self, body: bytes, keep: int = 0) -> None:
        self.body: bytes | None = body
        self.keep = keep  # keep this many bytes of any answer's body (a batch answer)
        self.answer: bytearray | None = (
            None  # the start of a 4xx/5xx answer's body (delivery.keeps_body)
        )
        self.status: int | None = None
        self.outcome: str | None = None
        self.reason: str | None = None
        self.retry_after: bytes | None = None
        self.failure: bytes | None = None  # x-freedom-failure-id (observability/failures.py)
        self.complete = False
        self._done: asyncio.Event | None = None  # made only when the app listens past the body

    async def receive(self) -> dict[str, Any]:
        body = self.body
        if body is not None:
            self.body = None
            return {"type": "http.request", "body": body, "more_body": False}
        # Asked again after the body: the client "disconnects" once the response is complete.
        if not self.complete:
            if self._done is None:
                self._done = asyncio.Event()
            await self._done.wait()
        return {"type": "http.disconnect"}

    def result(self) -> DeliveryResult:
        """What the consumer proxy makes of the answer (:func:`result_of`)."""
        if self.status is None:
            return DeliveryResult(error="the application returned without answering")
        return result_of(
            self.status,
            self.outcome,
            self.reason,
            bytes(self.answer) if self.answer else None,
            self.retry_after,
            self.failure,
        )

    async def send(self, message: MutableMapping[str, Any]) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            self.status = message["status"]
            if self.keep or keeps_body(message["status"]):
                self.answer = bytearray()
            for k, v in message.get("headers") or ():
                k = k.lower()
                if k == _OUTCOME:
                    self.outcome = v.decode("latin-1")
                elif k == _REASON:
                    self.reason = v.decode("latin-1")
                elif k == _RETRY_AFTER:
                    self.retry_after = v
                elif k == _FAILURE:
                    self.failure = v
        elif kind == "http.response.body":
            kept = self.answer
            limit = self.keep or MAX_FAILURE_BODY
            if kept is not None and len(kept) < limit:
                kept += message.get("body", b"")[: limit - len(kept)]
            if not message.get("more_body", False):
                self.complete = True
                if self._done is not None:
                    self._done.set()


# (route path, parameter) -> the path's text before and after the parameter; None for a path
# without one or with a `%` in it (decoded as a whole then, as a server decodes it).
_PARTS: dict[tuple[str, str | None], tuple[str, str] | None] = {}
#: What `quote` leaves as it is (RFC 3986's unreserved characters): an id of only these is its own
#: percent-encoding.
_UNRESERVED = re.compile(r"[A-Za-z0-9_.~-]+")


def _paths(route: EventRoute, key: str) -> tuple[bytes, str]:
    """A delivery's `raw_path` (percent-encoded, EventRoute.url_path) and `path` (decoded, as a
    server decodes it), without decoding the whole path each time."""
    at = (route.path, route.param)
    try:
        parts = _PARTS[at]
    except KeyError:
        parts = None
        hole = "{" + route.param + "}" if route.param is not None else None
        if hole is not None and hole in route.path and "%" not in route.path:
            before, _, after = route.path.partition(hole)
            parts = (before, after)
        if len(_PARTS) < 1024:
            _PARTS[at] = parts
    if parts is None:
        raw = route.url_path(key)
        return raw.encode("ascii"), unquote(raw)
    eid = event_id(key)
    quoted = eid if _UNRESERVED.fullmatch(eid) else quote(eid, safe="")
    return (parts[0] + quoted + parts[1]).encode("ascii"), parts[0] + eid + parts[1]


def delivery_scope(
    route: EventRoute,
    key: str,
    value: bytes,
    headers: RecordHeaders,
    retry_count: int,
    deadline: float | None = None,
) -> dict[str, Any]:
    """The ASGI scope of one delivery, as an HTTP server would make it from the HTTP request: the
    headers of :func:`~freedom.kafka.consumer.delivery.request_headers` (the one rule for every
    transport) plus `content-length`, and the value under `BODY_EXTENSION` (read without streaming
    by freedom's `Request.body`). In-process ASGI delivery (:class:`AsgiTransport`) and direct
    delivery (transports/direct.py) both make their request from it. Raises
    :class:`~freedom.kafka.consumer.delivery.UnsendableRecord` as `request_headers` does."""
    # The same headers as over HTTP (freedom.wire.encoding's encoding included), lowercased as
    # servers do (request_headers makes every name lowercase).
    out = request_headers(headers, key, retry_count, deadline)
    out.append((b"content-length", str(len(value)).encode()))
    raw_path, path = _paths(route, key)
    return {
        "type": "http",
        "asgi": _ASGI,
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": raw_path,
        "query_string": b"",
        "root_path": "",
        "headers": out,
        "client": None,
        "server": None,
        "state": {},
        "extensions": {BODY_EXTENSION: value},
    }


class AsgiTransport:
    """Delivers records by calling the ASGI application in this process."""

    proxy_addr = "inprocess"

    def __init__(
        self,
        app: ASGIApp,
        *,
        timeout: float = DEFAULT_TIMEOUT_SEC,
        secret: str | None = None,
        ready: asyncio.Event | None = None,
    ) -> None:
        self.app = app
        self.timeout = timeout  # the deadline of a route without its own (EventRoute.timeout_sec)
        self.ready = ready  # set once the application has started (deliveries wait for it)
        # The secret guard (security.py) sits in the application, so in-process calls carry it too.
        self._extra = [(SECRET_HEADER.encode(), secret.encode())] if secret else []

    async def wait_until_reachable(self, deadline: float, stop: asyncio.Event) -> bool:
        """Wait until the application has started (its start-up may still be running)."""
        if self.ready is None or self.ready.is_set():
            return True
        loop = asyncio.get_running_loop()
        waiters = {asyncio.ensure_future(self.ready.wait()), asyncio.ensure_future(stop.wait())}
        try:
            await asyncio.wait(
                waiters,
                timeout=max(0.0, deadline - loop.time()),
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            for w in waiters:
                w.cancel()
        return self.ready.is_set()

    def scope(
        self,
        route: EventRoute,
        key: str,
        value: bytes,
        headers: RecordHeaders,
        retry_count: int,
        deadline: float | None = None,
    ) -> dict[str, Any]:
        """The ASGI scope of one delivery, as an HTTP server would make it from the HTTP request
        (:func:`delivery_scope`, with the shared secret when one is configured)."""
        scope = delivery_scope(route, key, value, headers, retry_count, deadline)
        scope["headers"].extend(self._extra)
        return scope

    async def deliver(
        self, route: EventRoute, key: str, value: bytes, headers: RecordHeaders, retry_count: int
    ) -> DeliveryResult:
        """Call the application with the delivery's request; never raises for the handler's faults."""
        limit = deadline_of(route, self.timeout)
        try:
            scope = self.scope(route, key, value, headers, retry_count, limit)
        except UnsendableRecord as exc:
            return exc.result()
        exchange = Exchange(value)
        failed = await self._call(scope, exchange, proxy_wait(limit), route.url_path(key))
        return failed if failed is not None else exchange.result()

    async def _call(
        self, scope: dict[str, Any], exchange: Exchange, wait: float, what: str
    ) -> DeliveryResult | None:
        """Call the application within `wait` seconds: None when it answered, else what a
        client of an HTTP server would get (a timeout, or a 500 when it raised before answering;
        the exception is logged, as an HTTP server logs it)."""
        deadline = asyncio.timeout(wait)
        try:
            async with deadline:
                await self.app(scope, exchange.receive, exchange.send)
        except Exception:
            if deadline.expired():
                return DeliveryResult(error="timed out waiting for the handler")
            log.exception("the application raised while handling the delivery to %s", what)
            if exchange.status is None:
                return DeliveryResult(status=500)
        return None

    async def post(
        self,
        path: str,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        *,
        keep_body: int,
        wait: float | None = None,
    ) -> RawAnswer | DeliveryResult:
        """Call the application with `POST path` (a batch, batching.py), keeping up to `keep_body`
        bytes of the answer; a DeliveryResult when it gave no answer (within `wait` seconds)."""
        out = [(k.lower(), v) for k, v in headers]
        out.append((b"content-length", str(len(body)).encode()))
        out.extend(self._extra)
        scope = {
            "type": "http",
            "asgi": _ASGI,
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode("ascii"),
            "query_string": b"",
            "root_path": "",
            "headers": out,
            "client": None,
            "server": None,
            "state": {},
            "extensions": {BODY_EXTENSION: body},
        }
        exchange = Exchange(body, keep_body)
        wait = wait if wait is not None else proxy_wait(self.timeout)
        failed = await self._call(scope, exchange, wait, f"{path} (a batch)")
        if failed is not None:
            return failed
        if exchange.status is None:
            return DeliveryResult(error="the application returned without answering")
        return RawAnswer(
            exchange.status,
            exchange.outcome,
            exchange.reason,
            bytes(exchange.answer or b""),
            exchange.failure.decode("latin-1") if exchange.failure is not None else None,
        )

    async def aclose(self) -> None:
        return None
