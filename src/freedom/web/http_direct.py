"""Deliveries received over HTTP, called directly: the ASGI entry in front of the FastAPI application
(`[consumer] http_dispatch = "direct"`, the default; docs/consumer-proxy.md, "Deliveries received
over HTTP").

A delivery reaching the service over HTTP (from its own consumer proxy with an `http://`
`proxy_addr`, another service's, `freedom proxy`) would pay for the whole FastAPI stack to reach a
handler that takes only the request and the key. :class:`HttpEntry` takes a `POST` whose first
fully matching route (Starlette's own matching, the routes in their order) is an event route with a
direct call and, with a delivery secret, that carries the right `x-freedom-secret` (compared as
guard.DeliveryGuard does, then taken out). It calls the route's :class:`WireCall` (web/direct.py's
`RouteCall`: the same exception handlers, failures.py's 500, deadline and event middleware as the
in-process direct path) and writes the answer the route would have written: the same status,
`x-freedom-outcome`, `x-freedom-reason`, `Retry-After`, `x-freedom-failure-id` and body
(tests/test_http_direct.py compares them over a real server). Everything else (other routes and
methods, routes that do not qualify, a request without the right secret, which the guard then
refuses as ever, lifespan, websockets) goes to the FastAPI application unchanged.

The application's HTTP middleware, FastAPI's routing, dependency solving and request telemetry do
not run around a delivery taken here (the event middleware does); the start-up line says so.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import anyio
from fastapi import FastAPI
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Match, Route, WebSocketRoute, get_route_path  # type: ignore[attr-defined]

from freedom.config.models import KafkaConfig
from freedom.kafka.consumer.delivery import DeliveryResult, EventRoute, keeps_body
from freedom.kafka.consumer.keys import EventId
from freedom.kafka.transports.direct import DirectDelivery
from freedom.web.controllers import to_response
from freedom.web.deadline import deadline_of, deadline_sec, late_answer
from freedom.web.direct import RouteCall, read_answer
from freedom.web.direct_routes import compile_direct
from freedom.web.event_middleware import EventMiddleware
from freedom.web.failures import FailureAnswers
from freedom.web.guard import VERIFIED_SCOPE_KEY, DeliveryGuard, take_secret
from freedom.wire.encoding import printable
from freedom.wire.headers import (
    MESSAGE_KEY_HEADER,
    OUTCOME_HEADER,
    REASON_HEADER,
    RETRY_AFTER_HEADER,
    RETRY_COUNT_HEADER,
)
from freedom.wire.outcomes import encode_reason

log = logging.getLogger("freedom.web")

ASGIApp = Callable[..., Awaitable[None]]
_RETRY_COUNT = RETRY_COUNT_HEADER.encode()
_MESSAGE_KEY = MESSAGE_KEY_HEADER.encode()
_JSON = (b"content-type", b"application/json")
_LATE: Any = object()  # the deadline ran out while the body came in


@dataclass(frozen=True)
class WireResult(DeliveryResult):
    """A result that keeps the answer it was read from, to be written as it is. Not an init field:
    a result the event middleware makes anew, or with `dataclasses.replace`, has none and is
    written from what it says (:func:`render`)."""

    answer: Response | None = field(default=None, init=False, compare=False, repr=False)


def _raw(status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> Response:
    """A response with exactly these headers (as deadline.py and failures.py send them)."""
    response = Response(body, status)
    response.raw_headers = headers
    return response


#: A controller method returned None: to_response's answer (an empty 200), and its result.
_NONE = WireResult(status=200)
object.__setattr__(_NONE, "answer", Response(status_code=200))


class WireCall(RouteCall):
    """An event route's direct call for a request received over HTTP: the result keeps the
    route's answer (:class:`WireResult`), which the entry writes; the traceback of a handler that
    raised stays held for the consumer proxy that reads `x-freedom-failure-id`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.none = None  # a plain route's None is answered as over HTTP: rendered (JSON null)
        #: The key parameter's name in the path (its convertor's), None for a route without one.
        self.path_key = next(iter(self.route.param_convertors), None)

    def keep(self, response: Response) -> WireResult:
        if self.chain is None:  # nothing reads the result but the entry: the answer is enough
            result = WireResult(status=response.status_code)
        else:  # event middleware reads it: what the consumer proxy will read from the answer
            body = getattr(response, "body", None)
            plain = response.background is None and isinstance(body, (bytes, memoryview))
            read = read_answer(response, body if plain and body is not None else b"", take=False)
            result = WireResult(**{f.name: getattr(read, f.name) for f in fields(DeliveryResult)})
        object.__setattr__(result, "answer", response)
        return result

    async def answer(
        self, response: Response | None, scope: MutableMapping[str, Any]
    ) -> DeliveryResult:
        if response is None:
            return DeliveryResult(error="the application returned without answering")
        return self.keep(response)

    def returned(self, value: Any) -> DeliveryResult:
        if value is None:  # to_response's empty 200, made once (most handlers return nothing)
            return _NONE
        return self.keep(to_response(value))  # what the controller endpoint answers

    def late(self, scope: MutableMapping[str, Any], deadline: float) -> DeliveryResult:
        body = late_answer(scope, deadline)
        return self.keep(_raw(504, [_JSON, (b"content-length", str(len(body)).encode())], body))

    def unhandled(self, scope: MutableMapping[str, Any], exc: Exception) -> DeliveryResult:
        headers, body = self.failures.parts(scope, exc)
        return self.keep(_raw(500, headers, body))

    def server_error(self) -> DeliveryResult:
        return self.keep(PlainTextResponse("Internal Server Error", status_code=500))

    def escaped(self) -> DeliveryResult:
        return self.keep(PlainTextResponse("Internal Server Error", status_code=500))


