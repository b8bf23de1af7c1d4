"""GET /readyz and /livez over real HTTP, on Apache Kafka: not ready while the consumer group waits
for its assignment (another member holds the rebalance), ready once it has it; not ready while a
consumer-only service's broker is down, ready again once it is back; not live while the consumer
thread is stuck (blocked inside its round), live again once it goes on."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
from confluent_kafka import Consumer

from freedom.observability import health, metrics
from freedom.testing import ServiceThread, free_port, kafka_config, wait_until, write_config
from tests.kafka.broker import ApacheKafka
from tests.services.event_app import Journal, event_app


def get(svc: ServiceThread, path: str) -> httpx.Response:
    return httpx.get(f"{svc.base_url}{path}", timeout=10)


def service(tmp_path, bootstrap: str, topic: str, group: str, **app: object) -> ServiceThread:
    port = free_port()
    conf = write_config(
        tmp_path,
        app={"listen_addr": f"127.0.0.1:{port}", **app},
        kafka=kafka_config(bootstrap, port, group_id=group, settings={"session.timeout.ms": 6000}),
    )
    return ServiceThread(event_app(conf, Journal(), topic))


def test_readyz_is_503_until_the_group_has_its_assignment(apache_kafka, new_topic, tmp_path):
    bootstrap = apache_kafka.bootstrap
    topic = new_topic(bootstrap)
    group = f"g-ready-{uuid.uuid4().hex[:8]}"
    # A member that got the partition and then stops polling: the service's join waits for it to
    # rejoin the rebalance (up to its max.poll.interval.ms), so the service has no assignment.
    holder = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "session.timeout.ms": 6000,
            "max.poll.interval.ms": 60000,
        }
    )
    assigned = threading.Event()
    holder.subscribe([topic], on_assign=lambda c, ps: assigned.set())
    wait_until(
        lambda: holder.poll(0.2) is None and assigned.is_set(), 30, what="the holder's assignment"
    )
    svc = service(tmp_path, bootstrap, topic, group)
    assert svc.app.kafka is not None
    svc.app.kafka.ready_timeout = 0.5  # serve HTTP without waiting for the assignment
    try:
        with svc:
            answer = get(svc, "/readyz")
            assert answer.status_code == 503, answer.text
            assert (
                f"consumer group {group!r}: no partition assignment yet"
                in answer.json()["problems"]
            )
            assert (
                get(svc, "/livez").status_code == 200
            )  # waiting for an assignment is not being stuck
            holder.close()  # leaves the group: the rebalance completes with the service alone
            answer = wait_until(
                lambda: (r := get(svc, "/readyz")).status_code == 200 and r,
                30,
                what="/readyz 200 after the assignment",
            )
            assert answer.json() == {"status": "ready"}
    finally:
        holder.close()


@pytest.fixture
def own_kafka() -> Iterator[ApacheKafka]:
    """A broker of its own: this test stops it, which would disturb the others' session broker."""
    kafka = ApacheKafka().start()
    try:
        yield kafka
    finally:
        kafka.close()


@pytest.mark.serial
def test_readyz_of_a_consumer_only_service_is_503_while_its_broker_is_down(
    own_kafka, new_topic, tmp_path
):
    """No producer client (`[producer] open = false`): the consumer's own connections tell /readyz
    that the cluster is gone, within the documented bound (the statistics interval + 10 s)."""
    bootstrap = own_kafka.bootstrap
    topic = new_topic(bootstrap)
    group = f"g-down-{uuid.uuid4().hex[:8]}"
    port = free_port()
    kafka = kafka_config(
        bootstrap,
        port,
        group_id=group,
        retry_count=1,
        retry_group_id=f"r-{group}",
        settings={"session.timeout.ms": 6000},
    )
    kafka["producer"] = {"open": False}
    del kafka["producer_clients"]
    conf = write_config(tmp_path, app={"listen_addr": f"127.0.0.1:{port}"}, kafka=kafka)
    bound = metrics.LAG_STATS_INTERVAL_MS / 1000 + health.CONSUMER_UNREACHABLE_SEC
    assert bound == 15  # what docs/observability.md promises
    with ServiceThread(event_app(conf, Journal(), topic)) as svc:
        assert svc.app.kafka is not None and not svc.app.kafka.config.producer.open
        wait_until(lambda: get(svc, "/readyz").status_code == 200, 30, what="/readyz 200")

        own_kafka.kill()
        down = time.monotonic()
        groups = [group, f"r-{group}"]  # the main group and the retry group: each one's consumer

        def unreachable() -> list[str] | None:
            answer = get(svc, "/readyz")
            problems: list[str] = answer.json().get("problems", [])
            named = sorted(p.partition(":")[0] for p in problems)
            if answer.status_code == 503 and named == [f"consumer group {g!r}" for g in groups]:
                return problems
            return None

        problems = wait_until(
            unreachable,
            bound + 10,  # the bound, and room for a loaded machine
            what="/readyz 503 for both groups while the broker is down",
        )
        # Not before the statistics showed no connection for CONSUMER_UNREACHABLE_SEC.
        assert time.monotonic() - down >= health.CONSUMER_UNREACHABLE_SEC
        assert all(
            ": no broker of its cluster reachable (no connection up for " in p for p in problems
        )
        assert get(svc, "/livez").status_code == 200  # a restart would not bring the broker back

        own_kafka.start()
        wait_until(
            lambda: get(svc, "/readyz").status_code == 200,
            60,
            what="/readyz 200 once the broker is back",
        )


