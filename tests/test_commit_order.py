"""Commits confirmed out of order never leave an older offset as the group's last word.

Found by the chaos test (tests/chaos/test_chaos.py): while the broker restarts, librdkafka holds the
asynchronous commits sent meanwhile and sends them when the coordinator is back, sometimes after
newer ones; the broker confirmed offset 145, then 51, and kept 51. Nothing committed again (every
record had finished), so 94 finished records would have been delivered again after the next
restart. The chaos test reproduces it about one run in six; these tests run a consumer group on a
stand-in for librdkafka's consumer that gives the group those answers, in that order, and look at
what the group commits: the outcome, not how the group keeps track.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import confluent_kafka
import pytest
from confluent_kafka import TopicPartition

from freedom.kafka.consumer.delivery import EventRoute
from freedom.kafka.consumer.group import ConsumerGroup, TopicPlan
from freedom.kafka.consumer.sources.kafka import KafkaSource

TOPIC = "orders"


@dataclass
class Record:
    """A fetched record, as the group reads one."""

    partition_: int
    offset_: int

    def topic(self) -> str:
        return TOPIC

    def partition(self) -> int:
        return self.partition_

    def offset(self) -> int:
        return self.offset_

    def key(self) -> bytes:
        return b"k"

    def value(self) -> bytes:
        return b"v"

    def headers(self) -> list[tuple[str, bytes]]:
        return []

    def error(self) -> None:
        return None


@dataclass
class Commit:
    """A commit the group sent: partition -> offset."""

    offsets: dict[int, int]
    asynchronous: bool


Step = Callable[["StandIn"], list[Record] | None]


class StandIn:
    """librdkafka's Consumer, as far as the group uses it. The group's consumer thread runs the
    test's script inside consume(), where librdkafka serves its callbacks: assignments,
    revocations and the answers to asynchronous commits, given only when the script says (so in
    any order); records are handed out when the script says. The commits the group sends are
    kept in `commits`."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.on_commit = config["on_commit"]
        self.script: queue.Queue[Step] = queue.Queue()
        self.lock = threading.Lock()
        self.commits: list[Commit] = []
        self.callbacks: dict[str, Any] = {}
        self.handed = False  # the last consume() returned records

    # -- what the group calls
    def subscribe(self, topics: list[str], **callbacks: Any) -> None:
        self.callbacks = callbacks

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[Record]:
        if self.handed and timeout == 0:
            # The group takes what came along with records at once (consume(n, 0)): nothing did.
            # The next step waits for the group's next round, once those records are handed on.
            self.handed = False
            return []
        self.handed = False
        try:
            step = self.script.get(timeout=max(timeout, 0))
        except queue.Empty:
            return []
        while True:
            records = step(self)
            if records is not None:
                self.handed = bool(records)
                return records
            try:  # actions run one after the other, in the same call
                step = self.script.get_nowait()
            except queue.Empty:
                return []

    def commit(self, offsets: list[TopicPartition], asynchronous: bool = True) -> None:
        with self.lock:
            self.commits.append(Commit({tp.partition: tp.offset for tp in offsets}, asynchronous))

    def committed(self, partitions: list[TopicPartition], timeout: float = -1) -> list[Any]:
        return [TopicPartition(tp.topic, tp.partition, 0) for tp in partitions]  # nothing pinned

    def get_watermark_offsets(self, tp: TopicPartition, timeout: float = -1) -> tuple[int, int]:
        return 0, 0

    def pause(self, partitions: list[TopicPartition]) -> None:
        pass

    def resume(self, partitions: list[TopicPartition]) -> None:
        pass

    def close(self) -> None:
        pass

    # -- what the test calls (the steps run on the consumer thread)
    def sent(self) -> list[Commit]:
        with self.lock:
            return list(self.commits)

    def assign(self, *partitions: int) -> None:
        self.script.put(lambda c: c.callbacks["on_assign"](c, _tps(partitions)))

    def revoke(self, *partitions: int, done: threading.Event) -> None:
        def step(c: StandIn) -> None:
            c.callbacks["on_revoke"](c, _tps(partitions))
            done.set()

        self.script.put(step)

    def hand(self, partition: int, offsets: Iterable[int]) -> None:
        records = [Record(partition, o) for o in offsets]
        self.script.put(lambda c: records)

    def answer(self, commit: Commit) -> None:
        """The broker confirms `commit` (librdkafka calls the group back, on its thread)."""
        confirmed = [TopicPartition(TOPIC, p, o) for p, o in commit.offsets.items()]
        self.script.put(lambda c: c.on_commit(None, confirmed))

    def hold(self, holding: threading.Event, until: threading.Event) -> None:
        """The consumer thread stays inside consume() until `until` is set (a slow poll)."""

        def step(c: StandIn) -> None:
            holding.set()
            assert until.wait(30)

        self.script.put(step)


