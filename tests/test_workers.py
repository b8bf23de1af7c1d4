"""`freedom run --workers 2` on Apache Kafka: both workers are members of the group (the partitions
split), every record is handled once, a SIGKILLed worker is reported and restarted while the other
takes over without losing a record, and SIGTERM stops every worker cleanly, committed to the end."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from confluent_kafka.admin import AdminClient

from freedom.testing import free_port, kafka_config, wait_until, write_config
from tests.services.kafka_tools import committed, produce

SERVICES = Path(__file__).parent / "services"


def _lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _ended(path: Path) -> Counter[str]:
    return Counter(r["key"] for r in _lines(path) if r["ev"] == "end")


def _members(bootstrap: str, group: str) -> list[set[int]]:
    """The partitions each member of `group` holds (empty while it rebalances)."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    members = admin.describe_consumer_groups([group])[group].result(10).members
    return [{tp.partition for tp in m.assignment.topic_partitions} for m in members]


def _worker_pids(log: Path) -> dict[int, int]:
    """worker number -> pid of its latest start, from the parent's log."""
    text = log.read_text() if log.exists() else ""
    return {int(n): int(p) for n, p in re.findall(r"worker (\d+) started \(pid (\d+)\)", text)}


def _answering_pids(port: int, connections: int = 300) -> set[int]:
    """The pids of the workers that answered GET /store, each over a new connection (stops at two)."""
    pids: set[int] = set()
    for _ in range(connections):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request("GET", "/store")
            pids.add(json.loads(conn.getresponse().read())["pid"])
        finally:
            conn.close()
        if len(pids) == 2:
            break
    return pids


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_two_workers_split_the_partitions_survive_a_kill_and_stop_cleanly(apache_kafka, new_topic, tmp_path):
    bootstrap = apache_kafka.bootstrap
    topic = new_topic(bootstrap, partitions=4)
    group = f"w-{uuid.uuid4().hex[:8]}"
    port = free_port()
    config = write_config(tmp_path / "conf", app={"listen_addr": f"127.0.0.1:{port}", "log_level": "INFO"},
                          kafka=kafka_config(bootstrap, port, group_id=group, mode="concurrent",
                                             # earliest: a member seen holding partitions may not have
                                             # pinned its start yet (with latest, records the test
                                             # produced in between would be skipped)
                                             initial_offset="earliest",
                                             settings={"session.timeout.ms": 6000}))
    records, log = tmp_path / "records.jsonl", tmp_path / "service.log"
    env = {**os.environ, "RECORD_FILE": str(records), "EVENT_TOPIC": topic, "MAX_LATENCY_MS": "300"}
    proc = subprocess.Popen([sys.executable, "-m", "freedom.cli", "run", "kill_service:app", "--config", str(config),
                             "--workers", "2"], cwd=SERVICES, env=env, stdout=log.open("ab"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    seen_pids: set[int] = set()
    try:
        # Both workers joined the one group and split its four partitions.
        split = wait_until(lambda: (m := _members(bootstrap, group)) and len(m) == 2 and all(m) and m, 90,
                           what=f"two members holding partitions (log: {log})")
        assert sorted(p for m in split for p in m) == [0, 1, 2, 3]
        first = [f"A{i:02d}" for i in range(40)]
        produce(bootstrap, topic, [{"key": k.encode(), "value": b"v", "partition": i % 4} for i, k in enumerate(first)])
        wait_until(lambda: set(_ended(records)) >= set(first), 60, what=f"the first 40 records (log: {log})")
        assert all(n == 1 for k, n in _ended(records).items() if k in first), "each record handled once"
        # Each worker's proxy delivers to its own process (its own loopback port), so the records
        # of both workers' partitions were handled by both.
        assert len({r["pid"] for r in _lines(records)}) == 2, "each worker handled its partitions' records"
        assert log.read_text().count("consumer proxy delivers to its own port") == 2
        # The shared port reaches either worker. Which process accepts a connection is the kernel's
        # choice, so ask over fresh connections.
        assert len(_answering_pids(port)) == 2, "both workers answer on the shared port"

        pids = _worker_pids(log)
        seen_pids |= set(pids.values())
        victim = pids[1]
        second = [f"B{i:02d}" for i in range(40)]
        produce(bootstrap, topic, [{"key": k.encode(), "value": b"v", "partition": i % 4} for i, k in enumerate(second)])
        # Killed with deliveries in flight (to it, and from its proxy).
        wait_until(lambda: any(r["key"].startswith("B") for r in _lines(records)), 30, what="the second records")
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: set(_ended(records)) >= set(second), 90, what=f"the records after the kill (log: {log})")
        wait_until(lambda: _worker_pids(log).get(1, victim) != victim, 30, what="worker 1 started again")
        seen_pids |= set(_worker_pids(log).values())
        assert f"worker 1 (pid {victim}) was killed by SIGKILL" in log.read_text()
        ends = [0, 0, 0, 0]
        for i in range(80):
            ends[i % 4] += 1
        wait_until(lambda: committed(bootstrap, group, topic, 4) == ends, 30, what="the commits to the end")
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)  # the parent only: it stops the workers
        code = proc.wait(60)
    assert code == 0, f"SIGTERM should stop every worker cleanly (log: {log})"
    text = log.read_text()
    assert text.count("stopping: draining the consumer proxies") >= 2, "each worker drained"
    assert committed(bootstrap, group, topic, 4) == ends
    assert not [p for p in seen_pids if _alive(p)], "no worker outlives the parent"
