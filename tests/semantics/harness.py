"""One service and two places to run it: Apache Kafka (in-process delivery) and freedom's TestBroker.

The service (`semantics_app`) has one event route per scenario, each listening on its own topic, and
a GET route that publishes. An `Env` runs it and gives the tests the same verbs on both sides:
put records on a topic from outside, wait until the service has handled them, read a topic back,
read how far the main group finished a partition, call a route. The tests (test_semantics.py) use
only these verbs, so the same assertions hold the test broker to what Apache Kafka does. The Apache
Kafka env is in apache_env.py, the test broker's here (MemoryEnv).

With `share` the main group is a share group (`share_group = true`, KIP-932): its records are
acknowledged one by one, in no order (every topic is concurrent: no key-ordered scenario), and
`finished` reads the share-partition start offset where a classic group has its committed offset.
The retry group stays a classic group. Each side has it: "apache-share" and "memory-share".
"""

from __future__ import annotations

import asyncio
import random
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from starlette.responses import Response

import freedom
from freedom.testing import (
    TestBroker,
    free_port,
    kafka_config,
    wait_until,
    write_config,
)
from tests.services.scrape import in_flight, samples_of

RETRY_COUNT = 2
#: Scenario -> partitions of its topic. Each scenario's topic has a route /sem/<scenario>/{event_id}.
SCENARIOS = {
    "headers": 1,
    "retry": 1,
    "exhaust": 1,
    "deadletter": 1,
    "drop": 1,
    "ordered": 3,
    "relay": 1,
    "concurrent": 1,
    "sentinel": 1,  # records put there only to see a commit of the group go out (commits_caught_up)
}
#: Per-topic delivery modes (kafka.toml [consumer_clients.topics]); the others are sequential.
#: A share group has none: every topic is concurrent.
MODES = {"ordered": "key-ordered", "concurrent": "concurrent"}


@dataclass
class Call:
    """One handler call, as the handler saw it; `at` is the env's clock (the broker's on the test broker)."""

    scenario: str
    key: str
    body: bytes
    headers: dict[str, str]
    bus: dict[str, Any]
    at: float
    nth: int  # calls of this scenario and key before this one


@dataclass
class Journal:
    calls: list[Call] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: key -> a gate its handler waits for (at most 30 s) before answering
    gates: dict[str, threading.Event] = field(default_factory=dict)

    def of(self, scenario: str, key: str | None = None) -> list[Call]:
        with self.lock:
            return [
                c for c in self.calls if c.scenario == scenario and (key is None or c.key == key)
            ]


@dataclass
class Rec:
    """A record read back from a topic."""

    key: bytes | None
    value: bytes
    headers: dict[str, str]
    partition: int
    offset: int


def _behave(scenario: str, call: Call) -> int:
    if scenario == "retry":
        return 500 if call.nth < 2 else 200
    if scenario == "exhaust":
        return 500
    if scenario == "deadletter":
        raise freedom.DeadLetter("not a valid order")
    if scenario == "drop":
        raise freedom.Drop("duplicate")
    return 200


