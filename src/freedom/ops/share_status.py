"""`freedom status` for share groups (KIP-932, `share_group = true` in kafka.toml): the group's
state, members, configs, and per partition the topic's start and end offsets, the share-partition
start offset and the records not acknowledged yet.

What comes from where (docs/operations.md, "Share groups"):

- the group configs the broker applies (`share.auto.offset.reset`, `share.record.lock.duration.ms`,
  `share.delivery.count.limit`): the AdminClient's describe_configs;
- the topics' start and end offsets: the AdminClient's list_offsets;
- the state, the members and the share-partition offsets: requests freedom sends itself
  (kafka/share_wire.py), since confluent-kafka's AdminClient has no share-group calls. On a TLS or SASL
  listener these are not available, and the group's note says so;
- the lag: the broker's own count (DescribeShareGroupOffsets v1, Apache Kafka 4.2+); where it gives
  none, an estimate (end - share-partition start offset: records acknowledged out of order after
  it are counted too), shown with `~`.
"""

from __future__ import annotations

from dataclasses import dataclass

import confluent_kafka

from freedom.kafka.share_wire import ShareOffset, ShareWire, Unavailable, error_name
from freedom.ops.cluster import TP, Cluster, Member

#: The group configs shown, as the broker applies them (its defaults included).
SHARE_CONFIGS = (
    "share.auto.offset.reset",
    "share.record.lock.duration.ms",
    "share.delivery.count.limit",
)
_WIRE_TIMEOUT = 5.0


@dataclass(frozen=True)
class ShareFacts:
    """What was found about one share group, before it becomes a GroupStatus (status.py)."""

    state: str
    members: tuple[Member, ...]
    offsets: dict[TP, ShareOffset] | None  # None: not available (see notes)
    configs: dict[str, str]
    notes: tuple[str, ...]

    def topics(self) -> list[str]:
        """The topics the group has share state on, or members are assigned."""
        found = {t for t, _ in self.offsets or {}}
        found |= {t for m in self.members for t, _ in m.partitions}
        return sorted(found)


def _wire(cluster: Cluster) -> ShareWire:
    return ShareWire(cluster.settings, min(cluster.timeout, _WIRE_TIMEOUT))


def group_configs(cluster: Cluster, group: str) -> dict[str, str]:
    """The share configs the broker applies to `group` (empty when it does not say)."""
    from confluent_kafka.admin import ConfigResource  # type: ignore[attr-defined]  # there at run time

    resource = ConfigResource(ConfigResource.Type.GROUP, group)
    try:
        (future,) = cluster.admin.describe_configs([resource]).values()
        entries = future.result(cluster.timeout)
    except (confluent_kafka.KafkaException, ValueError, TypeError):
        return {}
    return {k: str(entries[k].value) for k in SHARE_CONFIGS if k in entries}


def share_facts(cluster: Cluster, group: str) -> ShareFacts:
    """The state, members, share-partition offsets and configs of share group `group`."""
    configs = group_configs(cluster, group)
    notes: list[str] = []
    try:
        wire = _wire(cluster)
        if not wire.supports_share_groups():
            raise Unavailable("the cluster does not offer share groups (Apache Kafka 4.1+)")
        described = wire.describe(group)
    except Unavailable as exc:
        return ShareFacts("UNKNOWN", (), None, configs, (f"state, members and lag: {exc}",))
    except (OSError, ValueError) as exc:
        text = f"state, members and lag: the brokers could not be asked ({exc})"
        return ShareFacts("UNKNOWN", (), None, configs, (text,))
    if described.error_code == 69:  # GROUP_ID_NOT_FOUND: never joined, or deleted
        said = described.error_message or "not found"
        note = f"the cluster has no share group of this id (the broker: {said})"
        return ShareFacts("DEAD", (), {}, configs, (note,))
    if described.error_code:
        reason = described.error_message or error_name(described.error_code)
        return ShareFacts("UNKNOWN", (), None, configs, (f"the broker refused: {reason}",))
    members = tuple(Member(m.client_id, m.host, m.partitions) for m in described.members)
    try:
        offsets: dict[TP, ShareOffset] | None = wire.offsets(group)
    except (Unavailable, OSError, ValueError) as exc:
        offsets = None
        notes.append(f"share-partition offsets and lag: {exc}")
    return ShareFacts(described.state.upper(), members, offsets, configs, tuple(notes))


def other_share_groups(cluster: Cluster, known: set[str]) -> tuple[tuple[str, str], ...]:
    """(group, state) of the cluster's share groups not in `known`; none when it cannot be asked."""
    try:
        wire = _wire(cluster)
        if not wire.supports_share_groups():
            return ()
        md = cluster.admin.list_topics(timeout=cluster.timeout)
        brokers = [(str(b.host), int(b.port)) for b in md.brokers.values()]
        found = wire.list_share_groups(brokers)
    except (Unavailable, OSError, ValueError, confluent_kafka.KafkaException):
        return ()
    return tuple((g, state.upper()) for g, state in found if g not in known)


@dataclass(frozen=True)
class ShareLag:
    """One partition of a share group: where its share state starts, and its lag."""

    share_start: int | None  # the share-partition start offset (None: no state, or not known)
    lag: int
    lag_source: str  # "broker", "estimate" or "unknown"


def partition_lag(
    tp: TP, offsets: dict[TP, ShareOffset] | None, low: int, end: int, earliest: bool
) -> ShareLag:
    """The lag of `tp`: the broker's count; else estimated from the share-partition start offset,
    or, with no share state yet, from where the group would start (`earliest`: the topic's start)."""
    if offsets is None:
        return ShareLag(None, 0, "unknown")
    found = offsets.get(tp)
    start = found.start if found is not None and found.start >= 0 else None
    if found is not None and found.lag is not None and found.lag >= 0:
        return ShareLag(start, found.lag, "broker")
    if start is None:
        return ShareLag(None, max(0, end - low) if earliest else 0, "estimate")
    return ShareLag(start, max(0, end - max(start, low)), "estimate")
