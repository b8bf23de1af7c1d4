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
