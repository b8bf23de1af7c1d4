"""Event middleware: functions that wrap every direct delivery to an event handler
(`@app.event_middleware`; docs/consumer-proxy.md, "Which path a delivery takes").

    @app.event_middleware
    async def timed(delivery: freedom.EventDelivery, call_next) -> freedom.DeliveryResult:
        started = time.perf_counter()
        result = await call_next(delivery)
        took = (time.perf_counter() - started) * 1000
        delivery.runtime.logger.info("%s: %s in %.1f ms", delivery.topic, result.describe(), took)
        return result

A direct delivery runs no HTTP middleware (there is no HTTP request): this is its hook instead.
Each function gets the :class:`EventDelivery` and `call_next`, which runs the next function, and
at the end the handler, and gives the :class:`~freedom.kafka.consumer.delivery.DeliveryResult`:
the answer as the consumer proxy reads it, exceptions already mapped (`freedom.Retry` is
`outcome="retry"`, an uncaught `ValueError` a 500 naming it): `call_next` never raises, but for a
cancellation (the deadline). A function may return another result, or raise: what it raises is
answered as if the handler had raised it (`freedom.Drop("duplicate")` before calling `call_next`
skips the handler and drops the record). They run in the order registered (the
first is the outermost), under the delivery's deadline, on direct deliveries only (in-process, and
received over HTTP: web/http_direct.py): deliveries through the ASGI application
(`inprocess_dispatch` or `http_dispatch = "asgi"`, the routes that fall back) run the HTTP
middleware instead.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

from freedom.kafka.consumer.delivery import DeliveryResult
from freedom.kafka.transports.direct import DirectDelivery
from freedom.web.runtime import Request, Runtime, Utf8Headers

#: What `call_next` is: the rest of the chain, the handler at its end.
CallNext = Callable[["EventDelivery"], Awaitable[DeliveryResult]]
#: An event middleware function: `async def mw(delivery, call_next) -> DeliveryResult`.
EventMiddleware = Callable[["EventDelivery", CallNext], Awaitable[DeliveryResult]]
Step = Callable[["EventDelivery"], Coroutine[Any, Any, DeliveryResult]]


class EventDelivery:
    """One record delivered to an event handler by a direct call, as event middleware sees it.

    The handler's own view is its `Runtime` (`self.runtime.request`): the same request, headers
    and body, and the same `runtime` object (:attr:`runtime`), so what a middleware puts in
    `delivery.runtime.store` the handler finds there."""

    __slots__ = ("_direct", "request")

    def __init__(self, direct: DirectDelivery, request: Request) -> None:
        self._direct = direct
        #: freedom's request of the delivery (headers decoded as the record had them).
        self.request = request

    @property
    def topic(self) -> str:
        """The topic the event route listens on (a retry's too: its main topic); for a delivery
        received over HTTP, which does not say it, the first topic bound to the route."""
        return self._direct.route.topic

    @property
    def route(self) -> str:
        """The event route's path, as bound: `/store/sell/goods/{event_id}`."""
        return self._direct.route.path

    @property
    def event_id(self) -> str:
        """The event id: the path parameter's value and `x-message-key` (the key itself when it
        is plain text)."""
        return str(self._direct.event_id)

    @property
    def message_key(self) -> bytes | None:
        """The record's key as published (None: it had none)."""
        return self.request.message_key

    @property
    def body(self) -> bytes:
        """The record's value."""
        return self._direct.value

    @property
    def headers(self) -> Utf8Headers:
        """The delivery's headers, decoded as the record had them (the handler's `request.headers`)."""
        return self.request.headers

    @property
    def retry_count(self) -> int:
        """`x-retry-count`: 0 from the main topic, n on the n-th retry."""
        return self._direct.retry_count

    @property
    def deadline(self) -> float:
        """Seconds the delivery has (the topic's `delivery_timeout_sec`): middleware and handler;
        infinite for a request received over HTTP without `x-freedom-timeout-ms`."""
        return self._direct.deadline

    @property
    def runtime(self) -> Runtime:
        """The handler's `Runtime` (made now if the handler has not asked for it yet)."""
        return Runtime.of(self.request)

    def __repr__(self) -> str:
        return f"<EventDelivery {self.route} event_id={self.event_id!r} retry={self.retry_count}>"


#: How the chain answers what a middleware raised: as if the handler had raised it.
Failed = Callable[[Exception, "EventDelivery"], Awaitable[DeliveryResult]]


async def _step(
    middleware: EventMiddleware, call_next: CallNext, failed: Failed, delivery: EventDelivery
) -> DeliveryResult:
    try:
        return await middleware(delivery, call_next)
    except Exception as exc:  # what it raised, answered: `call_next` never raises
        return await failed(exc, delivery)


def chain(middleware: Sequence[EventMiddleware], handler: Step, failed: Failed) -> Step:
    """`handler` (which answers its own exceptions) wrapped in `middleware`, the first the
    outermost; what a middleware raises is answered by `failed`."""
    call: Step = handler
    for mw in reversed(middleware):
        call = functools.partial(_step, mw, call, failed)
    return call
