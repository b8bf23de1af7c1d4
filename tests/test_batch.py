"""Batch delivery (listen_event(..., batch=)): batches of at most max_records, per-record outcomes
(ok committed, retry via retry-T, dead-letter with its reason, drop), and the commit rule across
batches, over HTTP/1.1 and in-process, on Apache Kafka. Plus the answer rule on its own, and on the
test broker: a batch's records wait in one task, and their outcomes are those of the per-record
path."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest

import freedom
from freedom.kafka.consumer.batching import results_of
from freedom.kafka.consumer.delivery import DeliveryResult, RawAnswer
from freedom.kafka.consumer.observer import ProxyObserver
from freedom.testing import (
    ServiceThread,
    TestBroker,
    free_port,
    kafka_config,
    wait_until,
    write_config,
)
from tests.services.kafka_tools import committed, headers_of, produce, read_all, wait_drained
from tests.services.scrape import in_flight


class _Seen:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.batches: list[list[dict[str, Any]]] = []

    def add(self, batch: freedom.Batch) -> None:
        with self.lock:
            self.batches.append(
                [
                    {
                        "key": (r.key or b"").decode(),
                        "retry": r.retry_count,
                        "offset": r.offset,
                        "topic": r.topic,
                        "value": r.data,
                        "action": r.header("x-action"),
                    }
                    for r in batch.records
                ]
            )

    def records(self) -> list[dict[str, Any]]:
        with self.lock:
            return [r for b in self.batches for r in b]


def _service(
    tmp_path: Path,
    bootstrap: str,
    topic: str,
    seen: _Seen,
    gate: threading.Event,
    delivery: str,
    group: str,
    *,
    http2: bool = False,
) -> ServiceThread:
    class OrderController:
        async def post_orders(self, batch: freedom.Batch) -> dict[str, Any]:
            seen.add(batch)
            for record in batch.records:
                key = (record.key or b"").decode()
                if key == "K-SLOW":
                    while not gate.is_set():  # holds its whole batch: the commit must wait for it
                        await asyncio.sleep(0.05)
                elif key == "K-RETRY" and record.retry_count == 0:
                    batch.retry(record, "stock service down")
                elif key == "K-DEAD":
                    batch.dead_letter(record, "amount must be positive")
                elif key == "K-DROP":
                    batch.drop(record, "duplicate")
            return batch.answer()

    def prepare(initiator: freedom.Initiator) -> None:
        initiator.bind_controller("/shop", OrderController)
        initiator.listen_event(
            topic,
            "OrderController.post_orders",
            batch=freedom.BatchSettings(max_records=5, max_wait_ms=50),
        )

    port = free_port()
    write_config(
        tmp_path,
        app={"listen_addr": f"127.0.0.1:{port}"},
        kafka=kafka_config(
            bootstrap,
            port,
            group_id=group,
            delivery=delivery,
            retry_group_id=f"r-{group}",
            retry_count=1,
            retry_interval_sec=0.5,
            mode="concurrent",
            max_in_flight=50,
            settings={"session.timeout.ms": 6000},
        )
        | (
            {
                "consumer": {
                    "open": True,
                    "proxy_addr": f"http://127.0.0.1:{port}",
                    "proxy_http2": True,
                }
            }
            if http2
            else {}
        ),
    )
    return ServiceThread(freedom.Application(config_dir=tmp_path, prepare=[prepare]))


def test_batches_settle_each_record_on_its_own(apache_kafka, new_topic, tmp_path, delivery):
    bootstrap = apache_kafka.bootstrap
    topic = new_topic(bootstrap, 2)  # the records on partition 0; partition 1 for the sentinel
    seen, gate = _Seen(), threading.Event()
    group = f"g-{uuid.uuid4().hex[:8]}"
    plain = [f"K{i:02d}" for i in range(17)]
    with _service(tmp_path, bootstrap, topic, seen, gate, delivery, group) as svc:
        [slow] = produce(
            bootstrap, topic, [{"key": b"K-SLOW", "value": b'{"n": -1}', "partition": 0}]
        )
        wait_until(
            lambda: any(r["key"] == "K-SLOW" for r in seen.records()),
            20,
            what="the slow record's batch",
        )
        keys = plain[:8] + ["K-RETRY", "K-DEAD", "K-DROP"] + plain[8:]
        sent = produce(
            bootstrap,
            topic,
            [
                {
                    "key": k.encode(),
                    "value": b'{"n": 1}',
                    "headers": [("x-action", b"buy")],
                    "partition": 0,
                }
                for k in keys
            ],
        )
        end = sent[-1].offset() + 1
        wait_until(
            lambda: (
                {r["key"] for r in seen.records()} >= set(keys)
                and any(r["key"] == "K-RETRY" and r["retry"] == 1 for r in seen.records())
            ),
            30,
            what="every record, and K-RETRY again from the retry topic",
        )
        # Every later record settled (retried, dead-lettered, dropped or done), but K-SLOW has not;
        # then a commit of the group went out (the sentinel's, on partition 1): it would have
        # carried partition 0 past K-SLOW, but the commit stays at it.
        wait_until(
            lambda: in_flight(svc.base_url, group) == 1, 20, what="every record but K-SLOW settled"
        )
        produce(bootstrap, topic, [{"key": b"K-SENTINEL", "value": b'{"n": 1}', "partition": 1}])
        wait_until(
            lambda: committed(bootstrap, group, topic, 2)[1] == 1,
            20,
            what="the sentinel's commit",
        )
        assert committed(bootstrap, group, topic) == [slow.offset()]
        gate.set()
        wait_until(
            lambda: committed(bootstrap, group, topic) == [end], 20, what="the commit to the end"
        )
        # Committed only once acknowledged on their topics: every retry record and dead letter
        # there will be is there now.
        wait_drained(
            bootstrap, {f"r-{group}": [f"retry-{topic}"]}, 20, what="the retry record settled"
        )
        dead = read_all(bootstrap, f"fail-{topic}")
        retries = read_all(bootstrap, f"retry-{topic}")
    batches = seen.batches
    assert all(1 <= len(b) <= 5 for b in batches), [len(b) for b in batches]
    assert any(len(b) > 1 for b in batches), "records were never batched"
    main = [(r["key"], r["retry"]) for r in seen.records() if r["topic"] == topic]
    assert sorted(main) == sorted((k, 0) for k in ["K-SLOW", *keys, "K-SENTINEL"]), (
        "each record once from the main topic"
    )
    again = [r for r in seen.records() if r["topic"] == f"retry-{topic}"]
    assert [(r["key"], r["retry"], r["value"], r["action"]) for r in again] == [
        ("K-RETRY", 1, b'{"n": 1}', "buy")
    ]
    assert [r.key() for r in retries] == [b"K-RETRY"]
    assert [r.key() for r in dead] == [b"K-DEAD"]
    h = headers_of(dead[0])
    assert (
        h["x-freedom-error"] == "batch answer, handler asked: dead-letter (amount must be positive)"
    )
    assert "x-freedom-status" not in h  # the batch request's 200 is not this record's outcome
    assert h["x-action"] == "buy"
    assert h["x-freedom-original-offset"] == str(sent[keys.index("K-DEAD")].offset())
    r = headers_of(retries[0])
    assert r["x-freedom-error"] == "batch answer, handler asked: retry (stock service down)"
    assert "x-freedom-status" not in r


def test_handler_helper_and_the_answer_rule():
    batch = freedom.Batch.model_validate(
        {
            "topic": "t",
            "records": [
                {
                    "id": "0-1",
                    "event_id": "k1",
                    "value": '{"a": 1}',
                    "headers": [["x-message-key", "k1"], ["x-a", "b"]],
                },
                {
                    "id": "0-2",
                    "event_id": "~b64.AP8",
                    "value": "AP8=",
                    "value_encoding": "base64",
                    "headers": [["x-freedom-key", "AP8"]],
                },
            ],
        }
    )
    one, two = batch.records
    assert (
        one.load() == {"a": 1}
        and one.parse(dict) == {"a": 1}
        and one.key == b"k1"
        and one.header("X-A") == "b"
    )
    assert two.data == b"\x00\xff" and two.key == b"\x00\xff"
    batch.dead_letter(two, "bad")
    answer = batch.answer()
    assert answer == {
        "statuses": [
            {"id": "0-1", "status": "ok"},
            {"id": "0-2", "status": "dead-letter", "reason": "bad"},
        ]
    }
    ids = ["0-1", "0-2", "0-3"]
    ok = RawAnswer(
        200,
        None,
        None,
        json.dumps({"statuses": [*answer["statuses"], {"id": "0-3", "status": "bogus"}]}).encode(),
    )
    r1, r2, r3 = results_of(ok, ids)
    assert r1.ok and r2.outcome == "dead-letter" and r2.reason == "bad"
    assert r2.status is None and r2.describe() == "batch answer, handler asked: dead-letter (bad)"
    assert not r3.ok and "bogus" in (r3.error or "")
    # A whole-request failure counts for every record; so does an answer that is not the envelope.
    assert all(
        not r.ok and r.status == 503 for r in results_of(RawAnswer(503, None, None, b""), ids)
    )
    assert all(r.outcome == "retry" for r in results_of(RawAnswer(200, "retry", "later", b""), ids))
    assert all(not r.ok for r in results_of(RawAnswer(200, None, None, b"<html>"), ids))
    assert all(not r.ok for r in results_of(DeliveryResult(error="ConnectError"), ids))
    # A record the statuses leave out is retried; an empty 2xx answer is ok for all.
    assert [
        r.ok
        for r in results_of(
            RawAnswer(200, None, None, b'{"statuses": [{"id": "0-2", "status": "ok"}]}'), ids
        )
    ] == [False, True, False]
    assert all(r.ok for r in results_of(RawAnswer(204, None, None, b""), ids))
    with pytest.raises(freedom.RouteError):
        freedom.BatchSettings(max_records=0)


def test_sequential_batches_hold_one_partition_in_offset_order(apache_kafka, new_topic, tmp_path):
    bootstrap = apache_kafka.bootstrap
    topic = new_topic(bootstrap, partitions=2)
    group = f"g-{uuid.uuid4().hex[:8]}"
    sent = produce(
        bootstrap,
        topic,
        [{"key": f"S{i:02d}".encode(), "value": b"{}", "partition": i % 2} for i in range(24)],
    )
    seen = _Seen()

    class SeqController:
        async def post_seq(self, batch: freedom.Batch) -> dict[str, Any]:
            seen.add(batch)
            return batch.answer()

    def prepare(initiator: freedom.Initiator) -> None:
        initiator.bind_controller("/seq", SeqController)
        initiator.listen_event(
            topic,
            "SeqController.post_seq",
            batch=freedom.BatchSettings(max_records=4, max_wait_ms=20),
        )

    port = free_port()
    write_config(
        tmp_path,
        app={"listen_addr": f"127.0.0.1:{port}"},
        kafka=kafka_config(
            bootstrap,
            port,
            group_id=group,
            delivery="inprocess",
            initial_offset="earliest",
            settings={"session.timeout.ms": 6000},
        ),
    )
    with ServiceThread(freedom.Application(config_dir=tmp_path, prepare=[prepare])):
        wait_until(
            lambda: committed(bootstrap, group, topic, 2) == [12, 12],
            30,
            what="the commits to the end",
        )
    assert sorted(r["key"] for r in seen.records()) == sorted(m.key().decode() for m in sent)
    partition_of = {m.key().decode(): m.partition() for m in sent}
    for batch in seen.batches:
        assert 1 <= len(batch) <= 4
        assert len({partition_of[r["key"]] for r in batch}) == 1, "one partition per batch"
        offsets = [r["offset"] for r in batch]
        assert offsets == list(range(offsets[0], offsets[0] + len(offsets))), "in offset order"
    assert any(len(b) > 1 for b in seen.batches)
    for p in (0, 1):  # batch after batch, each partition's records came in order, once
        assert [
            r["offset"] for b in seen.batches for r in b if partition_of[r["key"]] == p
        ] == list(range(12))


def test_batches_over_http2_cleartext(apache_kafka, new_topic, tmp_path):
    bootstrap = apache_kafka.bootstrap
    topic = new_topic(bootstrap)
    seen, gate = _Seen(), threading.Event()
    gate.set()
    group = f"g-{uuid.uuid4().hex[:8]}"
    keys = ["K-DEAD", *[f"H{i}" for i in range(7)]]
    with _service(tmp_path, bootstrap, topic, seen, gate, "http", group, http2=True):
        sent = produce(bootstrap, topic, [{"key": k.encode(), "value": b"{}"} for k in keys])
        wait_until(
            lambda: committed(bootstrap, group, topic) == [sent[-1].offset() + 1],
            30,
            what="the commits",
        )
        dead = read_all(bootstrap, f"fail-{topic}")  # committed once acknowledged: there
    assert sorted(r["key"] for r in seen.records()) == sorted(keys)
    assert [d.key() for d in dead] == [b"K-DEAD"] and "amount must be positive" in headers_of(
        dead[0]
    )["x-freedom-error"]


def test_a_batch_killed_before_its_answer_is_delivered_again(apache_kafka, new_topic, tmp_path):
    import os
    import signal
    import subprocess
    import sys

    bootstrap = apache_kafka.bootstrap
    topic = new_topic(bootstrap)
    group = f"k-{uuid.uuid4().hex[:8]}"
    port = free_port()
    config = write_config(
        tmp_path / "conf",
        app={"listen_addr": f"127.0.0.1:{port}"},
        kafka=kafka_config(
            bootstrap,
            port,
            group_id=group,
            mode="concurrent",
            settings={"session.timeout.ms": 6000},
        ),
    )
    records, log = tmp_path / "records.jsonl", tmp_path / "service.log"

    def start(**env: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "freedom",
                "run",
                "batch_service:app",
                "--config",
                str(config),
            ],
            cwd=Path(__file__).parent / "services",
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
            env={**os.environ, "RECORD_FILE": str(records), "EVENT_TOPIC": topic, **env},
            start_new_session=True,
        )

    def got() -> list[dict[str, Any]]:
        return [json.loads(x) for x in records.read_text().splitlines()] if records.exists() else []

    proc = start(HANG_AFTER_RECORD="1")
    try:
        wait_until(
            lambda: log.exists() and "assigned" in log.read_text(),
            60,
            what=f"the group joined (log: {log})",
        )
        keys = [f"B{i}" for i in range(6)]
        produce(bootstrap, topic, [{"key": k.encode(), "value": b"{}"} for k in keys])
        wait_until(lambda: len(got()) == 6, 30, what="the batch received")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    assert committed(bootstrap, group, topic)[0] <= 0, (
        "nothing of the unanswered batch is committed"
    )
    proc = start()
    try:
        wait_until(lambda: len(got()) >= 12, 60, what=f"the batch delivered again (log: {log})")
        wait_until(
            lambda: committed(bootstrap, group, topic) == [6], 20, what="the commit to the end"
        )
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        code = proc.wait(30)
    assert code == 0
    lines = got()
    assert (
        sorted(r["key"] for r in lines[6:]) == sorted(keys) and len({r["pid"] for r in lines}) == 2
    )


# ---------------------------------------------------------------------- on the test broker

_TB_TOPIC = "tb-orders"
#: Headers whose value is the time of the run (or the span it ran in), not the record's path.
_TIMED = {"x-freedom-first-failure-time", "x-freedom-failed-at", "traceparent"}


def _broker_app(
    tmp_path: Path, seen: _Seen, on_batch: Any, max_records: int = 50
) -> freedom.Application:
    class OrderController:
        async def post_orders(self, batch: freedom.Batch) -> dict[str, Any]:
            seen.add(batch)
            await on_batch(batch)
            return batch.answer()

    def prepare(initiator: freedom.Initiator) -> None:
        initiator.bind_controller("/shop", OrderController)
        initiator.listen_event(
            _TB_TOPIC,
            "OrderController.post_orders",
            batch=freedom.BatchSettings(max_records=max_records, max_wait_ms=20),
        )

    tmp_path.mkdir(parents=True, exist_ok=True)
    return freedom.Application(config_dir=tmp_path, prepare=[prepare])


def _lane_tasks() -> list[str]:
    """The lane tasks alive: `_run` (one per record) or `_run_chunk` (one per chunk)."""
    names = [getattr(t.get_coro(), "__qualname__", "") for t in asyncio.all_tasks()]
    return sorted(n.rpartition(".")[2] for n in names if n.startswith("Lane._run"))


async def _until(condition: Any, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.001)


@pytest.mark.parametrize("mode", ["sequential", "concurrent"])
async def test_a_batch_of_records_is_one_task_on_the_test_broker(tmp_path, mode):
    seen, hold = _Seen(), asyncio.Event()

    async def on_batch(batch: freedom.Batch) -> None:
        await hold.wait()

    app = _broker_app(tmp_path, seen, on_batch, max_records=50)
    async with TestBroker(app, mode=mode, max_in_flight=100) as broker:
        broker.create_topic(_TB_TOPIC)
        await broker.settle()
        before = len(asyncio.all_tasks())
        for i in range(50):
            broker.publish(_TB_TOPIC, b'{"n": 1}', key=f"K{i:02d}")
        await _until(lambda: len(seen.records()) == 50)
        # The 50 records wait for the batch's answer in one task (not 50), whose one call into
        # the Batcher holds a future per record.
        assert [len(b) for b in seen.batches] == [50]
        assert _lane_tasks() == ["_run_chunk"]
        assert len(asyncio.all_tasks()) - before <= 3  # the chunk, the batch's request, its handler
        hold.set()
        await broker.settle()
        assert broker.committed(_TB_TOPIC) == 50
        assert _lane_tasks() == []


_KEYS = ["K-OK1", "K-RETRY", "K-DEAD", "K-DROP", "K-OK2"]


async def _outcomes_run(
    tmp_path: Path, retry_count: int, mode: str, caplog: pytest.LogCaptureFixture
) -> dict[str, Any]:
    """Every per-record outcome in one batch; what it led to (log lines, retry and dead-letter
    records, metric counts)."""
    seen = _Seen()
    attempts: dict[str, int] = {}

    async def on_batch(batch: freedom.Batch) -> None:
        for record in batch.records:
            key = (record.key or b"").decode()
            attempts[key] = attempts.get(key, 0) + 1
            if key == "K-RETRY" and attempts[key] == 1:  # once: then ok
                batch.retry(record, "stock service down")
            elif key == "K-DEAD":
                batch.dead_letter(record, "amount must be positive")
            elif key == "K-DROP":
                batch.drop(record, "duplicate")

    caplog.clear()
    counts = _metric_counts()
    app = _broker_app(tmp_path, seen, on_batch)
    async with TestBroker(
        app, mode=mode, retry_count=retry_count, retry_interval_sec=45, max_in_flight=100
    ) as broker:
        broker.create_topic(_TB_TOPIC)
        await broker.settle()
        for key in _KEYS:
            broker.publish(_TB_TOPIC, b'{"n": 1}', key=key, headers={"x-action": "buy"})
        await broker.settle()
        assert broker.committed(_TB_TOPIC) == len(_KEYS)
        out = {
            "seen": sorted((r["key"], r["retry"], r["topic"]) for r in seen.records()),
            "retries": [
                (r.key(), {k: v for k, v in r.headers_dict().items() if k not in _TIMED})
                for r in broker.retries(_TB_TOPIC)
            ],
            "dead": [
                (r.key(), {k: v for k, v in r.headers_dict().items() if k not in _TIMED})
                for r in broker.dead_letters(_TB_TOPIC)
            ],
        }
    out["logs"] = sorted(
        (r.levelname, r.getMessage())
        for r in caplog.records
        if r.name.startswith("freedom.kafka") and r.levelno >= 20
    )
    after = _metric_counts()
    out["metrics"] = {k: v - counts.get(k, 0) for k, v in after.items() if v != counts.get(k, 0)}
    return out


def _metric_counts() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The counts of the proxy's counters and histograms (not their durations)."""
    from prometheus_client import REGISTRY

    counts = {}
    for family in REGISTRY.collect():
        for s in family.samples:
            if s.name.endswith(("_total", "_count")) and _TB_TOPIC in str(s.labels):
                counts[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return counts


@pytest.mark.parametrize(("retry_count", "mode"), [(1, "concurrent"), (0, "sequential")])
async def test_per_record_outcomes_in_a_batch_go_where_they_went(
    tmp_path, retry_count, mode, caplog, monkeypatch
):
    caplog.set_level("INFO")
    chunked = await _outcomes_run(tmp_path / "chunked", retry_count, mode, caplog)
    # The same records the per-record way (each record its own task into the Batcher, as with
    # spans recorded): the same log lines, retry and dead-letter records, and metric counts.
    with monkeypatch.context() as m:
        m.setattr(ProxyObserver, "around_batch", lambda self, handle_batch: None)
        alone = await _outcomes_run(tmp_path / "alone", retry_count, mode, caplog)
    assert chunked == alone
    assert [k for k, _ in chunked["dead"]] == [b"K-DEAD"]
    [(_, dead)] = chunked["dead"]
    assert (
        dead["x-freedom-error"]
        == "batch answer, handler asked: dead-letter (amount must be positive)"
    )
    assert dead["x-action"] == "buy" and "x-freedom-status" not in dead
    logs = "\n".join(m for _, m in chunked["logs"])
    assert "dropped" in logs and "duplicate" in logs
    if retry_count:  # via the retry topic, then delivered again from it
        [(key, retry)] = chunked["retries"]
        assert key == b"K-RETRY" and retry["x-retry-count"] == "1"
        assert retry["x-freedom-error"] == "batch answer, handler asked: retry (stock service down)"
        assert ("K-RETRY", 1, f"retry-{_TB_TOPIC}") in chunked["seen"]
    else:  # delivered again in memory, alone, after its backoff
        assert chunked["retries"] == []
        assert chunked["seen"].count(("K-RETRY", 0, _TB_TOPIC)) == 2
        assert "delivering again in 0.5 s" in logs
    assert any("consumed" in name for name, _ in chunked["metrics"]), chunked["metrics"]


async def test_a_record_of_a_batch_that_keeps_failing_holds_back_no_other_record(tmp_path):
    # retry_count = 0: a failing record is delivered again in memory, with backoff, for ever. The
    # records of its batch that succeeded are committed meanwhile, up to it (never past it).
    seen = _Seen()
    held = asyncio.Event()

    async def on_batch(batch: freedom.Batch) -> None:
        for record in batch.records:
            if record.key == b"K2":
                held.set()
                batch.retry(record, "always down")

    app = _broker_app(tmp_path, seen, on_batch, max_records=10)
    async with TestBroker(app, mode="sequential", retry_count=0, partitions=1) as broker:
        broker.create_topic(_TB_TOPIC, partitions=1)
        await broker.settle()
        for i in range(5):
            broker.publish(_TB_TOPIC, b'{"n": 1}', key=f"K{i}")
        await _until(held.is_set)
        await _until(lambda: broker.committed(_TB_TOPIC) == 2)  # K0 and K1, not K2 and after
        await _until(lambda: sum(1 for r in seen.records() if r["key"] == "K2") >= 2)
        assert broker.committed(_TB_TOPIC) == 2
        assert _lane_tasks() == ["_run"]  # only K2 goes on, in a task of its own
