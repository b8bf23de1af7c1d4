"""Finding 9 of issue 10: after a SIGKILL, what is delivered again is bounded by what was in flight
plus what finished within COMMIT_LAG_BOUND, even while in-process handlers saturate the event loop
the proxy runs on (the commit used to wait for the fetch loop's turn on that loop)."""

from __future__ import annotations

import time
import uuid

import pytest
from confluent_kafka import Consumer, TopicPartition

from freedom.kafka.consumer.group import COMMIT_LAG_BOUND
from freedom.testing import free_port, kafka_config, wait_until, write_config
from tests.chaos.harness import (
    committable_since,
    count,
    kill,
    kill_report,
    lines,
    sampled_lag,
    start_service,
)
from tests.services.kafka_tools import produce

pytestmark = pytest.mark.serial  # timing bounds: run alone (scripts/test.sh)

PARTITIONS = 4


def test_commit_keeps_up_while_in_process_handlers_saturate_the_loop(
    apache_kafka, new_topic, tmp_path
):
    # The mode where it was worst: in-process, concurrent, 200 in flight; each handler keeps the
    # loop busy for 2 ms (parsing, computing), so the loop always has work.
    bootstrap = apache_kafka.bootstrap
    topic = new_topic(bootstrap, partitions=PARTITIONS)
    group = f"g-lag-{uuid.uuid4().hex[:8]}"
    total, kill_at = 12_000, 3_000
    delivered = produce(
        bootstrap,
        topic,
        [
            {"key": f"K{i}".encode(), "value": str(i).encode(), "partition": i % PARTITIONS}
            for i in range(total)
        ],
    )
    where = {int(m.value()): (m.partition(), m.offset()) for m in delivered}
    port = free_port()
    config = write_config(
        tmp_path / "conf",
        app={"listen_addr": f"127.0.0.1:{port}"},
        kafka=kafka_config(
            bootstrap,
            port,
            group_id=group,
            delivery="inprocess",
            initial_offset="earliest",
            mode="concurrent",
            max_in_flight=200,
            settings={"session.timeout.ms": 6000},
        ),
    )
    record_file, log = tmp_path / "records.jsonl", tmp_path / "service.log"
    # Reads the group's committed offsets (OffsetFetch; it does not join the group).
    reader = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False}
    )
    tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    samples: list[tuple[float, list[int]]] = []  # what a SIGKILL at that moment would leave behind
    proc = start_service(
        config, record_file, log, CHAOS_CONCURRENT=topic, MAX_LATENCY_MS="0", BUSY_MS="2"
    )
    try:

        def sample() -> bool:
            at = time.time()
            samples.append((at, [tp.offset for tp in reader.committed(tps, timeout=10)]))
            return count(record_file, "end") >= kill_at

        wait_until(sample, 120, interval=0.03, what=f"{kill_at} records handled (log: {log})")
    finally:
        at = kill(proc)
    try:
        offsets = [tp.offset for tp in reader.committed(tps, timeout=10)]
    finally:
        reader.close()
    events = lines(record_file)
    worst = sampled_lag(samples, committable_since(events, where))
    report = kill_report(at, events, where, offsets, lag_bound=COMMIT_LAG_BOUND)
    print(
        f"\ncommit lag over {len(samples)} samples: at most {worst * 1000:.0f} ms (bound "
        f"{COMMIT_LAG_BOUND * 1000:.0f} ms); SIGKILL after {kill_at} handled: {report.again} to deliver "
        f"again = {report.in_flight} in flight + {report.held} behind one in flight + {report.lagging} "
        f"finished and not committed yet (committable for at most {report.max_lag * 1000:.0f} ms)"
    )
    assert report.again > 0, "nothing to deliver again: the kill did not happen mid-run"
    assert worst <= COMMIT_LAG_BOUND, (
        f"a record stayed uncommitted {worst:.3f} s after it was committable"
    )
    assert not report.unexplained, (
        f"{len(report.unexplained)} records had been committable for more than {COMMIT_LAG_BOUND} s "
        f"(up to {report.max_lag:.3f} s) and will be delivered again"
    )
