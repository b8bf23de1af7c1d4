"""Serving an `Application` with uvicorn, stopping in the order that loses nothing.

On SIGINT/SIGTERM the consumer proxies stop first (no new fetches; in-flight deliveries finish
and are committed) while the HTTP server still answers them; then the server stops. A second
signal stops at once.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import uvicorn

if TYPE_CHECKING:
    from .application import Application

log = logging.getLogger("freedom.server")


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: "Application") -> None:
        super().__init__(config)
        self._app = app
        self._draining = False
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: Any = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: Any) -> None:
        if self._draining or self._loop is None or not self.started:
            super().handle_exit(sig, frame)
            return
        self._draining = True
        log.info("stopping: draining the consumer proxies, then the HTTP server (signal again to stop at once)")
        self._loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self._drain_then_exit()))

    async def _drain_then_exit(self) -> None:
        try:
            await self._app.stop_consuming()
        except Exception:  # noqa: BLE001
            log.exception("draining the consumer proxies failed")
        self.should_exit = True


def serve(app: "Application", *, host: str | None = None, port: int | None = None) -> None:
    app.setup()
    config = uvicorn.Config(
        app,
        host=host or app.config.host,
        port=port if port is not None else app.config.port,
        log_config=None,
        lifespan="on",
        timeout_graceful_shutdown=15,
    )
    server = _Server(config, app)

    async def main() -> None:
        # Start the infrastructure before the server, so that a config or cluster error stops
        # start-up with its own message; the lifespan's start is then a no-op.
        await app.start()
        try:
            await server.serve()
        finally:
            await app.stop()

    asyncio.run(main())
