"""Delivering a record to the service's route over HTTP: the consumer proxy's one outward call.

`POST {proxy_addr}{route path}` with the key in the path, the value as body, the record headers
plus `x-message-key` and `x-retry-count`. A 2xx answer is success; any other status, a timeout
or a connection error is a failure.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

import httpx

from ...security import SECRET_HEADER  # the proxy authenticates its deliveries with it

log = logging.getLogger("freedom.kafka.delivery")

MESSAGE_KEY_HEADER = "x-message-key"
RETRY_COUNT_HEADER = "x-retry-count"
# Record headers that must not become HTTP headers: they would corrupt the request framing or
# override what the proxy itself sets.
_NOT_FORWARDED = {b"content-length", b"transfer-encoding", b"host", b"connection", b"upgrade",
                  b"keep-alive", b"te", b"trailer", MESSAGE_KEY_HEADER.encode(), RETRY_COUNT_HEADER.encode(), SECRET_HEADER.encode()}


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
    ok: bool
    status: int | None = None
    error: str | None = None

    def describe(self) -> str:
        return f"HTTP {self.status}" if self.status is not None else (self.error or "unknown error")


class HttpDelivery:
    """POSTs records to the service through one pooled httpx client."""

    def __init__(self, proxy_addr: str, *, http2: bool = False, timeout: float = 30.0,
                 max_connections: int = 100, secret: str | None = None) -> None:
        self.proxy_addr = proxy_addr
        self._client = httpx.AsyncClient(
            base_url=proxy_addr,
            http1=not http2,
            http2=http2,
            timeout=httpx.Timeout(timeout, connect=5.0),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            headers={SECRET_HEADER: secret} if secret else None,  # sent with every delivery (security.py)
        )

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
                      headers: list[tuple[str, bytes]], retry_count: int) -> DeliveryResult:
        out = [(k.encode() if isinstance(k, str) else k, v or b"") for k, v in headers]
        out = [(k, v) for k, v in out if k.lower() not in _NOT_FORWARDED]
        out.append((MESSAGE_KEY_HEADER.encode(), key.encode()))
        out.append((RETRY_COUNT_HEADER.encode(), str(retry_count).encode()))
        try:
            response = await self._client.post(route.url_path(key), content=value, headers=out)
            await response.aclose()
        except httpx.TimeoutException:
            return DeliveryResult(False, error="timed out waiting for the handler")
        except httpx.HTTPError as exc:
            return DeliveryResult(False, error=f"{type(exc).__name__}: {exc}")
        return DeliveryResult(200 <= response.status_code < 300, status=response.status_code)

    async def aclose(self) -> None:
        await self._client.aclose()
