"""Delivery modes: a bound on records in flight, key order, and commits that never pass an unfinished record."""

from __future__ import annotations

import asyncio
import random
import time

from freedom.testing import wait_until
from tests.services.event_app import Delivery, Journal, event_service
from tests.services.kafka_tools import committed, produce
from tests.services.scrape import in_flight, paused


class Gauge:
    """Counts handler calls running at once (they all run on the service's loop)."""

    def __init__(self) -> None:
        self.now = 0
        self.peak = 0
        self.peak_by_key: dict[str, int] = {}
        self._by_key: dict[str, int] = {}

    async def hold(self, call: Delivery, seconds: float) -> None:
        self.now += 1
        self._by_key[call.key] = self._by_key.get(call.key, 0) + 1
        self.peak = max(self.peak, self.now)
        self.peak_by_key[call.key] = max(self.peak_by_key.get(call.key, 0), self._by_key[call.key])
        try:
            await asyncio.sleep(seconds)
        finally:
            self.now -= 1
            self._by_key[call.key] -= 1


def test_concurrent_mode_keeps_to_its_bound(apache_kafka, new_topic, tmp_path, delivery):
    bootstrap = apache_kafka.bootstrap
    topic = new_topic(bootstrap, partitions=2)
    journal, gauge = Journal(), Gauge()
    svc = event_service(
        tmp_path,
        bootstrap,
        journal,
        topic,
        lambda c: gauge.hold(c, 0.1),
        mode="concurrent",
        max_in_flight=5,
        delivery=delivery,
    )
    with svc:
        produce(bootstrap, topic, [{"key": f"K{i}".encode(), "value": b"x"} for i in range(60)])
        wait_until(lambda: len(journal.of()) >= 60, 60, what="60 deliveries")
    assert sorted(c.key for c in journal.of()) == sorted(f"K{i}" for i in range(60))
    assert gauge.peak == 5, gauge.peak  # in parallel, never more than the bound


def _holding_service(
    tmp_path, bootstrap: str, topic: str, journal: Journal, max_in_flight: int, delivery: str
):
    """A concurrent-mode service whose handler holds the record keyed HOLD until `release` is set
    (on the service's loop); returns (service, its group id, release)."""
    release = asyncio.Event()

    async def behave(call: Delivery) -> None:
        if call.key == "HOLD":
            await release.wait()

    svc = event_service(
        tmp_path,
        bootstrap,
        journal,
        topic,
        behave,
        mode="concurrent",
        max_in_flight=max_in_flight,
        group_id=f"g-hold-{time.time_ns()}",
        delivery=delivery,
    )
    return svc, svc.app.kafka_config.consumer_clients[0].group_id, release


def _commit_goes_out(svc, bootstrap: str, topic: str, group: str, key: str) -> None:
    """Wait until only HOLD is still running (every other record it got has finished), then for
    the commit of a record put on partition 1 (keyed `key`): a commit of the group that went out
    after they finished, carrying every offset the group may commit (partition 0's too)."""
    wait_until(
        lambda: in_flight(svc.base_url, group) == 1, 30, what="every record but HOLD finished"
    )
    before = committed(bootstrap, group, topic, 2)[1]
    produce(bootstrap, topic, [{"key": key.encode(), "value": b"s", "partition": 1}])
    wait_until(
        lambda: committed(bootstrap, group, topic, 2)[1] > before, 30, what=f"{key}'s commit"
    )


def test_a_slow_record_holds_the_commit_but_not_the_others(
    apache_kafka, new_topic, tmp_path, delivery
):
    bootstrap = apache_kafka.bootstrap
    topic = new_topic(bootstrap, partitions=2)  # the records on 0; 1 for the sentinel
    journal = Journal()
    svc, group, release = _holding_service(tmp_path, bootstrap, topic, journal, 20, delivery)
    with svc:
        before = committed(bootstrap, group, topic)[0]
        produce(
            bootstrap,
            topic,
            [{"key": b"HOLD", "value": b"h", "partition": 0}]
            + [{"key": f"K{i}".encode(), "value": b"x", "partition": 0} for i in range(9)],
        )
        wait_until(lambda: len(journal.of()) == 10, 30, what="every record to reach the handler")
        # The nine later records finished, and a commit of the group went out after that.
        _commit_goes_out(svc, bootstrap, topic, group, "SENTINEL")
        assert (
            committed(bootstrap, group, topic)[0] == before
        )  # not past the unfinished first record
        assert svc.loop is not None
        svc.loop.call_soon_threadsafe(release.set)
        wait_until(
            lambda: committed(bootstrap, group, topic)[0] == before + 10,
            20,
            what="the commit of all ten",
        )


