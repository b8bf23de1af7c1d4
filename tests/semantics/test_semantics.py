"""What a handler sees and what happens to its record, asserted alike on Apache Kafka and on the
test broker (the `env` fixture runs every test on both): the test broker must not drift from Kafka.

The "memory-share" env runs the main group as a share group: the same outcomes, each record
acknowledged on its own (`env.finished` is then its share-partition start offset), delivered in no
order (the key-order case does not apply) and with `x-delivery-count`."""

from __future__ import annotations

import datetime
import threading
import zlib

import pytest

from freedom.testing import wait_until
from tests.semantics.harness import RETRY_COUNT, Env


def test_the_handler_gets_the_record_as_the_proxy_delivers_it(env: Env) -> None:
    env.produce(
        "headers",
        [
            {
                "key": b"K-1",
                "value": b'{"ID": 1}',
                "headers": [
                    ("x-action", "购买".encode()),
                    ("connection", b"close"),
                    ("x-forwarded-for", b"10.0.0.1"),
                    ("x-freedom-error", b"forged"),
                ],
            },
            {"key": b"tenant/7", "value": b"plain", "headers": [("content-type", b"text/plain")]},
        ],
    )
    env.settle(lambda: len(env.journal.of("headers")) == 2, "two deliveries")
    first, second = sorted(
        env.journal.of("headers"), key=lambda c: c.key
    )  # a share group: any order
    assert (first.key, first.body) == ("K-1", b'{"ID": 1}')
    h = first.headers
    assert h["x-message-key"] == "K-1" and h["x-retry-count"] == "0" and h["x-action"] == "购买"
    assert h.get("x-delivery-count") == ("1" if env.share else None)  # a share group's first
    assert h["content-type"] == "application/json"  # no content-type on the record: the default
    assert not {"connection", "x-forwarded-for", "x-freedom-error"} & set(
        h
    )  # never forwarded from outside
    assert (second.key, second.body) == (
        "tenant/7",
        b"plain",
    )  # a key with a slash reaches its route
    assert (
        second.headers["content-type"] == "text/plain"
        and second.headers["x-message-key"] == "tenant/7"
    )
    assert env.finished(env.topics["headers"]) == 2


def test_a_failing_handler_is_retried_through_the_retry_topic_after_the_interval(env: Env) -> None:
    env.produce("retry", [{"key": b"K-R", "value": b"r", "headers": [("x-action", b"buy")]}])
    env.settle(
        lambda: len(env.journal.of("retry")) == 3 and env.finished(env.topics["retry"]) == 1,
        "three deliveries, the original committed",
    )
    calls = env.journal.of("retry")
    assert [c.headers["x-retry-count"] for c in calls] == ["0", "1", "2"]
    assert all(c.key == "K-R" and c.body == b"r" and c.headers["x-action"] == "buy" for c in calls)
    gaps = [b.at - a.at for a, b in zip(calls, calls[1:])]
    assert all(env.interval <= g <= env.interval + 3.0 for g in gaps), gaps
    retries = env.records(env.retry_topic("retry"))
    assert [r.headers["x-retry-count"] for r in retries] == ["1", "2"]
    assert all(
        r.key == b"K-R" and r.value == b"r" and r.headers["x-freedom-status"] == "500"
        for r in retries
    )
    assert env.records(env.fail_topic("retry")) == []


def test_a_handler_that_always_fails_ends_in_the_dead_letter_topic_with_the_reasons(
    env: Env,
) -> None:
    env.produce(
        "exhaust", [{"key": b"K-X", "value": b"\x00poison", "headers": [("x-trace", b"t1")]}]
    )
    env.settle(
        lambda: (
            len(env.journal.of("exhaust")) == RETRY_COUNT + 1
            and env.records(env.fail_topic("exhaust"))
        ),
        "every retry used and the dead letter written",
    )
    calls = env.journal.of("exhaust")
    assert [c.headers["x-retry-count"] for c in calls] == [str(n) for n in range(RETRY_COUNT + 1)]
    [dead] = env.records(env.fail_topic("exhaust"))
    assert (dead.key, dead.value) == (b"K-X", b"\x00poison")
    h = dead.headers
    assert h["x-trace"] == "t1" and h["x-retry-count"] == str(RETRY_COUNT)
    assert h["x-freedom-original-topic"] == env.topics["exhaust"]
    assert (h["x-freedom-original-partition"], h["x-freedom-original-offset"]) == ("0", "0")
    assert h["x-freedom-status"] == "500" and h["x-freedom-error"] == "HTTP 500"
    datetime.datetime.fromisoformat(h["x-freedom-first-failure-time"].replace("Z", "+00:00"))
    assert env.finished(env.topics["exhaust"]) == 1
    assert env.committed(env.retry_topic("exhaust"), retry_group=True) == RETRY_COUNT