def _tps(partitions: Iterable[int]) -> list[TopicPartition]:
    return [TopicPartition(TOPIC, p) for p in partitions]


class Group:
    """A sequential consumer group of TOPIC on a StandIn, assigned partitions 0 and 1."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.made: list[StandIn] = []
        self.handled: list[tuple[int, int]] = []
        #: offset -> what the handler of that offset (partition 0) waits for first
        self.before: dict[int, threading.Event] = {}
        #: offset -> set once the record of that offset (partition 0) has finished
        self.finished: dict[int, threading.Event] = {}
        monkeypatch.setattr(confluent_kafka, "Consumer", self._consumer)
        route = EventRoute(TOPIC, "/orders/{id}", "id")
        self.loop = ConsumerGroup(
            "g-order",
            KafkaSource("g-order", {}, [TOPIC]),
            {TOPIC: TopicPlan(route, TOPIC)},
            self._handle,
        )
        self.stopped = False

    def _consumer(self, config: dict[str, Any]) -> StandIn:
        self.made.append(StandIn(config))
        return self.made[-1]

    async def _handle(self, record: Any, plan: TopicPlan, lost: asyncio.Event) -> bool:
        where = (record.partition(), record.offset())
        gate = self.before.get(record.offset()) if where[0] == 0 else None
        if gate is not None:
            assert await asyncio.to_thread(gate.wait, 30)
        self.handled.append(where)
        done = self.finished.get(record.offset()) if where[0] == 0 else None
        if done is not None:  # runs once this delivery has returned and the group took its offset
            asyncio.get_running_loop().call_soon(done.set)
        return True

    @property
    def consumer(self) -> StandIn:
        return self.made[0]

    async def start(self) -> None:
        await self.loop.start()
        self.consumer.assign(0, 1)
        await until(lambda: self.loop.assigned.is_set(), "the assignment")

    async def stop(self) -> None:
        """Stop the group as a service stops (its last commits, waited for, then close)."""
        if not self.stopped:
            self.stopped = True
            await self.loop.stop()

    async def committed_to(self, partition: int, offset: int, since: int = 0) -> Commit:
        """The first commit from the `since`-th on that carries `offset` for `partition`."""

        def found() -> Commit | None:
            return next(
                (c for c in self.consumer.sent()[since:] if c.offsets.get(partition) == offset),
                None,
            )

        return await until(found, f"a commit of {partition}:{offset}")


async def until(condition: Callable[[], Any], what: str, timeout: float = 10.0) -> Any:
    """Let the loop run (the group's deliveries are on it) until `condition()` is truthy."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not (value := condition()):
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)
    return value


@pytest.fixture
async def group(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Group]:
    made = Group(monkeypatch)
    await made.start()
    try:
        yield made
    finally:
        await made.stop()


async def _older_and_newer(group: Group) -> tuple[Commit, Commit]:
    """Records 0..144 of partition 0 finished in two steps: commit A (offset 51) and commit B (145)
    sent, neither answered yet."""
    group.consumer.hand(0, range(51))
    older = await group.committed_to(0, 51)
    group.consumer.hand(0, range(51, 145))
    newer = await group.committed_to(0, 145)
    return older, newer


