"""Prometheus metrics of the consumer proxy and the producer, served at `/metrics` (docs/observability.md).

Names follow the OpenTelemetry messaging conventions where they define one, translated to
Prometheus style (dots become underscores, the unit and `_total` are suffixes):

- `messaging_process_duration_seconds` (histogram): one delivery to the handler, by destination
  (the listened or retry topic), partition, consumer group, `outcome` and `error_type`;
- `messaging_client_consumed_messages_total`: deliveries to the handler;
- `messaging_client_sent_messages_total`: records sent (published, retried, dead-lettered), by
  destination and `error_type` when the broker did not take one;
- `messaging_client_operation_duration_seconds` (histogram): a send awaited one at a time
  (`msg.publish()`, the proxy's retry and dead-letter produces) until the broker's answer.

Beyond the conventions, with a `freedom_` prefix: consumer lag per partition (classic groups),
deliveries in flight,
records waiting in retry topics, dead letters produced, paused partitions, outbox rows pending and
the age of the oldest; and the web console's wrong tokens, and its requests refused while those
are slowed (console/throttle.py). Share groups add their acknowledgements, delivery counts and
records held (share_metrics.py).

The hot path pays one histogram observation per delivery (children cached per label set; the
consumed counter is summed from it at scrape time), and a dictionary increment per produced
record; the gauges are read from the live objects when `/metrics` is scraped. Lag comes from librdkafka's statistics (served on
the consumer thread inside `consume()`, so no consumer call is made from anywhere else).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from freedom.observability.share_metrics import is_shared, share_collector

if TYPE_CHECKING:
    from freedom.kafka.consumer.delivery import DeliveryResult
    from freedom.kafka.consumer.group import ConsumerGroup, TopicPlan
    from freedom.kafka.consumer.retry import Plan

log = logging.getLogger("freedom.observability.metrics")

__all__ = [
    "CONTENT_TYPE_LATEST",
    "DeliveryMetrics",
    "LagStats",
    "exposition",
    "count_sent",
    "count_sent_name",
    "observe_send",
]

SYSTEM = "kafka"

#: How often librdkafka reports its statistics (lag) to a consumer group, in ms.
LAG_STATS_INTERVAL_MS = 5000

#: Seconds: from 0.5 ms (an in-process call) to 30 s (the delivery timeout).
DURATION_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)

_DELIVERY = (
    "messaging_system",
    "messaging_operation_name",
    "messaging_destination_name",
    "messaging_destination_partition_id",
    "messaging_consumer_group_name",
)
_GROUP = "messaging_consumer_group_name"
_TOPIC = "messaging_destination_name"
_PARTITION = "messaging_destination_partition_id"

PROCESS_DURATION = Histogram(
    "messaging_process_duration_seconds",
    "Duration of one delivery of a record to its handler (HTTP call or in-process call), by what happened next.",
    [*_DELIVERY, "outcome", "error_type"],
    buckets=DURATION_BUCKETS,
)
OPERATION_DURATION = Histogram(
    "messaging_client_operation_duration_seconds",
    "Duration of a send awaited on its own (msg.publish(), the proxy's retry and dead-letter produces), "
    "until the broker answered.",
    ["messaging_system", "messaging_operation_name", _TOPIC, "error_type"],
    buckets=DURATION_BUCKETS,
)
DEAD_LETTERS = Counter(
    "freedom_dead_letters",
    "Records the consumer proxy produced to a dead-letter topic (acknowledged by the broker).",
    [_TOPIC, "source_topic", _GROUP, "error_type"],
)
CONSOLE_AUTH_FAILURES = Counter(
    "freedom_console_auth_failures",
    "Wrong tokens presented to the web console, by kind "
    "(bearer: the API's Authorization header; login: the log-in form).",
    ["kind"],
)
CONSOLE_AUTH_THROTTLED = Counter(
    "freedom_console_auth_throttled",
    "Web console requests refused (429) without their token checked: too many answers to wrong "
    "tokens of their address were waiting.",
    ["kind"],
)
IN_FLIGHT = Gauge(
    "freedom_deliveries_in_flight",
    "Deliveries started and not finished, per consumer group.",
    [_GROUP],
    registry=None,
)
LAG = Gauge(
    "freedom_consumer_lag_messages",
    "High watermark minus committed offset, per assigned partition (librdkafka statistics, "
    f"refreshed every {LAG_STATS_INTERVAL_MS // 1000} s).",
    [_GROUP, _TOPIC, _PARTITION],
    registry=None,
)
RETRY_WAITING = Gauge(
    "freedom_retry_waiting_messages",
    "Records in a retry topic not handled yet (the retry group's lag over its partitions).",
    [_GROUP, _TOPIC, "source_topic"],
    registry=None,
)
PAUSED = Gauge(
    "freedom_paused_partitions",
    "Partitions the consumer proxy paused, by reason "
    "(backlog, window: flow control; delay: a retry not due yet).",
    [_GROUP, "reason"],
    registry=None,
)
OUTBOX_PENDING = Gauge(
    "freedom_outbox_pending_rows", "Outbox rows not published yet.", registry=None
)
OUTBOX_AGE = Gauge(
    "freedom_outbox_oldest_pending_age_seconds",
    "Age of the oldest outbox row not published yet (0 when none).",
    registry=None,
)
#: The gauges of one application's live objects, set at each scrape (exposition()).
_GAUGES = (IN_FLIGHT, LAG, RETRY_WAITING, PAUSED, OUTBOX_PENDING, OUTBOX_AGE)


# ----------------------------------------------------------------------------- sent records

#: Counts of sent records, one dictionary per thread that counts (librdkafka's delivery-report
#: threads, the event loop): each is written by its own thread only, so no lock is taken per record.
_sent_by_thread: list[dict[tuple[str, str], int]] = []
_local = threading.local()
_register_lock = threading.Lock()


def count_sent(topic: str, err: Any) -> None:
    """Count one record the broker answered for (any thread): `err` None when it took it, else
    the librdkafka KafkaError (its name becomes `error_type`). publish_batch reports hundreds of
    thousands of records per second: a dictionary increment of the calling thread's own."""
    count_sent_name(topic, "" if err is None else err.name())