def semantics_app(
    config_dir: Path, journal: Journal, topics: dict[str, str], clock: Callable[[], float]
) -> freedom.Application:
    """The service: POST /sem/<scenario>/{event_id} for each scenario's topic; GET /sem/publish/{n}?tenant=
    publishes `{"n": n}` to the relay topic with a header and the request's runtime (bus: the tenant)."""
    app: freedom.Application

    def handler(scenario: str) -> Callable[..., Any]:
        async def on_event(event_id: str, runtime: freedom.RuntimeDep) -> Response:
            request = runtime.request
            body = await request.body()
            with journal.lock:
                nth = sum(1 for c in journal.calls if c.scenario == scenario and c.key == event_id)
                call = Call(
                    scenario,
                    event_id,
                    body,
                    dict(request.headers.items()),
                    dict(runtime.bus),
                    clock(),
                    nth,
                )
                journal.calls.append(call)
            if scenario == "ordered":
                await asyncio.sleep(random.uniform(0, 0.01))  # let records of other keys overtake
            gate = journal.gates.get(event_id)
            if gate is not None:
                await asyncio.to_thread(gate.wait, 30)
            return Response(status_code=_behave(scenario, call))

        on_event.__name__ = f"on_{scenario}"
        return on_event

    def prepare(initiator: freedom.Initiator) -> None:
        api = initiator.fastapi
        for scenario, topic in topics.items():
            endpoint = handler(scenario)
            api.post(f"/sem/{scenario}/{{event_id}}")(endpoint)
            initiator.listen_event(topic, endpoint)

        @api.get("/sem/publish/{n}")
        async def publish(n: int, tenant: str, runtime: freedom.RuntimeDep) -> dict[str, str]:
            runtime.bus["tenant"] = tenant
            msg = app.producer.new_msg(topics["relay"], {"n": n}).set_headers({"x-action": "购买"})
            delivered = await msg.set_runtime(runtime).publish()
            return {"key": delivered.key}

    app = freedom.Application(config_dir=config_dir, prepare=[prepare])
    return app


def _config(
    config_dir: Path,
    bootstrap: str | None,
    topics: dict[str, str],
    interval: float,
    *,
    share: bool = False,
) -> None:
    port = free_port()
    group = f"sem-{uuid.uuid4().hex[:8]}"
    kinds: dict[str, Any] = (
        {"share_group": True}
        if share
        else {"topics": {topics[s]: {"mode": m} for s, m in MODES.items()}}
    )
    write_config(
        config_dir,
        app={"listen_addr": f"127.0.0.1:{port}"},
        kafka=kafka_config(
            bootstrap,
            port,
            group_id=group,
            delivery="inprocess",
            retry_group_id=f"r-{group}",
            retry_count=RETRY_COUNT,
            retry_interval_sec=interval,
            settings={"session.timeout.ms": 6000},
            **kinds,
        ),
    )


class Env:
    """The verbs the semantics tests use; `kind` is "apache", "memory", or with a share group
    "apache-share" (apache_env.py) or "memory-share"."""

    kind: str
    share: bool = False  # the main group is a share group
    interval: float  # retry_interval_sec
    topics: dict[str, str]
    journal: Journal
    app: freedom.Application

    def clock(self) -> float:
        raise NotImplementedError

    def produce(self, scenario: str, records: list[dict[str, Any]]) -> None:
        """Records from outside (keyword arguments of confluent-kafka's produce: key, value, headers, partition)."""
        raise NotImplementedError

    def settle(self, done: Callable[[], object], what: str) -> None:
        """Wait until the service has handled what was produced and `done()` holds."""
        raise NotImplementedError

    def records(self, topic: str) -> list[Rec]:
        raise NotImplementedError

    def committed(self, topic: str, partition: int = 0, *, retry_group: bool = False) -> int | None:
        """The offset the main group (or the retry group) committed on a partition; None: none yet."""
        raise NotImplementedError

    def finished(self, topic: str, partition: int = 0) -> int | None:
        """How far the main group finished a partition: every record before it is finished. A
        classic group's committed offset; a share group's share-partition start offset (records
        after it may be acknowledged too, each on its own). None: nothing yet."""
        if not self.share:
            return self.committed(topic, partition)
        raise NotImplementedError

    def acknowledged(self, topic: str) -> int:
        """A share group's records of `topic` acknowledged (accepted), in any order."""
        raise NotImplementedError

    def acknowledgements_sent(self) -> None:
        """A share group: wait until the acknowledgements of the records finished so far reached
        the broker (on Kafka the source sends them asynchronously, within COMMIT_INTERVAL)."""
        raise NotImplementedError

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        raise NotImplementedError

    def in_flight(self) -> int:
        """Deliveries of the main group started and not finished (GET /metrics)."""
        answer = self.get("/metrics")
        assert answer.status_code == 200, answer.text
        return in_flight(samples_of(answer.text), self.group())

    def commits_caught_up(self, running: int) -> None:
        """The moment to assert that a commit did not happen: once only `running` deliveries of the
        main group are still running (every other record it got has finished), a record put on
        the sentinel topic is committed. That commit went out after they finished, and a commit
        of the group carries every offset the group may commit.

        A share group's member fetches nothing while a record of its last fetch is held, so no
        sentinel can pass a running record: its acknowledgements go each on its own, and
        `acknowledgements_sent` waits for those of the finished records instead."""
        wait_until(
            lambda: self.in_flight() == running,
            30,
            what=f"{running} deliveries still running, every other one finished",
        )
        if self.share:
            self.acknowledgements_sent()
            return
        sentinel = self.topics["sentinel"]
        before = self.finished(sentinel) or 0
        self.produce("sentinel", [{"key": b"SENTINEL", "value": b"s"}])
        wait_until(
            lambda: (self.finished(sentinel) or 0) > before, 30, what="the sentinel's commit"
        )

    def retry_topic(self, scenario: str) -> str:
        return f"retry-{self.topics[scenario]}"

    def fail_topic(self, scenario: str) -> str:
        return f"fail-{self.topics[scenario]}"

    def group(self, retry_group: bool = False) -> str:
        assert self.app.kafka_config is not None
        client = self.app.kafka_config.consumer_clients[0]
        return client.retry_group_id if retry_group else client.group_id

    def close(self) -> None:
        raise NotImplementedError


