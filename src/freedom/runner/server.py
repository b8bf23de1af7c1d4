"""Serving an `Application` with uvicorn, or with granian for HTTP/2 cleartext, stopping in the
order that loses nothing.

On SIGINT/SIGTERM the consumer proxies stop first (no new fetches; in-flight deliveries finish
and are committed) while the HTTP server still answers them; then the server stops. A second
signal stops at once.

With `proxy_http2 = true` in kafka.toml the consumer proxy speaks HTTP/2 with prior knowledge
(h2c), which uvicorn does not serve: the application is then served by granian, embedded in the
event loop, which takes HTTP/1.1 and h2c on the same port.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import importlib.util
import logging
import os
import socket
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

import uvicorn

from freedom.errors import FreedomError
from freedom.runner.addresses import proxy_addr_is_self

if TYPE_CHECKING:
    from freedom.web.application import Application

log = logging.getLogger("freedom.runner.server")


#: The listening socket's file descriptor a `freedom run --workers` parent passes to each worker.
LISTEN_FD_ENV = "FREEDOM_LISTEN_FD"


def inherited_socket() -> socket.socket | None:
    """The listening socket the parent passed (a worker of `freedom run --workers`), or None."""
    value = os.environ.pop(LISTEN_FD_ENV, "")
    if not value:
        return None
    if not value.isdigit():
        raise FreedomError(
            f"${LISTEN_FD_ENV}: must be a file descriptor number (set by freedom run --workers), got {value!r}"
        )
    try:
        return socket.socket(fileno=int(value))
    except OSError as exc:
        raise FreedomError(
            f"${LISTEN_FD_ENV}={value}: not an open socket ({exc.strerror or exc})"
        ) from None


def run(main: Coroutine[Any, Any, None]) -> None:
    """Run `main` on a new event loop: uvloop's when it is installed (`pip install 'freedom-events[fast]'`),
    which makes the consumer proxy and the HTTP server cheaper per request, else asyncio's."""
    factory = None
    if importlib.util.find_spec("uvloop") is not None:
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main)


def freeze_startup_objects() -> None:
    """Keep what start-up made (modules, routes, clients: ~50,000 objects) out of the cyclic
    collector's full passes (`gc.freeze`). A full pass over them took ~20 ms, a stall every
    delivery in flight waited out (the p99 latency, bench/perf-log.md); they live as long as the
    process anyway."""
    gc.collect()
    gc.freeze()


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: Application) -> None:
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
        log.info(
            "stopping: draining the consumer proxies, then the HTTP server (signal again to stop at once)"
        )
        self._loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self._drain_then_exit()))

    async def _drain_then_exit(self) -> None:
        try:
            await self._app.stop_consuming()
        except Exception:  # noqa: BLE001
            log.exception("draining the consumer proxies failed")
        self.should_exit = True


_BIND_HINTS = {
    errno.EADDRINUSE: " (another process listens on this port)",
    errno.EADDRNOTAVAIL: " (not an address of this machine)",
    errno.EACCES: " (ports below 1024 need privileges)",
}


def bind_listen_socket(
    app: Application, host: str | None = None, port: int | None = None
) -> socket.socket:
    """The service's listen socket, bound (not yet listening) before anything else starts.

    An address in use or not on this machine then stops start-up with one line naming where the
    address came from (app.toml's listen_addr, or --listen), before any Kafka client starts,
    rather than the server's own exit after them.
    """
    file, key = app.config.listen_from
    if host is not None or port is not None:
        file, key = "Application.run()", "host, port"
    return bind_address(
        host or app.config.host, port if port is not None else app.config.port, file, key
    )


