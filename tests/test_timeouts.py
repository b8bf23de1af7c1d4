"""Slow and hung handlers (issue 21, point 1): the delivery timeout per client and per topic, the
deadline a freedom service enforces (`x-freedom-timeout-ms`: a timed-out handler is cancelled, so
a record never runs twice at once), and retry topics with as many partitions as their main topic."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from freedom.testing import wait_until
from tests.services.event_app import Delivery, Journal, event_service, reads_of
from tests.services.kafka_tools import headers_of, partitions_of, produce, read_all, wait_drained


class Hung:
    """A handler that never finishes by itself, counting how many of its calls run at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running = 0
        self.peak = 0
        self.cancelled = 0

    async def __call__(self, call: Delivery) -> Any:
        with self.lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
        try:
            await asyncio.Event().wait()  # hangs until cancelled
        except asyncio.CancelledError:
            with self.lock:
                self.cancelled += 1
            raise
        finally:
            with self.lock:
                self.running -= 1


# Not `serial`: the handler waits 45 s of a 60 s budget, a margin no neighbour's load can eat, and
# in the parallel phase the other worker uses those 45 s (the suite stays under 15 minutes).
def test_a_45_s_handler_succeeds_with_delivery_timeout_sec_60(apache_kafka, new_topic, tmp_path):
    """Before, every delivery timed out at 30 s: with retry_count = 0 a 45 s handler ran for ever."""
    bootstrap = apache_kafka.bootstrap
    topic = new_topic(bootstrap)
    journal = Journal()
    done = threading.Event()

    async def slow(call: Delivery) -> int:
        await asyncio.sleep(45)  # the handler's own work, not a synchronisation
        done.set()
        return 200

    svc = event_service(
        tmp_path, bootstrap, journal, topic, slow, retry_count=0, delivery_timeout_sec=60
    )
    with svc:
        produce(bootstrap, topic, [{"key": b"SLOW", "value": b"{}"}])
        assert done.wait(120), "the handler never finished"
        wait_drained(bootstrap, {svc.app.kafka_config.consumer_clients[0].group_id: [topic]}, 30)
    calls = journal.of()
    assert len(calls) == 1, [c.at for c in calls]  # once: not timed out and delivered again
    assert calls[0].headers["x-freedom-timeout-ms"] == "60000"


@pytest.mark.parametrize(
    "mode, retries",
    [
        ("sequential", {"retry_count": 0}),
        ("key-ordered", {"retry_count": 1, "retry_interval_sec": 0}),
    ],
)
def test_a_hung_handler_over_http_never_runs_twice_at_once(
    apache_kafka, new_topic, tmp_path, mode, retries
):
    """Over HTTP the proxy's timeout only closed its connection: the handler ran on, and its
    redeliveries piled up beside it (five executions of one record at once after 150 s). Now the
    service cancels it at the deadline the proxy sent and answers 504 before the proxy gives up."""
    bootstrap = apache_kafka.bootstrap
    topic = new_topic(bootstrap)
    journal = Journal()
    hung = Hung()

    def behave(call: Delivery) -> Any:
        return hung(call) if call.key == "HUNG" else 200

    svc = event_service(
        tmp_path,
        bootstrap,
        journal,
        topic,
        behave,
        mode=mode,
        delivery_timeout_sec=30,  # the client's; the topic's own is what counts
        topics={topic: {"delivery_timeout_sec": 1}},
        **retries,
    )
    with svc:
        produce(
            bootstrap,
            topic,
            [
                # A record cannot give itself a longer deadline: the proxy sends its own.
                {"key": b"HUNG", "value": b"{}", "headers": [("x-freedom-timeout-ms", b"3600000")]},
                {"key": b"NEXT", "value": b"{}"},
            ],
        )
        if retries["retry_count"] == 0:  # redelivered in place, again and again
            wait_until(lambda: len(journal.of(key="HUNG")) >= 4, 60, what="four deliveries")
            assert hung.peak == 1, f"{hung.peak} executions of one record ran at once"
            assert hung.cancelled >= 3  # each ended at its deadline, before the next began
            assert journal.of(key="NEXT") == []  # sequential: the partition waits for HUNG
        else:  # its retry times out too: dead-lettered, with the service's answer as the reason
            fail = f"fail-{topic}"
            wait_until(lambda: len(read_all(bootstrap, fail)) == 1, 60, what="the dead letter")
            assert hung.peak == 1, f"{hung.peak} executions of one record ran at once"
            assert hung.cancelled == 2
            error = headers_of(read_all(bootstrap, fail)[0])["x-freedom-error"]
            assert error.startswith("HTTP 504 (the handler did not finish within its deadline"), (
                error
            )
            wait_drained(bootstrap, reads_of(svc.app, topic), 30)
            assert len(journal.of(key="NEXT")) == 1
    calls = journal.of(key="HUNG")
    assert all(c.headers["x-freedom-timeout-ms"] == "1000" for c in calls)


def test_retries_of_a_six_partition_topic_spread_over_six_retry_partitions(
    apache_kafka, new_topic, tmp_path
):
    """The retry and dead-letter topics get the main topic's partition count (the broker's default
    here is 1: every retry of the topic ran one after another in sequential mode)."""
    bootstrap = apache_kafka.bootstrap
    topic = new_topic(bootstrap, partitions=6)
    journal = Journal()
    svc = event_service(
        tmp_path,
        bootstrap,
        journal,
        topic,
        lambda c: 500 if c.nth == 0 else 200,
        retry_count=1,
        retry_interval_sec=0,
    )
    with svc:
        assert partitions_of(bootstrap, f"retry-{topic}") == 6
        assert partitions_of(bootstrap, f"fail-{topic}") == 6
        produce(bootstrap, topic, [{"key": f"K{i}".encode(), "value": b"{}"} for i in range(24)])
        wait_until(lambda: len(journal.of()) >= 48, 60, what="every record and its retry")
        wait_drained(bootstrap, reads_of(svc.app, topic), 30)
    retried = read_all(bootstrap, f"retry-{topic}")
    assert len(retried) == 24
    used = {r.partition() for r in retried}
    assert len(used) > 1, f"every retry landed on partition {used}"


def test_the_deadline_a_request_gives_is_capped_and_the_shortest_counts():
    from freedom.web.deadline import deadline_of

    name = b"x-freedom-timeout-ms"
    assert deadline_of([(name, b"1500")]) == 1.5
    assert deadline_of([(b"X-Freedom-Timeout-Ms", b"1500")]) == 1.5
    assert deadline_of([(name, b"9" * 30)]) == 3600.0  # never beyond delivery_timeout_sec's bound
    assert deadline_of([(name, b"3600000"), (name, b"1000")]) == 1.0
    for bad in (b"", b"0", b"-5", b"1e3", b"\xd9\xa3", b"12.5", b"9" * 33):
        assert deadline_of([(name, bad)]) is None, bad  # as without the header: no deadline