def render(result: DeliveryResult) -> Response:
    """The answer for a result the event middleware made (not the route's own): one the consumer
    proxy reads back as the same result (status, outcome, reason, detail, Retry-After)."""
    if result.status is None:  # not an answer: what the server answers an application that failed
        return PlainTextResponse("Internal Server Error", status_code=500)
    headers: dict[str, str] = {}
    if result.outcome:
        headers[OUTCOME_HEADER] = result.outcome
    if result.reason:
        headers[REASON_HEADER] = encode_reason(result.reason)
    if result.retry_after is not None:
        headers[RETRY_AFTER_HEADER] = str(math.ceil(result.retry_after))
    if result.detail and keeps_body(result.status):
        body = json.dumps({"detail": result.detail}).encode()
        return Response(body, result.status, headers, media_type="application/json")
    return Response(b"", result.status, headers)


class HttpEntry:
    """The ASGI application the HTTP server serves: event deliveries to the routes in `calls`
    called directly, everything else handed to `api`."""

    def __init__(
        self,
        api: FastAPI,
        calls: Mapping[str, WireCall],
        routes: Mapping[str, EventRoute],
        secret: str | None,
    ) -> None:
        self.api = api
        self._secret = secret.encode() if secret else None
        # route object -> (its call, its EventRoute: the first topic bound to its path)
        first: dict[str, EventRoute] = {}
        for r in routes.values():
            first.setdefault(r.path, r)
        self._targets = {id(c.route): (c, first[path]) for path, c in calls.items()}
        self._table: list[tuple[BaseRoute, tuple[WireCall, EventRoute] | None]] = []
        self._seen: tuple[object, int] = (None, -1)
        self._compile(api.router.routes)

    def _compile(self, routes: list[BaseRoute]) -> None:
        """The routes a POST is tried against, in the router's order, up to the last event route
        with a call: those that could match a POST fully (not a websocket route, not a route whose
        methods leave POST out, which may match partly only, and a later full match wins)."""
        last = max((i for i, r in enumerate(routes) if id(r) in self._targets), default=-1)
        table = []
        for r in routes[: last + 1]:
            if isinstance(r, WebSocketRoute):
                continue
            methods = r.methods if isinstance(r, Route) else None
            if methods and "POST" not in methods:
                continue
            table.append((r, self._targets.get(id(r))))
        self._table, self._seen = table, (routes, len(routes))

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.api(scope, receive, send)
            return
        routes = self.api.router.routes
        if routes is not self._seen[0] or len(routes) != self._seen[1]:
            self._compile(routes)  # routes added after start-up
        if self.api.root_path:
            scope["root_path"] = self.api.root_path  # as FastAPI sets it, before matching
        for route, target in self._table:
            match, child = route.matches(scope)
            if match is Match.FULL:
                if target is not None:
                    await self._deliver(target, child, scope, receive, send)
                    return
                break
        await self.api(scope, receive, send)

    async def _deliver(
        self,
        target: tuple[WireCall, EventRoute],
        child: MutableMapping[str, Any],
        scope: dict[str, Any],
        receive: Any,
        send: Any,
    ) -> None:
        headers = scope["headers"]
        if self._secret is not None:
            given, kept = take_secret(headers)
            if given is None or not hmac.compare_digest(given, self._secret):
                await self.api(scope, receive, send)  # guard.DeliveryGuard refuses it, as ever
                return
            scope = {**scope, "headers": kept, VERIFIED_SCOPE_KEY: True}
            headers = kept
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = deadline_of(headers)
        limit = math.inf if deadline is None else deadline
        call, route = target
        body = b""
        reader = receive  # the handler reads the body if it wants it, as on the ASGI path
        if call.chain is not None:  # the event middleware's `delivery.body`: read first
            body = await _body(receive, limit)
            if body is None:  # the client went away
                return
            if body is _LATE:  # the deadline ran out while the body came: the route's 504
                await _answer(call.late(scope, deadline_sec(limit)))(scope, receive, send)
                return
            reader = _Replay(body, receive)
        if call.path_key is not None:
            text = child["path_params"][call.path_key]
        else:  # a route without a key parameter: the event id its x-message-key carries
            text = _header(headers, _MESSAGE_KEY, b"").decode("latin-1")
        # x-retry-count, read only for the event middleware (EventDelivery.retry_count)
        retry = 0
        if call.chain is not None:
            count = _header(headers, _RETRY_COUNT, b"")
            retry = int(count[:9]) if count.isdigit() else 0
        delivery = DirectDelivery(route, EventId(text, None), body, retry, limit, scope)
        answer = _answer(await call(delivery, reader))
        content = getattr(answer, "body", None)
        if answer.background is None and isinstance(content, (bytes, memoryview)):
            await answer(scope, receive, send)  # a plain answer: written at once
        else:
            await _write(answer, scope, receive, send, limit - (loop.time() - started))


