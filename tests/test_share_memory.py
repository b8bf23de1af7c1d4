"""The test broker's share groups (freedom/testing/memory_share.py, share_partitions.py): what a
Kafka share group does (KIP-932), on the simulated clock, through the consumer core's port:
consumer groups (group.py) on MemoryShareSource members, as the proxy runs them, with handlers the
tests control. A service with `share_group = true` end to end: test_share_memory_service.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

import freedom
from freedom.kafka.admin import ShareGroupsUnavailable
from freedom.kafka.consumer.delivery import EventRoute
from freedom.kafka.consumer.group import ConsumerGroup, TopicPlan
from freedom.kafka.consumer.sources import ShareTerms
from freedom.testing import TestBroker
from freedom.testing.memory_clients import MemoryClients
from freedom.testing.memory_share import MemoryShareSource

TOPIC = "orders"
GROUP = "g"
Handle = Callable[[Any, TopicPlan, asyncio.Event], Awaitable[bool]]


def member(
    broker: TestBroker,
    handle: Handle,
    *,
    max_records: int = 10,
    max_in_flight: int = 500,
    lock_sec: float = 10.0,
    group: str = GROUP,
    initial_offset: str = "earliest",
) -> ConsumerGroup:
    """One member of share group `group` reading TOPIC, as a proxy makes it (clients.source)."""
    source = MemoryClients(broker).source(
        group,
        {},
        [TOPIC],
        initial_offset=initial_offset,
        drain_timeout=0.5,
        share=ShareTerms(lock_sec=lock_sec, max_records=max_records),
    )
    assert isinstance(source, MemoryShareSource) and source.shared
    plan = TopicPlan(EventRoute(TOPIC, "/o/{id}", "id"), TOPIC, "concurrent", max_in_flight, True)
    return ConsumerGroup(group, source, {TOPIC: plan}, handle, drain_timeout=0.5)


def src(group: ConsumerGroup) -> MemoryShareSource:
    assert isinstance(group.source, MemoryShareSource)
    return group.source


async def until(condition: Callable[[], object], what: str, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.001)


async def rounds(group: ConsumerGroup, n: int = 3) -> None:
    """Until the member's fetch loop began `n` more rounds (it had its chances to fetch)."""
    for _ in range(n):
        seen = src(group).last_round
        await until(lambda seen=seen: src(group).last_round != seen, "a fetch round")


def publish(broker: TestBroker, n: int, partitions: int = 1) -> None:
    broker.create_topic(TOPIC, partitions)
    for i in range(n):
        broker.publish(TOPIC, f"v{i}", key=f"k{i}", partition=i % partitions)


