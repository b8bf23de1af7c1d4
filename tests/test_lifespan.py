"""Start-up and shutdown code (`Application(lifespan=...)`, `@app.on_startup`, `@app.on_shutdown`)
runs at the right moment relative to the Kafka side: the producer and the consumer groups are
ready before it (start-up code can publish, and what it publishes is delivered), deliveries to
handlers begin after it, shutdown code runs once the proxies drained and before the producer
closes (what it publishes is in the topic afterwards)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import textwrap
import uuid
import warnings
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import freedom
from freedom.errors import PublishError
from freedom.kafka.service import AfterStartup
from freedom.kafka.transports import make_transport
from freedom.observability import metrics
from freedom.testing import ServiceThread, free_port, kafka_config, wait_until, write_config
from freedom.web.application import StartupError
from tests.services.kafka_tools import produce, read_all
from tests.services.scrape import samples_of, value


def lifespan_app(
    config_dir: Path,
    bootstrap: str,
    topic: str,
    events: list[str],
    *,
    delivery: str = "http",
    fail_at_startup: bool = False,
    http2: bool = False,
) -> freedom.Application:
    """A service whose lifespan, start-up and shutdown functions and handler append to `events`."""
    port = free_port()
    kafka = kafka_config(
        bootstrap,
        port,
        group_id=f"g-life-{uuid.uuid4().hex[:8]}",
        delivery=delivery,
        settings={"session.timeout.ms": 6000},
    )
    if http2:
        kafka["consumer"]["proxy_http2"] = True  # served by granian, as `freedom run` does
    write_config(config_dir, app={"listen_addr": f"127.0.0.1:{port}"}, kafka=kafka)

    class Store:
        runtime: freedom.Runtime

        async def post_event_by(self, event_id: str) -> str:
            events.append(f"delivery {event_id}")
            if event_id == "SLOW":  # still running when the stop begins: the drain waits for it
                await asyncio.sleep(1.5)
                events.append(f"delivery end {event_id}")
            return "ok"

    def prepare(initiator: freedom.Initiator) -> None:
        initiator.bind_controller("/store", Store)
        initiator.listen_event(topic, "Store.post_event_by")

    @contextlib.asynccontextmanager
    async def lifespan(app: freedom.Application) -> AsyncIterator[dict[str, Any]]:
        kafka = app.kafka
        assert kafka is not None
        ready = bool(kafka.proxies) and all(p.assigned.is_set() for p in kafka.proxies)
        events.append(f"lifespan enter, kafka ready={ready}")
        await app.producer.new_msg(topic, b"from start-up").set_key("STARTUP").publish()
        # Start-up work that takes a while: a delivery that did not wait for start-up would come now.
        # It goes on once the proxy holds the record (a delivery in flight that has not reached the
        # handler), or once the record reached the handler (wrongly: `events` then shows it).
        deadline = asyncio.get_running_loop().time() + 30
        while "delivery STARTUP" not in events and not await _deliveries_in_flight(app):
            assert asyncio.get_running_loop().time() < deadline, "the proxy never got the record"
            await asyncio.sleep(0.02)
        close = kafka.producer.close

        def closing(timeout: float = 10.0) -> Any:  # when the producer closes, relative to the rest
            events.append("producer closed")
            return close(timeout)

        kafka.producer.close = closing  # type: ignore[method-assign]
        yield {"made_at_startup": "cache"}
        await (
            app.producer.new_msg(topic, b"from the lifespan's exit")
            .set_key("LIFESPAN-EXIT")
            .publish()
        )
        events.append("lifespan exit")

    app = freedom.Application(config_dir=config_dir, prepare=[prepare], lifespan=lifespan)

    @app.on_startup
    def started() -> None:  # a plain function
        events.append(f"start-up function, state={app.fastapi.state.made_at_startup}")
        if fail_at_startup:
            raise RuntimeError("the cache\nis unreachable")

    @app.on_shutdown
    async def stopping() -> None:  # an async one
        assert app.kafka is not None
        events.append(f"shutdown function, proxies running={len(app.kafka.proxies)}")
        await app.producer.new_msg(topic, b"from shutdown").set_key("SHUTDOWN").publish()

    return app


EXPECTED = [
    "lifespan enter, kafka ready=True",
    "start-up function, state=cache",
    "delivery STARTUP",  # published by start-up code, delivered only once start-up finished
    "delivery SLOW",
    "delivery end SLOW",  # drained before any shutdown code
    "shutdown function, proxies running=0",
    "lifespan exit",
    "producer closed",  # after the shutdown code published
]


async def _deliveries_in_flight(app: freedom.Application) -> int:
    """freedom_deliveries_in_flight of `app`'s consumer groups, as GET /metrics would show them."""
    samples = samples_of((await metrics.exposition(app)).decode())
    return int(value(samples, "freedom_deliveries_in_flight"))


def _published_keys(bootstrap: str, topic: str) -> list[str]:
    """The keys on the topic once the service stopped (its producer flushed and closed)."""
    return [m.key().decode() for m in read_all(bootstrap, topic)]


@pytest.mark.parametrize("mode", ["http", "h2c", "inprocess"])
def test_startup_and_shutdown_order_under_the_server(apache_kafka, new_topic, tmp_path, mode):
    """As `freedom run` serves (ServiceThread: app.start(), then uvicorn, or granian for h2c; a
    SIGTERM-like stop)."""
    bootstrap = apache_kafka.bootstrap
    topic = new_topic(bootstrap)
    events: list[str] = []
    app = lifespan_app(
        tmp_path,
        bootstrap,
        topic,
        events,
        delivery="inprocess" if mode == "inprocess" else "http",
        http2=mode == "h2c",
    )
    with ServiceThread(app):
        wait_until(
            lambda: "delivery STARTUP" in events, 30, what="the record start-up code published"
        )
        produce(bootstrap, topic, [{"key": b"SLOW", "value": b"x"}])
        wait_until(lambda: "delivery SLOW" in events, 30, what="the SLOW delivery to begin")
    assert events == EXPECTED
    # What shutdown code published was flushed before the producer closed.
    assert _published_keys(bootstrap, topic) == ["STARTUP", "SLOW", "SHUTDOWN", "LIFESPAN-EXIT"]


