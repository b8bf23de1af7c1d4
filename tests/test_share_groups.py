"""Kafka share groups (KIP-932, `share_group = true`) on a real Apache Kafka 4.4: instances of a
service (tests/services/share_service.py, real `freedom run` subprocesses) in one share group read
one partition together; a slow record holds up nothing published after it, even in one instance
(its other fetcher goes on); a poison record goes through the retry topic to its dead letter without
holding the records behind it; an instance SIGKILLed (its records come back at once: the broker
sees its connections close) or hung by SIGSTOP (they come back when their locks expire) loses
nothing, and they come with `x-delivery-count` >= 2; a SIGTERMed one gives its records back. A
broker without share groups (the embedded one, Apache Kafka with share.version=0) is refused at
start-up with one line and exit code 2.

Every instance appends what its handler got to one JSON-lines file (key, instance, delivery count,
retry count, time); the assertions read that file.
The records are published in record batches of at most max_in_flight (tests/services/share_fleet.py
says why).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from freedom.testing import wait_until
from tests.kafka.broker import ApacheKafka
from tests.services.kafka_tools import create_topic, headers_of, read_all, wait_drained
from tests.services.share_fleet import Instance, ended, keys, lines, lock_of, publish, start

pytestmark = [pytest.mark.serial, pytest.mark.timeout(300)]


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[list[Instance]]:
    """The instances a test starts (appended to the list); any still running are stopped at the end."""
    started: list[Instance] = []
    yield started
    for instance in started:
        if instance.proc.poll() is None:
            instance.stop(signal.SIGKILL)


def test_three_instances_share_one_partition(apache_kafka, fleet, tmp_path):
    bootstrap, records = apache_kafka.bootstrap, 3000
    topic = create_topic(bootstrap, f"share-{uuid.uuid4().hex[:8]}")
    group = f"share-{uuid.uuid4().hex[:8]}"
    instances, record_file = start(
        fleet, 3, bootstrap, topic, group, tmp_path, {"max_in_flight": 20}, HANDLER_MS="20"
    )
    t0 = time.monotonic()
    publish(bootstrap, topic, keys(records))
    done = wait_until(
        lambda: len(e := ended(record_file)) == records and e,
        180,
        interval=0.2,
        what=f"all {records} records handled",
    )
    seconds = time.monotonic() - t0
    for instance in instances:
        instance.stop()
        instance.assert_clean()

    assert set(done) == set(keys(records))
    by_instance = Counter(entries[0]["inst"] for entries in done.values())
    print(f"[share] {records} records in {seconds:.1f} s by instance: {dict(by_instance)}")
    for instance in instances:
        assert by_instance[instance.name] >= records * 0.2, (
            f"instance {instance.name} handled {by_instance[instance.name]} of {records}: {by_instance}"
        )
    # Nothing failed and nobody died: each record was delivered once, as a first delivery.
    starts = Counter(line["key"] for line in lines(record_file) if line["ev"] == "start")
    assert max(starts.values()) == 1, [k for k, n in starts.items() if n > 1][:10]
    assert {line["dc"] for line in lines(record_file)} == {1}


def test_a_poison_record_is_retried_then_dead_lettered_without_blocking_the_partition(
    apache_kafka, fleet, tmp_path
):
    bootstrap, interval, behind = apache_kafka.bootstrap, 2.0, 100
    topic = create_topic(bootstrap, f"share-{uuid.uuid4().hex[:8]}")
    group = f"share-{uuid.uuid4().hex[:8]}"
    client = {"retry_count": 2, "retry_interval_sec": interval, "max_in_flight": 20}
    [instance], record_file = start(
        fleet, 1, bootstrap, topic, group, tmp_path, client, FAIL_ALWAYS_PREFIX="poison"
    )
    publish(bootstrap, topic, ["poison-1", *keys(behind)])  # the poison first, on the one partition

    fail_topic = f"fail-{topic}"

    def dead_letters() -> list[Any]:
        try:
            return read_all(bootstrap, fail_topic)
        except Exception:  # noqa: BLE001 - the dead-letter topic does not exist yet
            return []

    dead = wait_until(dead_letters, 90, interval=0.3, what=f"a dead letter on {fail_topic}")
    wait_until(lambda: len(ended(record_file)) == behind, 60, what="the records behind it handled")
    wait_drained(bootstrap, {f"r-{group}": [f"retry-{topic}"]}, 60, what="the retry topic drained")
    dead = read_all(bootstrap, fail_topic)
    instance.stop()
    instance.assert_clean()

    attempts = [line for line in lines(record_file) if line["key"] == "poison-1"]
    fails = [line for line in attempts if line["ev"] == "fail"]
    starts = [line for line in attempts if line["ev"] == "start"]
    assert [f["retry"] for f in fails] == [0, 1, 2], attempts
    for before, after in zip(fails, starts[1:], strict=False):
        waited = after["t"] - before["t"]
        assert interval - 0.3 <= waited <= interval + 15, f"retry after {waited:.2f} s: {attempts}"

    assert [d.key() for d in dead] == [b"poison-1"], [d.key() for d in dead]
    headers = headers_of(dead[0])
    print(f"[share] dead letter headers: {headers}")
    assert headers.get("x-freedom-status") == "500", headers
    assert "500" in headers.get("x-freedom-error", ""), headers
    dead_at = dead[0].timestamp()[1] / 1000

    handled = ended(record_file)
    assert set(handled) == set(keys(behind))
    assert all(len(v) == 1 and v[0]["dc"] == 1 for v in handled.values())
    last = max(v[0]["t"] for v in handled.values())
    print(
        f"[share] the {behind} records behind the poison done {dead_at - last:.2f} s before "
        f"its dead letter; attempts at {[round(s['t'] - starts[0]['t'], 2) for s in starts]} s"
    )
    assert last < dead_at, "the records behind the poison record waited for its dead letter"


def test_a_slow_record_holds_up_nothing_fetched_after_it_in_its_instance(
    apache_kafka, fleet, tmp_path
):
    """One instance: while a record's handler takes 15 s, the records published after it (in
    several producer batches, at several times) are fetched by its other fetcher and handled."""
    bootstrap, slow_sec, behind = apache_kafka.bootstrap, 15.0, 60
    topic = create_topic(bootstrap, f"share-{uuid.uuid4().hex[:8]}")
    group = f"share-{uuid.uuid4().hex[:8]}"
    client = {"max_in_flight": 10, "delivery_timeout_sec": 25}
    [instance], record_file = start(
        fleet,
        1,
        bootstrap,
        topic,
        group,
        tmp_path,
        client,
        SLOW_PREFIX="slow",
        SLOW_MS=str(int(slow_sec * 1000)),
    )
    publish(bootstrap, topic, ["slow-1"])

    def slow_started() -> list[dict[str, Any]]:
        return [x for x in lines(record_file) if x["key"] == "slow-1" and x["ev"] == "start"]

    [started] = wait_until(slow_started, 60, interval=0.1, what="the slow record started")
    names = keys(behind)
    for i in range(0, behind, 20):  # three publications, each in producer batches of 5
        publish(bootstrap, topic, names[i : i + 20], batch=5)
    wait_until(
        lambda: len(ended(record_file)) == behind + 1,
        slow_sec + 60,
        interval=0.2,
        what=f"the slow record and the {behind} behind it handled",
    )
    instance.stop()
    instance.assert_clean()

    done = ended(record_file)
    assert set(done) == {"slow-1", *names}
    [slow_end] = done.pop("slow-1")
    assert slow_end["t"] - started["t"] >= slow_sec - 0.5
    last = max(entries[0]["t"] for entries in done.values())
    print(
        f"[share] slow record {slow_end['t'] - started['t']:.1f} s; the {behind} published after "
        f"it done {last - started['t']:.1f} s after it started"
    )
    assert last < slow_end["t"], "records fetched after the slow one waited for it"
    # Nothing was given up or delivered twice: one start each, first deliveries.
    starts = Counter(line["key"] for line in lines(record_file) if line["ev"] == "start")
    assert max(starts.values()) == 1, [k for k, n in starts.items() if n > 1]
    assert {line["dc"] for line in lines(record_file)} == {1}


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSTOP], ids=["SIGKILL", "SIGSTOP"])
def test_an_instance_that_dies_or_hangs_loses_nothing(sig, apache_kafka, fleet, tmp_path):
    """SIGKILL: the kernel closes its connections. SIGSTOP: a hung instance, its connections
    open: its records come back only when their locks expire."""
    bootstrap, records = apache_kafka.bootstrap, 3000
    topic = create_topic(bootstrap, f"share-{uuid.uuid4().hex[:8]}")
    group = f"share-{uuid.uuid4().hex[:8]}"
    client = {"max_in_flight": 20, "delivery_timeout_sec": 3}
    instances, record_file = start(fleet, 3, bootstrap, topic, group, tmp_path, client)
    victim, survivors = instances[0], instances[1:]
    lock = lock_of(victim)
    publish(bootstrap, topic, keys(records))

    wait_until(
        lambda: sum(1 for e in ended(record_file).values() if e[0]["inst"] == victim.name) >= 200,
        120,
        what=f"instance {victim.name} to handle 200 records",
    )
    os.killpg(victim.proc.pid, sig)
    killed_at = time.time()
    done = wait_until(
        lambda: len(e := ended(record_file)) == records and e,
        lock + 120,
        interval=0.2,
        what=f"all {records} records handled",
    )
    victim.stop(signal.SIGKILL)
    for instance in survivors:
        instance.stop()
        instance.assert_clean()

    log = lines(record_file)
    assert set(done) == set(keys(records)), "records lost"
    victim_started = {x["key"] for x in log if x["inst"] == victim.name and x["ev"] == "start"}
    victim_ended = {x["key"] for x in log if x["inst"] == victim.name and x["ev"] == "end"}
    assert all(x["t"] <= killed_at for x in log if x["inst"] == victim.name)
    held = victim_started - victim_ended  # in its handler; it may also hold some not started yet
    redelivered: dict[str, dict[str, Any]] = {}
    for x in log:
        if x["dc"] >= 2:
            assert x["inst"] != victim.name and x["t"] > killed_at, x
            redelivered.setdefault(x["key"], x)
    # The victim held records (a fetch at most, and the last one's unsent acknowledgements), and
    # every one of them came again, to another instance, as a redelivery.
    assert 0 < len(redelivered) <= 2 * 20, sorted(redelivered)
    for key in held:
        assert key in redelivered, f"{key}, held by the stopped instance, never delivered again"
        assert any(e["inst"] != victim.name and e["dc"] >= 2 for e in done[key]), done[key]
    # The duplicates are only records the victim had: those it held, or finished unacknowledged.
    starts = Counter(x["key"] for x in log if x["ev"] == "start")
    duplicates = {k for k, n in starts.items() if n > 1}
    assert duplicates <= victim_started, sorted(duplicates - victim_started)[:10]
    assert all(starts[k] == 2 for k in duplicates), {k: starts[k] for k in duplicates}
    delays = sorted(x["t"] - killed_at for x in redelivered.values())
    print(
        f"[share] {sig.name}: victim had {len(held)} records in its handler (lock {lock:.0f} s); "
        f"{len(redelivered)} redelivered with x-delivery-count >= 2, {len(duplicates)} handled "
        f"twice; redelivery {delays[0]:.2f}..{delays[-1]:.2f} s after the signal"
    )
    assert delays[-1] <= lock + 15, f"redelivered {delays[-1]:.1f} s after the signal (lock {lock})"
    if sig == signal.SIGSTOP:  # its records were acquired at most a second or two before
        assert delays[0] >= lock - 2, (
            f"redelivered {delays[0]:.1f} s after, before the lock expired"
        )


def test_sigterm_gives_in_flight_records_to_the_others_at_once(apache_kafka, fleet, tmp_path):
    bootstrap, records = apache_kafka.bootstrap, 90
    topic = create_topic(bootstrap, f"share-{uuid.uuid4().hex[:8]}")
    group = f"share-{uuid.uuid4().hex[:8]}"
    client = {"max_in_flight": 5, "delivery_timeout_sec": 20, "drain_timeout_sec": 0.5}
    instances, record_file = start(
        fleet, 3, bootstrap, topic, group, tmp_path, client, HANDLER_MS="1500"
    )
    leaving = instances[0]
    lock = lock_of(leaving)  # at least 25 s: what the others must not wait for
    publish(bootstrap, topic, keys(records), batch=5)

    def in_flight() -> set[str]:
        log = [x for x in lines(record_file) if x["inst"] == leaving.name]
        started = {x["key"] for x in log if x["ev"] == "start"}
        return started - {x["key"] for x in log if x["ev"] == "end"}

    wait_until(lambda: len(in_flight()) >= 3, 60, what=f"instance {leaving.name} busy")
    stopped_at = time.time()
    leaving.stop(signal.SIGTERM)
    left_at = time.time()
    leaving.assert_clean()
    done = wait_until(
        lambda: len(e := ended(record_file)) == records and e,
        90,
        interval=0.2,
        what=f"all {records} records handled",
    )
    for instance in instances[1:]:
        instance.stop()
        instance.assert_clean()

    assert set(done) == set(keys(records))
    log = lines(record_file)
    # No failure, no crash, no lock expired: a second delivery is a record the leaving one gave back.
    again = [x for x in log if x["ev"] == "start" and x["dc"] >= 2]
    left_unfinished = {
        x["key"] for x in log if x["inst"] == leaving.name and x["ev"] == "start"
    } - {x["key"] for x in log if x["inst"] == leaving.name and x["ev"] == "end"}
    finished_late = [
        x["key"]
        for x in log
        if x["inst"] == leaving.name and x["ev"] == "end" and x["t"] > stopped_at + 0.5
    ]
    print(
        f"[share] SIGTERM: stop took {left_at - stopped_at:.1f} s; {len(again)} records given "
        f"back, started by the others {sorted(round(x['t'] - stopped_at, 1) for x in again)} s "
        f"after the SIGTERM (lock {lock:.0f} s); {len(finished_late)} finished by the leaving "
        f"instance after its drain deadline"
    )
    assert again, "the leaving instance gave no record back"
    assert left_unfinished <= {x["key"] for x in again}, left_unfinished
    for x in again:
        assert x["inst"] != leaving.name and x["t"] > stopped_at, x
        assert x["t"] - stopped_at < lock / 2, (
            f"{x['key']} delivered again {x['t'] - stopped_at:.1f} s after the SIGTERM: its lock "
            f"({lock:.0f} s) expired instead of the record being released"
        )


@pytest.fixture(scope="module")
def classic_kafka() -> Iterator[ApacheKafka]:
    """Apache Kafka 4.4 formatted with share groups off (feature share.version=0)."""
    kafka = ApacheKafka(features={"share.version": 0})
    kafka.start()
    yield kafka
    kafka.close()


@pytest.mark.parametrize("kind", ["embedded-own", "embedded", "classic"])
def test_a_broker_without_share_groups_is_refused_at_start_up(kind, request, tmp_path):
    if kind == "embedded-own":
        bootstrap = None  # no servers: the service runs its own embedded broker
    else:
        fixture = "embedded_kafka" if kind == "embedded" else "classic_kafka"
        bootstrap = request.getfixturevalue(fixture).bootstrap
    topic = f"share-{uuid.uuid4().hex[:8]}"
    if bootstrap is not None:
        create_topic(bootstrap, topic)
    group = f"share-{uuid.uuid4().hex[:8]}"
    instance = Instance(
        "0", tmp_path, bootstrap, topic, tmp_path / "records.jsonl", {"group_id": group}
    )
    try:
        rc = instance.proc.wait(60)
    except subprocess.TimeoutExpired:
        instance.stop(signal.SIGKILL)
        raise AssertionError(
            f"the service still runs 60 s after start on a broker without share groups ({kind}):\n"
            f"{instance.output()[-3000:]}"
        ) from None
    err = instance.err.read_text(errors="replace")
    print(f"[share] {kind}: rc {rc}, stderr: {err.strip()[-500:]}")
    assert rc == 2, instance.output()[-3000:]
    assert "Traceback" not in instance.output(), instance.output()[-3000:]
    refusals = [line for line in err.splitlines() if line.startswith("freedom: error:")]
    assert len(refusals) == 1 and "share group" in refusals[0].lower(), err[-3000:]


def test_a_deadline_the_brokers_longest_lock_cannot_cover_is_refused_at_start_up(
    apache_kafka, tmp_path
):
    # The broker's longest lock (group.share.max.record.lock.duration.ms) is 60 s: a 120 s
    # deadline would let a handler still run when another member gets its record.
    topic = f"share-{uuid.uuid4().hex[:8]}"
    create_topic(apache_kafka.bootstrap, topic)
    client = {"group_id": f"share-{uuid.uuid4().hex[:8]}", "delivery_timeout_sec": 120}
    instance = Instance("0", tmp_path, apache_kafka.bootstrap, topic, tmp_path / "r.jsonl", client)
    try:
        rc = instance.proc.wait(60)
    except subprocess.TimeoutExpired:
        instance.stop(signal.SIGKILL)
        raise AssertionError(f"it started:\n{instance.output()[-3000:]}") from None
    err = instance.err.read_text(errors="replace")
    refusals = [line for line in err.splitlines() if line.startswith("freedom: error:")]
    assert rc == 2 and len(refusals) == 1, err[-3000:]
    assert "refused an acquisition lock of 125000 ms" in refusals[0], refusals[0]
    assert "lower delivery_timeout_sec" in refusals[0]
    assert "Traceback" not in instance.output()
