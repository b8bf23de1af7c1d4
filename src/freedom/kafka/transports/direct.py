"""Direct in-process delivery: the consumer proxy calls the event handler itself, without an HTTP
exchange and without the ASGI stack (`proxy_addr = "inprocess"`, `inprocess_dispatch = "direct"`,
the default; docs/consumer-proxy.md, "Which path a delivery takes").

The Kafka side cannot know how a handler is called (the web layer is above it), so the application
hands over, per event route path, a :data:`DirectCall`: an async function taking the
:class:`DirectDelivery` (the route, the event id, the value, the retry count, the deadline, and the
ASGI scope the in-process request would have had, made by `asgi.delivery_scope`, the one rule for the
headers) and giving the :class:`~freedom.kafka.consumer.delivery.DeliveryResult` the ASGI path would
have given for the same answer (freedom/web/direct.py makes them). Routes without one (and batches,
:meth:`DirectTransport.post`) go through the ASGI fallback, :class:`~.asgi.AsgiTransport`.

What the transport keeps of the proxy's rules: the headers (`request_headers`: ownership, the
encoding of what HTTP cannot carry, `x-message-key`, `x-retry-count`, `x-freedom-timeout-ms`), an
unsendable record's permanent failure, and the proxy's own timeout (`proxy_wait`: the deadline plus
its grace) around the call. No delivery secret travels: nothing outside the process can make a
direct call, so there is nothing to authenticate.

The timers are started only when the call first waits (:class:`Resume`): a handler that finishes
without waiting for anything (a short handler) pays for no timer at all.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Generator, Mapping
from dataclasses import dataclass, field
from typing import Any

from freedom.kafka.consumer.delivery import (
    INPROCESS,
    DeliveryResult,
    EventRoute,
    RecordHeaders,
    UnsendableRecord,
    proxy_wait,
)
from freedom.kafka.consumer.keys import EventId, event_id
from freedom.kafka.transports.asgi import AsgiTransport, delivery_scope

log = logging.getLogger("freedom.kafka.delivery")


class DirectDelivery:
    """One record on its way to a handler by a direct call: what the handler's request is made of."""

    __slots__ = ("route", "event_id", "value", "retry_count", "deadline", "scope")

    def __init__(
        self,
        route: EventRoute,
        event_id: EventId,
        value: bytes,
        retry_count: int,
        deadline: float,
        scope: dict[str, Any],
    ) -> None:
        #: The event route (its topic, path template and path parameter).
        self.route = route
        #: The event id: the path parameter's value and `x-message-key` (its `.key`: the key bytes).
        self.event_id = event_id
        #: The record's value: the request body.
        self.value = value
        #: `x-retry-count`: 0 from the main topic, n on the n-th retry.
        self.retry_count = retry_count
        #: Seconds the handler has (`x-freedom-timeout-ms`: the topic's `delivery_timeout_sec`).
        self.deadline = deadline
        #: The ASGI scope the in-process request would have (`asgi.delivery_scope`): its headers are
        #: the ones the handler sees; the caller may add to it (the app, the route, path params).
        self.scope = scope


#: How a route is called directly: the delivery in, the result the ASGI path would have given out;
#: never raises for the handler's faults (the caller maps them as the route's answer would).
DirectCall = Callable[[DirectDelivery], Coroutine[Any, Any, DeliveryResult]]


@dataclass(frozen=True)
class DirectRoutes:
    """What the application hands the Kafka side for direct delivery: a call per event route path
    that has one, and why each other route goes through the ASGI application instead."""

    calls: Mapping[str, DirectCall] = field(default_factory=dict)
    #: route path -> why it is delivered through the ASGI application (one short phrase).
    fallbacks: Mapping[str, str] = field(default_factory=dict)


class Resume:
    """The rest of a coroutine whose first step already ran and yielded `first`: awaited, it hands
    what the coroutine yields to the task and what the task sends (or throws, a cancellation) back
    to it, as `await` would have from the start.

    How a call is run with a timer only when it waits: `coro.send(None)` runs it, in the task that
    awaits it, until it first waits; a `StopIteration` carries its result when it did not wait (no
    timer needed); else `await Resume(coro, yielded)` under the timer is the rest of `await coro`.
    """

    __slots__ = ("coro", "first")

    def __init__(self, coro: Coroutine[Any, Any, Any], first: Any) -> None:
        self.coro, self.first = coro, first

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, yielded = self.coro, self.first
        while True:
            try:
                sent = yield yielded
            except BaseException as exc:  # noqa: BLE001 - thrown in by the task: the coroutine's
                try:
                    yielded = coro.throw(exc)
                except StopIteration as done:
                    return done.value
            else:
                try:
                    yielded = coro.send(sent)
                except StopIteration as done:
                    return done.value


class DirectTransport:
    """Delivers records by calling the handlers of the routes that have a :data:`DirectCall`, and
    through the ASGI application (`fallback`) for the others and for batches."""

    proxy_addr = INPROCESS

    def __init__(self, routes: DirectRoutes, fallback: AsgiTransport) -> None:
        self.routes = routes
        self._calls = dict(routes.calls)
        self.fallback = fallback
        self.timeout = fallback.timeout  # the deadline of a route without its own
        self.post = fallback.post  # batches: one request through the application (batching.py)

    async def wait_until_reachable(self, deadline: float, stop: asyncio.Event) -> bool:
        """Wait until the application has started (as the ASGI fallback does)."""
        return await self.fallback.wait_until_reachable(deadline, stop)

    async def deliver(
        self, route: EventRoute, key: str, value: bytes, headers: RecordHeaders, retry_count: int
    ) -> DeliveryResult:
        """Call the route's handler with the delivery; never raises for the handler's faults."""
        call = self._calls.get(route.path)
        if call is None:
            return await self.fallback.deliver(route, key, value, headers, retry_count)
        limit = route.timeout_sec if route.timeout_sec is not None else self.timeout
        try:
            scope = delivery_scope(route, key, value, headers, retry_count, limit)
        except UnsendableRecord as exc:
            return exc.result()
        eid = key if isinstance(key, EventId) else event_id(key)
        work = call(DirectDelivery(route, eid, value, retry_count, limit, scope))
        timer: asyncio.Timeout | None = None
        try:
            try:  # the call runs until it first waits (Resume)
                rest: Any = Resume(work, work.send(None))
            except StopIteration as done:  # it did not wait, so no timer: a short handler's path
                return done.value  # type: ignore[no-any-return]
            # The proxy's own timeout, as over HTTP: the handler's deadline plus the grace.
            timer = asyncio.timeout(proxy_wait(limit))
            async with timer:
                return await rest  # type: ignore[no-any-return]
        except Exception:  # not the handler's fault (the call maps those): a timeout, or a bug
            if timer is not None and timer.expired():
                return DeliveryResult(error="timed out waiting for the handler")
            log.exception("the direct call of %s raised", route.url_path(key))
            return DeliveryResult(status=500)

    async def aclose(self) -> None:
        await self.fallback.aclose()
