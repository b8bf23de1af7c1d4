"""The commit ledger of one classic consumer group: which offsets may be committed, and when a commit
must be sent again (docs/contract.md, "The commit rule").

Records of a partition are handed out in offset order but may finish in any order (concurrent and
key-ordered modes). The committed offset must never pass a record that is not finished, or a crash
would lose it: :class:`OffsetTracker` keeps a partition's offsets handed out and not committable
yet. :class:`CommitLedger` keeps the trackers of a group's partitions and the commits around them:

- the offsets ready to commit (`finish` queues them; `take` hands them to the one sending them);
- commits in flight: at most :data:`COMMITS_IN_FLIGHT` unanswered at once, one request every
  :data:`COMMIT_INTERVAL` (`due`);
- an older commit confirmed after a newer one (librdkafka holds commits while the coordinator is
  away and sends them later, possibly after newer ones): the newest is queued again (`answered`);
- revocation: the newest offset sent goes once more with the last (waiting) commit (`resend_newest`),
  then is forgotten, because another member may commit further meanwhile (`forget_sent`);
- a commit that failed after its partition was revoked (the broker forgot this member): kept as
  *unsaved* and, when the partition comes back, committed, and the records below it finish without
  a delivery (`assign`, `finished_below`, `skip`).

It knows nothing of confluent-kafka: partitions are `(topic, partition)` pairs and offsets ints,
so it is tested through this API alone (tests/test_ledger.py). Thread-safety: the loop side
(`track`, `finish`, `skip`, `forget`) and the consumer thread (everything about sending) share the
queued offsets under one lock; a tracker is touched by the loop side only.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Iterable

TP = tuple[str, int]

#: Finished records are committed (asynchronously, in one request) on the consumer thread's next
#: round; while deliveries run, a round comes at least this often, and commit requests are sent
#: at most this often.
COMMIT_INTERVAL = 0.02

#: At most this many commit requests of a group unanswered at once: a slow broker gets fewer,
#: larger commits instead of a queue of stale ones.
COMMITS_IN_FLIGHT = 4

#: Unanswered commit requests older than this no longer hold the next one back (a broker that went
#: away answers only at librdkafka's request timeout).
COMMIT_ACK_TIMEOUT = 1.0


class OffsetTracker:
    """The unfinished offsets of one partition, and the offset safe to commit."""

    __slots__ = ("_open", "_finished")

    def __init__(self) -> None:
        self._open: collections.deque[int] = collections.deque()  # handed-out offsets, in order
        self._finished: set[int] = set()  # finished, but some lower offset is not

    def __len__(self) -> int:
        """How many records were handed out and are not committable yet."""
        return len(self._open)

    def add(self, offset: int) -> None:
        """A record was fetched: its offset stays uncommittable until :meth:`finish`."""
        if self._open and offset <= self._open[-1]:
            raise ValueError(f"offset {offset} added after {self._open[-1]}: offsets must increase")
        self._open.append(offset)

    def finish(self, offset: int) -> int | None:
        """Mark `offset` finished; returns the new offset to commit (one past the last of an
        unbroken run of finished records from the lowest), or None when it did not move."""
        opened = self._open
        if not opened or offset < opened[0]:
            return None  # already committable (a duplicate call) or never added
        if offset == opened[0] and not self._finished:  # the common case: the lowest finished
            opened.popleft()
            return offset + 1
        self._finished.add(offset)
        last = None
        while opened and opened[0] in self._finished:
            last = opened.popleft()
            self._finished.discard(last)
        return None if last is None else last + 1


class CommitLedger:
    """The offsets of one group's partitions: in flight, committable, sent, confirmed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._trackers: dict[TP, OffsetTracker] = {}  # loop side
        self._to_commit: dict[TP, int] = {}  # under the lock
        self._finished_below: dict[TP, int] = {}  # under the lock
        # Consumer thread only:
        self._unsaved: dict[TP, int] = {}
        self._newest_sent: dict[TP, int] = {}
        self._acked: dict[TP, int] = {}
        self._sent_at: collections.deque[float] = collections.deque()  # unanswered, oldest first
        self._last_sent = 0.0
        #: Failed commits in a row (the sender logs once per streak).
        self.failures = 0

    # ------------------------------------------------------------------ the loop side

    def track(self, tp: TP, offset: int) -> None:
        """A record of `tp` was handed out: its offset is not committable until it finishes."""
        tracker = self._trackers.get(tp)
        if tracker is None:
            tracker = self._trackers[tp] = OffsetTracker()
        tracker.add(offset)

    def finish(self, tp: TP, offset: int) -> bool:
        """The record at `offset` finished; True when the partition's committable offset moved."""
        tracker = self._trackers.get(tp)
        if tracker is None:
            return False
        moved = tracker.finish(offset)
        if moved is None:
            return False
        with self._lock:
            self._to_commit[tp] = moved
        return True

    def open_count(self, tp: TP) -> int:
        """Records of `tp` handed out and not committable yet."""
        tracker = self._trackers.get(tp)
        return len(tracker) if tracker is not None else 0

    def skip(self, tp: TP, offset: int) -> bool:
        """True when the record at `offset` finished here before a rebalance whose commit the broker
        refused: it is finished without a delivery (see the module doc)."""
        if not self._finished_below:
            return False
        with self._lock:
            below = self._finished_below.get(tp)
            if below is None:
                return False
            if offset >= below:
                del self._finished_below[tp]
                return False
        self.track(tp, offset)
        self.finish(tp, offset)
        return True

    def forget(self, tp: TP) -> None:
        """The partition was given up: its records in flight no longer count."""
        self._trackers.pop(tp, None)

    def queued(self) -> bool:
        """Offsets queued to commit."""
        return bool(self._to_commit)

    def busy(self) -> bool:
        """Offsets queued to commit, or records handed out and not committable yet."""
        return bool(self._to_commit) or any(len(t) for t in list(self._trackers.values()))

    # ------------------------------------------------------------------ the sender (consumer thread)

    def due(self, now: float | None = None) -> bool:
        """True when a commit may go now: offsets are queued, none was sent within COMMIT_INTERVAL
        and fewer than COMMITS_IN_FLIGHT are unanswered."""
        if not self._to_commit:
            return False
        now = time.monotonic() if now is None else now
        if now - self._last_sent < COMMIT_INTERVAL:
            return False
        sent = self._sent_at
        while sent and now - sent[0] > COMMIT_ACK_TIMEOUT:
            sent.popleft()  # its answer will come late, if at all
        return len(sent) < COMMITS_IN_FLIGHT

    def take(self, only: Iterable[TP] | None = None) -> dict[TP, int]:
        """The queued offsets (of `only`'s partitions), to be sent now; marks them sent."""
        with self._lock:
            if only is None:
                pending, self._to_commit = self._to_commit, {}
            else:
                wanted = set(only)
                pending = {tp: o for tp, o in self._to_commit.items() if tp in wanted}
                for tp in pending:
                    del self._to_commit[tp]
        self._newest_sent.update(pending)
        return pending

    def sending(self, now: float | None = None) -> None:
        """An asynchronous commit request is about to go (one more unanswered)."""
        self._last_sent = time.monotonic() if now is None else now
        self._sent_at.append(self._last_sent)

    def not_sent(self, pending: dict[TP, int], assigned: set[TP], *, asynchronous: bool) -> None:
        """Sending `pending` failed at once: queued again, or kept for when a partition returns."""
        if asynchronous and self._sent_at:
            self._sent_at.pop()
        with self._lock:
            for tp, o in pending.items():
                if tp in assigned:
                    self._to_commit.setdefault(tp, o)
                else:
                    self._unsaved[tp] = max(o, self._unsaved.get(tp, -1))

    def answered(
        self,
        ok: bool,
        partitions: Iterable[tuple[TP, int, bool]],
        assigned: set[TP],
    ) -> bool:
        """The broker answered an asynchronous commit: `ok` for the whole request, and per partition
        (tp, offset, failed). Queues again what failed (unless a newer offset went after it) and
        what an older confirmation rewound; True when something failed."""
        if self._sent_at:
            self._sent_at.popleft()
        items = list(partitions)
        if ok:
            self._check_order([(tp, o) for tp, o, failed in items if not failed], assigned)
        failed = [(tp, o) for tp, o, bad in items if bad or not ok]
        if not failed:
            return False
        with self._lock:
            for tp, offset in failed:
                if self._newest_sent.get(tp) != offset:
                    continue  # a newer offset went after it
                if tp not in assigned:
                    self._unsaved[tp] = max(offset, self._unsaved.get(tp, -1))
                elif tp not in self._to_commit:  # else a newer one waits
                    self._to_commit[tp] = offset
        return True

    def _check_order(self, confirmed: list[tuple[TP, int]], assigned: set[TP]) -> None:
        """Queue the newest offset again when an older commit was confirmed after it.

        librdkafka holds the commits sent while the coordinator is away and sends them when it is
        back, possibly after newer ones: the broker then keeps the older offset (measured in the
        chaos test: 145 confirmed, then 51), and finished records would be delivered again.
        """
        rewound = {}
        for tp, offset in confirmed:
            if tp not in assigned:
                continue  # a late answer for a partition given up (its offsets were forgotten)
            newest = self._acked.get(tp, -1)
            if offset < newest:
                rewound[tp] = newest
            else:
                self._acked[tp] = offset
        if not rewound:
            return
        with self._lock:
            for tp, newest in rewound.items():
                if newest > self._to_commit.get(tp, -1):
                    self._to_commit[tp] = newest

    def resend_newest(self, tps: Iterable[TP]) -> None:
        """Queue the newest offsets sent for `tps` once more, for the last (waiting) commit these
        partitions get from this member: an older commit still held by librdkafka must not be the
        last word."""
        with self._lock:
            for tp in tps:
                newest = self._newest_sent.get(tp)
                if newest is not None and newest > self._to_commit.get(tp, -1):
                    self._to_commit[tp] = newest

    def forget_sent(self, tps: Iterable[TP]) -> None:
        """After a revocation: another member may commit further meanwhile, so an offset this member
        sent earlier must never be sent again for these partitions."""
        with self._lock:
            for tp in tps:
                self._newest_sent.pop(tp, None)
                self._acked.pop(tp, None)
                self._finished_below.pop(tp, None)

    # ------------------------------------------------------------------ assignment

    def assign(self, tps: Iterable[TP]) -> None:
        """Partitions came (back): offsets finished here whose commit failed after a revocation
        hold for them again (their records are finished without a delivery, see `skip`)."""
        with self._lock:
            for tp in tps:
                unsaved = self._unsaved.pop(tp, None)
                if unsaved is not None:
                    self._finished_below[tp] = unsaved

    def start_offset(self, tp: TP, committed: int) -> int:
        """The offset to pin a newly assigned partition at, given the one the group has: the
        unsaved offset when it is further (every record below it finished here)."""
        with self._lock:
            unsaved = self._finished_below.get(tp)
        return unsaved if unsaved is not None and unsaved > committed else committed
