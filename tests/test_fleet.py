"""A fleet on this machine: three `freedom proxy` instances in one group, on a three-broker Apache Kafka
cluster, deliver a topic to a service not written with freedom while one proxy is SIGKILLed and one
broker is killed. Every record is delivered or dead-lettered, none is lost, and the records
delivered twice are within the bound of docs/reliability.md (in flight + held + lagging).

The service is the standard library's ThreadingHTTPServer on 127.0.0.1; each proxy instance posts to
its own path prefix (`/p0/`, `/p1/`, `/p2/`, an environment override of the one config), so every
delivery names the instance that made it.
"""

from __future__ import annotations

import http.server
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import confluent_kafka
import pytest
from confluent_kafka.admin import AdminClient

from freedom.testing import free_port, wait_until, write_config
from tests.kafka.cluster import NODE_IDS, KafkaCluster, running_cluster
from tests.services.kafka_tools import committed, headers_of, read_all
from tests.services.plain_http import PlainService

pytestmark = [pytest.mark.cluster, pytest.mark.serial, pytest.mark.timeout(240)]

RECORDS = 3000
PARTITIONS = 6
PROXIES = 3
MAX_IN_FLIGHT = 16
RATE = 300  # records produced per second: the run lasts ~10 s, long enough to kill in the middle
#: docs/reliability.md: a record finished less than this long before a SIGKILL may be delivered again.
COMMIT_LAG_BOUND = 0.25


def dead_letters(i: int) -> bool:
    """Every 97th record is answered 422 (dead-lettered at once, `dead_letter_statuses`)."""
    return i % 97 == 0


@dataclass
class Delivery:
    instance: int
    key: str
    at: float
    status: int


class Service(PlainService):
    """A plain HTTP/1.1 service: records every POST (`/p<instance>/<key>`) as it arrives, answers 200
    after 2 ms, or 422 for the keys `dead_letters` names. Requests from instance `stall` get no answer
    (status 0: in flight when that instance is killed) until `release` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.deliveries: list[Delivery] = []
        self.stall: int | None = None

    def on_post(self, request: http.server.BaseHTTPRequestHandler, body: bytes) -> None:
        _, prefix, key = request.path.split("/", 2)
        instance = int(prefix[1:])
        if instance == self.stall:
            with self.lock:
                self.deliveries.append(Delivery(instance, key, time.monotonic(), 0))
            self.release.wait(60)
            request.close_connection = True  # its proxy is gone: no answer
            return
        status = 422 if dead_letters(int(key.split("-")[1])) else 200
        time.sleep(0.002)
        with self.lock:
            self.deliveries.append(Delivery(instance, key, time.monotonic(), status))
        self.answer(request, status)

    def snapshot(self) -> list[Delivery]:
        with self.lock:
            return list(self.deliveries)

    def unanswered(self) -> list[Delivery]:
        return [d for d in self.snapshot() if d.status == 0]

    def answered(self) -> set[str]:
        return {d.key for d in self.snapshot() if d.status}


class Proxy:
    """`freedom proxy --config DIR` in its own process group, delivering to `/p<instance>/{key}`."""

    def __init__(self, instance: int, config: Path, log: Path, base: str) -> None:
        self.instance = instance
        self.port = free_port()
        self.log = log
        env = {**os.environ, "FREEDOM_KAFKA__SUBSCRIPTIONS__0__URL": f"{base}/p{instance}/{{key}}"}
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "freedom",
                "proxy",
                "--config",
                str(config),
                "--listen",
                f"127.0.0.1:{self.port}",
            ],
            env=env,
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(
                f"proxy {self.instance} exited with {self.proc.returncode}: {self.log.read_text()}"
            )
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.port}/readyz", timeout=5
            ) as answer:
                return answer.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


@pytest.fixture(scope="module")
def cluster(request: pytest.FixtureRequest) -> Iterator[KafkaCluster]:
    """A three-node cluster for this module; its logs are kept (and named) if a test failed."""
    yield from running_cluster(lambda: request.session.testsfailed > 0, "fleet")


def _members(bootstrap: str, group: str) -> dict[str, set[int]]:
    """`{member's client host+id: partitions}` of `group` once it is stable, else {}."""
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    desc = admin.describe_consumer_groups([group], request_timeout=5)[group].result(10)
    if str(desc.state).split(".")[-1] != "STABLE":
        return {}
    return {
        m.member_id: {tp.partition for tp in m.assignment.topic_partitions} for m in desc.members
    }


class Producer:
    """Produces RECORDS keyed `k-00000`... at RATE per second (acks=all, idempotent) on a thread."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.topic = topic
        self.acked: dict[str, int] = {}  # key -> partition
        self.failed: dict[str, str] = {}
        self.producer = confluent_kafka.Producer(
            {
                "bootstrap.servers": bootstrap,
                "acks": "all",
                "enable.idempotence": True,
                "linger.ms": 5,
                "message.timeout.ms": 60000,
                "log_level": 0,
            }
        )
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _report(self, err: Any, msg: Any) -> None:
        key = msg.key().decode()
        if err is None:
            self.acked[key] = msg.partition()
        else:
            self.failed[key] = str(err)

    def _run(self) -> None:
        start = time.monotonic()
        for i in range(RECORDS):
            while time.monotonic() < start + i / RATE:
                self.producer.poll(0.002)
            key = f"k-{i:05d}"
            self.producer.produce(
                self.topic, key=key.encode(), value=f"body {key}".encode(), on_delivery=self._report
            )
        self.producer.flush(90)

    def done(self) -> bool:
        return not self.thread.is_alive()


