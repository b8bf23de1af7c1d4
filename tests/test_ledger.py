"""The commit ledger (freedom/kafka/consumer/ledger.py) through its own API: which offset may be
committed, when a commit may go, and what is sent again after failures, reordered answers and
revocations. The Kafka-level behaviour is in test_commit_order.py and the chaos suite."""

from __future__ import annotations

import pytest

from freedom.kafka.consumer.ledger import (
    COMMIT_ACK_TIMEOUT,
    COMMIT_INTERVAL,
    COMMITS_IN_FLIGHT,
    CommitLedger,
    OffsetTracker,
)

TP = ("orders", 0)
OTHER = ("orders", 1)


def _ledger(offsets: range, tp: tuple[str, int] = TP) -> CommitLedger:
    ledger = CommitLedger()
    for o in offsets:
        ledger.track(tp, o)
    return ledger


def test_the_commit_never_passes_a_record_that_is_not_finished():
    ledger = _ledger(range(10, 15))
    assert not ledger.finish(TP, 12)  # 10 and 11 still run
    assert not ledger.finish(TP, 11)
    assert ledger.take() == {}
    assert ledger.finish(TP, 10)  # 10, 11, 12 done: commit 13
    assert ledger.take() == {TP: 13}
    assert ledger.open_count(TP) == 2


def test_a_duplicate_or_unknown_finish_changes_nothing():
    ledger = _ledger(range(3))
    assert ledger.finish(TP, 0)
    assert not ledger.finish(TP, 0)
    assert not ledger.finish(OTHER, 5)
    assert ledger.take() == {TP: 1}


def test_offsets_must_increase():
    tracker = OffsetTracker()
    tracker.add(5)
    with pytest.raises(ValueError, match="must increase"):
        tracker.add(5)


def test_a_commit_goes_at_most_every_interval_and_with_few_unanswered():
    ledger = _ledger(range(100))
    assert not ledger.due(now=1000.0)  # nothing queued
    ledger.finish(TP, 0)
    assert ledger.due(now=1000.0)
    ledger.take()
    ledger.sending(now=1000.0)
    ledger.finish(TP, 1)
    assert not ledger.due(now=1000.0 + COMMIT_INTERVAL / 2)
    now = 1000.0
    for i in range(2, 1 + COMMITS_IN_FLIGHT):  # fill the window of unanswered commits
        now += COMMIT_INTERVAL * 1.5
        assert ledger.due(now=now)
        ledger.take()
        ledger.sending(now=now)
        ledger.finish(TP, i)
    assert not ledger.due(now=now + COMMIT_INTERVAL * 1.5)  # COMMITS_IN_FLIGHT unanswered
    ledger.answered(True, [(TP, 1, False)], {TP})
    assert ledger.due(now=now + COMMIT_INTERVAL * 1.5)
    # Unanswered commits older than COMMIT_ACK_TIMEOUT stop holding the next one back.
    assert ledger.due(now=now + COMMIT_ACK_TIMEOUT + 1)


def test_an_older_commit_confirmed_after_a_newer_one_queues_the_newer_again():
    ledger = _ledger(range(200))
    for o in range(51):
        ledger.finish(TP, o)
    ledger.take()
    for o in range(51, 145):
        ledger.finish(TP, o)
    ledger.take()
    ledger.answered(True, [(TP, 145, False)], {TP})
    assert ledger.take() == {}
    ledger.answered(True, [(TP, 51, False)], {TP})  # the broker now holds 51
    assert ledger.take() == {TP: 145}


def test_a_failed_commit_is_sent_again_unless_a_newer_offset_went_after_it():
    ledger = _ledger(range(10))
    ledger.finish(TP, 0)
    ledger.take()  # 1 sent
    assert ledger.answered(False, [(TP, 1, True)], {TP})
    assert ledger.take() == {TP: 1}
    ledger.finish(TP, 1)
    ledger.take()  # 2 sent after 1
    assert ledger.answered(False, [(TP, 1, True)], {TP})  # the late failure of 1
    assert ledger.take() == {}


def test_a_commit_that_failed_after_revocation_holds_when_the_partition_returns():
    ledger = _ledger(range(10))
    for o in range(5):
        ledger.finish(TP, o)
    pending = ledger.take()
    ledger.not_sent(pending, assigned=set(), asynchronous=False)  # revoked meanwhile
    ledger.forget(TP)
    ledger.assign([TP])
    assert ledger.start_offset(TP, committed=2) == 5  # pinned at the unsaved offset
    assert ledger.start_offset(TP, committed=7) == 7  # someone committed further
    # Records below it finish without a delivery, until the first at or above it.
    assert ledger.skip(TP, 3)
    assert ledger.skip(TP, 4)
    assert not ledger.skip(TP, 5)
    assert not ledger.skip(TP, 6)


def test_the_last_commit_of_a_revoked_partition_carries_the_newest_offset_sent():
    ledger = _ledger(range(10))
    for o in range(8):
        ledger.finish(TP, o)
    ledger.take()  # 8 sent, its answer not in
    ledger.resend_newest([TP])
    assert ledger.take([TP]) == {TP: 8}
    ledger.forget_sent([TP])
    ledger.resend_newest([TP])  # forgotten: another member may commit further now
    assert ledger.take() == {}


def test_take_only_some_partitions():
    ledger = _ledger(range(3))
    for o in range(3):
        ledger.track(OTHER, o)
    ledger.finish(TP, 0)
    ledger.finish(OTHER, 0)
    assert ledger.take([OTHER]) == {OTHER: 1}
    assert ledger.queued()
    assert ledger.take() == {TP: 1}
    assert not ledger.queued()
