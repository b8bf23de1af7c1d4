"""The TestBroker's `client`: httpx calling the application in-process (ASGI, no network).

httpx is the `testing` extra (`pip install 'freedom-events[testing]'`), not a dependency of
freedom: broker.py imports this module only when a test asks for `broker.client`, after
`_require_httpx` has turned a missing httpx into one clear error naming the fix.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

BASE_URL = "http://testserver"


def async_client(app: Any) -> httpx.AsyncClient:
    """An `httpx.AsyncClient` calling `app` in-process (on the caller's event loop)."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE_URL)


def blocking_client(app: Any, loop: asyncio.AbstractEventLoop) -> httpx.Client:
    """An `httpx.Client` for synchronous code calling `app`, each request run on `loop` (the
    broker's loop thread)."""
    return httpx.Client(transport=_LoopTransport(app, loop), base_url=BASE_URL)


class _LoopTransport(httpx.BaseTransport):
    """httpx's ASGI transport for synchronous code: each request runs on the broker's loop thread."""

    def __init__(self, app: Any, loop: asyncio.AbstractEventLoop, timeout: float = 60.0) -> None:
        self._asgi = httpx.ASGITransport(app=app)
        self._loop = loop
        self._timeout = timeout

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request.read()

        async def call() -> httpx.Response:
            response = await self._asgi.handle_async_request(request)
            content = await response.aread()
            return httpx.Response(
                response.status_code, headers=response.headers, content=content, request=request
            )

        return asyncio.run_coroutine_threadsafe(call(), self._loop).result(self._timeout)
