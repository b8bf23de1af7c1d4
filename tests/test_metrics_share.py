"""/metrics for share groups (KIP-932): the acknowledgements, the delivery-count histogram, the
records held per partition and the lock, read from the live source at scrape time; no consumer
lag for a share group (its source may have librdkafka statistics, but no committed offset)."""

from __future__ import annotations

import asyncio
import collections
import uuid
from types import SimpleNamespace
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from freedom.observability import metrics
from freedom.testing import ServiceThread, free_port, kafka_config, wait_until, write_config
from tests.services.event_app import Journal, event_app
from tests.services.kafka_tools import create_topic, produce

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


class FakeShareSource:
    """The public attributes of a share group's source (sources/share.py, MemoryShareSource)."""

    shared = True

    def __init__(self) -> None:
        self.acknowledgements: collections.Counter[tuple[str, str]] = collections.Counter()
        self.delivery_counts: collections.Counter[tuple[str, int]] = collections.Counter()
        self.lock_sec = 35.0
        self.offset_reset = "earliest"
        self.held: dict[tuple[str, int], int] = {}

    def open_count(self, tp: tuple[str, int]) -> int:
        return self.held.get(tp, 0)


def _app(*groups: Any, lag: dict[str, dict[tuple[str, int], int]] | None = None) -> Any:
    stats = {gid: SimpleNamespace(lag=lags, down_since=None) for gid, lags in (lag or {}).items()}
    proxy = SimpleNamespace(groups=list(groups), observer=SimpleNamespace(lag_stats=stats))
    return SimpleNamespace(kafka=SimpleNamespace(proxies=[proxy]))


def _group(group_id: str, source: Any, topics: list[str], lanes: list[tuple[str, int]]) -> Any:
    plans = {t: SimpleNamespace(source_topic=t) for t in topics}
    return SimpleNamespace(
        group_id=group_id,
        source=source,
        plans=plans,
        lanes={tp: SimpleNamespace(paused=False, pause_reasons=()) for tp in lanes},
        running=2,
    )


def scrape(app: Any) -> Samples:
    text = asyncio.run(metrics.exposition(app)).decode()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def sample(samples: Samples, name: str, **labels: str) -> float | None:
    want = frozenset(labels.items())
    found = [v for (n, ls), v in samples.items() if n == name and ls == want]
    return found[0] if found else None


G = "messaging_consumer_group_name"
T = "messaging_destination_name"
P = "messaging_destination_partition_id"


def test_share_group_families_read_at_scrape_time() -> None:
    source = FakeShareSource()
    group = _group("orders-share", source, ["orders"], [("orders", 0), ("orders", 1)])
    app = _app(group, lag={"orders-share": {("orders", 0): 99}})
    source.acknowledgements.update({("orders", "accept"): 7, ("orders", "release"): 2})
    source.delivery_counts.update({("orders", 1): 8, ("orders", 2): 1, ("orders", 4): 1})
    source.held[("orders", 1)] = 3

    s = scrape(app)
    labels = {G: "orders-share", T: "orders"}
    ack = "freedom_share_acknowledgements_total"
    assert sample(s, ack, **labels, type="accept") == 7
    assert sample(s, ack, **labels, type="release") == 2
    assert sample(s, ack, **labels, type="reject") == 0  # every type from the start
    hist = "freedom_share_delivery_count"
    assert sample(s, f"{hist}_bucket", **labels, le="1.0") == 8
    assert sample(s, f"{hist}_bucket", **labels, le="2.0") == 9
    assert sample(s, f"{hist}_bucket", **labels, le="3.0") == 9
    assert sample(s, f"{hist}_bucket", **labels, le="5.0") == 10
    assert sample(s, f"{hist}_bucket", **labels, le="10.0") == 10
    assert sample(s, f"{hist}_bucket", **labels, le="+Inf") == 10
    assert sample(s, f"{hist}_count", **labels) == 10
    assert sample(s, f"{hist}_sum", **labels) == 8 + 2 + 4
    held = "freedom_share_records_held"
    assert sample(s, held, **labels, **{P: "0"}) == 0
    assert sample(s, held, **labels, **{P: "1"}) == 3
    assert sample(s, "freedom_share_lock_seconds", **{G: "orders-share"}) == 35.0
    # The delivery gauges are a classic group's; the lag is not (no committed offset).
    assert sample(s, "freedom_deliveries_in_flight", **{G: "orders-share"}) == 2
    assert not [k for k in s if k[0] == "freedom_consumer_lag_messages"]

    # Read again at the next scrape: the live objects, not a copy.
    source.acknowledgements[("orders", "reject")] += 1
    source.held[("orders", 1)] = 0
    s = scrape(app)
    assert sample(s, ack, **labels, type="reject") == 1
    assert sample(s, held, **labels, **{P: "1"}) == 0


