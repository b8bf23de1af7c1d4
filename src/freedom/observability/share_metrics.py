"""The metrics of share groups (KIP-932), served at `/metrics` with the others (docs/observability.md).

A share group's members acknowledge each record on its own, and the broker counts its deliveries;
its source (sources/share.py, or the test broker's) keeps the counts this module reads when
`/metrics` is scraped:

- `freedom_share_acknowledgements_total` (counter): records acknowledged, by group, topic and
  `type` (accept: finished; release: given back for another delivery; reject: never again);
- `freedom_share_delivery_count` (histogram): the records handed out, by the delivery count the
  broker gave each (1: a first delivery), in buckets 1, 2, 3, 5, 10;
- `freedom_share_records_held` (gauge): records of a partition acquired and not acknowledged yet;
- `freedom_share_lock_seconds` (gauge): the acquisition lock in force for the group.

The delivery metrics (durations, outcomes, deliveries in flight, paused partitions) are the same as
a classic group's; the consumer lag is not reported for a share group (no committed offset: see
`freedom status`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import REGISTRY
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from freedom.kafka.consumer.group import ConsumerGroup

log = logging.getLogger("freedom.observability.metrics")

__all__ = ["ACK_TYPES", "DELIVERY_COUNT_BUCKETS", "is_shared", "share_collector"]

_GROUP = "messaging_consumer_group_name"
_TOPIC = "messaging_destination_name"
_PARTITION = "messaging_destination_partition_id"

#: The acknowledgement types, each shown from the start (at 0) for every topic of a share group.
ACK_TYPES = ("accept", "release", "reject")
#: The upper bounds of the delivery-count buckets (`+Inf` added).
DELIVERY_COUNT_BUCKETS = (1, 2, 3, 5, 10)


def is_shared(group: Any) -> bool:
    """Whether `group`'s source is a share group's (a classic source says `shared = False`)."""
    return getattr(getattr(group, "source", None), "shared", False) is True


def _snapshot(counts: Mapping[Any, int]) -> dict[Any, int]:
    """A copy of a counter the fetch thread may be adding to: dict() of a dict is one C-level step
    under the GIL; retried should a resize still be seen."""
    for _ in range(3):
        try:
            return dict(counts)
        except RuntimeError:  # noqa: PERF203 - changed during the copy: copy again
            continue
    return {}


def _topics(group: Any) -> list[str]:
    return sorted(getattr(group, "plans", None) or ())


def _acknowledgements(groups: list[Any]) -> Metric:
    family = CounterMetricFamily(
        "freedom_share_acknowledgements",
        "Records a share group acknowledged, by type (accept: finished; release: given back for "
        "another delivery; reject: never delivered again).",
        labels=[_GROUP, _TOPIC, "type"],
    )
    for group in groups:
        counts: dict[tuple[str, str], int] = dict.fromkeys(
            ((t, kind) for t in _topics(group) for kind in ACK_TYPES), 0
        )
        for key, n in _snapshot(group.source.acknowledgements).items():
            counts[key] = counts.get(key, 0) + n
        for (topic, kind), n in sorted(counts.items()):
            family.add_metric([group.group_id, topic, kind], n)
    return family


def _delivery_counts(groups: list[Any]) -> Metric:
    family = HistogramMetricFamily(
        "freedom_share_delivery_count",
        "Records a share group was handed, by the broker's delivery count of each (1: the first "
        "delivery; more: delivered again after a release or an expired lock).",
        labels=[_GROUP, _TOPIC],
    )
    for group in groups:
        by_topic: dict[str, dict[int, int]] = {t: {} for t in _topics(group)}
        for (topic, count), n in _snapshot(group.source.delivery_counts).items():
            seen = by_topic.setdefault(topic, {})
            seen[int(count)] = seen.get(int(count), 0) + n
        for topic, seen in sorted(by_topic.items()):
            buckets = [
                (repr(float(bound)), float(sum(n for c, n in seen.items() if c <= bound)))
                for bound in DELIVERY_COUNT_BUCKETS
            ]
            total = float(sum(seen.values()))
            buckets.append(("+Inf", total))
            family.add_metric(
                [group.group_id, topic],
                buckets,
                sum_value=float(sum(c * n for c, n in seen.items())),
            )
    return family


def _held(groups: list[Any]) -> Iterable[Metric]:
    held = GaugeMetricFamily(
        "freedom_share_records_held",
        "Records of a partition a share group's member acquired and has not acknowledged yet.",
        labels=[_GROUP, _TOPIC, _PARTITION],
    )
    lock = GaugeMetricFamily(
        "freedom_share_lock_seconds",
        "The acquisition lock in force for a share group (share.record.lock.duration.ms): a record "
        "not acknowledged within it is delivered again.",
        labels=[_GROUP],
    )
    for group in groups:
        source = group.source
        for topic, partition in sorted(list(group.lanes)):
            held.add_metric(
                [group.group_id, topic, str(partition)], source.open_count((topic, partition))
            )
        lock_sec = getattr(source, "lock_sec", None)
        if isinstance(lock_sec, (int, float)):
            lock.add_metric([group.group_id], float(lock_sec))
    return (held, lock)


class ShareCollector(Collector):
    """The share-group families of the live groups given at the last scrape (exposition())."""

    def __init__(self) -> None:
        self.groups: list[ConsumerGroup] = []

    def collect(self) -> Iterable[Metric]:
        groups = [g for g in self.groups if is_shared(g)]
        if not groups:
            return  # no share group: no families at all
        try:
            families = [_acknowledgements(groups), _delivery_counts(groups), *_held(groups)]
        except Exception:  # noqa: BLE001 - the scrape still answers, without these families
            log.warning("metrics: could not read the share groups", exc_info=True)
            return
        yield from families


share_collector = ShareCollector()
REGISTRY.register(share_collector)