async def test_members_share_the_records_each_to_one_member_and_fetch_only_when_all_acked():
    broker = TestBroker(partitions=2)
    publish(broker, 12, partitions=2)
    calls: list[tuple[str, int, int, int | None]] = []
    started: set[str] = set()
    both = asyncio.Event()

    def handler(name: str) -> Handle:
        async def handle(record: Any, plan: TopicPlan, lost: asyncio.Event) -> bool:
            calls.append((name, record.partition(), record.offset(), record.delivery_count()))
            started.add(name)
            if len(started) == 2:
                both.set()
            await both.wait()  # the first fetch of each member waits for the other's
            return True

        return handle

    a = member(broker, handler("a"), max_records=3)
    b = member(broker, handler("b"), max_records=3)
    await a.start()
    await until(lambda: len(calls) == 3, "a's first fetch")
    await rounds(a)
    assert len(calls) == 3 and src(a).open_count((TOPIC, 0)) + src(a).open_count((TOPIC, 1)) == 3
    await b.start()
    await broker.settle()
    assert sorted((p, o) for _, p, o, _ in calls) == sorted((i % 2, i // 2) for i in range(12))
    assert {n for n, *_ in calls} == {"a", "b"} and all(c == 1 for *_, c in calls)
    assert sum(src(m).acknowledgements[(TOPIC, "accept")] for m in (a, b)) == 12
    assert sum(src(m).delivery_counts[(TOPIC, 1)] for m in (a, b)) == 12
    share = broker.share_group(GROUP)
    assert all(share.record_state(TOPIC, i % 2, i // 2) == ("acknowledged", 1) for i in range(12))
    assert share.members == [src(a), src(b)]
    await a.stop()
    await b.stop()
    assert share.members == [] and broker.committed(TOPIC, group=GROUP) is None


async def test_a_member_fetches_again_only_once_every_record_of_its_last_fetch_is_acked():
    broker = TestBroker()
    publish(broker, 5)
    gates = {o: asyncio.Event() for o in range(5)}
    got: list[int] = []

    async def handle(record: Any, plan: TopicPlan, lost: asyncio.Event) -> bool:
        got.append(record.offset())
        await gates[record.offset()].wait()
        return True

    g = member(broker, handle, max_records=2)
    await g.start()
    await until(lambda: got == [0, 1], "the first fetch")
    gates[0].set()
    await until(lambda: src(g).open_count((TOPIC, 0)) == 1, "offset 0 accepted")
    await rounds(g)
    assert got == [0, 1]  # one record of the fetch is still held: no fetch
    gates[1].set()
    await until(lambda: got == [0, 1, 2, 3], "the second fetch")
    for gate in gates.values():
        gate.set()
    await broker.settle()
    assert got == [0, 1, 2, 3, 4] and src(g).acknowledgements[(TOPIC, "accept")] == 5
    await g.stop()


async def test_a_released_record_is_delivered_again_with_delivery_count_2():
    broker = TestBroker()
    publish(broker, 1)
    seen: list[int | None] = []

    async def handle(record: Any, plan: TopicPlan, lost: asyncio.Event) -> bool:
        seen.append(record.delivery_count())
        return len(seen) > 1  # False: given up, so released (abandoned)

    g = member(broker, handle)
    await g.start()
    await broker.settle()
    assert seen == [1, 2]
    s = src(g)
    assert s.acknowledgements == {(TOPIC, "release"): 1, (TOPIC, "accept"): 1}
    assert s.delivery_counts == {(TOPIC, 1): 1, (TOPIC, 2): 1}
    assert broker.share_group(GROUP).record_state(TOPIC, 0, 0) == ("acknowledged", 2)
    await g.stop()


async def test_the_delivery_count_limit_archives_a_record_released_at_it():
    broker = TestBroker()
    publish(broker, 1)
    broker.share_group(GROUP).delivery_count_limit = 3  # as kafka-configs would set it
    seen: list[tuple[int, int | None]] = []

    async def handle(record: Any, plan: TopicPlan, lost: asyncio.Event) -> bool:
        seen.append((record.offset(), record.delivery_count()))
        return record.offset() != 0  # offset 0 always fails

    g = member(broker, handle)
    await g.start()
    assert src(g).delivery_limit == 3
    await broker.settle()
    assert seen == [(0, 1), (0, 2), (0, 3)]
    share = broker.share_group(GROUP)
    assert share.record_state(TOPIC, 0, 0) == ("archived", 3)
    broker.publish(TOPIC, "after", key="k")  # the partition goes on past the archived record
    await broker.settle()
    assert seen[3:] == [(1, 1)] and share.record_state(TOPIC, 0, 1) == ("acknowledged", 1)
    assert share.start_offset(TOPIC, 0) == 2 and share.acknowledged(TOPIC) == 1
    await g.stop()


async def test_a_crashed_members_records_come_back_when_their_lock_runs_out():
    broker = TestBroker()
    publish(broker, 1)
    gate = asyncio.Event()
    calls: list[tuple[str, int | None, float]] = []

    def handler(name: str) -> Handle:
        async def handle(record: Any, plan: TopicPlan, lost: asyncio.Event) -> bool:
            calls.append((name, record.delivery_count(), broker.time()))
            if name == "a":
                await gate.wait()
            return True

        return handle

    a = member(broker, handler("a"), lock_sec=40.0)
    await a.start()
    await until(lambda: calls, "a's delivery")
    share = broker.share_group(GROUP)
    assert share.lock_sec == 40.0 and src(a).lock_sec == 40.0
    holder = share.holder(TOPIC, 0, 0)
    assert holder is src(a)
    holder.crash()  # killed: it never acknowledges, nor releases
    b = member(broker, handler("b"), lock_sec=10.0)  # the group's lock stays the longer one
    await b.start()
    await rounds(b)
    await broker.advance(39)
    assert [c[0] for c in calls] == ["a"] and share.record_state(TOPIC, 0, 0) == ("acquired", 1)
    await broker.advance(2)
    assert [(n, c) for n, c, _ in calls] == [("a", 1), ("b", 2)]
    assert calls[1][2] - calls[0][2] >= 40
    gate.set()  # the dead member's handler ends: nothing reaches the broker
    await broker.settle()
    assert share.record_state(TOPIC, 0, 0) == ("acknowledged", 2)
    assert src(a).acknowledgements == {} and src(b).acknowledgements == {(TOPIC, "accept"): 1}
    assert share.members == [src(b)]
    await a.stop()
    await b.stop()


async def test_a_delivery_that_outlives_its_lock_goes_to_another_and_its_ack_is_ignored(caplog):
    broker = TestBroker()
    publish(broker, 1)
    broker.share_group(GROUP).lock_sec = 0.05  # below Kafka's minimum: runs out in real time here
    gate = asyncio.Event()
    calls: list[tuple[str, int | None]] = []

    def handler(name: str) -> Handle:
        async def handle(record: Any, plan: TopicPlan, lost: asyncio.Event) -> bool:
            calls.append((name, record.delivery_count()))
            if name == "a":
                await gate.wait()
            return True

        return handle

    a = member(broker, handler("a"), lock_sec=0.05)
    b = member(broker, handler("b"), lock_sec=0.05)
    await a.start()
    await until(lambda: calls, "a's delivery")
    await b.start()
    share = broker.share_group(GROUP)
    await until(lambda: share.record_state(TOPIC, 0, 0) == ("acknowledged", 2), "b's delivery")
    gate.set()  # a finishes after its lock ran out: the broker ignores its ACCEPT
    await until(lambda: src(a).open_count((TOPIC, 0)) == 0, "a's acknowledgement")
    assert calls == [("a", 1), ("b", 2)]
    assert src(a).acknowledgements == {(TOPIC, "accept"): 1}  # sent, and ignored
    assert share.record_state(TOPIC, 0, 0) == ("acknowledged", 2)
    assert "the broker ignored the accept of orders[0]@0" in caplog.text
    await a.stop()
    await b.stop()


async def test_settle_brings_a_crashed_members_lock_forward():
    broker = TestBroker()
    publish(broker, 3)
    never = asyncio.Event()
    delivered: list[tuple[str, int, int | None]] = []

    def handler(name: str) -> Handle:
        async def handle(record: Any, plan: TopicPlan, lost: asyncio.Event) -> bool:
            delivered.append((name, record.offset(), record.delivery_count()))
            if name == "a":
                await never.wait()
            return True

        return handle

    a = member(broker, handler("a"), max_in_flight=1)  # one started, two waiting in its lane
    await a.start()
    await until(lambda: delivered, "a's first delivery")
    src(a).crash()
    assert src(a).open_count((TOPIC, 0)) == 3
    b = member(broker, handler("b"))
    await b.start()
    before = broker.time()
    await broker.settle()
    assert broker.time() - before >= 30  # the group's default lock, on the broker's clock
    assert [d for d in delivered if d[0] == "a"] == [("a", 0, 1)]  # its lane started no more
    assert sorted(d[1:] for d in delivered if d[0] == "b") == [(0, 2), (1, 2), (2, 2)]
    never.set()
    await a.stop()
    await b.stop()


async def test_a_member_that_stops_releases_what_it_holds_to_the_others():
    broker = TestBroker()
    publish(broker, 3)
    seen: list[tuple[str, int, int | None]] = []

    def handler(name: str) -> Handle:
        async def handle(record: Any, plan: TopicPlan, lost: asyncio.Event) -> bool:
            seen.append((name, record.offset(), record.delivery_count()))
            if name == "a":
                await lost.wait()  # gives the record up when its partition goes (the stop)
                return False
            return True

        return handle

    a = member(broker, handler("a"), max_records=3, max_in_flight=1)
    await a.start()
    await until(lambda: seen, "a's first delivery")
    assert src(a).open_count((TOPIC, 0)) == 3  # one running, two in its lane
    await a.stop()  # drain: the running one is released, forget releases the lane's two
    assert src(a).acknowledgements == {(TOPIC, "release"): 3}
    b = member(broker, handler("b"))
    await b.start()
    await broker.settle()
    assert seen[0] == ("a", 0, 1)
    assert sorted(s for s in seen if s[0] == "b") == [("b", 0, 2), ("b", 1, 2), ("b", 2, 2)]
    await b.stop()


@pytest.mark.parametrize("reset", ["earliest", "latest"])
async def test_the_offset_reset_places_a_new_groups_start(reset):
    broker = TestBroker()
    publish(broker, 2)  # before the group first reads the partition
    got: list[int] = []

    async def handle(record: Any, plan: TopicPlan, lost: asyncio.Event) -> bool:
        got.append(record.offset())
        return True

    g = member(broker, handle, initial_offset=reset)
    await g.start()
    assert src(g).offset_reset == reset == broker.share_group(GROUP).offset_reset
    broker.publish(TOPIC, "new")
    await broker.settle()
    assert got == ([0, 1, 2] if reset == "earliest" else [2])
    await g.stop()


async def test_a_lock_over_the_brokers_maximum_is_refused_and_groups_do_not_mix():
    broker = TestBroker()
    publish(broker, 1)

    async def handle(record: Any, plan: TopicPlan, lost: asyncio.Event) -> bool:
        return True

    with pytest.raises(ShareGroupsUnavailable, match="group.share.max.record.lock.duration.ms"):
        await member(broker, handle, lock_sec=65.0).start()
    assert broker.share_group(GROUP).members == []
    g = member(broker, handle)
    await g.start()
    classic = MemoryClients(broker).source(
        GROUP, {}, [TOPIC], initial_offset="earliest", drain_timeout=0.5
    )
    plan = TopicPlan(EventRoute(TOPIC, "/o/{id}", "id"), TOPIC)
    with pytest.raises(freedom.FreedomError, match="running already"):
        await ConsumerGroup(GROUP, classic, {TOPIC: plan}, handle).start()
    await g.stop()
    [record] = broker.records(TOPIC)
    assert record.delivery_count() is None  # as read from the log, or by a classic group