class _Replay:
    """`receive` of a request whose body was read first: the body, then the server's `receive`."""

    __slots__ = ("body", "receive")

    def __init__(self, body: bytes, receive: Callable[[], Awaitable[Any]]) -> None:
        self.body: bytes | None = body
        self.receive = receive

    async def __call__(self) -> Any:
        body, self.body = self.body, None
        if body is None:
            return await self.receive()
        return {"type": "http.request", "body": body, "more_body": False}


def _header(headers: list[tuple[bytes, bytes]], name: bytes, default: bytes) -> bytes:
    """The first value of the header `name` (lowercase), else `default`."""
    for k, v in headers:
        if k.lower() == name:
            return v
    return default


def _answer(result: DeliveryResult) -> Response:
    answer = result.answer if isinstance(result, WireResult) else None
    return answer if answer is not None else render(result)


async def _body(receive: Any, limit: float) -> Any:
    """The whole body; what comes after its first part, under the delivery's deadline (the handler
    would read it under it): :data:`_LATE` when the deadline ran out, None when the client left."""
    message = await receive()
    if message["type"] != "http.request":
        return None
    chunks = [message.get("body", b"")]
    if not message.get("more_body", False):
        return chunks[0]
    try:
        async with asyncio.timeout(None if limit == math.inf else limit):
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    return None
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    return b"".join(chunks)
    except TimeoutError:
        return _LATE


