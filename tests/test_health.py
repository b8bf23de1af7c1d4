"""GET /readyz and /livez over real HTTP, on Apache Kafka: not ready while the consumer group waits
for its assignment (another member holds the rebalance), ready once it has it; not live while the
consumer thread is stuck (blocked inside its round), live again once it goes on."""

from __future__ import annotations

import threading
import uuid

import httpx
from confluent_kafka import Consumer

from freedom.observability import metrics
from freedom.testing import ServiceThread, free_port, kafka_config, wait_until, write_config
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
