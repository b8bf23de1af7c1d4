"""Several `[[consumer_clients]]` (clusters), each with its own group and retry settings."""

from __future__ import annotations

import uuid

from confluent_kafka.admin import AdminClient, NewTopic

from freedom.testing import ServiceThread, free_port, wait_until, write_config
from tests.services.event_app import Journal, event_app
from tests.services.kafka_tools import headers_of, produce, read_all, wait_drained


def test_two_clusters_each_with_its_own_group_and_retry_settings(
    apache_kafka, embedded_kafka, tmp_path
):
    topic = f"test-{uuid.uuid4().hex[:12]}"
    for bootstrap in (apache_kafka.bootstrap, embedded_kafka.bootstrap):
        admin = AdminClient({"bootstrap.servers": bootstrap})
        admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(20)
    port = free_port()
    fast = {"session.timeout.ms": 6000}
    write_config(
        tmp_path,
        app={"listen_addr": f"127.0.0.1:{port}"},
        kafka={
            "consumer": {"open": True, "proxy_addr": f"http://127.0.0.1:{port}"},
            "consumer_clients": [
                {
                    "servers": [apache_kafka.bootstrap],
                    "group_id": f"a-{uuid.uuid4().hex[:6]}",
                    "retry_count": 1,
                    "retry_group_id": f"ra-{uuid.uuid4().hex[:6]}",
                    "retry_prefix": "again-",
                    "retry_fail_prefix": "dead-",
                    "retry_interval_sec": 0.2,
                    "settings": fast,
                },
                {
                    "servers": [embedded_kafka.bootstrap],
                    "group_id": f"e-{uuid.uuid4().hex[:6]}",
                    "retry_count": 2,
                    "retry_group_id": f"re-{uuid.uuid4().hex[:6]}",
                    "retry_interval_sec": 0.2,
                    "settings": fast,
                },
            ],
        },
    )
    journal = Journal()
    app = event_app(tmp_path, journal, topic, lambda c: 500 if c.key.startswith("BAD") else 200)
    with ServiceThread(app):
        assert app.kafka_config is not None
        apache, embedded = app.kafka_config.consumer_clients
        produce(
            apache_kafka.bootstrap,
            topic,
            [{"key": b"OK-A", "value": b"a"}, {"key": b"BAD-A", "value": b"a"}],
        )
        produce(
            embedded_kafka.bootstrap,
            topic,
            [{"key": b"OK-E", "value": b"e"}, {"key": b"BAD-E", "value": b"e"}],
        )
        wait_until(lambda: len(journal.of(key="BAD-E")) == 3, 20, what="three deliveries of BAD-E")
        # On each cluster, every record and retry record committed: no delivery or dead letter
        # of them can still come.
        for bootstrap, client in (
            (apache_kafka.bootstrap, apache),
            (embedded_kafka.bootstrap, embedded),
        ):
            wait_drained(
                bootstrap,
                {client.group_id: [topic], client.retry_group_id: [client.retry_prefix + topic]},
                30,
                what=f"the records on {bootstrap} settled",
            )
        dead_a = read_all(apache_kafka.bootstrap, f"dead-{topic}")
        dead_e = read_all(embedded_kafka.bootstrap, f"fail-{topic}")
    assert len(journal.of(key="OK-A")) == 1 and len(journal.of(key="OK-E")) == 1
    # Apache's client: one retry through again-T, then dead-T; the embedded one: two retries, then fail-T.
    assert [c.headers["x-retry-count"] for c in journal.of(key="BAD-A")] == ["0", "1"]
    assert [c.headers["x-retry-count"] for c in journal.of(key="BAD-E")] == ["0", "1", "2"]
    assert [(d.key(), headers_of(d)["x-retry-count"]) for d in dead_a] == [(b"BAD-A", "1")]
    assert [(d.key(), headers_of(d)["x-retry-count"]) for d in dead_e] == [(b"BAD-E", "2")]
