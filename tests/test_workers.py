"""`freedom run --workers 2` on Apache Kafka: both workers are members of the group (the partitions
split), every record is handled once, a SIGKILLed worker is reported and restarted while the other
takes over without losing a record, and SIGTERM stops every worker cleanly, committed to the end.
With two workers the retry topic and the dead-letter topic keep their semantics."""

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
from freedom.wire.headers import ERROR_HEADER, ORIGINAL_TOPIC_HEADER, RETRY_COUNT_HEADER
from tests.services.kafka_tools import committed, headers_of, partitions_of, produce, read_all

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


def _run_workers(config: Path, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """`freedom run kill_service:app --workers 2` in a session of its own, its output in `log`."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "freedom",
            "run",
            "kill_service:app",
            "--config",
            str(config),
            "--workers",
            "2",
        ],
        cwd=SERVICES,
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _stop(proc: subprocess.Popen[bytes]) -> int:
    """SIGTERM to the parent only (it stops the workers); its exit code."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
    return proc.wait(60)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_two_workers_split_the_partitions_survive_a_kill_and_stop_cleanly(
    apache_kafka, new_topic, tmp_path
):
    bootstrap = apache_kafka.bootstrap
    topic = new_topic(bootstrap, partitions=4)
    group = f"w-{uuid.uuid4().hex[:8]}"
    port = free_port()
    config = write_config(
        tmp_path / "conf",
        app={"listen_addr": f"127.0.0.1:{port}", "log_level": "INFO"},
        kafka=kafka_config(
            bootstrap,
            port,
            group_id=group,
            mode="concurrent",
            # earliest: a member seen holding partitions may not have
            # pinned its start yet (with latest, records the test
            # produced in between would be skipped)
            initial_offset="earliest",
            settings={"session.timeout.ms": 6000},
        ),
    )
    records, log = tmp_path / "records.jsonl", tmp_path / "service.log"
    env = {**os.environ, "RECORD_FILE": str(records), "EVENT_TOPIC": topic, "MAX_LATENCY_MS": "300"}
    proc = _run_workers(config, env, log)
    seen_pids: set[int] = set()
    try:
        # Both workers joined the one group and split its four partitions.
        split = wait_until(
            lambda: (m := _members(bootstrap, group)) and len(m) == 2 and all(m) and m,
            90,
            what=f"two members holding partitions (log: {log})",
        )
        assert sorted(p for m in split for p in m) == [0, 1, 2, 3]
        first = [f"A{i:02d}" for i in range(40)]
        produce(
            bootstrap,
            topic,
            [{"key": k.encode(), "value": b"v", "partition": i % 4} for i, k in enumerate(first)],
        )
        wait_until(
            lambda: set(_ended(records)) >= set(first),
            60,
            what=f"the first 40 records (log: {log})",
        )
        assert all(n == 1 for k, n in _ended(records).items() if k in first), (
            "each record handled once"
        )
        # Each worker's proxy delivers to its own process (its own loopback port), so the records
        # of both workers' partitions were handled by both.
        assert len({r["pid"] for r in _lines(records)}) == 2, (
            "each worker handled its partitions' records"
        )
        assert log.read_text().count("consumer proxy delivers to its own port") == 2
        # The shared port reaches either worker. Which process accepts a connection is the kernel's
        # choice, so ask over fresh connections.
        assert len(_answering_pids(port)) == 2, "both workers answer on the shared port"

        pids = _worker_pids(log)
        seen_pids |= set(pids.values())
        victim = pids[1]
        second = [f"B{i:02d}" for i in range(40)]
        produce(
            bootstrap,
            topic,
            [{"key": k.encode(), "value": b"v", "partition": i % 4} for i, k in enumerate(second)],
        )
        # Killed with deliveries in flight (to it, and from its proxy).
        wait_until(
            lambda: any(r["key"].startswith("B") for r in _lines(records)),
            30,
            what="the second records",
        )
        os.kill(victim, signal.SIGKILL)
        wait_until(
            lambda: set(_ended(records)) >= set(second),
            90,
            what=f"the records after the kill (log: {log})",
        )
        wait_until(
            lambda: _worker_pids(log).get(1, victim) != victim, 30, what="worker 1 started again"
        )
        seen_pids |= set(_worker_pids(log).values())
        assert f"worker 1 (pid {victim}) was killed by SIGKILL" in log.read_text()
        ends = [0, 0, 0, 0]
        for i in range(80):
            ends[i % 4] += 1
        wait_until(
            lambda: committed(bootstrap, group, topic, 4) == ends, 30, what="the commits to the end"
        )
    finally:
        code = _stop(proc)
    assert code == 0, f"SIGTERM should stop every worker cleanly (log: {log})"
    text = log.read_text()
    assert text.count("stopping: draining the consumer proxies") >= 2, "each worker drained"
    assert committed(bootstrap, group, topic, 4) == ends
    assert not [p for p in seen_pids if _alive(p)], "no worker outlives the parent"


def test_two_workers_retry_once_and_dead_letter_after_the_last_retry(
    apache_kafka, new_topic, tmp_path
):
    """retry_count = 1 with two workers: a record failing once is handled once more from retry-T (by
    whichever worker holds it, no earlier than retry_interval_sec), a record always failing lands in
    fail-T with its reason, and both groups commit to the end."""
    bootstrap = apache_kafka.bootstrap
    topic = new_topic(bootstrap, partitions=4)
    group = f"w-{uuid.uuid4().hex[:8]}"
    retry_group = f"retry_{group}"
    port = free_port()
    config = write_config(
        tmp_path / "conf",
        app={"listen_addr": f"127.0.0.1:{port}", "log_level": "INFO"},
        kafka=kafka_config(
            bootstrap,
            port,
            group_id=group,
            mode="concurrent",
            initial_offset="earliest",
            retry_count=1,
            retry_interval_sec=1,
            retry_group_id=retry_group,
            settings={"session.timeout.ms": 6000},
        ),
    )
    records, log, markers = (
        tmp_path / "records.jsonl",
        tmp_path / "service.log",
        tmp_path / "markers",
    )
    markers.mkdir()
    env = {
        **os.environ,
        "RECORD_FILE": str(records),
        "EVENT_TOPIC": topic,
        "MAX_LATENCY_MS": "50",
        "FAIL_FIRST_PREFIX": "R",
        "FAIL_ALWAYS_PREFIX": "D",
        "MARKER_DIR": str(markers),
    }
    proc = _run_workers(config, env, log)
    ok = [f"A{i:02d}" for i in range(20)]
    once = [f"R{i:02d}" for i in range(8)]
    dead = [f"D{i:02d}" for i in range(4)]
    keys = ok + once + dead
    ends = [len(keys[p::4]) for p in range(4)]
    try:
        split = wait_until(
            lambda: (m := _members(bootstrap, group)) and len(m) == 2 and all(m) and m,
            90,
            what=f"two members holding partitions (log: {log})",
        )
        assert sorted(p for m in split for p in m) == [0, 1, 2, 3]
        retry_topic = f"retry-{topic}"
        retry_parts = partitions_of(bootstrap, retry_topic)
        wait_until(
            lambda: (
                len(m := _members(bootstrap, retry_group)) == 2
                and sorted(p for s in m for p in s) == list(range(retry_parts))
            ),
            90,
            what=f"both workers in the retry group holding {retry_topic} (log: {log})",
        )
        produce(
            bootstrap,
            topic,
            [{"key": k.encode(), "value": b"v", "partition": i % 4} for i, k in enumerate(keys)],
        )

        def fails(key: str) -> list[dict[str, Any]]:
            return [r for r in _lines(records) if r["ev"] == "fail" and r["key"] == key]

        wait_until(
            lambda: (
                set(_ended(records)) >= set(ok + once) and all(len(fails(k)) == 2 for k in dead)
            ),
            90,
            what=f"A and R records handled, D records failed twice (log: {log})",
        )
        wait_until(
            lambda: committed(bootstrap, group, topic, 4) == ends,
            60,
            what="the main group's commits to the end",
        )
        retried = len(once) + len(dead)
        wait_until(
            lambda: (
                sum(max(o, 0) for o in committed(bootstrap, retry_group, retry_topic, retry_parts))
                == retried
            ),
            60,
            what=f"the retry group's commits to the end of {retry_topic}",
        )
        # Both groups committed to the end, and a record is committed only once its dead letter
        # was acknowledged: every dead letter there will be is there.
        dead_letters = read_all(bootstrap, f"fail-{topic}")
        lines = _lines(records)
    finally:
        code = _stop(proc)
    assert code == 0, f"SIGTERM should stop every worker cleanly (log: {log})"

    ended = _ended(records)
    assert {k: ended[k] for k in ok} == {k: 1 for k in ok}, "each A record handled once"
    assert {k: ended[k] for k in once} == {k: 1 for k in once}, (
        "each R record handled once after its failure"
    )
    assert not [k for k in dead if ended[k]], "no D record ever succeeded"
    for key in ok:
        assert [(r["ev"], r["retry"]) for r in lines if r["key"] == key and r["ev"] != "start"] == [
            ("end", "0")
        ]
    for key in once:
        (fail,) = fails(key)
        (end,) = [r for r in lines if r["key"] == key and r["ev"] == "end"]
        assert (fail["retry"], end["retry"]) == ("0", "1"), (
            f"{key}: failed from {topic}, succeeded from {retry_topic}"
        )
        start = max(r["t"] for r in lines if r["key"] == key and r["ev"] == "start")
        assert start - fail["t"] >= 0.99, (
            f"{key}: retried {start - fail['t']:.3f}s after failing (retry_interval_sec = 1)"
        )
    for key in dead:
        assert [r["retry"] for r in fails(key)] == ["0", "1"], (
            f"{key}: failed once from {topic}, once from {retry_topic}"
        )
    assert sorted(m.key().decode() for m in dead_letters) == dead, (
        "exactly the D records are dead-lettered, once each"
    )
    for m in dead_letters:
        h = headers_of(m)
        assert h[ERROR_HEADER] == "HTTP 500", h
        assert (h[ORIGINAL_TOPIC_HEADER], h[RETRY_COUNT_HEADER]) == (topic, "1"), h
    assert committed(bootstrap, group, topic, 4) == ends


def test_two_workers_share_one_embedded_broker_and_deliver_in_process(tmp_path):
    """`--workers 2` on the embedded broker with in-process delivery: the parent starts one broker
    for both workers, each worker's proxy calls its own application, every record is handled once,
    and SIGTERM stops the workers and the broker."""
    port = free_port()
    config = write_config(
        tmp_path / "conf",
        app={"listen_addr": f"127.0.0.1:{port}", "log_level": "INFO"},
        kafka=kafka_config(
            None,
            port,
            group_id=f"w-{uuid.uuid4().hex[:8]}",
            delivery="inprocess",
            mode="concurrent",
            initial_offset="earliest",
        ),
    )
    records, log = tmp_path / "records.jsonl", tmp_path / "service.log"
    topic = "event-workers-embedded"
    env = {**os.environ, "RECORD_FILE": str(records), "EVENT_TOPIC": topic, "MAX_LATENCY_MS": "20"}
    proc = _run_workers(config, env, log)
    broker_pid = None
    try:
        found = wait_until(
            lambda: re.search(
                r"embedded Kafka broker at (\S+) \(pid (\d+)\), shared by the 2 workers",
                log.read_text(),
            ),
            90,
            what=f"the shared embedded broker (log: {log})",
        )
        bootstrap, broker_pid = found.group(1), int(found.group(2))
        # A worker serves once its groups hold partitions; with both serving, both are members.
        wait_until(
            lambda: log.read_text().count("serving HTTP on") == 2,
            90,
            what=f"both workers serving (log: {log})",
        )
        assert (
            "consumer proxy delivers to its own port" not in log.read_text()
        )  # in-process: no port needed
        keys = [f"E{i:02d}" for i in range(40)]
        parts = partitions_of(bootstrap, topic)  # as the service created it on the embedded broker
        assert parts >= 2
        produce(
            bootstrap,
            topic,
            [
                {"key": k.encode(), "value": b"v", "partition": i % parts}
                for i, k in enumerate(keys)
            ],
        )
        wait_until(
            lambda: set(_ended(records)) >= set(keys), 60, what=f"the 40 records (log: {log})"
        )
        assert all(n == 1 for k, n in _ended(records).items() if k in keys), (
            "each record handled once"
        )
        assert len({r["pid"] for r in _lines(records)}) == 2, (
            "each worker handled its partitions' records in-process"
        )
    finally:
        code = _stop(proc)
    assert code == 0, f"SIGTERM should stop every worker cleanly (log: {log})"
    assert broker_pid is not None
    wait_until(
        lambda: not _alive(broker_pid), 30, what="the embedded broker stopped with the parent"
    )


def test_two_workers_delivering_over_http_to_their_own_ports_do_not_warn_about_proxy_addr(
    tmp_path,
):
    """kafka.toml's proxy_addr names the service's own listen address; with `--workers 2` each
    worker's proxy delivers to a port of its own instead (on purpose): no worker warns that
    proxy_addr points at a port the service does not listen on (issue 20, point 9b), and the
    records are delivered."""
    port = free_port()
    config = write_config(
        tmp_path / "conf",
        app={"listen_addr": f"127.0.0.1:{port}", "log_level": "INFO"},
        kafka=kafka_config(
            None,  # the embedded broker, started once by the parent
            port,  # proxy_addr = "http://127.0.0.1:<port>": the service itself
            group_id=f"w-{uuid.uuid4().hex[:8]}",
            mode="concurrent",
            initial_offset="earliest",
        ),
    )
    records, log = tmp_path / "records.jsonl", tmp_path / "service.log"
    topic = "event-workers-own-port"
    env = {**os.environ, "RECORD_FILE": str(records), "EVENT_TOPIC": topic, "MAX_LATENCY_MS": "20"}
    proc = _run_workers(config, env, log)
    try:
        found = wait_until(
            lambda: re.search(r"embedded Kafka broker at (\S+) \(pid \d+\)", log.read_text()),
            90,
            what=f"the shared embedded broker (log: {log})",
        )
        wait_until(
            lambda: log.read_text().count("serving HTTP on") == 2,
            90,
            what=f"both workers serving (log: {log})",
        )
        assert log.read_text().count("consumer proxy delivers to its own port") == 2
        bootstrap = found.group(1)
        parts = partitions_of(bootstrap, topic)
        keys = [f"P{i:02d}" for i in range(8)]
        produce(
            bootstrap,
            topic,
            [
                {"key": k.encode(), "value": b"v", "partition": i % parts}
                for i, k in enumerate(keys)
            ],
        )
        wait_until(lambda: set(_ended(records)) >= set(keys), 60, what=f"the records (log: {log})")
    finally:
        code = _stop(proc)
    assert code == 0, f"SIGTERM should stop every worker cleanly (log: {log})"
    text = log.read_text()
    assert "proxy_addr" not in text and "points at port" not in text, text
