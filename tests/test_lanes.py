"""Per-partition lanes (freedom/kafka/consumer/lanes.py) through the consumer group's sink API:
records dispatched, started by their topic's mode, settled with the source, drained on release.

The record source here is a stand-in for the port (sources/__init__.py: what a source offers the
group), the seam the test broker and the Kafka source implement; Kafka's own behaviour is tested
on Apache Kafka elsewhere (test_concurrency.py, test_rebalance.py, tests/semantics)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from typing import Any

import pytest

from freedom.kafka.consumer.delivery import EventRoute
from freedom.kafka.consumer.group import ConsumerGroup, TopicPlan
from freedom.kafka.consumer.sources import OffsetSource, Sink
from freedom.wire.batch import BatchSettings

TOPIC = "orders"


class Rec:
    """A fetched record, as the group reads it."""

    def __init__(self, partition: int, offset: int, key: bytes | None = None) -> None:
        self._p, self._o, self._k = partition, offset, key

    def topic(self) -> str:
        return TOPIC

    def partition(self) -> int:
        return self._p

    def offset(self) -> int:
        return self._o

    def key(self) -> bytes | None:
        return self._k

    def timestamp(self) -> tuple[int, int]:
        return (0, 0)


class StandInSource(OffsetSource):
    """The port, with no fetching of its own: the test dispatches records itself."""

    def __init__(self) -> None:
        super().__init__()
        self.paused: set[tuple[str, int]] = set()

    async def start(self, sink: Sink) -> None:
        self._loop = asyncio.get_running_loop()

    async def stop(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def alive(self) -> bool | None:
        return None

    def pause(self, tp: tuple[str, int]) -> None:
        self.paused.add(tp)

    def resume(self, tp: tuple[str, int]) -> None:
        self.paused.discard(tp)

    def room_freed(self) -> None:
        return None


def _group(
    handle: Callable[[Any, TopicPlan, asyncio.Event], Any], mode: str, max_in_flight: int = 500
) -> tuple[ConsumerGroup, StandInSource]:
    source = StandInSource()
    plan = TopicPlan(EventRoute(TOPIC, "/orders/{id}", "id"), TOPIC, mode, max_in_flight)
    return ConsumerGroup("g", source, {TOPIC: plan}, handle, drain_timeout=0.5), source


async def _until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.001)


async def test_sequential_records_of_a_partition_run_one_at_a_time_in_order():
    running: list[int] = []
    seen: list[tuple[int, int]] = []
    most = 0

    async def handle(record: Any, plan: TopicPlan, lost: asyncio.Event) -> bool:
        nonlocal most
        running.append(record.partition())
        most = max(most, running.count(record.partition()))
        await asyncio.sleep(0.001)
        seen.append((record.partition(), record.offset()))
        running.remove(record.partition())
        return True

    group, source = _group(handle, "sequential")
    await group.start()
    group.dispatch([Rec(p, o) for o in range(20) for p in (0, 1)])
    await _until(lambda: len(seen) == 40)
    assert most == 1
    assert [o for p, o in seen if p == 0] == list(range(20))
    assert [o for p, o in seen if p == 1] == list(range(20))
    assert source.ledger.take() == {(TOPIC, 0): 20, (TOPIC, 1): 20}


async def test_concurrent_records_of_a_topic_stay_within_max_in_flight():
    now = 0
    most = 0
    done = 0
    release = asyncio.Event()

    async def handle(record: Any, plan: TopicPlan, lost: asyncio.Event) -> bool:
        nonlocal now, most, done
        now += 1
        most = max(most, now)
        await release.wait()
        now -= 1
        done += 1
        return True

    group, source = _group(handle, "concurrent", max_in_flight=7)
    await group.start()
    group.dispatch([Rec(p, o) for o in range(30) for p in range(3)])
    await _until(lambda: now == 7)
    assert group.running == 7
    release.set()
    await _until(lambda: done == 90)
    assert most == 7
    assert source.ledger.take() == {(TOPIC, p): 30 for p in range(3)}


async def test_key_ordered_records_of_one_key_wait_for_each_other():
    order: list[tuple[bytes, int]] = []
    gates = {b"a": asyncio.Event(), b"b": asyncio.Event()}

    async def handle(record: Any, plan: TopicPlan, lost: asyncio.Event) -> bool:
        if record.offset() == 0:
            await gates[record.key()].wait()
        order.append((record.key(), record.offset()))
        return True

    group, source = _group(handle, "key-ordered")
    await group.start()
    group.dispatch([Rec(0, 0, b"a"), Rec(0, 1, b"a"), Rec(0, 2, b"c"), Rec(0, 3, b"a")])
    await _until(lambda: (b"c", 2) in order)
    assert order == [(b"c", 2)]  # the first "a" holds the other two back, not "c"
    gates[b"a"].set()
    await _until(lambda: len(order) == 4)
    assert [o for k, o in order if k == b"a"] == [0, 1, 3]
    assert source.ledger.take() == {(TOPIC, 0): 4}


@pytest.mark.parametrize("mode", ["sequential", "concurrent", "key-ordered"])
async def test_thousands_of_records_that_finish_at_once_run_without_recursion(mode):
    handled: list[int] = []

    async def handle(record: Any, plan: TopicPlan, lost: asyncio.Event) -> bool:
        handled.append(record.offset())
        return True

    group, source = _group(handle, mode)
    await group.start()
    before = len(asyncio.all_tasks())
    group.dispatch([Rec(0, o, b"same") for o in range(5000)])
    if sys.version_info >= (3, 12):  # eager: handled within dispatch, no task left behind
        assert len(handled) == 5000 and len(asyncio.all_tasks()) == before
    await _until(lambda: len(handled) == 5000)
    assert handled == list(range(5000))
    assert source.ledger.take() == {(TOPIC, 0): 5000}


async def test_release_drains_what_runs_and_abandons_it_at_the_deadline():
    started: list[int] = []
    finished: list[int] = []

    async def handle(record: Any, plan: TopicPlan, lost: asyncio.Event) -> bool:
        started.append(record.offset())
        if record.offset() == 1:
            await asyncio.Event().wait()  # never finishes: abandoned at the drain deadline
        await asyncio.sleep(0.01)
        finished.append(record.offset())
        return True

    group, source = _group(handle, "key-ordered")
    await group.start()
    # 0 and 1 run; 2 waits behind 1 (same key); 3 runs.
    group.dispatch([Rec(0, 0, b"x"), Rec(0, 1, b"y"), Rec(0, 2, b"y"), Rec(0, 3, b"z")])
    await _until(lambda: started == [0, 1, 3])
    await group.release([(TOPIC, 0)])
    assert sorted(finished) == [0, 3]  # drained
    assert 2 not in started  # its key's previous record was abandoned: left for the next owner
    assert group.running == 0 and group.lanes == {}
    assert source.ledger.take() == {(TOPIC, 0): 1}  # only 0 is committable (1 never finished)


async def test_a_partition_over_its_backlog_is_paused_and_resumed_at_half():
    gate = asyncio.Event()

    async def handle(record: Any, plan: TopicPlan, lost: asyncio.Event) -> bool:
        await gate.wait()
        return True

    group, source = _group(handle, "sequential")
    group.sequential_backlog = 10
    group.fetch_batch = 5
    await group.start()
    group.dispatch([Rec(0, o) for o in range(20)])
    assert (TOPIC, 0) in source.paused  # 19 kept >= 10 + 5
    gate.set()
    await _until(lambda: (TOPIC, 0) not in source.paused)
    await _until(lambda: source.ledger.open_count((TOPIC, 0)) == 0)


# ---------------------------------------------------------------------- batch topics: by chunks


def _batch_group(
    handle_batch: Callable[[list[Any], TopicPlan, asyncio.Event], Any],
    mode: str,
    max_records: int,
    max_in_flight: int = 500,
) -> tuple[ConsumerGroup, StandInSource]:
    async def one(record: Any, plan: TopicPlan, lost: asyncio.Event) -> bool:
        raise AssertionError(f"{record.offset()} went the per-record way")

    source = StandInSource()
    route = EventRoute(TOPIC, "/orders", None, BatchSettings(max_records=max_records))
    plan = TopicPlan(route, TOPIC, mode, max_in_flight)
    group = ConsumerGroup(
        "g", source, {TOPIC: plan}, one, handle_batch=handle_batch, drain_timeout=0.5
    )
    return group, source


def _lane_tasks() -> list[str]:
    """The lane tasks alive: `_run` (a record's) or `_run_chunk` (a chunk's)."""
    names = [getattr(t.get_coro(), "__qualname__", "") for t in asyncio.all_tasks()]
    return sorted(n.rpartition(".")[2] for n in names if n.startswith("Lane._run"))


class _Chunks:
    """A batch handler that holds each chunk until released, recording what it was given."""

    def __init__(self, answer: Callable[[Any], bool] = lambda r: True) -> None:
        self.calls: list[list[int]] = []  # the offsets of each chunk
        self.partitions: list[int] = []  # and its partition
        self.release = asyncio.Event()
        self.answer = answer

    async def __call__(self, records: list[Any], plan: TopicPlan, lost: asyncio.Event) -> Any:
        assert len({r.partition() for r in records}) == 1
        self.calls.append([r.offset() for r in records])
        self.partitions.append(records[0].partition())
        await self.release.wait()
        return [self.answer(r) for r in records]


@pytest.mark.parametrize("mode", ["sequential", "concurrent"])
async def test_a_batch_topic_runs_one_task_per_chunk_not_per_record(mode):
    chunks = _Chunks()
    group, source = _batch_group(chunks, mode, max_records=40)
    await group.start()
    before = len(asyncio.all_tasks())
    group.dispatch([Rec(0, o) for o in range(100)])  # one fetched batch of one partition
    await _until(lambda: len(chunks.calls) == (1 if mode == "sequential" else 3))
    if mode == "sequential":  # one chunk at a time, the next once it has settled
        assert chunks.calls == [list(range(40))] and group.running == 40
        assert _lane_tasks() == ["_run_chunk"]
        assert len(asyncio.all_tasks()) == before + 1
    else:  # as many chunks as the slots allow at once
        assert chunks.calls == [list(range(40)), list(range(40, 80)), list(range(80, 100))]
        assert group.running == 100
        assert _lane_tasks() == ["_run_chunk"] * 3
        assert len(asyncio.all_tasks()) == before + 3
    chunks.release.set()
    await _until(lambda: source.ledger.open_count((TOPIC, 0)) == 0 and group.running == 0)
    assert [o for c in chunks.calls for o in c] == list(range(100))
    assert all(len(c) <= 40 for c in chunks.calls)
    assert source.ledger.take() == {(TOPIC, 0): 100}


async def test_concurrent_chunks_take_the_free_slots_of_their_topic():
    chunks = _Chunks()
    group, source = _batch_group(chunks, "concurrent", max_records=4, max_in_flight=6)
    await group.start()
    group.dispatch([Rec(0, o) for o in range(5)] + [Rec(1, o) for o in range(5)])
    await _until(lambda: len(chunks.calls) == 3)
    # Partition 0: a chunk of 4 (max_records), one of 1 (the rest); partition 1 the last slot.
    assert list(zip(chunks.partitions, chunks.calls)) == [(0, [0, 1, 2, 3]), (0, [4]), (1, [0])]
    assert group.running == 6 and group._slots[TOPIC].free == 0
    chunks.release.set()  # the 4 slots of the first chunk go to partition 1, which waited
    await _until(lambda: group.running == 0 and source.ledger.open_count((TOPIC, 1)) == 0)
    assert list(zip(chunks.partitions, chunks.calls))[3] == (1, [1, 2, 3, 4])
    assert len(chunks.calls) == 4 and group._slots[TOPIC].free == 6
    assert source.ledger.take() == {(TOPIC, 0): 5, (TOPIC, 1): 5}


async def test_each_record_of_a_chunk_settles_with_its_own_answer():
    chunks = _Chunks(answer=lambda r: r.offset() != 2)  # 2 given up: the commit stops at it
    chunks.release.set()
    group, source = _batch_group(chunks, "sequential", max_records=5)
    await group.start()
    group.dispatch([Rec(0, o) for o in range(5)])
    await _until(lambda: group.running == 0)
    assert source.ledger.take() == {(TOPIC, 0): 2}
    source.settled((TOPIC, 0), 2)  # 3 and 4 settled with their own answer: the commit passes them
    assert source.ledger.take() == {(TOPIC, 0): 5}


async def test_a_chunk_whose_call_fails_is_left_uncommitted_and_the_next_runs(caplog):
    calls: list[list[int]] = []

    async def handle_batch(records: list[Any], plan: TopicPlan, lost: asyncio.Event) -> Any:
        calls.append([r.offset() for r in records])
        if len(calls) == 1:
            raise RuntimeError("a bug")
        return [True] * len(records)

    group, source = _batch_group(handle_batch, "sequential", max_records=3)
    await group.start()
    group.dispatch([Rec(0, o) for o in range(5)])
    await _until(lambda: len(calls) == 2 and group.running == 0)
    assert calls == [[0, 1, 2], [3, 4]]
    assert source.ledger.take() == {}  # 0..2 failed: nothing committable past them
    for o in (0, 1, 2):
        source.settled((TOPIC, 0), o)
    assert source.ledger.take() == {(TOPIC, 0): 5}  # 3 and 4 settled
    assert "a chunk of orders[0] failed" in caplog.text


async def test_a_drain_during_a_batch_abandons_it_uncommitted(caplog):
    chunks = _Chunks()  # never released: the chunk is still running at the drain deadline
    group, source = _batch_group(chunks, "concurrent", max_records=10)
    await group.start()
    group.dispatch([Rec(0, o) for o in range(4)])
    await _until(lambda: chunks.calls == [[0, 1, 2, 3]])
    await group.release([(TOPIC, 0)])
    assert group.running == 0 and group.lanes == {}
    assert _lane_tasks() == []  # cancelled
    assert source.ledger.take() == {}  # nothing of it committed: delivered again later
    assert "abandoned 4 in-flight deliveries" in caplog.text
    assert group._slots[TOPIC].free == 500  # its slots came back


async def test_a_key_ordered_batch_topic_keeps_a_task_per_record():
    handled: list[int] = []

    async def handle_batch(records: list[Any], plan: TopicPlan, lost: asyncio.Event) -> Any:
        raise AssertionError("same-key records must never share a chunk")

    async def handle(record: Any, plan: TopicPlan, lost: asyncio.Event) -> bool:
        handled.append(record.offset())
        return True

    group, source = _batch_group(handle_batch, "key-ordered", max_records=10)
    group.handle = handle
    await group.start()
    group.dispatch([Rec(0, o, b"k") for o in range(5)])
    await _until(lambda: len(handled) == 5)
    assert handled == list(range(5)) and source.ledger.take() == {(TOPIC, 0): 5}


def test_the_lanes_read_a_missing_timestamp_as_confluent_kafka_spells_it():
    import confluent_kafka

    from freedom.kafka.consumer import lanes

    assert lanes.TIMESTAMP_NOT_AVAILABLE == confluent_kafka.TIMESTAMP_NOT_AVAILABLE
