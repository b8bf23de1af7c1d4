"""How the consumer proxy's deliveries reach the service: over HTTP/1.1 (`http1.py`), h2c
(`http.py`) or by calling the ASGI application in the same process (`asgi.py`).
:func:`make_transport` picks one from `proxy_addr`; each implements
`freedom.kafka.consumer.delivery.Transport`."""

from __future__ import annotations

import asyncio
from typing import Any

from freedom.errors import FreedomError
from freedom.kafka.consumer.delivery import INPROCESS, Transport


def make_transport(
    proxy_addr: str,
    *,
    http2: bool = False,
    secret: str | None = None,
    app: Any = None,
    ready: asyncio.Event | None = None,
) -> Transport:
    """The transport `proxy_addr` selects: `"inprocess"` calls `app` directly, else HTTP(S) to it."""
    if proxy_addr == INPROCESS:
        from freedom.kafka.transports.asgi import AsgiTransport

        if app is None:
            raise FreedomError(
                'proxy_addr = "inprocess" needs the application to call (KafkaInfra.start(app=...))'
            )
        return AsgiTransport(app, secret=secret, ready=ready)
    from freedom.kafka.transports.http import make_http_transport

    return make_http_transport(proxy_addr, http2=http2, secret=secret)
