"""Delivering a record to the service's route over HTTP: the consumer proxy's one outward call.

`POST {proxy_addr}{route path}` with the key in the path, the value as body, the record headers
plus `x-message-key` and `x-retry-count`. The answer's `x-freedom-outcome` header (see
`freedom.outcomes`) decides first; otherwise a 2xx answer is success, and any other status, a
timeout or a connection error is a failure.

The transports (transports/): HTTP/1.1 (transports/http1.py) or HTTP/2 cleartext (pyreqwest,
transports/http.py), or, with `proxy_addr = "inprocess"`, a direct call of the ASGI application
in the same process (transports/asgi.py). This module holds what they share: the route, the
request headers, and the rule that reads the answer.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote

from ...errors import FreedomError
from ...headers import MESSAGE_KEY_HEADER, RETRY_COUNT_HEADER, SECRET_HEADER
from ...outcomes import OUTCOME_HEADER, OUTCOMES, decode_reason

log = logging.getLogger("freedom.kafka.delivery")

# Record headers that must not become HTTP headers: they would corrupt the request framing or
# override what the proxy itself sets.
_NOT_FORWARDED = {b"content-length", b"transfer-encoding", b"host", b"connection", b"upgrade",
                  b"keep-alive", b"te", b"trailer", b"http2-settings", b"proxy-connection",
                  MESSAGE_KEY_HEADER.encode(), RETRY_COUNT_HEADER.encode(), SECRET_HEADER.encode()}

RecordHeaders = list[tuple[str, bytes | None]]


@dataclass(frozen=True)
class EventRoute:
    """Where the records of one topic are delivered."""

    topic: str
    path: str  # e.g. /store/sell/goods/{event_id}
    param: str | None  # the path parameter that receives the message key

    def url_path(self, key: str) -> str:
        if self.param is None:
            return self.path
        return self.path.replace("{" + self.param + "}", quote(key, safe=""))


@dataclass(frozen=True)
class DeliveryResult:
    """How one delivery went: the status (or the transport error) and the handler's outcome, if any."""

    status: int | None = None
    error: str | None = None
    outcome: str | None = None  # "retry", "dead-letter", "drop" from the x-freedom-outcome header
    reason: str | None = None  # x-freedom-reason, decoded
    # True when the same delivery can never succeed however often it is tried (the record cannot
    # be encoded as a request, the handler refused the body as invalid, ...): the proxy then
    # dead-letters it at once, whatever retry_count says (SPEC §9 "Every record settles").
    permanent: bool = False

    @property
    def ok(self) -> bool:
        """Handled: 2xx without a retry/dead-letter outcome, or an explicit drop."""
        if self.outcome == "drop":
            return True
        return self.outcome is None and self.status is not None and 200 <= self.status < 300

    def describe(self) -> str:
        """One line for logs and the dead-letter `x-freedom-error` header."""
        what = f"HTTP {self.status}" if self.status is not None else (self.error or "unknown error")
        if self.outcome:
            what += f", handler asked: {self.outcome}"
        if self.reason:
            what += f" ({self.reason})"
        return what


def request_headers(record_headers: RecordHeaders, key: str, retry_count: int) -> list[tuple[bytes, bytes]]:
    """The headers of one delivery: the record's (minus hop-by-hop ones) plus the proxy's own.

    The one place where outgoing delivery headers are built.
    """
    out = [(k.encode() if isinstance(k, str) else k, v or b"") for k, v in record_headers]
    out = [(k, v) for k, v in out if k.lower() not in _NOT_FORWARDED]
    out.append((MESSAGE_KEY_HEADER.encode(), key.encode()))
    out.append((RETRY_COUNT_HEADER.encode(), str(retry_count).encode()))
    return out


def result_of(status: int, outcome: str | None, reason: str | None) -> DeliveryResult:
    """The result of an answer with `status` and the raw `x-freedom-outcome` / `x-freedom-reason` values."""
    if outcome is not None:
        outcome = outcome.strip().lower()
        if outcome not in OUTCOMES:
            log.warning("ignoring unknown %s: %r (expected one of %s)", OUTCOME_HEADER, outcome, ", ".join(OUTCOMES))
            outcome = None
    return DeliveryResult(status=status, outcome=outcome, reason=decode_reason(reason) if reason else None)


class Transport(Protocol):
    """How deliveries reach the service: over HTTP (transports/http.py) or by calling the ASGI
    application in the same process (transports/asgi.py). Both send the same request and read the
    answer by the same rule (:func:`result_of`)."""

    proxy_addr: str

    async def wait_until_reachable(self, deadline: float, stop: asyncio.Event) -> bool:
        """Wait until the service can take deliveries; False at the loop time `deadline`."""
        ...

    async def deliver(self, route: EventRoute, key: str, value: bytes,
                      headers: RecordHeaders, retry_count: int) -> DeliveryResult:
        """Deliver one record; never raises for the service's or the network's faults."""
        ...

    async def aclose(self) -> None:
        ...


INPROCESS = "inprocess"  # proxy_addr value selecting in-process delivery


def make_transport(proxy_addr: str, *, http2: bool = False, secret: str | None = None,
                   app: Any = None, ready: asyncio.Event | None = None) -> Transport:
    """The transport `proxy_addr` selects: `"inprocess"` calls `app` directly, else HTTP(S) to it."""
    if proxy_addr == INPROCESS:
        from .transports.asgi import AsgiTransport

        if app is None:
            raise FreedomError('proxy_addr = "inprocess" needs the application to call (KafkaInfra.start(app=...))')
        return AsgiTransport(app, secret=secret, ready=ready)
    from .transports.http import make_http_transport

    return make_http_transport(proxy_addr, http2=http2, secret=secret)
