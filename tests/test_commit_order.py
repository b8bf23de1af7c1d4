"""Commits confirmed out of order never leave an older offset as the group's last word.

Found by the chaos test (tests/chaos/test_chaos.py): while the broker restarts, librdkafka holds the
asynchronous commits sent meanwhile and sends them when the coordinator is back, sometimes after
newer ones; the broker confirmed offset 145, then 51, and kept 51. Nothing committed again (every
record had finished), so 94 finished records would have been delivered again after the next
restart. The chaos test reproduces it about one run in six; these tests drive the group's answer
handling directly with the answers it got there.
"""

from __future__ import annotations

from confluent_kafka import TopicPartition

from freedom.kafka.consumer.group import GroupLoop

TOPIC = "orders"


def _group() -> GroupLoop:
    async def handle(*_: object) -> bool:
        return True

    group = GroupLoop("g-order", {}, {}, handle)
    group._assigned = {(TOPIC, 0), (TOPIC, 1)}
    return group


def _answer(group: GroupLoop, *offsets: tuple[int, int]) -> None:
    group._on_commit(None, [TopicPartition(TOPIC, p, o) for p, o in offsets])


def test_an_older_commit_confirmed_after_a_newer_one_is_committed_again():
    group = _group()
    group._newest_sent = {(TOPIC, 0): 145}
    _answer(group, (0, 145))
    _answer(group, (0, 51))  # the broker now holds 51
    assert group._to_commit == {(TOPIC, 0): 145}


def test_answers_in_order_commit_nothing_more():
    group = _group()
    for offset in (10, 20, 30):
        _answer(group, (0, offset), (1, offset + 1))
    assert group._to_commit == {}


def test_a_newer_pending_offset_is_kept():
    group = _group()
    _answer(group, (0, 145))
    group._to_commit[(TOPIC, 0)] = 160  # finished meanwhile, not sent yet
    _answer(group, (0, 51))
    assert group._to_commit == {(TOPIC, 0): 160}


def test_answers_for_a_partition_given_up_are_ignored():
    group = _group()
    _answer(group, (0, 145))
    group._assigned.discard((TOPIC, 0))
    group._forget_sent([(TOPIC, 0)])
    _answer(group, (0, 51))
    assert group._to_commit == {}


def test_the_last_commit_of_a_partition_carries_its_newest_offset_and_none_after_it_is_given_up():
    group = _group()
    group._newest_sent = {(TOPIC, 0): 145, (TOPIC, 1): 7}
    group._resend_newest([(TOPIC, 0)])
    assert group._to_commit == {(TOPIC, 0): 145}
    group._to_commit.clear()
    group._forget_sent([(TOPIC, 0)])  # another member may commit further now
    group._resend_newest([(TOPIC, 0)])
    assert group._to_commit == {}
