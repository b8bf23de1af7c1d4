"""The test broker's share groups (KIP-932): per group its configuration and members, per partition
the state of its records, as a Kafka broker keeps them for a share group.

A share group's members read the same partitions; the broker hands each record to one of them at a
time. Per partition (a *share-partition*) it keeps:

- the start offset: the records before it are finished. Set when the group first reads the
  partition, by the group's `share.auto.offset.reset`: "earliest" the first record, "latest" the
  end of the log then;
- per record from there on, its state: *available* (never acquired, or released, or its lock ran
  out), *acquired* by one member under a time lock, *acknowledged* (accepted), *archived*
  (rejected, or given back once its delivery count reached the group's limit);
- its delivery count: one more at each acquisition (1 the first time). A record that is released,
  or whose lock runs out, with a delivery count at `share.delivery.count.limit` is archived: it
  is never delivered again.

Locks run on the broker's clock and are checked whenever the state is read (no timer): a clock move
wakes the members, whose next round acquires what came free.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING

from freedom.kafka.admin import NEEDS_SHARE_GROUPS, ShareGroupsUnavailable

if TYPE_CHECKING:
    from freedom.testing.broker import MemoryRecord, TestBroker
    from freedom.testing.memory_share import MemoryShareSource

TP = tuple[str, int]

AVAILABLE, ACQUIRED, ACKNOWLEDGED, ARCHIVED = "available", "acquired", "acknowledged", "archived"

#: Apache Kafka's defaults: the group's record lock (`group.share.record.lock.duration.ms`), the
#: longest lock a group may set (`group.share.max.record.lock.duration.ms`) and the delivery count
#: limit (`group.share.delivery.count.limit`).
DEFAULT_LOCK_SEC = 30.0
MAX_LOCK_SEC = 60.0
DEFAULT_DELIVERY_COUNT_LIMIT = 5


class _InFlight:
    """A record from the start offset on that is not finished: available again, or acquired."""

    __slots__ = ("state", "count", "holder", "until")

    def __init__(self, holder: MemoryShareSource, until: float) -> None:
        self.state = ACQUIRED
        self.count = 1
        self.holder: MemoryShareSource | None = holder
        self.until = until


class SharePartition:
    """One partition's records in one share group: those not finished, and how the others ended."""

    def __init__(self, start: int) -> None:
        self.start = start  # the records before it are finished
        self.next = start  # the first record never acquired
        self.in_flight: dict[int, _InFlight] = {}  # from start to next: not finished
        self.finished: dict[int, tuple[str, int]] = {}  # acknowledged or archived: (state, count)

    def acquire(self, holder: MemoryShareSource, n: int, until: float, end: int) -> list[int]:
        """Acquire up to `n` records for `holder` until `until`, in offset order: those available
        again first (their offsets are lower), then records never acquired, up to `end`."""
        got: list[int] = []
        for offset in sorted(o for o, r in self.in_flight.items() if r.state == AVAILABLE):
            if len(got) >= n:
                return got
            record = self.in_flight[offset]
            record.state, record.holder, record.until = ACQUIRED, holder, until
            record.count += 1
            got.append(offset)
        while len(got) < n and self.next < end:
            self.in_flight[self.next] = _InFlight(holder, until)
            got.append(self.next)
            self.next += 1
        return got

    def finish(self, holder: MemoryShareSource, offset: int, kind: str, limit: int) -> bool:
        """`holder` acknowledges a record: "accept", "release" or "reject". False (the broker
        ignores it) when `holder` does not hold it (any more: its lock ran out)."""
        record = self.in_flight.get(offset)
        if record is None or record.state != ACQUIRED or record.holder is not holder:
            return False
        if kind == "accept":
            self._end(offset, ACKNOWLEDGED)
        elif kind == "reject":
            self._end(offset, ARCHIVED)
        else:
            self._give_back(offset, record, limit)
        return True

    def expire(self, now: float, limit: int) -> int:
        """Give back the records whose lock ran out by `now`; how many."""
        late = [(o, r) for o, r in self.in_flight.items() if r.state == ACQUIRED and r.until <= now]
        for offset, record in late:
            self._give_back(offset, record, limit)
        return len(late)

    def _give_back(self, offset: int, record: _InFlight, limit: int) -> None:
        if record.count >= limit:
            self._end(offset, ARCHIVED)
        else:
            record.state, record.holder = AVAILABLE, None

    def _end(self, offset: int, state: str) -> None:
        self.finished[offset] = (state, self.in_flight.pop(offset).count)
        while self.start < self.next and self.start not in self.in_flight:
            self.start += 1

    def available(self, end: int) -> bool:
        return self.next < end or any(r.state == AVAILABLE for r in self.in_flight.values())

    def next_expiry(self) -> float | None:
        locks = [r.until for r in self.in_flight.values() if r.state == ACQUIRED]
        return min(locks) if locks else None