def count_sent_name(topic: str, error_type: str) -> None:
    """Count one record sent to `topic` ("" as `error_type`: the broker took it)."""
    try:
        counts: dict[tuple[str, str], int] = _local.sent
    except AttributeError:
        counts = _local.sent = {}
        with _register_lock:
            _sent_by_thread.append(counts)
    key = (topic, error_type)
    counts[key] = counts.get(key, 0) + 1


def _sent_totals() -> dict[tuple[str, str], int]:
    with _register_lock:
        dicts = list(_sent_by_thread)
    totals: dict[tuple[str, str], int] = {}
    for counts in dicts:
        for (
            key,
            n,
        ) in counts.copy().items():  # copy(): one step under the GIL, while its thread counts on
            totals[key] = totals.get(key, 0) + n
    return totals


class _SentCollector(Collector):
    def collect(self) -> Iterable[Metric]:
        family = CounterMetricFamily(
            "messaging_client_sent_messages",
            "Records sent to the broker (published, retried, dead-lettered) and answered, "
            "by destination; error_type names the error of those it did not take.",
            labels=["messaging_system", "messaging_operation_name", _TOPIC, "error_type"],
        )
        for (topic, error), n in sorted(_sent_totals().items()):
            family.add_metric([SYSTEM, "send", topic, error], n)
        yield family


REGISTRY.register(_SentCollector())


class _ConsumedCollector(Collector):
    """messaging_client_consumed_messages_total, summed from the process histogram's counts at
    scrape time (a second counter per delivery would double the hot-path cost)."""

    def collect(self) -> Iterable[Metric]:
        family = CounterMetricFamily(
            "messaging_client_consumed_messages",
            "Records delivered to a handler (each delivery attempt counts).",
            labels=[*_DELIVERY, "error_type"],
        )
        counts: dict[tuple[str, ...], float] = {}
        for metric in PROCESS_DURATION.collect():
            for sample in metric.samples:
                if sample.name.endswith("_count"):
                    key = (*(sample.labels[k] for k in _DELIVERY), sample.labels["error_type"])
                    counts[key] = counts.get(key, 0.0) + sample.value
        for key, n in sorted(counts.items()):
            family.add_metric(list(key), n)
        yield family


REGISTRY.register(_ConsumedCollector())


_send_children: dict[tuple[str, str], Any] = {}


def observe_send(topic: str, seconds: float, error_type: str = "") -> None:
    """One send awaited on its own took `seconds` (with `error_type` when it failed)."""
    child = _send_children.get((topic, error_type))
    if child is None:
        child = OPERATION_DURATION.labels(SYSTEM, "send", topic, error_type)
        if len(_send_children) < 10_000:  # bounded: generated topic names must not grow it for ever
            _send_children[(topic, error_type)] = child
    child.observe(seconds)


# ----------------------------------------------------------------------------- deliveries