def test_classic_groups_keep_their_lag_and_get_no_share_families() -> None:
    classic = _group("orders", SimpleNamespace(shared=False), ["orders"], [("orders", 0)])
    s = scrape(_app(classic, lag={"orders": {("orders", 0): 4}}))
    assert sample(s, "freedom_consumer_lag_messages", **{G: "orders", T: "orders", P: "0"}) == 4
    assert not [k for k in s if k[0].startswith("freedom_share_")]


def test_a_source_without_statistics_or_lock_does_not_break_the_scrape() -> None:
    """A share consumer may give no librdkafka statistics, and a source no lock yet."""
    source = FakeShareSource()
    source.lock_sec = None  # type: ignore[assignment]
    group = _group("g-share", source, ["t"], [])
    s = scrape(_app(group))  # no lag statistics for the group at all
    assert (
        sample(s, "freedom_share_acknowledgements_total", **{G: "g-share", T: "t"}, type="accept")
        == 0
    )
    assert sample(s, "freedom_share_lock_seconds", **{G: "g-share"}) is None
    assert sample(s, "freedom_share_delivery_count_count", **{G: "g-share", T: "t"}) == 0


def test_a_share_group_service_on_apache_kafka(apache_kafka, tmp_path):
    """A live share group (sources/share.py): one record fails once and is released (delivered
    again, delivery count 2), the others are accepted; the families follow the source."""
    bootstrap = apache_kafka.bootstrap
    topic = create_topic(bootstrap, f"metrics-share-{uuid.uuid4().hex[:8]}", partitions=2)
    group = f"share-{uuid.uuid4().hex[:8]}"
    port = free_port()
    write_config(
        tmp_path,
        app={"listen_addr": f"127.0.0.1:{port}"},
        kafka=kafka_config(bootstrap, port, group_id=group, share_group=True),
    )
    journal = Journal()

    def behave(call: Any) -> int:
        return 500 if call.key == "bad" and call.nth == 0 else 200

    svc = ServiceThread(event_app(tmp_path, journal, topic, behave))
    with svc:
        produce(
            bootstrap,
            topic,
            [{"key": b"bad", "value": b"{}", "partition": 0}]
            + [{"key": f"ok-{i}".encode(), "value": b"{}", "partition": i % 2} for i in range(3)],
        )
        labels = {G: group, T: topic}

        def settled() -> Samples | None:
            answer = httpx.get(f"{svc.base_url}/metrics", timeout=10)
            out: Samples = {}
            for family in text_string_to_metric_families(answer.text):
                for s in family.samples:
                    out[(s.name, frozenset(s.labels.items()))] = s.value
            accepted = sample(out, "freedom_share_acknowledgements_total", **labels, type="accept")
            held = [v for (n, _), v in out.items() if n == "freedom_share_records_held"]
            return out if accepted == 4 and held and not any(held) else None

        s = wait_until(settled, 60, what="4 records accepted, none held")
    ack = "freedom_share_acknowledgements_total"
    assert sample(s, ack, **labels, type="release") == 1  # the failed delivery, given back
    assert sample(s, ack, **labels, type="reject") == 0
    hist = "freedom_share_delivery_count"
    assert sample(s, f"{hist}_bucket", **labels, le="1.0") == 4
    assert sample(s, f"{hist}_bucket", **labels, le="2.0") == 5  # "bad" again, delivery count 2
    assert sample(s, f"{hist}_count", **labels) == 5
    assert sample(s, "freedom_share_lock_seconds", **{G: group}) == 35.0  # 30 s + 5 s
    # The same delivery metrics as a classic group's; no consumer lag.
    consumed = "messaging_client_consumed_messages_total"
    assert sum(v for (n, ls), v in s.items() if n == consumed and (G, group) in ls) == 5
    assert not [k for k in s if k[0] == "freedom_consumer_lag_messages" and (G, group) in k[1]]