def test_dead_letter_goes_straight_to_the_dead_letter_topic_and_drop_commits(env: Env) -> None:
    env.produce("deadletter", [{"key": b"K-D", "value": b"{}"}])
    env.produce("drop", [{"key": b"K-P", "value": b"{}"}])
    env.settle(
        lambda: env.records(env.fail_topic("deadletter")) and env.finished(env.topics["drop"]) == 1,
        "the dead letter written and the dropped record committed",
    )
    assert [c.headers["x-retry-count"] for c in env.journal.of("deadletter")] == ["0"]
    [dead] = env.records(env.fail_topic("deadletter"))
    assert dead.key == b"K-D" and dead.headers["x-retry-count"] == "0"
    assert dead.headers["x-freedom-status"] == "422"
    assert "handler asked: dead-letter (not a valid order)" in dead.headers["x-freedom-error"]
    assert env.records(env.retry_topic("deadletter")) == []
    assert len(env.journal.of("drop")) == 1
    assert env.records(env.retry_topic("drop")) == [] and env.records(env.fail_topic("drop")) == []


def test_records_of_one_key_are_delivered_in_order(env: Env) -> None:
    if env.share:
        pytest.skip("a share group delivers in no order: key-ordered mode is refused")
    keys = [f"key-{i}" for i in range(6)]
    env.produce(
        "ordered",
        [{"key": k.encode(), "value": str(seq).encode()} for seq in range(5) for k in keys],
    )
    env.settle(lambda: len(env.journal.of("ordered")) == 30, "30 deliveries")
    for k in keys:
        assert [c.body for c in env.journal.of("ordered", k)] == [
            str(s).encode() for s in range(5)
        ], k
    records = env.records(env.topics["ordered"])
    assert {r.key.decode(): r.partition for r in records} == {
        k: zlib.crc32(k.encode()) % 3 for k in keys
    }  # librdkafka's
    per_partition = {p: len([r for r in records if r.partition == p]) for p in range(3)}
    assert all(env.committed(env.topics["ordered"], p) == n for p, n in per_partition.items() if n)


def test_a_record_still_running_holds_back_the_commit_of_those_after_it(env: Env) -> None:
    gate = env.journal.gates["SLOW"] = threading.Event()
    env.produce(
        "concurrent",
        [
            {"key": b"SLOW", "value": b"0"},
            *({"key": f"F{i}".encode(), "value": b"f"} for i in range(5)),
        ],
    )
    wait_until(
        lambda: len(env.journal.of("concurrent")) == 6,
        30,
        what="six deliveries at once (concurrent mode)",
    )
    env.commits_caught_up(running=1)  # the five later records finished, and a commit went out
    assert env.finished(env.topics["concurrent"]) == 0  # offset 0 is still being handled
    if env.share:  # ... but a share group acknowledged the five on their own
        assert env.acknowledged(env.topics["concurrent"]) == 5
    gate.set()
    env.settle(lambda: env.finished(env.topics["concurrent"]) == 6, "all six committed")


def test_a_route_publishes_and_the_listener_gets_its_message(env: Env) -> None:
    r = env.get("/sem/publish/7", params={"tenant": "acme"})
    assert r.status_code == 200, r.text
    key = r.json()["key"]
    env.settle(lambda: env.journal.of("relay"), "the relay delivery")
    [call] = env.journal.of("relay")
    assert call.key == key and len(key) == 32 and key == key.upper()
    assert call.body == b'{"n":7}' or call.body == b'{"n": 7}'
    assert call.headers["content-type"] == "application/json" and call.headers["x-action"] == "购买"
    assert call.bus == {"tenant": "acme"}
    [record] = env.records(env.topics["relay"])
    assert record.key == key.encode() and record.headers["content-type"] == "application/json"