def error_type(result: DeliveryResult) -> str:
    """A low-cardinality name of a delivery's failure ("" when it succeeded): the HTTP status, the
    handler's outcome, or the kind of transport error."""
    if result.ok:
        return ""
    if result.outcome is not None:
        return f"outcome_{result.outcome.replace('-', '_')}"
    if result.status is not None:
        return str(result.status)
    text = result.error or ""
    if text.startswith("timed out"):
        return "timeout"
    if result.permanent:
        return "unsendable"
    name = text.partition(":")[0]
    return name if name.isidentifier() else "_OTHER"


def outcome_of(result: DeliveryResult, step: Plan) -> str:
    """What happened to the record after the delivery: ok, dropped, retry, dead_letter or redeliver."""
    if step.next == "done":
        return "dropped" if result.outcome == "drop" else "ok"
    return step.next.replace("-", "_")


class DeliveryMetrics:
    """The consumer proxy's per-delivery metrics for one `[[consumer_clients]]` entry: one histogram
    observation per delivery (the label children are looked up once per label set)."""

    def __init__(self, group_id: str, retry_group_id: str | None) -> None:
        self.group_id = group_id
        self.retry_group_id = retry_group_id
        self._ok: dict[tuple[str, int], Any] = {}  # (topic, partition) -> histogram child of "ok"
        self._other: dict[tuple[str, int, str, str], Any] = {}  # ... with outcome and error_type

    def _child(self, topic: str, partition: int, plan: TopicPlan, outcome: str, error: str) -> Any:
        group = (self.retry_group_id if topic != plan.source_topic else None) or self.group_id
        return PROCESS_DURATION.labels(
            SYSTEM, "process", topic, str(partition), group, outcome, error
        )

    def delivered(
        self, record: Any, plan: TopicPlan, result: DeliveryResult, step: Plan, seconds: float
    ) -> str | None:
        """One delivery of `record` took `seconds` and led to `step`; returns the outcome unless it
        is "ok" (the handler took the record)."""
        topic = record.topic()
        partition = record.partition()
        if step.next == "done" and result.outcome is None:  # the common case, first
            child = self._ok.get((topic, partition))
            if child is None:
                child = self._ok[(topic, partition)] = self._child(topic, partition, plan, "ok", "")
            child.observe(seconds)
            return None
        outcome = outcome_of(result, step)
        error = error_type(result)
        key = (topic, partition, outcome, error)
        child = self._other.get(key)
        if child is None:
            child = self._child(topic, partition, plan, outcome, error)
            if (
                len(self._other) < 10_000
            ):  # bounded: topics and partitions are few, errors are classes
                self._other[key] = child
        child.observe(seconds)
        return outcome

    def dead_lettered(
        self, topic: str, plan: TopicPlan, result: DeliveryResult, from_retry: bool
    ) -> None:
        """The broker acknowledged a dead letter of a record of `plan.source_topic` on `topic`."""
        group = (self.retry_group_id if from_retry else None) or self.group_id
        DEAD_LETTERS.labels(topic, plan.source_topic, group, error_type(result)).inc()


# ----------------------------------------------------------------------------- lag (librdkafka statistics)


class LagStats:
    """librdkafka's statistics callback of one consumer group: keeps the lag of its assigned
    partitions, and since when no broker connection of the group's consumer is up (/readyz,
    health.py).

    librdkafka calls it on the consumer thread (inside `consume()`), every LAG_STATS_INTERVAL_MS.
    """

    def __init__(self, user_callback: Callable[[str], None] | None = None) -> None:
        self.lag: dict[tuple[str, int], int] = {}
        self.at = 0.0  # time.time() of the last statistics
        #: time.monotonic() of the first statistics of the current run that showed no broker
        #: connection up (state "UP"); None while one is up (or before the first statistics).
        self.down_since: float | None = None
        self._user = user_callback

    def __call__(self, stats_json: str) -> None:
        try:
            stats = json.loads(stats_json)
            brokers = (stats.get("brokers") or {}).values()
            if any(b.get("state") == "UP" and b.get("source") != "internal" for b in brokers):
                self.down_since = None
            elif self.down_since is None:
                self.down_since = time.monotonic()
            lag: dict[tuple[str, int], int] = {}
            for topic, t in (stats.get("topics") or {}).items():
                for p, part in (t.get("partitions") or {}).items():
                    partition = int(p)
                    if partition < 0 or not part.get("desired"):
                        continue  # the unassigned placeholder (-1), partitions of other members
                    value = part.get("consumer_lag", -1)
                    if isinstance(value, int) and value >= 0:
                        lag[(topic, partition)] = value
            self.lag = lag
            self.at = time.time()
        except Exception:  # noqa: BLE001 - a metric must never break the consumer thread
            log.debug("could not read librdkafka statistics", exc_info=True)
        if self._user is not None:
            self._user(stats_json)

    @classmethod
    def settings(cls, settings: dict[str, Any]) -> tuple[dict[str, Any], LagStats]:
        """`settings` with this callback (a user's own `stats_cb` is still called, and a user's
        `statistics.interval.ms` kept), and the callback."""
        stats = cls(settings.get("stats_cb"))
        out = {**settings, "stats_cb": stats}
        out.setdefault("statistics.interval.ms", LAG_STATS_INTERVAL_MS)
        return out, stats


