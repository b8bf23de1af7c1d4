"""Delivering a record to the service's route over HTTP: the consumer proxy's one outward call.

`POST {proxy_addr}{route path}` with the key in the path, the value as body, the record headers
plus `x-message-key` and `x-retry-count`. The answer's `x-freedom-outcome` header (see
`freedom.outcomes`) decides first; otherwise a 2xx answer is success, and any other status, a
timeout or a connection error is a failure.

Transport: HTTP/1.1, or HTTP/2 cleartext with prior knowledge (`proxy_http2 = true`, the
service served by an ASGI server that speaks h2c), both through one pooled httpx client.
"""

from __future__ import annotations

import asyncio
import importlib.util
import itertools
import logging
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

import httpx

from ...security import SECRET_HEADER  # the proxy authenticates its deliveries with it

from ...errors import FreedomError
from ...outcomes import OUTCOME_HEADER, OUTCOMES, REASON_HEADER, decode_reason

log = logging.getLogger("freedom.kafka.delivery")

MESSAGE_KEY_HEADER = "x-message-key"
RETRY_COUNT_HEADER = "x-retry-count"
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


def _result(response: httpx.Response) -> DeliveryResult:
    outcome = response.headers.get(OUTCOME_HEADER)
    if outcome is not None:
        outcome = outcome.strip().lower()
        if outcome not in OUTCOMES:
            log.warning("ignoring unknown %s: %r (expected one of %s)", OUTCOME_HEADER, outcome, ", ".join(OUTCOMES))
            outcome = None
    reason = response.headers.get(REASON_HEADER)
    return DeliveryResult(status=response.status_code, outcome=outcome,
                          reason=decode_reason(reason) if reason else None)


class HttpDelivery:
    """POSTs records to the service through pooled httpx clients (HTTP/1.1 or h2c).

    The connections are spread over several small httpx clients, used in turn: httpcore's pool
    scans all its connections (quadratically) on every request, which made one pool of 100
    connections the proxy's bottleneck.
    """

    CONNECTIONS_PER_CLIENT = 8

    def __init__(self, proxy_addr: str, *, http2: bool = False, timeout: float = 30.0,
                 max_connections: int = 100, secret: str | None = None) -> None:
        self.proxy_addr = proxy_addr
        self.http2 = http2
        if http2 and importlib.util.find_spec("h2") is None:  # httpx needs it for HTTP/2
            raise FreedomError("proxy_http2 = true needs the h2 package: pip install 'freedom[http2]'")
        per_client = min(self.CONNECTIONS_PER_CLIENT, max_connections)
        self._clients = [
            httpx.AsyncClient(
                base_url=proxy_addr,
                # http1=False + http2=True: HTTP/2 with prior knowledge, which is what h2c needs
                http1=not http2,
                http2=http2,
                # No pool timeout: the proxy bounds the deliveries in flight itself; waiting for a
                # free connection is not the handler's failure.
                timeout=httpx.Timeout(timeout, connect=5.0, pool=None),
                limits=httpx.Limits(max_connections=per_client, max_keepalive_connections=per_client),
                headers={SECRET_HEADER: secret} if secret else None,  # sent with every delivery (security.py)
            )
            for _ in range(max(1, -(-max_connections // per_client)))
        ]
        self._turn = itertools.cycle(self._clients)

    async def wait_until_reachable(self, deadline: float, stop: asyncio.Event) -> bool:
        """Wait until the service accepts connections (it may still be starting); False at the deadline."""
        parts = urlsplit(self.proxy_addr)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        loop = asyncio.get_running_loop()
        while not stop.is_set() and loop.time() < deadline:
            try:
                _, writer = await asyncio.wait_for(asyncio.open_connection(parts.hostname, port), 1.0)
                writer.close()
                return True
            except (OSError, asyncio.TimeoutError):
                try:
                    await asyncio.wait_for(stop.wait(), 0.1)
                except asyncio.TimeoutError:
                    pass
        return False

    async def deliver(self, route: EventRoute, key: str, value: bytes,
                      headers: RecordHeaders, retry_count: int) -> DeliveryResult:
        """POST one record; never raises for the service's or the network's faults."""
        out = request_headers(headers, key, retry_count)
        try:
            response = await next(self._turn).post(route.url_path(key), content=value, headers=out)
            await response.aclose()
        except httpx.TimeoutException:
            return DeliveryResult(error="timed out waiting for the handler")
        except httpx.HTTPError as exc:
            return DeliveryResult(error=f"{type(exc).__name__}: {exc}")
        return _result(response)

    async def aclose(self) -> None:
        await asyncio.gather(*(c.aclose() for c in self._clients))

