"""How the consumer proxy's deliveries reach the service: over HTTP/1.1 (`http1.py`), h2c
(`http.py`), by calling the ASGI application in the same process (`asgi.py`), or by calling the
event handlers themselves (`direct.py`). :func:`make_transport` picks one from `proxy_addr` (and,
in-process, from the direct calls the application hands over); each implements
`freedom.kafka.consumer.delivery.Transport`."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from freedom.errors import FreedomError
from freedom.kafka.consumer.delivery import INPROCESS, Transport

if TYPE_CHECKING:
    from freedom.kafka.transports.direct import DirectRoutes


def make_transport(
    proxy_addr: str,
    *,
    http2: bool = False,
    secret: str | None = None,
    app: Any = None,
    ready: asyncio.Event | None = None,
    direct: DirectRoutes | None = None,
) -> Transport:
    """The transport `proxy_addr` selects: `"inprocess"` calls `app` directly (with `direct`, the
    handlers of the routes it has a call for, the ASGI application for the rest), else HTTP(S) to it."""
    if proxy_addr == INPROCESS:
        from freedom.kafka.transports.asgi import AsgiTransport

        if app is None:
            raise FreedomError(
                'proxy_addr = "inprocess" needs the application to call (KafkaInfra.start(app=...))'
            )
        asgi = AsgiTransport(app, secret=secret, ready=ready)
        if direct is None:
            return asgi
        from freedom.kafka.transports.direct import DirectTransport

        return DirectTransport(direct, asgi)
    from freedom.kafka.transports.http import make_http_transport

    return make_http_transport(proxy_addr, http2=http2, secret=secret)
