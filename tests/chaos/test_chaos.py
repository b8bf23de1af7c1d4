"""Chaos: a service SIGKILLed three times mid-run and its broker hard-restarted once, in every
delivery mode (sequential, concurrent, key-ordered: one topic each, in one service) and both
transports (HTTP/1.1, in-process), on Apache Kafka.

Exact accounting: every record is handled or dead-lettered (the handler dead-letters every 97th),
none is lost; every repeated delivery is one the bound of docs/reliability.md allows (the record
was in flight at a kill, waited behind one in flight, or became committable less than
COMMIT_LAG_BOUND before it); per-key order holds in key-ordered mode and per-partition order in
sequential mode (among first deliveries). The broker restart makes the group rebalance (the
restarted coordinator no longer knows the member); the drain finishes what is in flight and what
finished is not delivered again, even though the broker refused its commit. The figures are printed (`pytest -s`) and recorded in
docs/reliability.md.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from confluent_kafka import Producer

from freedom.kafka.consumer.group import COMMIT_LAG_BOUND
from freedom.testing import free_port, kafka_config, wait_until, write_config
from tests.chaos.harness import (
    KillReport,
    count,
    kill,
    kill_report,
    lines,
    start_service,
    terminate,
)
from tests.kafka.broker import ApacheKafka
from tests.services.kafka_tools import committed, produce, read_all

pytestmark = pytest.mark.serial  # timing bounds: run alone (scripts/test.sh)

PARTITIONS = 2
DEAD_EVERY = 97  # the handler dead-letters sequence numbers 96, 193, ...
KEYS = 40  # key-ordered topic: records share 40 keys
SIZES = {"sequential": 800, "concurrent": 1600, "key_ordered": 1600}
MAX_IN_FLIGHT = 50
KILLS_AT = (0.15, 0.35, 0.55)  # of all records settled: SIGKILL the service
BROKER_RESTART_AT = 0.75  # of all records settled: kill -9 the broker and start it again


@dataclass
class Route:
    """One topic of the chaos service, its mode and what was produced to it."""

    name: str  # the route (and the mode)
    topic: str
    where: dict[int, tuple[int, int]] = field(default_factory=dict)  # seq -> (partition, offset)
    reports: list[KillReport] = field(default_factory=list)

    @property
    def mode(self) -> str:
        return self.name.replace("_", "-")

    @property
    def fail_topic(self) -> str:
        return f"fail-{self.topic}"


def _warm_up(bootstrap: str, topic: str) -> None:
    """One acknowledged idempotent produce. On a broker that has just started, the first producer
    ids take a few hundred ms ("coordinator load in progress"): the service's first dead letters
    would wait for that, and the first kill's accounting (which counts a record finished when its
    handler answered) would blame the commit lag for it."""
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    producer.produce(topic, b"warm-up")
    assert producer.flush(30) == 0, "the broker did not acknowledge the warm-up record within 30 s"


def _settled(record_file: Path) -> int:
    """Settling lines written, repeated deliveries included: cheap, for the progress thresholds."""
    return count(record_file, "end") + count(record_file, "dead")


def _settled_records(record_file: Path) -> int:
    """Distinct records settled at least once (what `_settled` overcounts by the repeats)."""
    return len({e["seq"] for e in lines(record_file) if e["ev"] != "start"})


@pytest.mark.timeout(200)
@pytest.mark.parametrize("delivery", ["http", "inprocess"])
def test_sigkills_and_a_broker_restart_lose_nothing_and_repeat_only_what_the_bound_allows(
    apache_kafka: ApacheKafka, new_topic, tmp_path, delivery
):
    bootstrap = apache_kafka.bootstrap
    began = time.monotonic()
    _warm_up(bootstrap, new_topic(bootstrap))
    routes = [Route(name, new_topic(bootstrap, partitions=PARTITIONS)) for name in SIZES]
    seq = 0
    for route in routes:
        records = []
        for i in range(SIZES[route.name]):
            key = f"K{i % KEYS}" if route.name == "key_ordered" else f"{route.name[0].upper()}{seq}"
            part = (i % KEYS) % PARTITIONS if route.name == "key_ordered" else i % PARTITIONS
            records.append({"key": key.encode(), "value": str(seq).encode(), "partition": part})
            seq += 1
        route.where = {
            int(m.value()): (m.partition(), m.offset())
            for m in produce(bootstrap, route.topic, records)
        }
    total = seq
    group = f"g-chaos-{uuid.uuid4().hex[:8]}"
    port = free_port()
    config = write_config(
        tmp_path / "conf",
        app={"listen_addr": f"127.0.0.1:{port}"},
        kafka=kafka_config(
            bootstrap,
            port,
            group_id=group,
            delivery=delivery,
            initial_offset="earliest",
            topics={r.topic: {"mode": r.mode, "max_in_flight": MAX_IN_FLIGHT} for r in routes},
            settings={"session.timeout.ms": 6000},
        ),
    )
    record_file, log = tmp_path / "records.jsonl", tmp_path / "service.log"
    env = {f"CHAOS_{r.name.upper()}": r.topic for r in routes}
    env.update(MAX_LATENCY_MS="10", DEAD_EVERY=str(DEAD_EVERY))

    def offsets() -> dict[str, list[int]]:
        return {
            r.topic: [max(o, 0) for o in committed(bootstrap, group, r.topic, PARTITIONS)]
            for r in routes
        }

    runs: list[tuple[int, dict[str, list[int]]]] = []  # (pid, committed offsets when it started)
    kills: list[tuple[float, dict[str, list[int]]]] = []  # (when, committed offsets right after)
    before = {r.topic: [0] * PARTITIONS for r in routes}
    for share in KILLS_AT:
        proc = start_service(config, record_file, log, **env)
        runs.append((proc.pid, before))
        try:
            wait_until(
                lambda share=share: _settled(record_file) >= share * total,
                90,
                what=f"{share:.0%} of the records settled (log: {log})",
            )
        finally:
            at = kill(proc)
        before = offsets()  # also where the next run starts
        kills.append((at, before))
        events = lines(record_file)
        for route in routes:
            mine = [e for e in events if e["pid"] == proc.pid and e["route"] == route.name]
            route.reports.append(
                kill_report(
                    at,
                    mine,
                    route.where,
                    before[route.topic],
                    lag_bound=COMMIT_LAG_BOUND,
                    started_from=runs[-1][1][route.topic],
                )
            )

    proc = start_service(config, record_file, log, **env)
    runs.append((proc.pid, before))
    try:
        wait_until(
            lambda: _settled(record_file) >= BROKER_RESTART_AT * total,
            90,
            what=f"{BROKER_RESTART_AT:.0%} of the records settled (log: {log})",
        )
        down = time.monotonic()
        apache_kafka.restart(hard=True)
        broker_down = time.monotonic() - down
        wait_until(
            lambda: _settled_records(record_file) >= total,
            120,
            interval=0.2,
            what=f"every record settled (log: {log})",
        )
        # Nothing is held: every partition's commit reaches its end while the service runs. (Waiting
        # for this, not only for the last first delivery: records delivered again after the broker
        # restart may still be on their way then, and a stop abandons what has not started.)
        end_offsets = {
            r.topic: [
                max((o + 1 for q, o in r.where.values() if q == p), default=0)
                for p in range(PARTITIONS)
            ]
            for r in routes
        }
        wait_until(
            lambda: offsets() == end_offsets,
            60,
            interval=0.5,
            what=f"every partition committed to its end (log: {log})",
        )
        # Committed only once acknowledged: every dead letter there will be is there now.
        dead_letters = {r.topic: read_all(bootstrap, r.fail_topic) for r in routes}
        # A graceful stop: drains, commits, exits 0 (and moves no committed offset back).
        assert terminate(proc) == 0, f"SIGTERM should stop the service cleanly (log: {log})"
    finally:
        if proc.poll() is None:
            kill(proc)
    final = offsets()

    events = lines(record_file)
    run_of = {pid: i for i, (pid, _) in enumerate(runs)}
    print(
        f"\nchaos [{delivery}]: {total} records, {len(KILLS_AT)} SIGKILLs, broker down {broker_down:.1f} s "
        f"(hard restart), {time.monotonic() - began:.0f} s in all; commit lag bound {COMMIT_LAG_BOUND * 1000:.0f} ms"
    )
    for route in routes:
        mine = [e for e in events if e["route"] == route.name]
        starts: dict[int, list[int]] = {}  # seq -> the runs that started it, in order
        for e in mine:
            if e["ev"] == "start":
                starts.setdefault(e["seq"], []).append(run_of[e["pid"]])
        ended = {e["seq"] for e in mine if e["ev"] == "end"}
        dead = {e["seq"] for e in mine if e["ev"] == "dead"}
        produced = set(route.where)

        # None lost: each record handled, or dead-lettered and on the dead-letter topic.
        assert ended | dead == produced, (
            f"{route.name}: {len(produced - ended - dead)} records never settled"
        )
        assert ended.isdisjoint(dead)
        assert dead == {s for s in produced if s % DEAD_EVERY == DEAD_EVERY - 1}
        in_fail_topic = [int(m.value()) for m in dead_letters[route.topic]]
        assert set(in_fail_topic) == dead, (
            f"{route.name}: dead letters missing from {route.fail_topic}"
        )
        # Everything is committed at the end: nothing is left to deliver a fifth time.
        ends = end_offsets[route.topic]
        assert final[route.topic] == ends, (
            f"{route.name}: committed {final[route.topic]}, end {ends}"
        )

        # The commit rule: at each kill, every committed record had finished (or was dead-lettered).
        for k, (_at, offs) in enumerate(kills):
            # Settled by the killed run or one before it (by pid, not by time: the dying process may
            # log after `at`, which is taken just before the SIGKILL).
            settled_then = {e["seq"] for e in mine if e["ev"] != "start" and run_of[e["pid"]] <= k}
            early = [
                s
                for s, (p, o) in route.where.items()
                if o < offs[route.topic][p] and s not in settled_then
            ]
            assert not early, f"{route.name}: committed before it finished: {sorted(early)[:10]}"

        # Every repeated delivery is one the bound allows: a record started by a run that was killed
        # and started again by a later run was, at that kill, in flight, behind one in flight, or
        # committable for less than COMMIT_LAG_BOUND.
        unexplained = [(r.at, r.unexplained) for r in route.reports if r.unexplained]
        assert not unexplained, (
            f"{route.name}: committable longer than the bound before a kill: {unexplained}"
        )
        repeats_across_kills = repeats_in_run = 0
        for s, in_runs in starts.items():
            for a, b in zip(in_runs, in_runs[1:]):
                if a == b:
                    repeats_in_run += (
                        1  # the same process again: only a rebalance after the broker restart
                    )
                    assert a == len(runs) - 1, (
                        f"{route.name}: {s} delivered twice by run {a}, which saw no broker restart"
                    )
                    continue
                repeats_across_kills += 1
                assert s in route.reports[a].seqs, (
                    f"{route.name}: {s} at {route.where[s]} delivered again after kill {a + 1} although "
                    f"it was committed (committed then: {route.reports[a]})"
                )
        duplicates = sum(len(r) - 1 for r in starts.values())
        print(
            f"  {route.mode:<11} {len(produced)} records, {len(dead)} dead-lettered ({len(in_fail_topic)} dead "
            f"letters); {duplicates} repeated deliveries ({duplicates / len(produced):.1%}): "
            f"{repeats_across_kills} after the kills ("
            + ", ".join(
                f"{r.in_flight} in flight + {r.held} held + {r.lagging} lagging ≤{r.max_lag * 1000:.0f} ms"
                for r in route.reports
            )
            + f"), {repeats_in_run} after the broker restart"
        )
        assert repeats_across_kills <= sum(r.again for r in route.reports)
        # The rebalance drains what is in flight and keeps what finished (also when the restarted
        # broker refuses the commit): at most what was in flight is delivered again.
        in_flight = PARTITIONS if route.name == "sequential" else MAX_IN_FLIGHT
        assert repeats_in_run <= in_flight, (
            f"{route.name}: {repeats_in_run} delivered again after the broker restart"
        )

        # Order among first deliveries: per key (key-ordered), per partition (sequential).
        first: dict[int, int] = {}  # seq -> position of its first start line
        for i, e in enumerate(mine):
            if e["ev"] == "start":
                first.setdefault(e["seq"], i)
        if route.name in ("key_ordered", "sequential"):
            by: dict[object, list[int]] = {}
            for s in sorted(produced, key=lambda s: first[s]):
                p, o = route.where[s]
                by.setdefault(
                    p if route.name == "sequential" else f"K{(s - min(produced)) % KEYS}", []
                ).append(o)
            out_of_order = [k for k, offs in by.items() if offs != sorted(offs)]
            assert not out_of_order, (
                f"{route.name}: first deliveries out of order for {out_of_order[:5]}"
            )
