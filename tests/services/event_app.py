"""An in-process service for the consumer-proxy tests: one event handler whose answer each test scripts.

`POST /store/event/{event_id}` handles the listened topic and records every call (with the time it
came); `POST /store/dead/{event_id}` can listen on the dead-letter topic.
"""

from __future__ import annotations

import inspect
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.responses import Response

import freedom
from freedom.testing import ServiceThread, free_port, kafka_config, write_config


@dataclass
class Delivery:
    """One call of a handler, as the handler saw it."""

    route: str  # "event" or "dead"
    key: str
    body: bytes
    headers: dict[str, str]
    at: float  # time.time() when the call came
    nth: int  # how many calls with this key and route came before


Behaviour = Callable[
    [Delivery], Any
]  # returns a status, a Response, None (200) or an awaitable of one


@dataclass
class Journal:
    """Thread-safe record of every handler call."""

    calls: list[Delivery] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    counts: dict[tuple[str, str], int] = field(default_factory=dict)

    def add(self, route: str, key: str, body: bytes, headers: dict[str, str]) -> Delivery:
        with self.lock:
            nth = self.counts.get((route, key), 0)
            self.counts[(route, key)] = nth + 1
            call = Delivery(route, key, body, headers, time.time(), nth)
            self.calls.append(call)
            return call

    def of(self, route: str = "event", key: str | None = None) -> list[Delivery]:
        with self.lock:
            return [c for c in self.calls if c.route == route and (key is None or c.key == key)]


def event_app(
    config_dir: Path,
    journal: Journal,
    topic: str,
    behave: Behaviour | None = None,
    fail_topic: str | None = None,
) -> freedom.Application:
    """A service listening on `topic` (and on `fail_topic` when given); `behave(call)` answers each call."""

    class StoreController:
        runtime: freedom.Runtime

        async def post_event_by(self, event_id: str) -> Response:
            request = self.runtime.request
            call = journal.add(
                "event", event_id, await request.body(), dict(request.headers.items())
            )
            answer = behave(call) if behave is not None else None  # may raise freedom.Retry & co.
            if inspect.isawaitable(answer):
                answer = await answer
            if isinstance(answer, Response):
                return answer
            return Response(status_code=answer or 200)

        async def post_dead_by(self, event_id: str) -> Response:
            request = self.runtime.request
            journal.add("dead", event_id, await request.body(), dict(request.headers.items()))
            return Response(status_code=200)

    def prepare(initiator: freedom.Initiator) -> None:
        initiator.bind_controller("/store", StoreController)
        initiator.listen_event(topic, "StoreController.post_event_by")
        if fail_topic:
            initiator.listen_event(fail_topic, "StoreController.post_dead_by")

    return freedom.Application(config_dir=config_dir, prepare=[prepare])


def event_service(
    config_dir: Path,
    bootstrap: str,
    journal: Journal,
    topic: str,
    behave: Behaviour | None = None,
    *,
    fail_topic: str | None = None,
    group_id: str | None = None,
    delivery: str = "http",
    **consumer: Any,
) -> ServiceThread:
    """A ServiceThread (not started) of `event_app` on `bootstrap`, with `consumer` keys for its client;
    `delivery` is "http" or "inprocess" (the `delivery` fixture)."""
    port = free_port()
    group = group_id or f"g-{uuid.uuid4().hex[:8]}"
    consumer.setdefault("retry_group_id", f"r-{group}")
    settings = {"session.timeout.ms": 6000, **consumer.pop("settings", {})}
    write_config(
        config_dir,
        app={"listen_addr": f"127.0.0.1:{port}"},
        kafka=kafka_config(
            bootstrap, port, group_id=group, delivery=delivery, settings=settings, **consumer
        ),
    )
    return ServiceThread(event_app(config_dir, journal, topic, behave, fail_topic))


def reads_of(app: freedom.Application, *topics: str) -> dict[str, list[str]]:
    """What the groups of `app`'s first consumer client read, for kafka_tools.wait_drained: its
    group reads `topics`, its retry group their retry topics."""
    assert app.kafka_config is not None
    client = app.kafka_config.consumer_clients[0]
    return {
        client.group_id: list(topics),
        client.retry_group_id: [client.retry_prefix + t for t in topics],
    }
