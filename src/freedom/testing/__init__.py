"""Testing utilities shipped with freedom: run a service in a thread, write its config, wait on
conditions, or run it against an in-memory Kafka (`TestBroker`, test_broker.py; docs/testing.md).

    with ServiceThread(app) as svc:
        httpx.get(f"{svc.base_url}/shop/1")
        wait_until(lambda: calls, timeout=20, what="the store handler to be called")
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import uvicorn

from freedom.runner.server import _Server, require_h2c_server, run, serve_http2
from freedom.testing.broker import BlockingTestBroker, MemoryRecord, TestBroker
from freedom.web.application import Application

T = TypeVar("T")

__all__ = [
    "BlockingTestBroker",
    "MemoryRecord",
    "ServiceThread",
    "TestBroker",
    "free_port",
    "kafka_config",
    "wait_until",
    "write_config",
]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(
    predicate: Callable[[], T],
    timeout: float = 30.0,
    interval: float = 0.05,
    what: str = "condition",
) -> T:
    """Poll `predicate` until it returns something truthy; AssertionError naming `what` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.1f} s waiting for {what}")
        time.sleep(interval)


def write_config(
    directory: str | Path, *, app: dict[str, Any] | None = None, kafka: dict[str, Any] | None = None
) -> Path:
    """Write `app.toml` and `infra/kafka.toml` from dicts into `directory`; returns the directory."""
    import tomli_w

    directory = Path(directory)
    (directory / "infra").mkdir(parents=True, exist_ok=True)
    if app is not None:
        (directory / "app.toml").write_text(tomli_w.dumps(app))
    if kafka is not None:
        (directory / "infra" / "kafka.toml").write_text(tomli_w.dumps(kafka))
    return directory


def kafka_config(
    bootstrap: str | None,
    port: int,
    *,
    group_id: str = "freedom",
    delivery: str = "http",
    **consumer: Any,
) -> dict[str, Any]:
    """A `kafka.toml` dict for one cluster (`bootstrap` None: the embedded broker) serving on `port`.

    `delivery` is how the consumer proxy reaches the handlers: "http" (to the service on `port`) or
    "inprocess" (`proxy_addr = "inprocess"`: calling the application directly).
    """
    if delivery not in ("http", "inprocess"):
        raise ValueError(f'delivery must be "http" or "inprocess", got {delivery!r}')
    servers = {"servers": [bootstrap]} if bootstrap else {}
    proxy_addr = "inprocess" if delivery == "inprocess" else f"http://127.0.0.1:{port}"
    return {
        "consumer": {"open": True, "proxy_addr": proxy_addr},
        "producer": {"open": True},
        "producer_clients": [{**servers}],
        "consumer_clients": [{**servers, "group_id": group_id, **consumer}],
    }


class ServiceThread:
    """Runs an Application (HTTP server and consumer proxy) on its own loop in a background thread.

    The server is uvicorn, or granian with `proxy_http2 = true` (as `freedom run` does).
    """

    def __init__(
        self,
        app: Application,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        start_timeout: float = 60.0,
    ) -> None:
        self.app = app.setup()
        self.host = host
        self.port = port if port is not None else app.config.port
        self.start_timeout = start_timeout
        self.loop: asyncio.AbstractEventLoop | None = None
        self._server: _Server | None = None
        self._shutdown: asyncio.Event | None = None  # granian's (h2c)
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._started = threading.Event()

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def http2(self) -> bool:
        """True when the service is served by granian (h2c), as `freedom run` does with `proxy_http2 = true`."""
        return self.app.kafka_config is not None and self.app.kafka_config.consumer.proxy_http2

    def _main(self) -> None:
        async def main() -> None:
            self.loop = asyncio.get_running_loop()
            await self.app.start()
            try:
                if self.http2:
                    self._shutdown = asyncio.Event()
                    await serve_http2(self.app, self.host, self.port, self._shutdown)
                else:
                    config = uvicorn.Config(
                        self.app, host=self.host, port=self.port, log_config=None, lifespan="on"
                    )
                    self._server = _Server(config, self.app)
                    await self._server.serve()
            finally:
                await self.app.stop()

        try:
            run(main())  # on uvloop when installed, as `freedom run`
        except BaseException as exc:  # noqa: BLE001 - reported to the starting thread
            self._error = exc
        finally:
            self._started.set()

    def start(self) -> ServiceThread:
        if self.http2:
            require_h2c_server()  # the same clear error as `freedom run`, before anything starts
        self._thread = threading.Thread(target=self._main, name="freedom-service", daemon=True)
        self._thread.start()
        wait_until(
            lambda: self._error or self._listening(),
            self.start_timeout,
            what="the service to start",
        )
        if self._error:
            raise self._error
        return self

    def _listening(self) -> bool:
        if not self.http2:
            return self._server is not None and self._server.started
        if self._shutdown is None:
            return False
        try:
            socket.create_connection((self.host, self.port), timeout=1.0).close()
            return True
        except OSError:
            return False

    async def _drain_then_exit(self) -> None:
        if self._server is not None:
            await self._server._drain_then_exit()
            return
        try:
            await self.app.stop_consuming()
        finally:
            if self._shutdown is not None:
                self._shutdown.set()

    def run(self, coro: Any, timeout: float = 30.0) -> Any:
        """Run a coroutine on the service's loop (e.g. `app.producer.new_msg(...).publish()`)."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop as on SIGTERM: drain the consumer proxies, then the server."""
        if self.loop is not None and self._thread and self._thread.is_alive():
            self.loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self._drain_then_exit()))
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise AssertionError(f"the service did not stop within {timeout} s")

    def __enter__(self) -> ServiceThread:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
