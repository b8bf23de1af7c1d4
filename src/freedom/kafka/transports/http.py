"""Delivery over HTTP: HTTP/1.1 over keep-alive connections (http1.py), or HTTP/2 cleartext with
prior knowledge (`proxy_http2 = true`, the service served by an ASGI server that speaks h2c)
through pyreqwest.

Why two clients: on the consumer proxy's hot path httpx was ~70% of the CPU per HTTP/1.1 delivery
(request building, auth/redirect layers, httpcore's pool scan and per-connection liveness
syscalls, anyio); http1.py writes the request in one piece and parses the answer with httptools
(bench/perf-log.md). It does not speak HTTP/2; h2c goes through pyreqwest (Rust), see HttpTransport.
"""

from __future__ import annotations

import asyncio
import importlib.util
from datetime import timedelta
from typing import Any

from freedom.errors import FreedomError
from freedom.kafka.consumer.backpressure import RETRY_AFTER_STATUSES
from freedom.kafka.consumer.delivery import (
    DEFAULT_TIMEOUT_SEC,
    MAX_FAILURE_BODY,
    DeliveryResult,
    EventRoute,
    RawAnswer,
    RecordHeaders,
    UnsendableRecord,
    deadline_of,
    keeps_body,
    proxy_wait,
    request_headers,
    result_of,
)
from freedom.kafka.transports.http1 import Http1Transport, wait_until_listening
from freedom.wire.headers import (
    FAILURE_HEADER,
    OUTCOME_HEADER,
    REASON_HEADER,
    RETRY_AFTER_HEADER,
    SECRET_HEADER,
)


def make_http_transport(
    proxy_addr: str, *, http2: bool = False, secret: str | None = None
) -> HttpTransport | Http1Transport:
    """The HTTP transport: HTTP/1.1 keep-alive connections (http1.py), pyreqwest for h2c."""
    if http2:
        return HttpTransport(proxy_addr, secret=secret)
    return Http1Transport(proxy_addr, secret=secret)


class HttpTransport:
    """POSTs records to the service over HTTP/2 cleartext with prior knowledge (pyreqwest).

    pyreqwest (Rust's reqwest and hyper) does the HTTP/2 framing, HPACK and flow control outside
    Python and multiplexes the deliveries over one connection. httpx's pure-Python h2 client cost
    ~1,000 µs of CPU per delivery (three socket writes per request, anyio locks and events per
    stream); pyreqwest costs ~100-180 µs (bench/perf-log.md).

    pyreqwest takes header values as text: `delivery.request_headers` makes every name and value
    HTTP can carry as it is UTF-8 text, and encodes the others (`freedom.wire.encoding`), as over HTTP/1.1.
    """

    def __init__(
        self,
        proxy_addr: str,
        *,
        timeout: float = DEFAULT_TIMEOUT_SEC,
        max_in_flight: int = 1000,
        secret: str | None = None,
    ) -> None:
        if importlib.util.find_spec("pyreqwest") is None:
            raise FreedomError(
                "proxy_http2 = true needs the pyreqwest package: pip install 'freedom-events[http2]'"
            )
        self.proxy_addr = proxy_addr.rstrip("/")
        self._timeout = timeout  # the deadline of a route without its own (EventRoute.timeout_sec)
        # Requests at once over the one multiplexed connection; above the proxy's own bound
        # (max_in_flight, 500 by default) so that it is the proxy's setting that counts.
        self._max_in_flight = max_in_flight
        self._secret = secret
        self._client: Any = None  # made on the running loop, at first use

    def _open(self) -> Any:
        from pyreqwest.client import ClientBuilder

        builder = (
            ClientBuilder()
            .http2_prior_knowledge()
            .connect_timeout(timedelta(seconds=5.0))
            .max_connections(self._max_in_flight)
        )
        if self._secret:
            builder = builder.default_headers(
                {SECRET_HEADER: self._secret}
            )  # sent with every delivery
        self._client = builder.build()
        return self._client

    async def wait_until_reachable(self, deadline: float, stop: asyncio.Event) -> bool:
        return await wait_until_listening(self.proxy_addr, deadline, stop)

    async def deliver(
        self, route: EventRoute, key: str, value: bytes, headers: RecordHeaders, retry_count: int
    ) -> DeliveryResult:
        """POST one record; never raises for the service's or the network's faults."""
        from pyreqwest.exceptions import PyreqwestError

        client = self._client or self._open()
        deadline = deadline_of(route, self._timeout)
        try:
            # Plain names are tokens and plain values UTF-8 without control characters; the rest
            # is base64url (freedom.wire.encoding): all of it is text pyreqwest sends as it is.
            out = [
                (k.decode("ascii"), v.decode("utf-8"))
                for k, v in request_headers(headers, key, retry_count, deadline)
            ]
            request = (
                client.post(self.proxy_addr + route.url_path(key))
                .headers(out)
                .body_bytes(value)
                .timeout(timedelta(seconds=proxy_wait(deadline)))
                .build()
            )
        except UnsendableRecord as exc:
            return exc.result()
        except (
            ValueError
        ) as exc:  # pyreqwest refused what the encoding let through: a bug, not the record's
            return DeliveryResult(
                error=f"the request could not be built for HTTP/2: {str(exc)!r}", permanent=True
            )
        try:
            response = await request.send()  # build(): send() reads the whole answer
        except TimeoutError:  # pyreqwest's timeouts are TimeoutErrors
            return DeliveryResult(error="timed out waiting for the handler")
        except PyreqwestError as exc:
            return DeliveryResult(error=f"{type(exc).__name__}: {exc}")
        body = None
        if keeps_body(response.status):
            try:
                body = bytes(
                    memoryview(await response.bytes())[:MAX_FAILURE_BODY]
                )  # read already (build())
            except PyreqwestError:
                body = None
        return result_of(
            response.status,
            response.get_header(OUTCOME_HEADER),
            response.get_header(REASON_HEADER),
            body,
            response.get_header(RETRY_AFTER_HEADER)
            if response.status in RETRY_AFTER_STATUSES
            else None,
            response.get_header(FAILURE_HEADER),
        )

    async def post(
        self,
        path: str,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        *,
        keep_body: int,
        wait: float | None = None,
    ) -> RawAnswer | DeliveryResult:
        """POST `body` to `path` (a batch, batching.py), keeping up to `keep_body` bytes of the
        answer; a DeliveryResult (the error) when no answer came within `wait` seconds."""
        from pyreqwest.exceptions import PyreqwestError

        client = self._client or self._open()
        out = [(k.decode("ascii"), v.decode("utf-8")) for k, v in headers]
        wait = wait if wait is not None else proxy_wait(self._timeout)
        request = (
            client.post(self.proxy_addr + path)
            .headers(out)
            .body_bytes(body)
            .timeout(timedelta(seconds=wait))
            .build()
        )
        try:
            response = await request.send()
            data = bytes(memoryview(await response.bytes())[:keep_body])
        except TimeoutError:
            return DeliveryResult(error="timed out waiting for the handler")
        except PyreqwestError as exc:
            return DeliveryResult(error=f"{type(exc).__name__}: {exc}")
        return RawAnswer(
            response.status,
            response.get_header(OUTCOME_HEADER),
            response.get_header(REASON_HEADER),
            data,
            response.get_header(FAILURE_HEADER),
        )

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
