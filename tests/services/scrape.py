"""Reading a running service's GET /metrics: what the tests wait on instead of sleeping."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples_of(text: str) -> Samples:
    """Every sample of a Prometheus text exposition: (name, labels) -> value."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def scrape(base_url: str) -> Samples:
    """Every sample of the service's /metrics."""
    answer = httpx.get(f"{base_url}/metrics", timeout=10)
    assert answer.status_code == 200, answer.text
    return samples_of(answer.text)


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def in_flight(service: str | Samples, group: str) -> int:
    """Deliveries of consumer group `group` started and not finished (freedom_deliveries_in_flight):
    a record counts until its handler answered and what follows is done (committable, or its
    retry or dead letter acknowledged). `service`: its base URL, or samples read already."""
    samples = scrape(service) if isinstance(service, str) else service
    return int(value(samples, "freedom_deliveries_in_flight", messaging_consumer_group_name=group))


def paused(service: str | Samples, group: str, reason: str) -> int:
    """Partitions consumer group `group` has paused for `reason` (freedom_paused_partitions)."""
    samples = scrape(service) if isinstance(service, str) else service
    return int(
        value(
            samples,
            "freedom_paused_partitions",
            messaging_consumer_group_name=group,
            reason=reason,
        )
    )
