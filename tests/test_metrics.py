"""GET /metrics after a known workload, on Apache Kafka, read over real HTTP: 10 records published by
the service, 7 handled, 3 failing until they are dead-lettered through one retry; the lag while
the handler holds the first record, and after."""

from __future__ import annotations

import threading
import time

import httpx
from prometheus_client.parser import text_string_to_metric_families

from freedom.observability import metrics
from freedom.testing import ServiceThread, wait_until
from tests.services.event_app import Journal, event_service
from tests.services.kafka_tools import wait_drained


def scrape(base_url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of /metrics: (name, labels) -> value."""
    answer = httpx.get(f"{base_url}/metrics", timeout=10)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(answer.text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    """The sum of the samples of `name` whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def test_metrics_after_seven_ok_and_three_dead_letters(
    apache_kafka, new_topic, tmp_path, monkeypatch
):
    monkeypatch.setattr(metrics, "LAG_STATS_INTERVAL_MS", 300)
    bootstrap = apache_kafka.bootstrap
    topic = new_topic(bootstrap)
    journal = Journal()
    hold = threading.Event()

    async def behave(call):
        if call.key == "K0" and call.nth == 0:
            import asyncio

            while (
                not hold.is_set()
            ):  # the handler holds the first record: the others wait (sequential)
                await asyncio.sleep(0.02)
        return 500 if call.key in ("K7", "K8", "K9") else 200

    svc = event_service(
        tmp_path, bootstrap, journal, topic, behave, retry_count=1, retry_interval_sec=0.2
    )
    group = svc.app.kafka_config.consumer_clients[0].group_id
    retry_group = svc.app.kafka_config.consumer_clients[0].retry_group_id
    with svc:

        async def publish() -> None:
            for i in range(10):
                await svc.app.producer.new_msg(topic, b'{"n": 1}').set_key(f"K{i}").publish()

        svc.run(publish())
        wait_until(lambda: journal.of(key="K0"), 20, what="the first delivery")
        held = wait_until(
            lambda: (
                (s := scrape(svc.base_url))
                and value(s, "freedom_consumer_lag_messages", messaging_destination_name=topic)
                == 10
                and s
            ),
            20,
            what="lag 10 while the first record is held",
        )
        assert value(held, "freedom_deliveries_in_flight", messaging_consumer_group_name=group) == 1
        assert (
            value(
                held,
                "messaging_client_sent_messages_total",
                messaging_destination_name=topic,
                error_type="",
            )
            == 10
        )
        # Held past 1 s, so that its duration is in a bucket of its own (le > 1.0) below.
        wait_until(
            lambda: time.time() - journal.of(key="K0")[0].at > 1.2,
            10,
            what="the first record held 1.2 s",
        )
        hold.set()
        wait_drained(
            bootstrap,
            {group: [topic], retry_group: [f"retry-{topic}"]},
            30,
            what="the records and their retries settled",
        )

        def settled():
            s = scrape(svc.base_url)
            return (
                s
                if (
                    value(
                        s, "freedom_dead_letters_total", messaging_destination_name=f"fail-{topic}"
                    )
                    == 3
                    and value(s, "freedom_consumer_lag_messages", messaging_destination_name=topic)
                    == 0
                    and value(s, "freedom_retry_waiting_messages", source_topic=topic) == 0
                )
                else None
            )

        s = wait_until(settled, 30, what="3 dead letters counted and no lag left")
    main = {"messaging_destination_name": topic, "messaging_consumer_group_name": group}
    retry = {
        "messaging_destination_name": f"retry-{topic}",
        "messaging_consumer_group_name": retry_group,
    }
    assert value(s, "messaging_client_consumed_messages_total", **main) == 10
    assert value(s, "messaging_client_consumed_messages_total", **retry) == 3
    assert (
        value(s, "messaging_process_duration_seconds_count", **main, outcome="ok", error_type="")
        == 7
    )
    assert (
        value(
            s, "messaging_process_duration_seconds_count", **main, outcome="retry", error_type="500"
        )
        == 3
    )
    assert (
        value(
            s,
            "messaging_process_duration_seconds_count",
            **retry,
            outcome="dead_letter",
            error_type="500",
        )
        == 3
    )
    assert (
        value(s, "messaging_process_duration_seconds_count", messaging_destination_name=topic) == 10
    )
    # The held record took more than 1.2 s: every bucket up to 1 s counts only the 6 others.
    assert (
        value(s, "messaging_process_duration_seconds_bucket", **main, outcome="ok", le="1.0") == 6
    )
    assert (
        value(s, "messaging_process_duration_seconds_bucket", **main, outcome="ok", le="+Inf") == 7
    )
    assert (
        value(
            s,
            "freedom_dead_letters_total",
            messaging_destination_name=f"fail-{topic}",
            source_topic=topic,
            messaging_consumer_group_name=retry_group,
            error_type="500",
        )
        == 3
    )
    sent = {"messaging_system": "kafka", "messaging_operation_name": "send", "error_type": ""}
    assert (
        value(s, "messaging_client_sent_messages_total", messaging_destination_name=topic, **sent)
        == 10
    )
    assert (
        value(
            s,
            "messaging_client_sent_messages_total",
            messaging_destination_name=f"retry-{topic}",
            **sent,
        )
        == 3
    )
    assert (
        value(
            s,
            "messaging_client_sent_messages_total",
            messaging_destination_name=f"fail-{topic}",
            **sent,
        )
        == 3
    )
    for destination, n in ((topic, 10), (f"retry-{topic}", 3), (f"fail-{topic}", 3)):
        assert (
            value(
                s,
                "messaging_client_operation_duration_seconds_count",
                messaging_destination_name=destination,
                error_type="",
            )
            == n
        )
    assert value(s, "freedom_deliveries_in_flight", messaging_consumer_group_name=group) == 0
    assert (
        value(
            s,
            "freedom_consumer_lag_messages",
            messaging_consumer_group_name=group,
            messaging_destination_name=topic,
            messaging_destination_partition_id="0",
        )
        == 0
    )
    assert (
        "freedom_paused_partitions",
        frozenset({("messaging_consumer_group_name", retry_group), ("reason", "delay")}),
    ) in s
    assert len(journal.of()) == 13  # 10 first deliveries, 3 retries


def test_outbox_gauges_while_the_relay_cannot_publish(apache_kafka, tmp_path):
    """Another instance holds the relay lease: the rows wait, /metrics shows how many and how old; the
    lease is given back, the relay publishes them, the gauges fall to 0."""
    import datetime as dt
    import uuid

    from sqlalchemy import create_engine, delete, insert

    from freedom.domain.outbox import lease, metadata
    from freedom.testing import free_port, kafka_config, write_config
    from tests.apps import Recorder
    from tests.outbox.apps import shop_app
    from tests.outbox.db import unique_event

    db_path = tmp_path / "service.db"
    engine = create_engine(f"sqlite:///{db_path}")
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(
            insert(lease).values(
                name="relay",
                owner="another-instance",
                expires_at=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1),
            )
        )
    name, _ = unique_event()
    port = free_port()
    conf = write_config(
        tmp_path / "conf",
        app={"listen_addr": f"127.0.0.1:{port}"},
        kafka=kafka_config(
            apache_kafka.bootstrap,
            port,
            group_id=f"g-{uuid.uuid4().hex[:8]}",
            initial_offset="earliest",
            settings={"session.timeout.ms": 6000},
        ),
    )
    recorder = Recorder()
    try:
        with ServiceThread(
            shop_app(conf, f"sqlite+aiosqlite:///{db_path}", recorder, name, relay_interval_sec=0.2)
        ) as svc:
            for goods in (1, 2, 3):
                httpx.get(f"{svc.base_url}/shop/shopping/{goods}", timeout=30).raise_for_status()
            wait_until(
                lambda: (
                    value(scrape(svc.base_url), "freedom_outbox_oldest_pending_age_seconds") >= 0.5
                ),
                10,
                what="the oldest pending row half a second old",
            )
            s = scrape(svc.base_url)
            assert value(s, "freedom_outbox_pending_rows") == 3
            assert recorder.snapshot() == []
            with engine.begin() as conn:
                conn.execute(delete(lease))
            wait_until(
                lambda: len(recorder.snapshot()) == 3,
                30,
                what="the 3 events after the lease was freed",
            )
            s = wait_until(
                lambda: (
                    (s := scrape(svc.base_url))
                    and value(s, "freedom_outbox_pending_rows") == 0
                    and s
                ),
                10,
                what="no outbox row pending",
            )
            assert value(s, "freedom_outbox_oldest_pending_age_seconds") == 0
    finally:
        engine.dispose()
