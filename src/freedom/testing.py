"""Testing utilities shipped with freedom: run a service in a thread, write its config, wait on conditions.

    with ServiceThread(app) as svc:
        httpx.get(f"{svc.base_url}/shop/1")
        wait_until(lambda: calls, timeout=20, what="the store handler to be called")
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

import uvicorn

from .application import Application
from .server import _Server

T = TypeVar("T")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], T], timeout: float = 30.0, interval: float = 0.05, what: str = "condition") -> T:
    """Poll `predicate` until it returns something truthy; AssertionError naming `what` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.1f} s waiting for {what}")
        time.sleep(interval)


def write_config(directory: str | Path, *, app: dict[str, Any] | None = None, kafka: dict[str, Any] | None = None) -> Path:
    """Write `app.toml` and `infra/kafka.toml` from dicts into `directory`; returns the directory."""
    import tomli_w

    directory = Path(directory)
    (directory / "infra").mkdir(parents=True, exist_ok=True)
    if app is not None:
        (directory / "app.toml").write_text(tomli_w.dumps(app))
    if kafka is not None:
        (directory / "infra" / "kafka.toml").write_text(tomli_w.dumps(kafka))
    return directory


def kafka_config(bootstrap: str | None, port: int, *, group_id: str = "freedom", **consumer: Any) -> dict[str, Any]:
    """A `kafka.toml` dict for one cluster (`bootstrap` None: the embedded broker) serving on `port`."""
    servers = {"servers": [bootstrap]} if bootstrap else {}
    return {
        "consumer": {"open": True, "proxy_addr": f"http://127.0.0.1:{port}"},
        "producer": {"open": True},
        "producer_clients": [{**servers}],
        "consumer_clients": [{**servers, "group_id": group_id, **consumer}],
    }


class ServiceThread:
    """Runs an Application (HTTP server and consumer proxy) on its own loop in a background thread."""

    def __init__(self, app: Application, *, host: str = "127.0.0.1", port: int | None = None,
                 start_timeout: float = 60.0) -> None:
        self.app = app.setup()
        self.host = host
        self.port = port if port is not None else app.config.port
        self.start_timeout = start_timeout
        self.loop: asyncio.AbstractEventLoop | None = None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._started = threading.Event()

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _main(self) -> None:
        async def main() -> None:
            self.loop = asyncio.get_running_loop()
            config = uvicorn.Config(self.app, host=self.host, port=self.port, log_config=None, lifespan="on")
            self._server = _Server(config, self.app)
            await self.app.start()
            try:
                await self._server.serve()
            finally:
                await self.app.stop()

        try:
            asyncio.run(main())
        except BaseException as exc:  # noqa: BLE001 - reported to the starting thread
            self._error = exc
        finally:
            self._started.set()

    def start(self) -> "ServiceThread":
        self._thread = threading.Thread(target=self._main, name="freedom-service", daemon=True)
        self._thread.start()
        wait_until(lambda: self._error or (self._server is not None and self._server.started),
                   self.start_timeout, what="the service to start")
        if self._error:
            raise self._error
        return self

    def run(self, coro: Any, timeout: float = 30.0) -> Any:
        """Run a coroutine on the service's loop (e.g. `app.producer.new_msg(...).publish()`)."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop as on SIGTERM: drain the consumer proxies, then the server."""
        if self._server is not None and self.loop is not None and self._thread and self._thread.is_alive():
            self.loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self._server._drain_then_exit()))  # type: ignore[union-attr]
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise AssertionError(f"the service did not stop within {timeout} s")

    def __enter__(self) -> "ServiceThread":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