async def _write(
    answer: Response, scope: dict[str, Any], receive: Any, send: Any, remaining: float
) -> None:
    """Write `answer` (one that streams or runs background tasks) under what is left of the
    deadline: deadline.DeadlineRoute's scope covers the answer too."""
    if remaining == math.inf:
        await answer(scope, receive, send)
        return
    with anyio.move_on_after(max(remaining, 0)) as timer:
        await answer(scope, receive, send)
    if timer.cancelled_caught:
        log.warning(
            "the handler of POST %s ran past its deadline while answering: cancelled",
            printable(get_route_path(scope)),
        )


def http_entry(
    api: FastAPI,
    routes: Mapping[str, EventRoute],
    kafka: KafkaConfig | None,
    failures: FailureAnswers,
    middleware: Sequence[EventMiddleware],
) -> ASGIApp:
    """What the HTTP server serves for `api` (Application.__call__): an :class:`HttpEntry` when
    deliveries received over HTTP are to be direct (`http_dispatch = "direct"`, the default) and a
    route qualifies, else `api` itself; the start-up line says which path they take."""
    if not routes:
        return api
    if kafka is not None and kafka.consumer.http_dispatch != "direct":
        log.info(
            "HTTP deliveries received: through the ASGI application, every route "
            '(http_dispatch = "asgi")'
        )
        return api
    guards = [m for m in api.user_middleware if _is_guard(m)]
    if len(guards) > 1:  # not freedom's own set-up: leave every request to the application
        log.info("HTTP deliveries received: through the ASGI application (several delivery guards)")
        return api
    secret = guards[0].kwargs["secret"] if guards else None
    if secret is not None and not isinstance(secret, str):
        return api
    compiled = compile_direct(api, routes, failures, middleware, make=WireCall)
    calls = {p: c for p, c in compiled.calls.items() if isinstance(c, WireCall)}
    fallbacks = dict(compiled.fallbacks)
    for path, call in list(calls.items()):
        limits = (getattr(call.route, "max_body_size", None), getattr(api, "max_body_size", None))
        if limits != (None, None):
            del calls[path]
            fallbacks[path] = "has a body size limit (max_body_size)"
    log.info("%s", _line(api, calls, fallbacks))
    return HttpEntry(api, calls, routes, secret) if calls else api


def _line(api: FastAPI, calls: Mapping[str, WireCall], fallbacks: Mapping[str, str]) -> str:
    """The start-up line: which routes are called directly, without which HTTP middleware."""
    skipped = [_name(m) for m in api.user_middleware if not _is_guard(m)]
    without = "without HTTP middleware"
    if skipped:
        without += (
            f": {', '.join(skipped)} {'does' if len(skipped) == 1 else 'do'} not run around them; "
            'http_dispatch = "asgi" keeps it'
        )
    line = (
        f"HTTP deliveries received: direct: {_routes(len(calls))} (each handler called in front "
        f"of the ASGI application, {without})"
    )
    if fallbacks:
        why = "; ".join(f"{p}: {w}" for p, w in sorted(fallbacks.items()))
        line += f"; ASGI: {_routes(len(fallbacks))} ({why})"
    return line


def _is_guard(middleware: Any) -> bool:
    return middleware.cls is DeliveryGuard


def _name(middleware: Any) -> str:
    what = middleware.cls
    if what is BaseHTTPMiddleware:  # @app.middleware("http"): the function
        what = middleware.kwargs.get("dispatch", what)
    return str(getattr(what, "__name__", repr(what)))


def _routes(n: int) -> str:
    return f"{n} route" if n == 1 else f"{n} routes"
