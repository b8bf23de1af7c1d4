"""Delivery over HTTP: HTTP/1.1 over keep-alive connections (http1.py), or HTTP/2 cleartext with
prior knowledge (`proxy_http2 = true`, the service served by an ASGI server that speaks h2c)
through httpx.

Why two clients: on the consumer proxy's hot path httpx was ~70% of the CPU per HTTP/1.1 delivery
(request building, auth/redirect layers, httpcore's pool scan and per-connection liveness
syscalls, anyio); http1.py writes the request in one piece and parses the answer with httptools
(docs/perf-log.md). It does not speak HTTP/2, so h2c stays with httpx.
"""

from __future__ import annotations

import asyncio
import importlib.util
import itertools

import httpx

from ....errors import FreedomError
from ....outcomes import OUTCOME_HEADER, REASON_HEADER
from ....security import SECRET_HEADER
from ..delivery import DeliveryResult, EventRoute, RecordHeaders, request_headers, result_of
from .http1 import Http1Transport, wait_until_listening


def make_http_transport(proxy_addr: str, *, http2: bool = False, secret: str | None = None) -> HttpTransport | Http1Transport:
    """The HTTP transport: HTTP/1.1 keep-alive connections (http1.py), httpx for h2c."""
    if http2:
        return HttpTransport(proxy_addr, http2=True, secret=secret)
    return Http1Transport(proxy_addr, secret=secret)


class HttpTransport:
    """POSTs records to the service through pooled httpx clients (used for h2c).

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
        return await wait_until_listening(self.proxy_addr, deadline, stop)

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
        return result_of(response.status_code, response.headers.get(OUTCOME_HEADER), response.headers.get(REASON_HEADER))

    async def aclose(self) -> None:
        await asyncio.gather(*(c.aclose() for c in self._clients))