def test_key_ordered_mode_keeps_each_keys_order_and_runs_keys_in_parallel(
    apache_kafka, new_topic, tmp_path, delivery
):
    bootstrap = apache_kafka.bootstrap
    topic = new_topic(bootstrap)
    journal, gauge = Journal(), Gauge()
    rng = random.Random(7)
    # The client's default mode is concurrent; the topic overrides it (the per-topic table).
    svc = event_service(
        tmp_path,
        bootstrap,
        journal,
        topic,
        lambda c: gauge.hold(c, rng.uniform(0, 0.03)),
        mode="concurrent",
        topics={topic: {"mode": "key-ordered", "max_in_flight": 50}},
        delivery=delivery,
    )
    records = [
        {"key": k.encode(), "value": str(i).encode()} for i in range(10) for k in ("A", "B", "C")
    ]
    with svc:
        produce(bootstrap, topic, records)
        wait_until(lambda: len(journal.of()) >= 30, 60, what="30 deliveries")
    for key in "ABC":
        assert [int(c.body) for c in journal.of(key=key)] == list(range(10)), key
    assert max(gauge.peak_by_key.values()) == 1  # one at a time per key...
    assert gauge.peak >= 2  # ...different keys at once


def test_sequential_mode_delivers_one_at_a_time_per_partition_in_order(
    apache_kafka, new_topic, tmp_path, delivery
):
    bootstrap = apache_kafka.bootstrap
    topic = new_topic(bootstrap)
    journal, gauge = Journal(), Gauge()
    svc = event_service(
        tmp_path, bootstrap, journal, topic, lambda c: gauge.hold(c, 0.01), delivery=delivery
    )
    with svc:
        produce(
            bootstrap,
            topic,
            [{"key": f"K{i % 3}".encode(), "value": str(i).encode()} for i in range(30)],
        )
        wait_until(lambda: len(journal.of()) >= 30, 60, what="30 deliveries")
    assert [int(c.body) for c in journal.of()] == list(range(30))
    assert gauge.peak == 1


def test_offset_tracker_commits_only_below_the_lowest_unfinished_record():
    from freedom.kafka.consumer.ledger import OffsetTracker

    t = OffsetTracker()
    for offset in (5, 6, 8, 9):  # 7 missing: a gap (compaction, transaction marker)
        t.add(offset)
    assert t.finish(6) is None  # 5 still running
    assert t.finish(9) is None
    assert t.finish(5) == 7  # 5 and 6 done: commit up to (not including) 7
    assert t.finish(8) == 10  # across the gap
    assert len(t) == 0
    assert t.finish(8) is None  # a repeated finish changes nothing


def test_a_stuck_record_stops_fetching_after_a_bounded_window(
    apache_kafka, new_topic, tmp_path, delivery
):
    """Later records may finish while one is stuck, but only a bounded number: the rest waits in Kafka."""
    bootstrap = apache_kafka.bootstrap
    topic = new_topic(bootstrap, partitions=2)  # the records on 0; 1 for the sentinels
    journal = Journal()
    svc, group, release = _holding_service(tmp_path, bootstrap, topic, journal, 5, delivery)

    def ahead() -> int:  # records of partition 0 delivered after HOLD
        return len([c for c in journal.of() if c.key.startswith("K")])

    with svc:
        assert svc.loop is not None
        try:
            produce(bootstrap, topic, [{"key": b"HOLD", "value": b"h", "partition": 0}])
            wait_until(
                lambda: journal.of(key="HOLD"), 20, what="the stuck record to reach the handler"
            )
            for chunk in range(20):
                produce(
                    bootstrap,
                    topic,
                    [
                        {"key": f"K{chunk}-{i}".encode(), "value": b"x", "partition": 0}
                        for i in range(10)
                    ],
                )
            # The partition paused for its window of uncommitted records; what was fetched before
            # the pause took effect finished; the group fetched and committed a later record
            # (sentinel 1): fetching went on, on partition 1 only.
            wait_until(
                lambda: paused(svc.base_url, group, "window") == 1,
                30,
                what="partition 0 paused for its window of uncommitted records",
            )
            _commit_goes_out(svc, bootstrap, topic, group, "SENTINEL-1")
            seen = ahead()
            # Fetching stopped: nothing more is delivered while the stuck record holds the commit
            # back, however many rounds the group makes (sentinel 2).
            _commit_goes_out(svc, bootstrap, topic, group, "SENTINEL-2")
            assert ahead() == seen
            # The window is 4 x max_in_flight uncommitted records, plus what the last fetches brought in.
            assert 5 <= seen < 150, seen
        finally:
            svc.loop.call_soon_threadsafe(release.set)
        wait_until(lambda: ahead() == 200, 30, what="all 201 records after the release")
        wait_until(
            lambda: committed(bootstrap, group, topic)[0] == 201, 20, what="the commit of all"
        )