class MemoryEnv(Env):
    """The same service on freedom's TestBroker (sync mode: the application on a loop thread);
    with `share` its main group is a share group ("memory-share")."""

    def __init__(self, config_dir: Path, interval: float, *, share: bool = False) -> None:
        self.kind = "memory-share" if share else "memory"
        self.share = share
        self.interval = interval
        suffix = uuid.uuid4().hex[:8]
        self.topics = {s: f"sem-{s}-{suffix}" for s in SCENARIOS}
        self.journal = Journal()
        _config(config_dir, None, self.topics, interval, share=share)
        holder: list[TestBroker] = []
        self.app = semantics_app(config_dir, self.journal, self.topics, lambda: holder[0].time())
        test_broker = TestBroker(self.app)
        holder.append(test_broker)
        for s, n in SCENARIOS.items():
            test_broker.create_topic(self.topics[s], n)
        self._context = test_broker
        self.broker = test_broker.__enter__()

    def clock(self) -> float:
        return self.broker.time()

    def produce(self, scenario: str, records: list[dict[str, Any]]) -> None:
        """Every record in one step of the application's loop: a fetch sees them all, as one
        produced batch (a share group's member fetches again only once its last fetch is
        acknowledged: records trickling in one by one would each be a fetch of their own)."""
        broker = self.broker.broker

        async def put() -> None:
            for r in records:
                broker.publish(
                    self.topics[scenario],
                    r.get("value"),
                    key=r.get("key"),
                    headers=r.get("headers"),
                    partition=r.get("partition"),
                )

        self.broker.run(put())

    def settle(self, done: Callable[[], object], what: str) -> None:
        self.broker.settle()
        assert done(), f"settled, but not {what}"

    def records(self, topic: str) -> list[Rec]:
        return [
            Rec(r.key(), r.value() or b"", r.headers_dict(), r.partition(), r.offset())
            for r in self.broker.records(topic)
        ]

    def committed(self, topic: str, partition: int = 0, *, retry_group: bool = False) -> int | None:
        return self.broker.committed(topic, partition, group=self.group(retry_group))

    def finished(self, topic: str, partition: int = 0) -> int | None:
        if not self.share:
            return self.committed(topic, partition)
        return self.broker.share_group(self.group()).start_offset(topic, partition)

    def acknowledged(self, topic: str) -> int:
        return self.broker.share_group(self.group()).acknowledged(topic)

    def acknowledgements_sent(self) -> None:
        return None  # the test broker applies each acknowledgement at once

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.broker.client.get(path, **kwargs)

    def close(self) -> None:
        self._context.__exit__(None, None, None)
