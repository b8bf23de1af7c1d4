"""Direct delivery, the web side: the call the consumer proxy makes of an event route instead of an
HTTP request (freedom/kafka/transports/direct.py; docs/consumer-proxy.md, "Which path a delivery
takes"), one :class:`RouteCall` per route, made at start-up for the routes that qualify
(direct_routes.py: those whose endpoint takes only the request and the key). Deliveries received
over HTTP are called the same way (http_direct.py's WireCall, which keeps the answer to write it).

What the handler sees is what the ASGI request gives it: `runtime.request` is a `freedom.Request`
on the scope `asgi.delivery_scope` makes (the same headers, body, key), with the application, the
route and the path parameter in it (`request.app.state`, `request.path_params`, `request.url`);
a plain route gets Starlette's `Request` on that scope, as FastAPI gives it, and
`freedom.RuntimeDep` the same `Runtime`. The path parameter is validated by a Pydantic
`TypeAdapter` compiled here when it is annotated other than `str`.

The answer, mapped without HTTP, is the `DeliveryResult` the ASGI path gives
(`tests/test_direct_invoker.py` compares them case by case): what the handler returned (a
`Response`: its status, `x-freedom-outcome`, `x-freedom-reason`, `Retry-After`, the start of a
4xx/5xx body), or what it raised, taken by the application's exception handlers as Starlette
would pick them (`freedom.Retry` & co., `HTTPException`, validation errors, the application's
own, its handler for `Exception`), else answered as failures.py answers (500 naming it, the
traceback held for the proxy's log).

The deadline cancels the handler as deadline.py does (504), with a timer started only if the call
waits (a handler that finishes without waiting pays for none): asyncio's for an `async def`
handler, deadline.py's own anyio scope, from the start, for a `def` handler (it waits for the
worker thread). Event middleware (event_middleware.py) runs inside the deadline.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable, Coroutine, MutableMapping, Sequence
from typing import Annotated, Any

import anyio
from fastapi import FastAPI
from fastapi.datastructures import DefaultPlaceholder
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from fastapi.utils import is_body_allowed_for_status_code
from pydantic import TypeAdapter, ValidationError
from starlette._utils import is_async_callable
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request as StarletteRequest
from starlette.responses import JSONResponse, Response

from freedom.kafka.consumer.delivery import (
    MAX_FAILURE_BODY,
    DeliveryResult,
    keeps_body,
    result_of,
)
from freedom.kafka.transports.asgi import Exchange
from freedom.kafka.transports.direct import DirectDelivery, Resume
from freedom.web.deadline import deadline_sec, late_answer
from freedom.web.event_middleware import EventDelivery, EventMiddleware, Step, chain
from freedom.web.failures import FailureAnswers
from freedom.web.runtime import Request, Runtime
from freedom.wire.headers import FAILURE_HEADER, OUTCOME_HEADER, REASON_HEADER, RETRY_AFTER_HEADER

# The in-process transport's logger and line, for what escapes to the server there.
log = logging.getLogger("freedom.kafka.delivery")

_OK = DeliveryResult(status=200)
#: _RENDERED: what a controller method returns that is not a Response (None, text, data, a model)
#: becomes a 200 answer with no outcome header (controllers.to_response); the proxy reads nothing
#: else of it, so the direct path does not render it (measured: rendering `{"ok": true}` as JSON
#: was about 6 µs of the ~36 µs of a direct delivery). A value JSON cannot encode is therefore not
#: an error on the direct path, as it would be (500) over HTTP.
#: What a call under its deadline gives when the deadline cancelled it (answered 504).
_LATE: Any = object()
_OUTCOME = OUTCOME_HEADER.encode()
_REASON = REASON_HEADER.encode()
_RETRY_AFTER = RETRY_AFTER_HEADER.encode()
_FAILURE = FAILURE_HEADER.encode()
_SERVER_ERROR = b"Internal Server Error"  # Starlette's answer when an exception escapes


class _Receive:
    """`receive` of a direct delivery's request: the body, then nothing (as in-process ASGI, where
    the client disconnects only once the answer is complete, after the handler)."""

    __slots__ = ("body",)

    def __init__(self, body: bytes) -> None:
        self.body: bytes | None = body

    async def __call__(self) -> dict[str, Any]:
        body = self.body
        if body is None:
            await asyncio.get_running_loop().create_future()  # the answer is not complete yet
        self.body = None
        return {"type": "http.request", "body": body or b"", "more_body": False}


def read_answer(response: Response, body: bytes | memoryview, take: bool = True) -> DeliveryResult:
    """What the consumer proxy reads from `response` (as `asgi.Exchange` keeps it from the wire);
    `take=False` leaves the traceback an `x-freedom-failure-id` names held (it goes on the wire)."""
    outcome = reason = None
    retry_after = failure = None
    for k, v in response.raw_headers:
        k = k.lower()
        if k == _OUTCOME:
            outcome = v.decode("latin-1")
        elif k == _REASON:
            reason = v.decode("latin-1")
        elif k == _RETRY_AFTER:
            retry_after = v
        elif k == _FAILURE:
            failure = v
    status = response.status_code
    kept = bytes(body[:MAX_FAILURE_BODY]) if body and keeps_body(status) else None
    return result_of(status, outcome, reason, kept, retry_after, failure if take else None)


async def answer_of(response: Response | None, scope: MutableMapping[str, Any]) -> DeliveryResult:
    """The result of the route answering `response`: read from it, or, for a response that streams
    or has background tasks, run as the ASGI answer it is."""
    if response is None:
        return DeliveryResult(error="the application returned without answering")
    body = getattr(response, "body", None)
    if response.background is None and isinstance(body, (bytes, memoryview)):
        return read_answer(response, body)
    exchange = Exchange(b"")
    await response(scope, exchange.receive, exchange.send)
    return exchange.result()


class RouteCall:
    """The direct call of one event route (a :data:`~freedom.kafka.transports.direct.DirectCall`)."""

    def __init__(
        self,
        api: FastAPI,
        route: APIRoute,
        failures: FailureAnswers,
        middleware: Sequence[EventMiddleware],
    ) -> None:
        self.api, self.failures, self.route = api, failures, route
        self._scope = {"app": api, "router": api.router, "route": route, "endpoint": route.endpoint}
        d = route.dependant
        field = d.path_params[0] if d.path_params else None
        self.param = field.name if field is not None else None
        self.adapter = _adapter(field) if field is not None else None
        invoke = getattr(route.endpoint, "__freedom_invoke__", None)
        self.invoke: Callable[..., Any] = invoke or route.endpoint
        self.controller = invoke is not None
        self.is_async = is_async_callable(self.invoke)
        #: The handler runs in a worker thread (a plain `def`): its deadline is deadline.py's own
        #: anyio scope, which waits for the thread, from the start.
        self.threaded = (
            bool(getattr(route.endpoint, "__freedom_threaded__", False))
            if self.controller
            else not self.is_async
        )
        # A plain route's own inputs: its request parameter, its freedom.RuntimeDep parameters.
        self.request_name = d.request_param_name
        self.runtime_names = [dep.name for dep in d.dependencies if dep.name]
        response_class = route.response_class
        self.response_class: type[Response] = (
            response_class.value
            if isinstance(response_class, DefaultPlaceholder)
            else response_class
        )
        self.status_code = route.status_code  # None: the response class's own default
        status = route.status_code or 200
        self.none = (
            DeliveryResult(status=status)
            if self.response_class is JSONResponse and status < 400
            else None
        )
        #: A controller method's own result is mapped here (no middleware chain): one frame less.
        self.raw = self.controller and not middleware
        guarded: Step = self._guarded
        self.chain = chain(middleware, guarded, self._middleware_failed) if middleware else None

    async def __call__(
        self, direct: DirectDelivery, receive: Callable[[], Awaitable[Any]] | None = None
    ) -> DeliveryResult:
        """The delivery's result; `receive`: the request's own (received over HTTP, http_direct.py),
        else one that gives `direct.value`."""
        scope = direct.scope
        scope.update(self._scope)
        event_id = str(direct.event_id)
        scope["path_params"] = {self.param: event_id} if self.param is not None else {}
        request = Request(scope, receive if receive is not None else _Receive(direct.value))
        try:
            if self.raw:
                work: Coroutine[Any, Any, Any] = self._method(request, event_id)
            elif self.chain is not None:
                work = self.chain(EventDelivery(direct, request))
            else:
                work = self._respond(request, event_id)
            if self.threaded:
                result = await self._threaded(work, direct.deadline)
            else:
                try:  # until it first waits (kafka/transports/direct.Resume)
                    rest = Resume(work, work.send(None))
                except StopIteration as done:  # it did not wait: no timer was needed
                    result = done.value
                else:  # it waits: from now on under the deadline (a timer started only now)
                    result = await self._timed(rest, direct.deadline)
            if result is _LATE:
                return self.late(scope, deadline_sec(direct.deadline))
            if not self.raw:
                return result  # type: ignore[no-any-return]
            if not isinstance(result, Response):
                return self.returned(result)
            return await self.answer(result, scope)
        except Exception as exc:
            return await self.failed(exc, request)

    @staticmethod
    async def _timed(rest: Resume, limit: float) -> Any:
        """The rest of a call that waits, under its deadline (deadline.py's, as asyncio's timer):
        what it gives, or :data:`_LATE`."""
        timer = asyncio.timeout(None if limit == math.inf else deadline_sec(limit))
        try:
            async with timer:
                return await rest
        except TimeoutError:
            if not timer.expired():
                raise  # the handler's own
            return _LATE

    @staticmethod
    async def _threaded(work: Coroutine[Any, Any, Any], limit: float) -> Any:
        """`work` under deadline.DeadlineRoute's own kind of deadline: an anyio scope, which waits
        for a worker thread (a `def` handler's answer never goes out while it runs)."""
        with anyio.move_on_after(None if limit == math.inf else deadline_sec(limit)):
            return await work
        return _LATE

    def _respond(self, request: Request, event_id: str) -> Coroutine[Any, Any, DeliveryResult]:
        """The handler's call: the delivery's request and event id in, its answer's result out."""
        if self.controller:
            return self._controller(request, event_id)
        return self._plain(request, event_id)

    def _method(self, request: Request, event_id: str) -> Coroutine[Any, Any, Any]:
        """The controller method's call (make_endpoint's `invoke`): its own result, not mapped."""
        if self.param is None:
            return self.invoke(request)  # type: ignore[no-any-return]
        if self.adapter is None:  # a `str` key: the event id as it is
            return self.invoke(request, **{self.param: event_id})  # type: ignore[no-any-return]
        return self.invoke(request, **{self.param: self._key(event_id)})  # type: ignore[no-any-return]

    async def _guarded(self, delivery: EventDelivery) -> DeliveryResult:
        """The end of the middleware chain: the handler, what it raised mapped to its answer."""
        try:
            return await self._respond(delivery.request, delivery.event_id)
        except Exception as exc:
            return await self.failed(exc, delivery.request)

    async def _middleware_failed(self, exc: Exception, delivery: EventDelivery) -> DeliveryResult:
        return await self.failed(exc, delivery.request)

    def _key(self, event_id: str) -> Any:
        """The path parameter's value: the event id, validated as FastAPI would (422 otherwise)."""
        if self.adapter is None:
            return event_id
        try:
            return self.adapter.validate_python(event_id, from_attributes=True)
        except ValidationError as exc:
            loc = ("path", self.param)
            errors = [
                {**e, "loc": loc + tuple(e.get("loc", ()))} for e in exc.errors(include_url=False)
            ]
            raise RequestValidationError(errors) from None

    async def _controller(self, request: Request, event_id: str) -> DeliveryResult:
        result = await self._method(request, event_id)
        if not isinstance(result, Response):
            return self.returned(result)
        return await self.answer(result, request.scope)

    async def _plain(self, request: Request, event_id: str) -> DeliveryResult:
        kwargs: dict[str, Any] = {}
        if self.param is not None:
            kwargs[self.param] = self._key(event_id)
        if self.request_name is not None:  # what FastAPI gives: Starlette's request
            kwargs[self.request_name] = StarletteRequest(request.scope, request.receive)
        for name in self.runtime_names:
            kwargs[name] = Runtime.of(request)
        if self.is_async:
            raw = await self.invoke(**kwargs)
        else:
            raw = await run_in_threadpool(self.invoke, **kwargs)
        if isinstance(raw, Response):
            return await self.answer(raw, request.scope)
        if raw is None and self.none is not None:
            return self.none
        content = jsonable_encoder(raw)
        if self.status_code:
            response = self.response_class(content, status_code=self.status_code)
        else:
            response = self.response_class(content)
        if not is_body_allowed_for_status_code(response.status_code):
            response.body = b""
        return await self.answer(response, request.scope)

    async def failed(self, exc: Exception, request: Request) -> DeliveryResult:
        """The answer to `exc`, as the application's exception handlers (Starlette's
        ExceptionMiddleware, then ServerErrorMiddleware) or failures.py would give it."""
        scope = request.scope
        handlers = self.api.exception_handlers
        handler = None
        if isinstance(exc, HTTPException) and exc.status_code != 500:
            handler = handlers.get(exc.status_code)
        if handler is None:
            handler = next(
                (handlers[c] for c in type(exc).__mro__ if c is not Exception and c in handlers),
                None,
            )
        if handler is not None:
            try:
                return await self.answer(await _call(handler, scope, exc), scope)
            except Exception as again:  # noqa: BLE001 - as ServerErrorMiddleware takes it
                exc = again
        elif Exception not in handlers and 500 not in handlers:
            return self.unhandled(scope, exc)  # failures.py's 500, traceback held
        # What reaches the server: the application's own handler for it, logged as the in-process
        # transport logs an exception escaping the application.
        log.exception(
            "the application raised while handling the delivery to %s",
            scope["raw_path"].decode("ascii"),
            exc_info=exc,
        )
        own = None  # ServerErrorMiddleware's: the last of them registered
        for key, value in handlers.items():
            if key in (500, Exception):
                own = value
        if own is None:
            return self.server_error()
        try:
            return await self.answer(await _call(own, scope, exc), scope)
        except Exception:  # noqa: BLE001 - escapes the application: the server's 500
            return self.escaped()

    # How an answer is given: here, as the result the consumer proxy reads from it; the HTTP
    # entry's calls (http_direct.WireCall) keep the answer itself, to write it to the wire.

    async def answer(
        self, response: Response | None, scope: MutableMapping[str, Any]
    ) -> DeliveryResult:
        """The result of the route answering `response`."""
        return await answer_of(response, scope)

    def returned(self, value: Any) -> DeliveryResult:
        """A controller method returned `value`, not a Response: to_response's 200, nothing in it
        the proxy reads (_RENDERED)."""
        return _OK

    def late(self, scope: MutableMapping[str, Any], deadline: float) -> DeliveryResult:
        """The route's 504: the handler ran past its `deadline` (seconds) and was cancelled."""
        return result_of(504, None, None, late_answer(scope, deadline))

    def unhandled(self, scope: MutableMapping[str, Any], exc: Exception) -> DeliveryResult:
        """failures.py's 500 naming `exc`, its traceback held (and taken back here)."""
        return self.failures.result(scope, exc)

    def server_error(self) -> DeliveryResult:
        """Starlette's 500 (ServerErrorMiddleware) for what reaches it."""
        return result_of(500, None, None, _SERVER_ERROR)

    def escaped(self) -> DeliveryResult:
        """The server's 500: an exception escaped the application."""
        return DeliveryResult(status=500)


async def _call(
    handler: Callable[..., Any], scope: MutableMapping[str, Any], exc: Exception
) -> Any:
    """Call an exception handler as Starlette does: async, or in the thread pool."""
    request = StarletteRequest(scope)
    if is_async_callable(handler):
        return await handler(request, exc)
    return await run_in_threadpool(handler, request, exc)


def _adapter(field: Any) -> TypeAdapter[Any] | None:
    """The path parameter's TypeAdapter, built as FastAPI builds its own; None for a plain `str`."""
    info = field.field_info
    if info.annotation in (str, Any) and not info.metadata:
        return None
    annotated: Any = Annotated[info.annotation, info]  # as FastAPI's ModelField makes its own
    return TypeAdapter(annotated)
