"""Delivery deadlines on the service's side: a handler that runs past the deadline of its delivery
is cancelled (docs/contract.md, "The deadline").

The consumer proxy sends every delivery with `x-freedom-timeout-ms`: how long the handler has, in
milliseconds from when the request arrives (the topic's `delivery_timeout_sec`), and waits
`DEADLINE_GRACE_SEC` longer than that for the answer. Each event route is wrapped so that, when
the time runs out, the handler is cancelled and the answer is `504`, which the proxy retries like
any failure. So a delivery ends on the service when the proxy gives up on it: a retry, or the next
record of the partition, never runs beside a late original (over HTTP the proxy's timeout alone
would only close its connection, and the handler would run on).

The value is trusted only as far as it can do no harm: it is capped at `MAX_DELIVERY_TIMEOUT_SEC`
(a caller who can reach the route could leave the header out altogether, and a request without it
has no deadline, as before), a record's own `x-freedom-timeout-ms` is never forwarded by the proxy
(its own value is sent), and with a delivery secret only verified deliveries reach an event route.

A plain `def` handler runs in a worker thread, which Python cannot interrupt: its answer waits
until the thread returns (never a 504 while it still runs). The proxy counts a delivery with no
answer `DEADLINE_GRACE_SEC` after the deadline as failed, so a `def` handler that overruns by more
than that may still meet its retry: handlers that may run long should be `async def`.

The same wrapper answers for a handler that raised an exception no exception handler takes
(failures.py): `500` naming the exception, its traceback held for the consumer proxy's log.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, MutableMapping
from typing import Any

import anyio
from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.routing import get_route_path  # type: ignore[attr-defined]  # Starlette's own import

from freedom.config.rules import MAX_DELIVERY_TIMEOUT_SEC
from freedom.web.failures import FailureAnswers, handled_elsewhere
from freedom.wire.encoding import printable
from freedom.wire.headers import DEADLINE_HEADER

log = logging.getLogger("freedom.web.deadline")

_HEADER = DEADLINE_HEADER.encode()
_MAX_MS = MAX_DELIVERY_TIMEOUT_SEC * 1000

ASGIApp = Any


def deadline_of(headers: Iterable[tuple[bytes, bytes]]) -> float | None:
    """The deadline a request's `x-freedom-timeout-ms` gives, in seconds, capped at
    `MAX_DELIVERY_TIMEOUT_SEC`; None without a valid one (ASCII digits, not 0). Of several values
    the shortest counts."""
    best: int | None = None
    for k, v in headers:
        if k.lower() != _HEADER:
            continue
        v = v.strip()
        if not (0 < len(v) <= 32 and v.isdigit()):  # bytes.isdigit: ASCII digits only
            continue
        ms = min(int(v), _MAX_MS)
        if ms > 0 and (best is None or ms < best):
            best = ms
    return best / 1000 if best is not None else None


def deadline_sec(seconds: float) -> float:
    """The deadline a delivery with `seconds` (the topic's `delivery_timeout_sec`) gives its handler:
    what its `x-freedom-timeout-ms` says, read back by :func:`deadline_of`."""
    return min(max(1, round(seconds * 1000)), _MAX_MS) / 1000


def late_answer(scope: MutableMapping[str, Any], deadline: float) -> bytes:
    """Log that the handler of the request `scope` ran past its `deadline` (seconds) and was
    cancelled; the body of the 504 that answers it."""
    log.warning(
        "the handler of POST %s ran past its %.0f ms deadline (%s): cancelled, answered 504",
        printable(get_route_path(scope)),
        deadline * 1000,
        DEADLINE_HEADER,
    )
    return json.dumps(
        {
            "detail": f"the handler did not finish within its deadline of {deadline * 1000:.0f} ms "
            f"({DEADLINE_HEADER}, the topic's delivery_timeout_sec): it was cancelled"
        }
    ).encode()


class DeadlineRoute:
    """The ASGI app of an event route, under the deadline of each delivery it gets; with
    `failures`, it also answers for a handler that raised (failures.py)."""

    def __init__(self, app: ASGIApp, failures: FailureAnswers | None = None) -> None:
        self.app = app
        self.failures = failures

    async def __call__(
        self, scope: MutableMapping[str, Any], receive: ASGIApp, send: ASGIApp
    ) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        deadline = deadline_of(scope.get("headers") or ())
        failures = self.failures
        if deadline is None and failures is None:
            await self.app(scope, receive, send)
            return
        started = False

        async def watched(message: MutableMapping[str, Any]) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            if deadline is None:
                await self.app(scope, receive, watched)
                return
            # An anyio cancel scope, not asyncio.timeout: it cancels again at every await until the
            # handler has ended, and it waits for what a shielded scope protects (a `def` handler's
            # thread, Starlette's threadpool), so the answer never goes out while the handler runs.
            with anyio.move_on_after(deadline) as timer:
                await self.app(scope, receive, watched)
        except Exception as exc:
            # The handler raised what no exception handler takes: answered here, not by the server
            # (no traceback at every attempt; the consumer proxy logs it at the dead letter).
            if failures is None or started or handled_elsewhere(scope, exc):
                raise
            await failures.answer(scope, exc, send)
            return
        if not timer.cancelled_caught:
            return
        if started:  # too late to answer 504: the connection closes on an unfinished answer
            log.warning(
                "the handler of POST %s ran past its %.0f ms deadline while answering: cancelled",
                printable(get_route_path(scope)),
                deadline * 1000,
            )
            return
        body = late_answer(scope, deadline)
        await send(
            {
                "type": "http.response.start",
                "status": 504,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def enforce_deadlines(
    api: FastAPI, paths: Iterable[str], failures: FailureAnswers | None = None
) -> None:
    """Put the POST routes on `paths` (the event routes) under their deliveries' deadlines, and with
    `failures` have them answer for a handler that raised. Before `route_keys_with_slashes` copies
    them (the copies keep the wrapper)."""
    wanted = set(paths)
    for route in api.router.routes:
        if (
            isinstance(route, APIRoute)
            and route.path in wanted
            and "POST" in (route.methods or ())
            and not isinstance(route.app, DeadlineRoute)
        ):
            route.app = DeadlineRoute(route.app, failures)