def test_startup_and_shutdown_under_a_plain_asgi_lifespan(apache_kafka, new_topic, tmp_path):
    """`uvicorn example:app` or an ASGI test client: the ASGI lifespan runs the same sequence."""
    bootstrap = apache_kafka.bootstrap
    topic = new_topic(bootstrap)
    events: list[str] = []
    app = lifespan_app(tmp_path, bootstrap, topic, events, delivery="inprocess")
    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore"
        )  # starlette 1.x: "install httpx2" (StarletteDeprecationWarning)
        from starlette.testclient import TestClient
    with TestClient(app) as client:
        wait_until(
            lambda: "delivery STARTUP" in events, 30, what="the record start-up code published"
        )
        assert client.get("/openapi.json").status_code == 200
        produce(bootstrap, topic, [{"key": b"SLOW", "value": b"x"}])
        wait_until(lambda: "delivery SLOW" in events, 30, what="the SLOW delivery to begin")
    assert events == EXPECTED
    assert _published_keys(bootstrap, topic) == ["STARTUP", "SLOW", "SHUTDOWN", "LIFESPAN-EXIT"]


def test_http_deliveries_wait_for_startup_even_when_the_port_already_listens():
    """The proxy's HTTP transport waits for the application's start-up (user code included), not
    only for the port, and however long start-up takes: the usual window begins after it."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        started, stop = asyncio.Event(), asyncio.Event()

        class Asked:
            """The real transport, noting when its own wait was asked for, and until when."""

            def __init__(self, inner: Any) -> None:
                self.inner, self.proxy_addr = inner, inner.proxy_addr
                self.deliver, self.aclose = inner.deliver, inner.aclose
                self.asked: list[tuple[float, float]] = []  # (loop time, deadline)

            async def wait_until_reachable(self, deadline: float, stop: asyncio.Event) -> bool:
                self.asked.append((asyncio.get_running_loop().time(), deadline))
                return bool(await self.inner.wait_until_reachable(deadline, stop))

        async def main() -> None:
            inner = Asked(make_transport(f"http://127.0.0.1:{server.getsockname()[1]}"))
            transport = AfterStartup(inner, started)  # type: ignore[arg-type]
            loop = asyncio.get_running_loop()
            waiting = asyncio.ensure_future(transport.wait_until_reachable(loop.time() + 0.5, stop))
            await asyncio.sleep(1.0)  # the stimulus: start-up still running, past the 0.5 s window
            # The port listens, yet the service's own wait was not even asked for: start-up first.
            assert inner.asked == [] and not waiting.done(), (
                "the transport did not wait for start-up"
            )
            started.set()
            assert await asyncio.wait_for(waiting, 10) is True
            # ... and then with its usual window, counted from the end of start-up.
            [(asked_at, deadline)] = inner.asked
            assert deadline - asked_at > 0.4, deadline - asked_at
            await transport.aclose()

        asyncio.run(main())


def test_a_failing_startup_function_stops_what_was_started(apache_kafka, new_topic, tmp_path):
    bootstrap = apache_kafka.bootstrap
    topic = new_topic(bootstrap)
    events: list[str] = []
    app = lifespan_app(
        tmp_path, bootstrap, topic, events, delivery="inprocess", fail_at_startup=True
    )
    with pytest.raises(StartupError) as err:
        asyncio.run(app.start())
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(
        "the start-up function tests.test_lifespan.lifespan_app.<locals>.started failed: "
        "RuntimeError: the cache is unreachable (test_lifespan.py, line "
    )
    # The lifespan entered is exited; the shutdown function (start-up never finished) does not run;
    # the record start-up code published is never delivered; the Kafka side is stopped.
    assert events == [
        "lifespan enter, kafka ready=True",
        "start-up function, state=cache",
        "lifespan exit",
        "producer closed",
    ]
    assert app.kafka is not None and app.kafka.proxies == [] and app.kafka.embedded is None
    with pytest.raises(PublishError, match="the service has stopped"):
        asyncio.run(app.producer.new_msg(topic, b"x").publish())


def test_freedom_run_reports_a_failing_startup_function_in_one_line(tmp_path):
    (tmp_path / "failing.py").write_text(
        textwrap.dedent("""
        import freedom

        app = freedom.Application(prepare=[])

        @app.on_startup
        async def connect() -> None:
            raise ConnectionError("db.internal:5432 refused the connection")

        @app.on_shutdown
        def never() -> None:
            print("SHUTDOWN RAN")
    """)
    )
    write_config(tmp_path / "conf", app={"listen_addr": f"127.0.0.1:{free_port()}"})
    proc = subprocess.run(
        [sys.executable, "-m", "freedom", "run", "failing:app", "--config", "conf"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if not k.startswith("FREEDOM_")},
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "SHUTDOWN RAN" not in proc.stdout
    errors = [line for line in proc.stderr.splitlines() if line.startswith("freedom: error:")]
    assert errors == [
        "freedom: error: the start-up function failing.connect failed: ConnectionError: "
        "db.internal:5432 refused the connection (failing.py, line 8)"
    ]