# ----------------------------------------------------------------------------- scrape


def _group_gauges(groups: Iterable[tuple[ConsumerGroup, LagStats | None, dict[str, str]]]) -> None:
    """Set the gauges of live consumer groups; `retry_of` maps a retry topic to its source topic."""
    for group, stats, retry_of in groups:
        gid = group.group_id
        IN_FLIGHT.labels(gid).set(group.running)
        reasons: dict[str, int] = {"backlog": 0, "window": 0, "delay": 0}
        for lane in list(group.lanes.values()):
            if lane.paused:
                for reason in lane.pause_reasons:
                    reasons[reason] = reasons.get(reason, 0) + 1
        for reason, n in reasons.items():
            PAUSED.labels(gid, reason).set(n)
        waiting: dict[str, int] = {t: 0 for t in retry_of}
        # No statistics (yet), or a share group: no committed offset, no lag (share_metrics.py).
        lags = stats.lag if stats is not None and not is_shared(group) else {}
        for (topic, partition), lag in lags.items():
            LAG.labels(gid, topic, str(partition)).set(lag)
            if topic in waiting:
                waiting[topic] += lag
        for topic, n in waiting.items():
            RETRY_WAITING.labels(gid, topic, retry_of[topic]).set(n)


async def _outbox_gauges(app: Any) -> bool:
    """Set the outbox gauges of `app`'s database; False when it has none."""
    database: Any = getattr(app, "database", None)
    if getattr(database, "engine", None) is None:
        return False
    import asyncio
    import datetime as dt

    try:
        pending, oldest = await asyncio.wait_for(database.pending_summary(), 2.0)
    except Exception:  # noqa: BLE001 - the scrape still answers, without the outbox gauges
        log.warning("metrics: could not read the outbox", exc_info=True)
        return False
    OUTBOX_PENDING.set(pending)
    if oldest is None:
        OUTBOX_AGE.set(0)
    else:
        if oldest.tzinfo is None:
            oldest = oldest.replace(tzinfo=dt.UTC)
        OUTBOX_AGE.set(max(0.0, (dt.datetime.now(dt.UTC) - oldest).total_seconds()))
    return True


def consumer_groups(app: Any) -> Iterator[tuple[ConsumerGroup, LagStats | None, dict[str, str]]]:
    """Every live consumer group of `app`, with its lag statistics and its retry topics."""
    kafka = getattr(app, "kafka", None)
    for proxy in list(getattr(kafka, "proxies", None) or ()):
        for group in proxy.groups:
            retry_of = {t: p.source_topic for t, p in group.plans.items() if t != p.source_topic}
            yield group, proxy.observer.lag_stats.get(group.group_id), retry_of


class _AppGauges(Collector):
    """The gauges of one application (its live groups and its outbox), collected into one registry."""

    outbox = False  # the last scraped application has a database

    def collect(self) -> Iterable[Metric]:
        for gauge in _GAUGES:
            if self.outbox or gauge not in (OUTBOX_PENDING, OUTBOX_AGE):
                yield from gauge.collect()


_gauges_collector = _AppGauges()
REGISTRY.register(_gauges_collector)


async def exposition(app: Any, registry: CollectorRegistry = REGISTRY) -> bytes:
    """The Prometheus text of `registry` (the process's default one, which freedom's metrics are
    in, the user's own included), with the gauges read from `app`'s live objects now."""
    for gauge in (IN_FLIGHT, LAG, RETRY_WAITING, PAUSED):
        gauge.clear()
    groups = list(consumer_groups(app))
    _group_gauges(groups)
    _gauges_collector.outbox = await _outbox_gauges(app)
    share_collector.groups = [group for group, _, _ in groups]  # read by the collector, just below
    return generate_latest(registry)