def test_a_fleet_of_three_proxies_loses_nothing_when_a_proxy_and_a_broker_die(
    cluster: KafkaCluster, tmp_path: Path
) -> None:
    cluster.heal()
    victim_broker = next(n for n in NODE_IDS if n != cluster.coordinator())  # leads every partition
    topic = cluster.create_topic(f"fleet-{uuid.uuid4().hex[:8]}", PARTITIONS, leader=victim_broker)
    group = f"fleet-{uuid.uuid4().hex[:8]}"
    config = write_config(
        tmp_path / "conf",
        kafka={
            "consumer_clients": [
                {
                    "servers": cluster.servers,
                    "group_id": group,
                    "retry_group_id": f"r-{group}",
                    "initial_offset": "earliest",
                    "mode": "concurrent",
                    "max_in_flight": MAX_IN_FLIGHT,
                    "retry_count": 1,
                    "retry_interval_sec": 1,
                    # A SIGKILLed instance's partitions move after 6 s; the broker that dies is not the coordinator.
                    "settings": {"session.timeout.ms": 6000, "heartbeat.interval.ms": 1000},
                }
            ],
            "subscriptions": [
                {"topic": topic, "url": "http://127.0.0.1:1/unused/{key}", "timeout_sec": 10}
            ],
        },
    )
    with Service() as service:
        base = f"http://127.0.0.1:{service.port}"
        proxies = [Proxy(i, config, tmp_path / f"proxy{i}.log", base) for i in range(PROXIES)]
        try:
            for proxy in proxies:
                wait_until(
                    proxy.ready,
                    90,
                    interval=0.2,
                    what=f"proxy {proxy.instance} /readyz 200 ({proxy.log})",
                )
            members = wait_until(
                lambda: (
                    (m := _members(cluster.bootstrap, group))
                    and len(m) == PROXIES
                    and all(m.values())
                    and m
                ),
                60,
                interval=0.2,
                what="three members holding partitions",
            )
            assert sorted(p for parts in members.values() for p in parts) == list(range(PARTITIONS))

            producer = Producer(cluster.bootstrap, topic)
            producer.thread.start()
            started = time.monotonic()

            # (1) SIGKILL the proxy that delivered first, a quarter of the way through, with
            # max_in_flight deliveries unanswered (the service stops answering it just before).
            first = wait_until(
                lambda: (d := service.snapshot()) and d[0], 60, what="the first delivery"
            )
            killed = proxies[first.instance]
            wait_until(
                lambda: len(service.snapshot()) >= RECORDS // 4, 60, what="a quarter of the records"
            )
            service.stall = killed.instance
            wait_until(
                lambda: len(service.unanswered()) >= MAX_IN_FLIGHT,
                30,
                what=f"{MAX_IN_FLIGHT} deliveries of proxy {killed.instance} in flight",
            )
            held_partitions = {
                producer.acked.get(d.key)
                for d in service.snapshot()
                if d.instance == killed.instance
            }
            killed.stop(signal.SIGKILL)
            service.release.set()
            proxy_killed_at = time.monotonic()
            before_proxy_kill = service.snapshot()

            # (2) Kill the broker leading every partition (not the coordinator), half way through.
            wait_until(
                lambda: len(service.snapshot()) >= RECORDS // 2, 90, what="half of the records"
            )
            cluster.kill(victim_broker)
            broker_killed_at = time.monotonic()
            new_leader = cluster.wait_leader_moved(topic, 0, victim_broker, 60)

            wait_until(producer.done, 120, what="the producer to finish")
            assert not producer.failed, (
                f"{len(producer.failed)} produces failed: {next(iter(producer.failed.items()))}"
            )
            assert len(producer.acked) == RECORDS

            wait_until(
                lambda: len(service.answered()) == RECORDS,
                120,
                what=f"every record answered (got {len(service.answered())} of {RECORDS})",
            )
            ends = [0] * PARTITIONS
            for p in producer.acked.values():
                ends[p] += 1
            wait_until(
                lambda: committed(cluster.bootstrap, group, topic, PARTITIONS) == ends,
                60,
                interval=0.2,
                what=f"the group's commits to reach the ends {ends}",
            )
            run_seconds = time.monotonic() - started
            survivors_ok = [p.ready() for p in proxies if p is not killed]
        finally:
            for proxy in proxies:
                proxy.stop()
        for proxy in proxies:
            if proxy is not killed:
                assert proxy.proc.returncode == 0, proxy.log.read_text()[-3000:]
                assert "Traceback" not in proxy.log.read_text(), proxy.log.read_text()[-3000:]
        assert all(survivors_ok)

    deliveries = service.snapshot()
    keys = [f"k-{i:05d}" for i in range(RECORDS)]
    per_key = Counter(d.key for d in deliveries)
    answered = {d.key for d in deliveries if d.status}
    assert answered == set(keys), f"never delivered: {sorted(set(keys) - answered)[:5]}"
    # The deliveries in flight when their proxy died came again, from a survivor.
    in_flight = [d for d in deliveries if d.status == 0]
    assert len(in_flight) >= MAX_IN_FLIGHT
    for d in in_flight:
        again = [e for e in deliveries if e.key == d.key and e.status]
        assert again and all(
            e.instance != killed.instance and e.at > proxy_killed_at for e in again
        ), (d, again)

    # Dead letters: exactly the 422 records, each in fail-T at least once, with the status as reason.
    expected_dead = {k for i, k in enumerate(keys) if dead_letters(i)}
    # Every partition was committed to its end, and a record is committed only once its dead
    # letter was acknowledged: every dead letter there will be is there.
    dead = read_all(cluster.bootstrap, f"fail-{topic}")
    dead_keys = Counter(r.key().decode() for r in dead)
    assert set(dead_keys) == expected_dead
    assert all(headers_of(r)["x-freedom-status"] == "422" for r in dead)

    # Duplicates: only records of the partitions the killed instance held, first delivered by it,
    # before it died; at most in flight + held + lagging (docs/reliability.md).
    first_by: dict[str, Delivery] = {}
    for d in deliveries:
        first_by.setdefault(d.key, d)
    repeated = {k: n for k, n in per_key.items() if n > 1}
    duplicates = sum(n - 1 for n in repeated.values())
    killed_parts = len(held_partitions - {None})
    lagging = sum(
        1
        for d in before_proxy_kill
        if d.instance == killed.instance and d.at > proxy_killed_at - COMMIT_LAG_BOUND - 0.05
    )
    bound = MAX_IN_FLIGHT + 4 * MAX_IN_FLIGHT * killed_parts + lagging
    print(
        f"[fleet] {RECORDS} records over {PARTITIONS} partitions, {PROXIES} proxies; {len(deliveries)} deliveries "
        f"in {run_seconds:.1f} s; proxy {killed.instance} SIGKILLed after {len(before_proxy_kill)} deliveries "
        f"(it held {killed_parts} partitions); broker {victim_broker} killed "
        f"{broker_killed_at - proxy_killed_at:.1f} s later, leader now {new_leader}; {duplicates} duplicates "
        f"(bound {bound}: in flight {MAX_IN_FLIGHT} + held {4 * MAX_IN_FLIGHT * killed_parts} + lagging {lagging}); "
        f"{len(dead)} dead letters for {len(expected_dead)} records"
    )
    for key in repeated:
        assert first_by[key].instance == killed.instance and first_by[key].at <= proxy_killed_at, (
            f"{key} delivered {per_key[key]} times, first by proxy {first_by[key].instance}: "
            "only the killed instance's uncommitted records may come again"
        )
    assert duplicates <= bound, f"{duplicates} duplicates, more than the bound {bound}"
