"""Delivery over HTTP: HTTP/1.1 through aiohttp's client, or HTTP/2 cleartext with prior knowledge
(`proxy_http2 = true`, the service served by an ASGI server that speaks h2c) through httpx.

Why two clients: on the consumer proxy's hot path httpx was ~70% of the CPU per HTTP/1.1 delivery
(request building, auth/redirect layers, httpcore's pool scan and per-connection liveness
syscalls, anyio); aiohttp's client, with its C parser, costs a fraction of that (see
docs/perf-log.md). aiohttp does not speak HTTP/2, so h2c stays with httpx.
"""

from __future__ import annotations

import asyncio
import importlib.util
import itertools
from urllib.parse import urlsplit

import aiohttp
import httpx
from yarl import URL

from ....errors import FreedomError
from ....outcomes import OUTCOME_HEADER, REASON_HEADER
from ....security import SECRET_HEADER
from ..delivery import DeliveryResult, EventRoute, RecordHeaders, request_headers, result_of


def make_http_transport(proxy_addr: str, *, http2: bool = False, secret: str | None = None) -> "HttpTransport | AiohttpTransport":
    """The HTTP transport: aiohttp for HTTP/1.1, httpx for h2c."""
    if http2:
        return HttpTransport(proxy_addr, http2=True, secret=secret)
    return AiohttpTransport(proxy_addr, secret=secret)


async def wait_until_listening(proxy_addr: str, deadline: float, stop: asyncio.Event) -> bool:
    """Wait until the service accepts connections (it may still be starting); False at the deadline."""
    parts = urlsplit(proxy_addr)
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


class AiohttpTransport:
    """POSTs records to the service over HTTP/1.1 keep-alive connections (aiohttp's client).

    Record header values are bytes; aiohttp sends header values as UTF-8 text, so a value is
    decoded as UTF-8 (latin-1 when it is not valid UTF-8, which freedom's handlers read back the
    same way, see runtime.Utf8Headers).
    """

    def __init__(self, proxy_addr: str, *, timeout: float = 30.0, max_connections: int = 100,
                 secret: str | None = None) -> None:
        self.proxy_addr = proxy_addr
        self._timeout = aiohttp.ClientTimeout(total=timeout, connect=5.0)
        self._max_connections = max_connections
        self._secret = secret
        self._session: aiohttp.ClientSession | None = None  # made on the running loop, at first use

    def _open(self) -> aiohttp.ClientSession:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self._max_connections, limit_per_host=self._max_connections),
            timeout=self._timeout,
            headers={SECRET_HEADER: self._secret} if self._secret else None,  # sent with every delivery
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            auto_decompress=False,
            raise_for_status=False,
        )
        return self._session

    async def wait_until_reachable(self, deadline: float, stop: asyncio.Event) -> bool:
        return await wait_until_listening(self.proxy_addr, deadline, stop)

    async def deliver(self, route: EventRoute, key: str, value: bytes,
                      headers: RecordHeaders, retry_count: int) -> DeliveryResult:
        """POST one record; never raises for the service's or the network's faults."""
        session = self._session or self._open()
        out = [(k.decode("latin-1"), _text(v)) for k, v in request_headers(headers, key, retry_count)]
        url = URL(self.proxy_addr + route.url_path(key), encoded=True)  # the path is quoted already
        try:
            async with session.post(url, data=value, headers=out) as response:
                await response.read()
                status = response.status
                outcome = response.headers.get(OUTCOME_HEADER)
                reason = response.headers.get(REASON_HEADER)
        except asyncio.TimeoutError:
            return DeliveryResult(error="timed out waiting for the handler")
        except (aiohttp.ClientError, ValueError) as exc:  # ValueError: a header value aiohttp refuses (CR/LF)
            return DeliveryResult(error=f"{type(exc).__name__}: {exc}")
        return result_of(status, outcome, reason)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


def _text(value: bytes) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("latin-1")


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
