"""The handler chooses what happens to its record: retry, dead letter now, or drop."""

from __future__ import annotations

from starlette.responses import Response

import freedom
from freedom.testing import wait_until
from tests.services.event_app import Delivery, Journal, event_service, reads_of
from tests.services.kafka_tools import committed, headers_of, produce, read_all, wait_drained


def _dead_letter(call: Delivery) -> None:
    raise freedom.DeadLetter("not valid JSON: ünïcode")


def test_dead_letter_now_is_called_once_and_a_service_can_listen_on_the_fail_topic(
    broker, new_topic, tmp_path, delivery
):
    topic = new_topic(broker.bootstrap)
    journal = Journal()
    svc = event_service(
        tmp_path,
        broker.bootstrap,
        journal,
        topic,
        _dead_letter,
        fail_topic=f"fail-{topic}",
        retry_count=3,
        retry_interval_sec=0.2,
        delivery=delivery,
    )
    with svc:
        produce(
            broker.bootstrap,
            topic,
            [{"key": b"K-BAD", "value": b"{oops", "headers": [("x-action", b"buy")]}],
        )
        dead_call = wait_until(
            lambda: journal.of("dead"), 30, what="the dead-letter listener to get the record"
        )[0]
        # Every record of the topic, its retry topic and the fail topic (which the service listens
        # on too) committed: no second delivery or dead letter can still come.
        reads = reads_of(svc.app, topic)
        reads[next(iter(reads))].append(f"fail-{topic}")
        wait_drained(broker.bootstrap, reads, 30, what="the record and its dead letter settled")
        dead = read_all(broker.bootstrap, f"fail-{topic}")
    assert len(journal.of("event")) == 1
    assert len(dead) == 1
    h = headers_of(dead[0])
    assert dead[0].value() == b"{oops" and dead[0].key() == b"K-BAD"
    assert h["x-retry-count"] == "0" and h["x-action"] == "buy"
    assert h["x-freedom-status"] == "422"
    assert h["x-freedom-error"] == "HTTP 422, handler asked: dead-letter (not valid JSON: ünïcode)"
    # The fail- topic's listener is an ordinary event route: same key, value and headers.
    assert dead_call.key == "K-BAD" and dead_call.body == b"{oops"
    assert dead_call.headers["x-freedom-original-topic"] == topic


def test_retry_and_drop_outcomes(apache_kafka, new_topic, tmp_path, delivery):
    bootstrap = apache_kafka.bootstrap
    topic = new_topic(bootstrap)
    journal = Journal()

    def behave(call: Delivery) -> None:
        if call.key == "K-RETRY" and call.nth == 0:
            raise freedom.Retry("stock service down")
        if call.key == "K-DROP":
            raise freedom.Drop("duplicate order")

    svc = event_service(
        tmp_path,
        bootstrap,
        journal,
        topic,
        behave,
        retry_count=2,
        retry_interval_sec=0.2,
        delivery=delivery,
    )
    group = svc.app.kafka_config.consumer_clients[0].group_id
    with svc:
        produce(
            bootstrap,
            topic,
            [{"key": b"K-RETRY", "value": b"r"}, {"key": b"K-DROP", "value": b"d"}],
        )
        wait_until(
            lambda: len(journal.of(key="K-RETRY")) == 2,
            30,
            what="the retried record's second delivery",
        )
        wait_until(
            lambda: committed(bootstrap, group, topic)[0] == 2, 20, what="both originals committed"
        )
        # The retry record committed too: a dropped record that came back would have come by now.
        wait_drained(bootstrap, reads_of(svc.app, topic), 20, what="the retry record committed")
    assert [c.headers["x-retry-count"] for c in journal.of(key="K-RETRY")] == ["0", "1"]
    assert len(journal.of(key="K-DROP")) == 1
    assert read_all(bootstrap, f"fail-{topic}") == []
    retried = read_all(bootstrap, f"retry-{topic}")
    assert [r.key() for r in retried] == [b"K-RETRY"]
    assert (
        headers_of(retried[0])["x-freedom-error"]
        == "HTTP 503, handler asked: retry (stock service down)"
    )


def test_the_outcome_header_on_the_wire_decides_over_the_status(
    apache_kafka, new_topic, tmp_path, delivery
):
    """Any service (not only a freedom one) can answer with x-freedom-outcome."""
    bootstrap = apache_kafka.bootstrap
    topic = new_topic(bootstrap)
    journal = Journal()
    svc = event_service(
        tmp_path,
        bootstrap,
        journal,
        topic,
        lambda c: Response(status_code=200, headers={"x-freedom-outcome": "dead-letter"}),
        retry_count=3,
        retry_interval_sec=0.2,
        delivery=delivery,
    )
    with svc:
        produce(bootstrap, topic, [{"key": b"K-WIRE", "value": b"w"}])
        wait_until(lambda: journal.of(), 30, what="the delivery")
        wait_drained(bootstrap, reads_of(svc.app, topic), 30, what="the record settled")
        dead = read_all(bootstrap, f"fail-{topic}")
    assert [d.key() for d in dead] == [b"K-WIRE"]
    assert len(journal.of()) == 1