class ShareGroup:
    """One share group on the test broker: its configuration (Kafka's group configs of the same
    names), its members and its share-partitions. `TestBroker.share_group(group_id)` gives it (and
    makes it: set its configuration before the application starts, as an operator would with
    `kafka-configs --entity-type groups`)."""

    def __init__(self, broker: TestBroker, group_id: str) -> None:
        self.broker = broker
        self.group_id = group_id
        #: `share.record.lock.duration.ms`, in seconds: members raise it to what they need.
        self.lock_sec = DEFAULT_LOCK_SEC
        #: `share.delivery.count.limit`.
        self.delivery_count_limit = DEFAULT_DELIVERY_COUNT_LIMIT
        #: `share.auto.offset.reset` ("earliest" or "latest"): each member sets it as it starts;
        #: a partition's start offset follows it when the group first reads the partition.
        self.offset_reset: str | None = None
        #: The members, in the order they joined (a crashed member is none any more).
        self.members: list[MemoryShareSource] = []
        self.partitions: dict[TP, SharePartition] = {}
        self._lock = threading.RLock()  # members on the loop, tests from any thread

    # ------------------------------------------------------------------ membership

    def join(self, member: MemoryShareSource, lock_sec: float, offset_reset: str) -> None:
        """A member starts, as the Kafka source configures the group (kafka/admin.py): its offset
        reset is set, its lock raised to `lock_sec` when shorter; a lock over MAX_LOCK_SEC is
        refused, as Kafka refuses that group config."""
        with self._lock:
            if lock_sec > MAX_LOCK_SEC:
                raise ShareGroupsUnavailable(
                    f'share group "{self.group_id}" on the test broker: the cluster refused its '
                    f"configuration; a share group needs {NEEDS_SHARE_GROUPS}, and an acquisition "
                    f"lock of {int(lock_sec * 1000)} ms (the longest delivery_timeout_sec of its "
                    "topics plus 5 s) within the broker's group.share.max.record.lock.duration.ms "
                    f"({int(MAX_LOCK_SEC * 1000)} ms)"
                )
            self.lock_sec = max(self.lock_sec, lock_sec)
            self.offset_reset = offset_reset
            self.members.append(member)

    def leave(self, member: MemoryShareSource) -> None:
        with self._lock:
            if member in self.members:
                self.members.remove(member)

    def _wake_members(self) -> None:
        with self._lock:
            members = list(self.members)
        for m in members:
            m.wake()

    # ------------------------------------------------------------------ records

    def _partition(self, tp: TP) -> SharePartition:
        part = self.partitions.get(tp)
        if part is None:
            latest = self.offset_reset == "latest"
            part = self.partitions[tp] = SharePartition(self.broker._end(tp) if latest else 0)
        return part

    def see(self, tps: Iterable[TP]) -> None:
        """Partitions a member reads: a new one starts where the offset reset says, now."""
        with self._lock:
            for tp in tps:
                self._partition(tp)

    def acquire(
        self, member: MemoryShareSource, tps: list[TP], n: int, now: float
    ) -> list[MemoryRecord]:
        """Up to `n` records of `tps` for `member`, each locked for the group's lock from `now`
        and carrying its delivery count, in offset order per partition."""
        out: list[MemoryRecord] = []
        with self._lock:
            until = now + self.lock_sec
            for tp in tps:
                if len(out) >= n:
                    break
                part = self._partition(tp)
                part.expire(now, self.delivery_count_limit)
                for offset in part.acquire(member, n - len(out), until, self.broker._end(tp)):
                    [record] = self.broker._read(tp, offset, 1)
                    out.append(record._delivered(part.in_flight[offset].count))
        return out

    def lock_end(self, member: MemoryShareSource, tp: TP, offset: int) -> float | None:
        """When `member`'s lock on a record ends (the simulated clock); None if it holds none."""
        with self._lock:
            part = self.partitions.get(tp)
            held = part.in_flight.get(offset) if part is not None else None
            if held is None or held.state != ACQUIRED or held.holder is not member:
                return None
            return held.until

    def finish(self, member: MemoryShareSource, tp: TP, offset: int, kind: str, now: float) -> bool:
        """`member` acknowledges a record ("accept", "release", "reject"); False when the broker
        ignores it: `member` does not hold the record (its lock ran out by `now`)."""
        with self._lock:
            part = self._partition(tp)
            if part.expire(now, self.delivery_count_limit):
                self._wake_members()
            done = part.finish(member, offset, kind, self.delivery_count_limit)
        if done and kind == "release":
            self._wake_members()  # available to every member at once
        return done

    def available(self, tps: list[TP], now: float) -> bool:
        """Some record of `tps` can be acquired now."""
        with self._lock:
            for tp in tps:
                part = self._partition(tp)
                part.expire(now, self.delivery_count_limit)
                if part.available(self.broker._end(tp)):
                    return True
            return False

    def next_expiry(self, tps: list[TP]) -> float | None:
        """When the next lock on a record of `tps` runs out (None: no record is acquired)."""
        with self._lock:
            locks = [
                at
                for tp in tps
                if tp in self.partitions
                for at in [self.partitions[tp].next_expiry()]
                if at is not None
            ]
        return min(locks) if locks else None

    # ------------------------------------------------------------------ for tests

    def record_state(self, topic: str, partition: int, offset: int) -> tuple[str, int] | None:
        """(state, delivery count) of a record: "available", "acquired", "acknowledged" or
        "archived"; None before the group's start offset (skipped by a "latest" reset) or when
        the group has not read the partition."""
        with self._lock:
            part = self.partitions.get((topic, partition))
            if part is None:
                return None
            part.expire(self.broker.time(), self.delivery_count_limit)
            record = part.in_flight.get(offset)
            if record is not None:
                return record.state, record.count
            if offset in part.finished:
                return part.finished[offset]
            if part.next <= offset < self.broker._end((topic, partition)):
                return AVAILABLE, 0
            return None

    def start_offset(self, topic: str, partition: int) -> int | None:
        """The share-partition start offset: every record before it is acknowledged or archived
        (those after it may be too, each on its own); None when the group has not read the
        partition."""
        with self._lock:
            part = self.partitions.get((topic, partition))
            if part is None:
                return None
            part.expire(self.broker.time(), self.delivery_count_limit)
            return part.start

    def acknowledged(self, topic: str) -> int:
        """How many records of `topic` the group acknowledged (accepted)."""
        with self._lock:
            return sum(
                state == ACKNOWLEDGED
                for (t, _), part in self.partitions.items()
                if t == topic
                for state, _ in part.finished.values()
            )

    def holder(self, topic: str, partition: int, offset: int) -> MemoryShareSource | None:
        """The member holding a record under a lock still running (a crashed member included)."""
        with self._lock:
            part = self.partitions.get((topic, partition))
            if part is None:
                return None
            part.expire(self.broker.time(), self.delivery_count_limit)
            record = part.in_flight.get(offset)
            return record.holder if record is not None and record.state == ACQUIRED else None
