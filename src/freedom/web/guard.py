"""Secure delivery: event routes accept only calls from the consumer proxy (docs/contract.md, "The
delivery secret").

Event routes are ordinary HTTP routes, so anyone who can reach the service could forge an event.
With a shared secret configured (`[consumer] secret_env = "FREEDOM_PROXY_SECRET"` or
`secret = "..."` in kafka.toml), the consumer proxy sends it in the `x-freedom-secret` header of
every delivery, and the event routes answer 401 to any call without it, before the handler runs.
The header is taken out of every request, on every route, before any application middleware.
The comparison is constant-time (`hmac.compare_digest`), and the secret never reaches a log line
or an error message. Other routes are not affected.

Without a secret, start-up warns when the service listens beyond loopback, because its event
routes are then open to anyone on the network.
"""

from __future__ import annotations

import hmac
import logging
import re
from collections.abc import Callable, Iterable, MutableMapping
from typing import TYPE_CHECKING, Any

from starlette.responses import JSONResponse
from starlette.routing import compile_path, get_route_path  # type: ignore[attr-defined]  # Starlette's own import, not re-exported

from freedom.runner.addresses import is_loopback
from freedom.wire.encoding import printable
from freedom.wire.headers import SECRET_HEADER

if TYPE_CHECKING:
    from fastapi import FastAPI

    from freedom.config.models import KafkaConfig
    from freedom.kafka.consumer.delivery import EventRoute

log = logging.getLogger("freedom.web.guard")

_SECRET_HEADER_RAW = SECRET_HEADER.encode()

ASGIApp = Callable[..., Any]


#: Where DeliveryGuard leaves its verdict for the route-level check (:class:`RequireDelivery`).
#: An ASGI scope key: a request cannot set it, only code in front of the application can.
VERIFIED_SCOPE_KEY = "freedom.delivery_verified"


def _refuse(scope: MutableMapping[str, Any], given: str) -> JSONResponse:
    client = scope.get("client") or ("unknown", 0)
    log.warning(
        "refused a POST to event route %s from %s: %s header %s",
        printable(get_route_path(scope)),
        printable(str(client[0])),
        SECRET_HEADER,
        given,
    )
    return JSONResponse(
        {
            "detail": f"event routes accept only deliveries from the consumer proxy "
            f"(missing or wrong {SECRET_HEADER} header)"
        },
        status_code=401,
    )


def take_secret(
    headers: Iterable[tuple[bytes, bytes]],
) -> tuple[bytes | None, list[tuple[bytes, bytes]]]:
    """The first `x-freedom-secret` value of a request's headers (None: it has none), and the
    headers without any of them. What DeliveryGuard checks, and the HTTP entry too (http_direct.py)."""
    given: bytes | None = None
    kept = []
    for k, v in headers:
        if k.lower() == _SECRET_HEADER_RAW:
            if given is None:
                given = v
        else:
            kept.append((k, v))
    return given, kept


class DeliveryGuard:
    """ASGI middleware, outermost: takes the shared secret out of **every** request before any
    application code or middleware sees it, and answers 401 to a POST to an event route that
    did not carry it.

    The verdict stays in the scope (:data:`VERIFIED_SCOPE_KEY`) for the routes this middleware
    cannot tell by their path (the any-key copies of the event routes, initiator.py), which check
    it with :class:`RequireDelivery`.
    """

    def __init__(self, app: ASGIApp, secret: str, paths: list[str]) -> None:
        self.app = app
        self._secret = secret.encode()
        self._paths: list[re.Pattern[str]] = [compile_path(p)[0] for p in paths]

    def _guarded(self, scope: dict[str, Any]) -> bool:
        if scope.get("method") != "POST":
            return False
        path = get_route_path(scope)
        return any(p.match(path) for p in self._paths)

    async def __call__(self, scope: dict[str, Any], receive: ASGIApp, send: ASGIApp) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given, kept = take_secret(scope["headers"])
        verified = given is not None and hmac.compare_digest(given, self._secret)
        # A new scope with the secret left out: nothing after this point (middleware, routes,
        # handlers, their logs) sees it, whatever the route.
        scope = {**scope, "headers": kept, VERIFIED_SCOPE_KEY: verified}
        if not verified and self._guarded(scope):
            await _refuse(scope, "missing" if given is None else "wrong")(scope, receive, send)
            return
        await self.app(scope, receive, send)


class RequireDelivery:
    """Route-level check of an event route that DeliveryGuard cannot recognise by its path: 401
    unless DeliveryGuard found the shared secret in this request (it has already removed it)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(
        self, scope: MutableMapping[str, Any], receive: ASGIApp, send: ASGIApp
    ) -> None:
        if scope["type"] == "http" and scope.get(VERIFIED_SCOPE_KEY) is not True:
            await _refuse(scope, "missing or wrong")(scope, receive, send)
            return
        await self.app(scope, receive, send)


def secure_event_routes(
    api: FastAPI, routes: dict[str, EventRoute], kafka: KafkaConfig | None, listen_addr: str
) -> None:
    """Install the guard on the event routes when a secret is configured; warn when they are open."""
    if not routes:
        return
    secret = kafka.consumer.shared_secret if kafka is not None else None
    if secret:
        api.add_middleware(
            DeliveryGuard, secret=secret, paths=sorted({r.path for r in routes.values()})
        )
        return
    host = listen_addr.rpartition(":")[0]
    if not is_loopback(host):
        log.warning(
            "event routes (%s) are open: the service listens on %s and no shared secret is set, so anyone "
            'who can reach it can forge events; set [consumer] secret_env = "FREEDOM_PROXY_SECRET" in kafka.toml',
            ", ".join(sorted({r.path for r in routes.values()})),
            listen_addr,
        )