async def test_an_older_commit_confirmed_after_a_newer_one_is_committed_again(group):
    older, newer = await _older_and_newer(group)
    group.consumer.answer(newer)
    answered = len(group.consumer.sent())
    group.consumer.answer(older)  # the broker now holds 51
    await group.committed_to(0, 145, since=answered)  # 145 is the last word again


async def test_answers_in_order_commit_nothing_more(group):
    answered = 0
    for end in (10, 20, 30):
        group.consumer.hand(0, range(end - 10, end))
        await group.committed_to(0, end, since=answered)
        sent = group.consumer.sent()
        for commit in sent[answered:]:  # every commit sent meanwhile, answered in order
            group.consumer.answer(commit)
        answered = len(sent)
    # A commit the group sends after the answers (a record of partition 1 finished) would carry
    # partition 0 too had the answers left anything to commit again.
    group.consumer.hand(1, [0])
    await group.committed_to(1, 1, since=answered)
    assert [c.offsets for c in group.consumer.sent()[answered:]] == [{1: 1}]


async def test_a_newer_pending_offset_is_kept(group):
    older, newer = await _older_and_newer(group)
    group.consumer.answer(newer)
    # Records 145..159 finish while the consumer thread is inside consume(): offset 160 waits to
    # be sent when the (late) answer to the older commit comes.
    holding, go_on = threading.Event(), threading.Event()
    group.before[159] = holding  # the last one finishes only once the thread is held
    group.finished[159] = threading.Event()
    group.consumer.hand(0, range(145, 160))
    group.consumer.hold(holding, until=go_on)
    group.consumer.answer(older)  # the broker now holds 51; answered as the thread goes on
    await until(group.finished[159].is_set, "record 159 finished")
    answered_at = len(group.consumer.sent())  # nothing is sent while the thread is held
    go_on.set()
    first = await until(
        lambda: next((c for c in group.consumer.sent()[answered_at:] if 0 in c.offsets), None),
        "a commit of partition 0 after the answer",
    )
    assert first.offsets[0] == 160  # the newer offset, not the 145 the answer would rewind to
    await group.stop()
    assert [c.offsets[0] for c in group.consumer.sent()[answered_at:] if 0 in c.offsets][-1] == 160


async def test_answers_for_a_partition_given_up_are_ignored(group):
    older, newer = await _older_and_newer(group)
    group.consumer.answer(newer)
    revoked = threading.Event()
    group.consumer.revoke(0, done=revoked)
    await until(revoked.is_set, "the revocation")
    given_up = len(group.consumer.sent())  # the revocation's own last commit included
    group.consumer.answer(older)  # a late answer for the partition given up
    group.consumer.hand(1, [0])
    await group.committed_to(1, 1, since=given_up)
    await group.stop()
    # Nothing of partition 0 after it was given up: another member may have committed further.
    assert [c.offsets for c in group.consumer.sent()[given_up:] if 0 in c.offsets] == []


async def test_the_last_commit_of_a_partition_carries_its_newest_offset_and_none_after_it_is_given_up(
    group,
):
    await _older_and_newer(group)  # 51 and 145 sent, neither answered (librdkafka holds them)
    group.consumer.hand(1, range(7))
    await group.committed_to(1, 7)
    before = len(group.consumer.sent())
    revoked = threading.Event()
    group.consumer.revoke(0, done=revoked)
    await until(revoked.is_set, "the revocation")
    at_revocation = group.consumer.sent()[before:]
    # The partition's last commit from this member: its newest offset once more, and waited for.
    assert [(c.offsets, c.asynchronous) for c in at_revocation] == [({0: 145}, False)]
    after = len(group.consumer.sent())
    await group.stop()
    at_close = group.consumer.sent()[after:]
    # The group's last commit (at the stop) carries partition 1's newest offset, and nothing of 0.
    assert at_close and all(0 not in c.offsets for c in at_close)
    assert at_close[-1].offsets == {1: 7} and not at_close[-1].asynchronous
