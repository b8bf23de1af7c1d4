"""Every record settles: what can never be retried is dead-lettered at once (too large for the retry
topic, too large even for the dead-letter topic, a permanent delivery failure), and the dead letter's
reason headers are the proxy's own (docs/contract.md, "Every record settles"; issue 10, findings 1 and 6)."""

from __future__ import annotations

import datetime
import os
import time
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

import freedom.kafka.service as kafka_infra
from freedom.kafka.consumer.delivery import DeliveryResult
from freedom.testing import wait_until
from tests.services.event_app import Journal, event_service, reads_of
from tests.services.kafka_tools import committed, headers_of, produce, read_all, wait_drained

# Topic-level limits (max.message.bytes) small enough that the records stay small and the tests fast.
RETRY_LIMIT = 1000
FAIL_LIMIT = 1000


def _topics(
    bootstrap: str, topic: str, *, retry_limit: int | None = None, fail_limit: int | None = None
) -> None:
    """Create retry-T and fail-T before the service does, with the given max.message.bytes."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    new = []
    for name, limit in ((f"retry-{topic}", retry_limit), (f"fail-{topic}", fail_limit)):
        new.append(NewTopic(name, 1, 1, config={"max.message.bytes": str(limit)} if limit else {}))
    for f in admin.create_topics(new).values():
        f.result(20)


def _all_headers(record: Any) -> list[tuple[str, str]]:
    return [(k, (v or b"").decode("utf-8", "replace")) for k, v in record.headers() or []]


def _one(record: Any, name: str) -> str | None:
    """The value of header `name`; fails when the record carries it more than once."""
    values = [v for k, v in _all_headers(record) if k == name]
    assert len(values) <= 1, (name, values)
    return values[0] if values else None


# ---------------------------------------------------------------------------- finding 1


@pytest.mark.parametrize("mode", ["sequential", "concurrent"])
def test_a_record_too_large_for_the_retry_topic_is_dead_lettered_and_the_partition_moves_on(
    apache_kafka, new_topic, tmp_path, delivery, mode
):
    bootstrap = apache_kafka.bootstrap
    topic = new_topic(bootstrap)
    _topics(bootstrap, topic, retry_limit=RETRY_LIMIT)
    journal = Journal()
    svc = event_service(
        tmp_path,
        bootstrap,
        journal,
        topic,
        lambda c: 500 if c.key == "BIG" else 200,
        retry_count=3,
        retry_interval_sec=0.2,
        mode=mode,
        delivery=delivery,
    )
    group = svc.app.kafka_config.consumer_clients[0].group_id
    # Fits T (1 MB) and, alone, retry-T too; not once the proxy's reason headers are added.
    big = os.urandom(RETRY_LIMIT - 200)
    with svc:
        [original, *_] = produce(
            bootstrap,
            topic,
            [{"key": b"BIG", "value": big, "headers": [("x-action", b"buy")]}]
            + [{"key": f"N{i}".encode(), "value": b"n"} for i in range(3)],
        )
        # Committed once its dead letter was acknowledged: every dead letter is there now.
        wait_drained(bootstrap, reads_of(svc.app, topic), 40, what="every record settled")
        dead = read_all(bootstrap, f"fail-{topic}")
        wait_until(lambda: len(journal.of()) >= 4, 30, what="the records after BIG")
        wait_until(
            lambda: committed(bootstrap, group, topic)[0] == 4, 30, what="every offset committed"
        )
    assert [c.key for c in journal.of(key="BIG")] == ["BIG"]  # not retried
    assert sorted(c.key for c in journal.of() if c.key != "BIG") == ["N0", "N1", "N2"]
    assert len(dead) == 1
    record = dead[0]
    assert record.key() == b"BIG" and record.value() == big
    h = headers_of(record)
    assert h["x-action"] == "buy" and h["x-retry-count"] == "0"
    assert h["x-freedom-original-topic"] == topic and h["x-freedom-original-offset"] == str(
        original.offset()
    )
    assert h["x-freedom-status"] == "500"
    assert h["x-freedom-error"].startswith("HTTP 500; not retried: could not produce to 'retry-")
    assert "too large" in h["x-freedom-error"] and "MSG_SIZE_TOO_LARGE" in h["x-freedom-error"]
    assert "x-freedom-value-omitted" not in h
    assert read_all(bootstrap, f"retry-{topic}") == []


def test_a_record_too_large_even_for_the_dead_letter_topic_leaves_a_copy_without_its_value(
    apache_kafka, new_topic, tmp_path, delivery
):
    bootstrap = apache_kafka.bootstrap
    topic = new_topic(bootstrap)
    _topics(bootstrap, topic, retry_limit=RETRY_LIMIT, fail_limit=FAIL_LIMIT)
    journal = Journal()
    svc = event_service(
        tmp_path,
        bootstrap,
        journal,
        topic,
        lambda c: 200 if c.key == "OK" else 500,
        retry_count=2,
        retry_interval_sec=0.2,
        mode="concurrent",
        delivery=delivery,
    )
    group = svc.app.kafka_config.consumer_clients[0].group_id
    value = os.urandom(3 * FAIL_LIMIT)
    header = os.urandom(2 * FAIL_LIMIT).hex().encode()  # headers alone too large for fail-T
    key = b"HEADERS-" + b"k" * 40
    with svc:
        sent = produce(
            bootstrap,
            topic,
            [
                {"key": b"BIG", "value": value, "headers": [("x-action", b"buy")]},
                {
                    "key": key,
                    "value": b"small",
                    "headers": [("x-big", header), ("x-action", b"sell")],
                },
                {"key": b"OK", "value": b"ok"},
            ],
        )
        # Committed once its dead letter was acknowledged: every dead letter is there now.
        wait_drained(bootstrap, reads_of(svc.app, topic), 40, what="every record settled")
        dead = read_all(bootstrap, f"fail-{topic}")
        wait_until(
            lambda: committed(bootstrap, group, topic)[0] == 3, 30, what="every offset committed"
        )
    assert len(journal.of(key="OK")) == 1
    by_key = {d.key(): d for d in dead}
    assert len(dead) == 2 and set(by_key) == {b"BIG", None}, [headers_of(d) for d in dead]
    # Without its value: key, the record's headers, the reason, the value's size.
    copy = by_key[b"BIG"]
    h = headers_of(copy)
    assert copy.value() in (b"", None)
    assert h["x-freedom-value-omitted"] == str(len(value))
    assert h["x-action"] == "buy"
    assert h["x-freedom-original-topic"] == topic
    assert h["x-freedom-original-partition"] == str(sent[0].partition())
    assert h["x-freedom-original-offset"] == str(sent[0].offset())
    assert "too large" in h["x-freedom-error"]
    # Headers too large as well: the reason headers, the sizes and the key's digest only.
    import hashlib

    minimal = by_key[None]
    h = headers_of(minimal)
    assert "x-big" not in h and "x-action" not in h
    assert h["x-freedom-original-offset"] == str(sent[1].offset())
    assert h["x-freedom-value-omitted"] == "5"
    assert h["x-freedom-key-omitted"] == str(len(key))
    assert h["x-freedom-key-sha256"] == hashlib.sha256(key).hexdigest()
    assert h["x-freedom-headers-omitted"] == "2"
    assert "too large" in h["x-freedom-error"]


# ---------------------------------------------------------------------------- permanent results


def test_a_permanent_failure_is_dead_lettered_at_once_with_retry_count_0(
    apache_kafka, new_topic, tmp_path, delivery, monkeypatch
):
    """A DeliveryResult marked permanent (here: every 400, by a wrapper around the real transport)
    goes to fail-T at once; with retry_count = 0 it is neither redelivered nor holding the partition."""
    real = kafka_infra.make_transport

    class PermanentOn400:
        def __init__(self, inner: Any) -> None:
            self.inner = inner
            self.proxy_addr = inner.proxy_addr

        async def wait_until_reachable(self, deadline: float, stop: Any) -> bool:
            return await self.inner.wait_until_reachable(deadline, stop)

        async def deliver(self, *args: Any) -> DeliveryResult:
            result = await self.inner.deliver(*args)
            if result.status == 400:
                return DeliveryResult(
                    status=400,
                    error=result.error,
                    outcome=result.outcome,
                    reason=result.reason,
                    permanent=True,
                )
            return result

        async def aclose(self) -> None:
            await self.inner.aclose()

    monkeypatch.setattr(
        kafka_infra, "make_transport", lambda *a, **kw: PermanentOn400(real(*a, **kw))
    )
    bootstrap = apache_kafka.bootstrap
    topic = new_topic(bootstrap)
    journal = Journal()
    svc = event_service(
        tmp_path,
        bootstrap,
        journal,
        topic,
        lambda c: 400 if c.key == "PERM" else 200,
        retry_count=0,
        delivery=delivery,
    )
    group = svc.app.kafka_config.consumer_clients[0].group_id
    with svc:
        # The dead-letter topic exists from the start, also with retry_count = 0.
        assert (
            f"fail-{topic}"
            in AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10).topics
        )
        produce(
            bootstrap, topic, [{"key": b"PERM", "value": b"p"}, {"key": b"NEXT", "value": b"n"}]
        )
        # Committed once its dead letter was acknowledged: every dead letter is there now.
        wait_drained(bootstrap, reads_of(svc.app, topic), 30, what="every record settled")
        dead = read_all(bootstrap, f"fail-{topic}")
        wait_until(
            lambda: committed(bootstrap, group, topic)[0] == 2, 30, what="both offsets committed"
        )
    assert len(journal.of(key="PERM")) == 1 and len(journal.of(key="NEXT")) == 1
    assert [d.key() for d in dead] == [b"PERM"]
    h = headers_of(dead[0])
    assert h["x-retry-count"] == "0" and h["x-freedom-status"] == "400"
    assert h["x-freedom-error"] == "HTTP 400; a permanent failure: dead-lettered without retries"


def test_a_record_that_cannot_be_a_request_is_dead_lettered_at_once_with_retry_count_0(
    apache_kafka, new_topic, tmp_path, delivery
):
    """The real cause: headers over what a delivery may carry (delivery.MAX_HEADER_BYTES)."""
    bootstrap = apache_kafka.bootstrap
    topic = new_topic(bootstrap)
    journal = Journal()
    svc = event_service(tmp_path, bootstrap, journal, topic, retry_count=0, delivery=delivery)
    group = svc.app.kafka_config.consumer_clients[0].group_id
    huge = b"a" * 300_000
    with svc:
        produce(
            bootstrap,
            topic,
            [
                {"key": b"HUGE", "value": b"h", "headers": [("x-huge", huge)]},
                {"key": b"NEXT", "value": b"n"},
            ],
        )
        # Committed once its dead letter was acknowledged: every dead letter is there now.
        wait_drained(bootstrap, reads_of(svc.app, topic), 30, what="every record settled")
        dead = read_all(bootstrap, f"fail-{topic}")
        wait_until(
            lambda: committed(bootstrap, group, topic)[0] == 2, 30, what="both offsets committed"
        )
    assert [c.key for c in journal.of()] == ["NEXT"]
    assert [d.key() for d in dead] == [b"HUGE"]
    h = headers_of(dead[0])
    assert h["x-huge"] == huge.decode() and h["x-retry-count"] == "0"
    assert h["x-freedom-error"].startswith("the record cannot be sent as an HTTP request: ")
    assert h["x-freedom-error"].endswith("; a permanent failure: dead-lettered without retries")


# ---------------------------------------------------------------------------- finding 6


def test_reason_headers_from_outside_are_replaced_by_the_records_real_position(
    apache_kafka, new_topic, tmp_path, delivery
):
    bootstrap = apache_kafka.bootstrap
    topic = new_topic(bootstrap)
    journal = Journal()
    svc = event_service(
        tmp_path,
        bootstrap,
        journal,
        topic,
        lambda c: 500,
        retry_count=1,
        retry_interval_sec=0.2,
        delivery=delivery,
    )
    forged = [
        ("x-freedom-original-topic", b"payments"),
        ("X-Freedom-Original-Partition", b"7"),
        ("x-freedom-original-offset", b"12345"),
        ("x-freedom-first-failure-time", b"1999-01-01T00:00:00.000Z"),
        ("x-freedom-error", b"forged"),
        ("x-freedom-status", b"299"),
        ("x-freedom-value-omitted", b"5"),
        ("x-action", b"buy"),
    ]
    with svc:
        started = time.time()
        [original] = produce(
            bootstrap, topic, [{"key": b"K-FORGED", "value": b"v", "headers": forged}]
        )
        # Committed once its dead letter was acknowledged: every dead letter is there now.
        wait_drained(bootstrap, reads_of(svc.app, topic), 40, what="every record settled")
        dead = read_all(bootstrap, f"fail-{topic}")
    assert len(dead) == 1
    record = dead[0]
    assert record.value() == b"v"
    names = [k.lower() for k, _ in _all_headers(record)]
    assert _one(record, "x-freedom-original-topic") == topic
    assert _one(record, "x-freedom-original-partition") == str(original.partition())
    assert names.count("x-freedom-original-partition") == 1
    assert _one(record, "x-freedom-original-offset") == str(original.offset())
    assert "x-freedom-value-omitted" not in names
    assert _one(record, "x-action") == "buy"
    first = _one(record, "x-freedom-first-failure-time")
    assert first is not None
    assert datetime.datetime.fromisoformat(first.replace("Z", "+00:00")).timestamp() >= started - 5
    assert (
        _one(record, "x-freedom-error") == "HTTP 500" and _one(record, "x-freedom-status") == "500"
    )
    assert _one(record, "x-retry-count") == "1"


def test_a_go_style_retry_record_gets_no_invented_position(
    apache_kafka, new_topic, tmp_path, delivery
):
    """A Go freedom service writes retry records with only a decimal x-retry-count."""
    bootstrap = apache_kafka.bootstrap
    topic = new_topic(bootstrap)
    _topics(bootstrap, topic)
    journal = Journal()
    svc = event_service(
        tmp_path,
        bootstrap,
        journal,
        topic,
        lambda c: 500,
        retry_count=1,
        retry_interval_sec=0.2,
        delivery=delivery,
    )
    with svc:
        produce(
            bootstrap,
            f"retry-{topic}",
            [
                {
                    "key": b"K-GO",
                    "value": b"g",
                    "headers": [("x-retry-count", b"1"), ("x-action", b"buy")],
                }
            ],
        )
        # Committed once its dead letter was acknowledged: every dead letter is there now.
        wait_drained(bootstrap, reads_of(svc.app, topic), 40, what="every record settled")
        dead = read_all(bootstrap, f"fail-{topic}")
    assert [c.headers["x-retry-count"] for c in journal.of(key="K-GO")] == ["1"]
    assert len(dead) == 1
    h = headers_of(dead[0])
    assert h["x-freedom-original-topic"] == topic  # known: the topic retry-T retries
    assert "x-freedom-original-partition" not in h and "x-freedom-original-offset" not in h
    assert "x-freedom-first-failure-time" not in h
    assert (
        h["x-retry-count"] == "1" and h["x-freedom-error"] == "HTTP 500" and h["x-action"] == "buy"
    )


@pytest.mark.parametrize(
    "count", [b"-1", b"abc", b" 1", b"\xd9\xa1", b"99999999999999999999", None]
)
def test_a_malformed_retry_count_is_read_as_the_last_retry(
    apache_kafka, new_topic, tmp_path, count
):
    bootstrap = apache_kafka.bootstrap
    topic = new_topic(bootstrap)
    _topics(bootstrap, topic)
    journal = Journal()
    svc = event_service(
        tmp_path, bootstrap, journal, topic, lambda c: 500, retry_count=2, retry_interval_sec=0.2
    )
    headers = [("x-retry-count", count)] if count is not None else []
    with svc:
        produce(
            bootstrap,
            f"retry-{topic}",
            [{"key": b"K-BAD-COUNT", "value": b"b", "headers": headers}],
        )
        # Committed once its dead letter was acknowledged: every dead letter is there now.
        wait_drained(bootstrap, reads_of(svc.app, topic), 40, what="every record settled")
        dead = read_all(bootstrap, f"fail-{topic}")
    assert [c.headers["x-retry-count"] for c in journal.of()] == [
        "2"
    ]  # delivered once, as the last retry
    assert len(dead) == 1
    h = headers_of(dead[0])
    assert h["x-retry-count"] == "2"
    assert h["x-freedom-error"].startswith("HTTP 500; x-retry-count ")
    assert "is not a retry count: read as 2, the last retry" in h["x-freedom-error"]


# ---------------------------------------------------------------------------- headroom


def test_the_headroom_the_proxy_needs_under_the_size_limit(apache_kafka, new_topic, tmp_path):
    """What the proxy adds to a record on its retry topic, measured; docs/consumer-proxy.md states it."""

    bootstrap = apache_kafka.bootstrap
    topic = new_topic(bootstrap)

    from urllib.parse import quote

    from starlette.responses import Response

    def behave(call: Any) -> Any:
        if call.nth == 0 and call.key == "LONG":
            # The longest error the proxy writes: a reason of 500 three-byte characters, cut to 1,000 bytes.
            return Response(
                status_code=503,
                headers={"x-freedom-outcome": "retry", "x-freedom-reason": quote("€" * 600)},
            )
        return 500 if call.nth == 0 else 200

    journal = Journal()
    svc = event_service(
        tmp_path, bootstrap, journal, topic, behave, retry_count=1, retry_interval_sec=60
    )
    group = svc.app.kafka_config.consumer_clients[0].group_id
    with svc:
        produce(
            bootstrap, topic, [{"key": b"LONG", "value": b"v"}, {"key": b"PLAIN", "value": b"v"}]
        )
        # Both committed once their retry records were acknowledged (due only in 60 s).
        wait_drained(bootstrap, {group: [topic]}, 30, what="both records sent to the retry topic")
        retried = {r.key(): r for r in read_all(bootstrap, f"retry-{topic}")}

    def encoded(record: Any) -> int:  # the header bytes in Kafka's record format (v2)
        return sum(
            _varint(len(k.encode())) + len(k.encode()) + _varint(len(v or b"")) + len(v or b"")
            for k, v in record.headers() or []
        )

    longest, plain = encoded(retried[b"LONG"]), encoded(retried[b"PLAIN"])
    assert (
        len(headers_of(retried[b"LONG"])["x-freedom-error"].encode()) >= 997
    )  # 1,000 cut at a character
    assert longest <= 1250 + len(topic), longest  # the bound docs/consumer-proxy.md states
    assert plain <= 250 + len(topic), plain  # ... and the usual case ("HTTP 500")
    with open(os.environ.get("FREEDOM_HEADROOM_OUT", os.devnull), "a") as out:
        out.write(
            f"topic name {len(topic)} bytes: {longest} header bytes added at most, {plain} for HTTP 500\n"
        )


def _varint(n: int) -> int:
    """Bytes of a zig-zag varint (Kafka's record format)."""
    z, size = n << 1, 1
    while z >= 0x80:
        z >>= 7
        size += 1
    return size