def bind_address(host: str, port: int, file: str, key: str | None) -> socket.socket:
    """A socket bound to host:port (not yet listening); a ConfigError naming `file`'s `key` when it
    cannot be (also used by `freedom run --workers`' parent, workers.py)."""
    from freedom.errors import ConfigError

    where = f"{host}:{port}"
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(
            host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:  # socket.gaierror: a host name that does not resolve
        raise ConfigError(file, key, f"cannot listen on {where}: {exc.strerror or exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        sock.bind(addr)
    except OSError as exc:
        sock.close()
        hint = _BIND_HINTS.get(exc.errno or 0, "")
        raise ConfigError(
            file, key, f"cannot listen on {where}: {exc.strerror or exc}{hint}"
        ) from None
    return sock


def own_delivery_socket(app: Application) -> socket.socket | None:
    """A worker's own loopback port for its consumer proxy's HTTP deliveries (`freedom run --workers`),
    or None when the proxy delivers elsewhere (a proxy_addr that is not the service's own listen
    address, or in-process) or there is no proxy.

    A worker's proxy posting to the shared port would reach any worker: each delivery would then
    wake two processes and cross between them. Measured (`python -m bench.ab`, two workers,
    HTTP/1.1, trivial handler): 6,889 → 8,731 records/s (bench/perf-log.md, row 22).
    So a worker also listens on 127.0.0.1:<free port> and its proxy delivers there, to its own
    application, as one process does; HTTP clients still use the shared port.
    """
    cfg = app.kafka_config
    if cfg is None or not cfg.consumer.open or not app.event_routes:
        return None
    if cfg.consumer.proxy_addr_explicit and not proxy_addr_is_self(
        cfg.consumer.proxy_addr, app.serving_addr or app.config.listen_addr
    ):
        return None
    own = bind_address("127.0.0.1", 0, "freedom run --workers", None)
    app.deliver_to(url := f"http://127.0.0.1:{own.getsockname()[1]}")
    log.info("this worker's consumer proxy delivers to its own port: %s", url)
    return own


def serve(app: Application, *, host: str | None = None, port: int | None = None) -> None:
    app.setup()
    if host is not None or port is not None:  # Application.run(host=, port=): proxy_addr follows it
        app.serve_on(f"{host or app.config.host}:{port if port is not None else app.config.port}")
    # Bound first: a listen address that cannot be bound is a config error, before Kafka starts.
    # A worker of `freedom run --workers` serves on the socket its parent bound (workers.py).
    inherited = inherited_socket()
    sock = inherited or bind_listen_socket(app, host, port)
    if app.kafka_config is not None and app.kafka_config.consumer.proxy_http2:
        sock.close()  # granian binds by itself (it takes no socket); the check above is what matters
        serve_h2c(app, host=host, port=port)
        return
    sockets = [sock]
    if inherited is not None and (own := own_delivery_socket(app)) is not None:
        sockets.append(own)
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
        try:
            await app.start()
        except BaseException:
            for one in sockets:
                one.close()
            raise
        freeze_startup_objects()
        log.info("serving HTTP on %s:%d", config.host, sock.getsockname()[1])
        try:
            await server.serve(
                sockets=sockets
            )  # uvicorn listens on them, and closes them at the end
        finally:
            await app.stop()

    run(main())


def require_h2c_server() -> None:
    """Check, before start-up, that granian (the h2c server) is installed; a clear error if not.

    hypercorn, the pure-Python alternative, is not used: it drops the whole connection when a
    request's body arrives after the handler has answered (a `KeyError` in its h2 protocol),
    which the proxy's h2c client (pyreqwest) triggers whenever a handler does not read the body.
    """
    if importlib.util.find_spec("granian") is None:
        from freedom.errors import FreedomError

        raise FreedomError(
            "proxy_http2 = true needs granian to serve HTTP/2 cleartext: pip install 'freedom-events[http2]'"
        )


#: How long a stop waits for granian's open connections (as uvicorn's timeout_graceful_shutdown).
GRANIAN_STOP_TIMEOUT_SEC = 15


async def serve_granian(app: Application, host: str, port: int, shutdown: asyncio.Event) -> None:
    """Serve `app` with granian embedded in this event loop (HTTP/1.1 and h2c on one port, the
    HTTP/2 framing in Rust) until `shutdown` is set."""
    from granian.constants import HTTPModes, Interfaces
    from granian.http import HTTP2Settings
    from granian.server.embed import Server

    server = Server(
        app,
        address=host,
        port=port,
        interface=Interfaces.ASGI,
        http=HTTPModes.auto,
        # as many streams at once as the proxy sends (max_in_flight; granian's default is 200)
        http2_settings=HTTP2Settings(max_concurrent_streams=1000),
        log_enabled=False,
    )  # log_enabled=False: leave the application's logging config alone
    serving = asyncio.ensure_future(server.serve())
    stopping = asyncio.ensure_future(shutdown.wait())
    try:
        await asyncio.wait([serving, stopping], return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        if not serving.done():
            # Graceful: in-flight requests finish, then the lifespan shutdown.
            server.signal_handler_interrupt()  # type: ignore[no-untyped-call]
            try:
                # Bounded like uvicorn's graceful shutdown: an idle HTTP/2 connection that its
                # client never closes would otherwise hold the stop forever.
                await asyncio.wait_for(asyncio.shield(serving), GRANIAN_STOP_TIMEOUT_SEC)
            except TimeoutError:
                log.warning(
                    "granian: connections still open %s s after the stop; stopping without them",
                    GRANIAN_STOP_TIMEOUT_SEC,
                )
                serving.cancel()
        try:
            await serving
        except asyncio.CancelledError:
            pass
        # granian's Rust threads wind down just after its last task ends; an interpreter exiting
        # in that moment aborts ("panic in a function that cannot unwind", ~1 stop in 5 here).
        await asyncio.sleep(0.2)


async def serve_http2(app: Application, host: str, port: int, shutdown: asyncio.Event) -> None:
    """Serve `app` for h2c deliveries until `shutdown` is set, with granian (`pip install 'freedom-events[http2]'`)."""
    require_h2c_server()
    await serve_granian(app, host, port, shutdown)


def serve_h2c(app: Application, *, host: str | None = None, port: int | None = None) -> None:
    """Like :func:`serve`, with an h2c server (:func:`serve_http2`): the first SIGINT/SIGTERM drains the proxies, then stops."""
    import signal

    require_h2c_server()

    async def main() -> None:
        await app.start()
        freeze_startup_objects()
        shutdown = asyncio.Event()
        loop = asyncio.get_running_loop()
        draining: list[asyncio.Task[None]] = []

        async def drain_then_exit() -> None:
            try:
                await app.stop_consuming()
            except Exception:  # noqa: BLE001
                log.exception("draining the consumer proxies failed")
            shutdown.set()

        def on_signal() -> None:
            if draining:
                shutdown.set()
                return
            log.info(
                "stopping: draining the consumer proxies, then the HTTP server (signal again to stop at once)"
            )
            draining.append(asyncio.ensure_future(drain_then_exit()))

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal)
        try:
            await serve_http2(
                app,
                host or app.config.host,
                port if port is not None else app.config.port,
                shutdown,
            )
        finally:
            await app.stop()

    run(main())
