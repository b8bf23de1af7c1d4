"""`freedom offsets reset`: move a consumer group's committed offsets to the earliest or latest
offset, or to the first record at or after a time (the seed's manual `kafka-consumer-groups`
step, e.g. to skip or re-read the retry topics).

Kafka refuses to change the offsets of a group with live members (their next commit would undo
it anyway): the command says so before trying, naming the members, so the service is stopped
first. A group is live when the broker names members, or when its state is one only a group with
members has (the embedded broker may name none: ops/cluster.py); a refusal from the broker itself
(a member joined meanwhile) gets the same message. A dry run shows the new offsets, changes
nothing, and says whether the reset itself would be refused.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from freedom.ops.cluster import TP, Cluster, GroupInfo, GroupInUse, Member
from freedom.ops.dlq import parse_time
from freedom.ops.replay import who
from freedom.ops.status import iso
from freedom.ops.target import OpsError, Target

audit_log = logging.getLogger("freedom.ops.audit")


@dataclass(frozen=True)
class OffsetChange:
    """One partition's committed offset before and after."""

    topic: str
    partition: int
    old: int | None  # None: nothing committed
    new: int


@dataclass(frozen=True)
class OffsetsReset:
    """What `freedom offsets reset` did (or, with dry_run, would do)."""

    group: str
    to: str  # "earliest", "latest" or the ISO time
    dry_run: bool
    applied: bool
    members: tuple[Member, ...]  # live members (a dry run still shows the offsets; a reset refuses)
    changes: tuple[OffsetChange, ...]
    who: str
    at: str
    #: Why the reset itself is (or, for a dry run, would be) refused; None: it can be applied.
    refusal: str | None = None


def audit_line(result: OffsetsReset) -> str:
    what = "dry run" if result.dry_run else "applied"
    return (
        f"offsets reset ({what}) by {result.who} at {result.at}: group {result.group} to {result.to}: "
        + ", ".join(
            f"{c.topic}[{c.partition}] {'-' if c.old is None else c.old} -> {c.new}"
            for c in result.changes
        )
    )


def _members(info_members: tuple[Member, ...]) -> str:
    shown = ", ".join(
        f"{m.client_id or '?'} on {m.host.lstrip('/') or '?'}" for m in info_members[:5]
    )
    more = f" and {len(info_members) - 5} more" if len(info_members) > 5 else ""
    return shown + more


_STOP_FIRST = (
    "stop every instance of the service first (Kafka does not change the offsets of a group in "
    "use), then run this again"
)


def refusal_of(info: GroupInfo) -> str | None:
    """The one-line refusal of a reset of the group `info` describes; None when it has no live member."""
    if info.members:
        return (
            f"group {info.group!r} has {len(info.members)} live member(s) "
            f"({_members(info.members)}): {_STOP_FIRST}"
        )
    if info.in_use:
        return (
            f"group {info.group!r} is in use (state {info.state}, though the broker names no "
            f"member): {_STOP_FIRST}"
        )
    return None


def reset_offsets(
    target: Target, group: str, to: str, topic: str | None = None, *, dry_run: bool = False
) -> OffsetsReset:
    """Set `group`'s committed offsets (on `topic`, else on every topic it has offsets on) to `to`:
    "earliest", "latest", or an ISO 8601 time."""
    if not group:
        raise OpsError("--group must name a consumer group")
    spec = to.strip().lower()
    ms: int | None = None
    if spec not in ("earliest", "latest"):
        try:
            ms = int(parse_time(to, "--to") * 1000)
        except OpsError:
            raise OpsError(
                f"--to: expected earliest, latest or an ISO 8601 time (e.g. 2026-12-01T10:00:00Z), "
                f"got {to!r}"
            ) from None
        spec = iso(ms / 1000.0)
    client = target.client_for_group(group)
    cluster = Cluster(client.settings, client.where)
    info = cluster.describe(group)
    refusal = refusal_of(info)
    if refusal and not dry_run:
        raise OpsError(refusal)
    committed = cluster.committed(group)
    if topic is not None:
        tps: list[TP] = cluster.partitions(topic)
    else:
        tps = sorted(committed)
        if not tps:
            raise OpsError(f"group {group!r} has no committed offsets: name the topic with --topic")
    if spec == "earliest":
        new = cluster.earliest(tps)
    elif spec == "latest":
        new = cluster.latest(tps)
    else:
        assert ms is not None
        new = cluster.at_time(tps, ms)
    changes = tuple(OffsetChange(t, p, committed.get((t, p)), new[(t, p)]) for t, p in tps)
    applied = False
    if not dry_run:
        try:
            cluster.alter_committed(group, {(c.topic, c.partition): c.new for c in changes})
        except GroupInUse as exc:  # a member joined since describe()
            raise OpsError(
                f"group {group!r} is in use (the broker refused the reset: {exc}): {_STOP_FIRST}"
            ) from None
        applied = True
    result = OffsetsReset(
        group, spec, dry_run, applied, info.members, changes, who(), iso(time.time()), refusal
    )
    audit_log.info("%s", audit_line(result))
    return result