def test_livez_is_503_while_the_consumer_thread_is_stuck(
    apache_kafka, new_topic, tmp_path, monkeypatch
):
    bootstrap = apache_kafka.bootstrap
    topic = new_topic(bootstrap)
    group = f"g-live-{uuid.uuid4().hex[:8]}"
    # librdkafka calls the statistics callback on the consumer thread, inside consume(): a callback
    # that blocks holds the thread inside its round, as a hung client call does.
    monkeypatch.setattr(metrics, "LAG_STATS_INTERVAL_MS", 200)
    release, entered = threading.Event(), threading.Event()
    stuck: list[metrics.LagStats] = []  # the statistics callback that blocks: the service's group's
    real_call = metrics.LagStats.__call__

    def call(self: metrics.LagStats, stats_json: str) -> None:
        if any(self is s for s in stuck):
            entered.set()
            release.wait(60)
        real_call(self, stats_json)

    monkeypatch.setattr(metrics.LagStats, "__call__", call)
    with service(tmp_path, bootstrap, topic, group, liveness_timeout_sec=2) as svc:
        assert get(svc, "/livez").json() == {"status": "live"}
        assert svc.app.kafka is not None
        stuck.append(svc.app.kafka.proxies[0].observer.lag_stats[group])
        try:
            assert entered.wait(10)
            answer = wait_until(
                lambda: (r := get(svc, "/livez")).status_code == 503 and r,
                15,
                what="/livez 503 while the consumer thread is stuck",
            )
            [problem] = answer.json()["problems"]
            assert problem.startswith(
                f"consumer group {group!r}: the consumer thread made no progress for "
            )
            assert problem.endswith("(liveness_timeout_sec = 2)")
        finally:
            stuck.clear()
            release.set()
        wait_until(
            lambda: get(svc, "/livez").status_code == 200,
            15,
            what="/livez 200 once the thread goes on",
        )


def test_livez_is_503_after_the_event_loop_was_blocked(tmp_path):
    """A handler blocks the event loop for 3 s (blocking code in an async handler); a probe that
    arrived meanwhile on an open connection is answered first when the loop runs again, and sees
    the loop's tick 3 s old: 503. The next probe, after the tick, is 200."""
    import time

    import freedom

    entered = threading.Event()

    class Block:
        async def get_by(self, id: int) -> str:
            entered.set()
            time.sleep(id)  # blocks the event loop, as blocking code in an async handler does
            return "ok"

    port = free_port()
    conf = write_config(
        tmp_path, app={"listen_addr": f"127.0.0.1:{port}", "liveness_timeout_sec": 2}
    )
    app = freedom.Application(
        config_dir=conf, prepare=[lambda i: i.bind_controller("/block", Block)]
    )
    with ServiceThread(app) as svc, httpx.Client(base_url=svc.base_url, timeout=30) as client:
        assert client.get("/livez").status_code == 200  # and the connection stays open (keep-alive)
        blocker = threading.Thread(target=lambda: httpx.get(f"{svc.base_url}/block/3", timeout=30))
        blocker.start()
        try:
            assert entered.wait(10)
            answer = client.get("/livez")
        finally:
            blocker.join(30)
        assert answer.status_code == 503, answer.text
        [problem] = answer.json()["problems"]
        assert problem.startswith("the event loop ran no tick for ") and problem.endswith(
            "(liveness_timeout_sec = 2)"
        )
        wait_until(
            lambda: client.get("/livez").status_code == 200,
            10,
            what="/livez 200 once the loop ticks again",
        )
