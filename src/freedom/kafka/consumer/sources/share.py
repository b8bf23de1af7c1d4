"""A Kafka share group (KIP-932, "queues for Kafka") as a record source: the only module of the
consumer core that builds a confluent-kafka `ShareConsumer` (docs/share-groups.md).

Members of a share group read the same partitions together: the broker hands each record to one
member under an acquisition lock, and the member acknowledges it on its own, in any order:
ACCEPT (finished: delivered, dropped, or acknowledged on its retry or dead-letter topic), RELEASE
(given up: another member, or this one, gets it again at once with a higher delivery count). A
member that dies acknowledges nothing: its records come back when their locks expire. Nothing is
committed by offset, so there is no ledger here: `settled` is the ACCEPT, `abandoned` and `forget`
the RELEASE, `open_count` the records held unacknowledged.

Threading, as for a classic group (sources/kafka.py): every call into the ShareConsumer happens on
one dedicated thread. Its loop applies the acknowledgements the event loop queued, sends them
(`commit_async`, at most every COMMIT_INTERVAL while records are held), and fetches again only once
every record of the last fetch is acknowledged: the ShareConsumer refuses to poll before that. So
a fetch takes `max.poll.records` = ShareTerms.max_records (twice the group's concurrency: the second
half runs while the first one's slowest records finish), or a whole producer batch when the broker
hands one out at once; a slow record delays its own member's next fetch, never the other members'.
A record that waited so long for its turn that its lock no longer covers its deadline is released
rather than started (proxy.py): it must never run while the broker gives it to another member.

Start-up (`configure_share_group`, kafka/admin.py): the group's `share.auto.offset.reset` is set
from `initial_offset`, and its acquisition lock raised to ShareTerms.lock_sec when shorter, so a
delivery still running can never be handed to a second member at once. A cluster without share
groups refuses this: the service stops with one line.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import confluent_kafka

from freedom.errors import FreedomError
from freedom.kafka.admin import (
    NEEDS_SHARE_GROUPS,
    SHARE_DELIVERY_LIMIT,
    SHARE_LOCK_MS,
    SHARE_RESET,
    ShareGroupsUnavailable,
    configure_share_group,
)
from freedom.kafka.consumer.ledger import COMMIT_INTERVAL, TP
from freedom.kafka.consumer.sources import Cancellable, ShareTerms, Sink
from freedom.kafka.consumer.sources.kafka import SWITCH_INTERVAL

log = logging.getLogger("freedom.kafka.proxy")

#: Classic-group settings a ShareConsumer refuses ("not applicable for share consumer"): left out
#: when freedom adds them itself; given by the user, librdkafka's refusal is reported as it is.
_CLASSIC_ONLY = frozenset(
    {
        "enable.auto.commit",
        "enable.partition.eof",
        "session.timeout.ms",
        "queued.max.messages.kbytes",
        "auto.offset.reset",
        "partition.assignment.strategy",
        "group.instance.id",
        "isolation.level",
    }
)

#: How long the first fetch waits, at start-up: long enough for the member's first heartbeat to be
#: answered (a refusal is then seen before the service reports itself started).
FIRST_POLL_SEC = 1.0

_ACCEPT = confluent_kafka.AcknowledgeType.ACCEPT
_RELEASE = confluent_kafka.AcknowledgeType.RELEASE
_KIND = {_ACCEPT: "accept", _RELEASE: "release"}


class ShareSource:
    """One share group on Kafka: fetches the subscribed topics for a Sink, acknowledges each
    record after its outcome."""

    shared = True

    def __init__(
        self,
        group_id: str,
        settings: dict[str, Any],
        topics: list[str],
        terms: ShareTerms,
        *,
        initial_offset: str = "earliest",
        drain_timeout: float = 10.0,
        poll_timeout: float = 0.2,
    ) -> None:
        self.group_id = group_id
        self.topics = topics
        self.terms = terms
        self.drain_timeout = drain_timeout
        self.poll_timeout = poll_timeout
        self.settings = settings
        #: The group's `share.auto.offset.reset`, as set at start-up.
        self.offset_reset = initial_offset
        #: The group's acquisition lock in force (seconds; read back at start-up).
        self.lock_sec = terms.lock_sec
        #: The broker's `share.delivery.count.limit` for the group (read at start-up).
        self.delivery_limit: int | None = None
        #: (topic, "accept" | "release") -> records acknowledged so (read by /metrics).
        self.acknowledgements: collections.Counter[tuple[str, str]] = collections.Counter()
        #: (topic, delivery count) -> records handed out with that count (read by /metrics).
        self.delivery_counts: collections.Counter[tuple[str, int]] = collections.Counter()
        self.last_round = time.monotonic()
        self._sink: Sink | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()  # guards the three below between the two threads
        self._held: dict[tuple[TP, int], Any] = {}  # fetched, not acknowledged
        self._acquired: dict[tuple[TP, int], float] = {}  # when (time.monotonic()), the same keys
        self._per_tp: collections.Counter[TP] = collections.Counter()
        self._acks: list[tuple[Any, Any]] = []  # (record, AcknowledgeType) to apply
        self._wake = threading.Event()  # the last held record settled, or the stop
        self._fetching = True
        self._fetch_stopped: asyncio.Future[None] | None = None
        self._stop = threading.Event()
        self._consumer: Any = None
        self._task: asyncio.Future[None] | None = None
        self._ack_failures = 0
        self._thread = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix=f"freedom-share-{group_id}"
        )

    # ------------------------------------------------------------------ the port (loop side)

    async def start(self, sink: Sink) -> None:
        if sys.getswitchinterval() > SWITCH_INTERVAL:  # as a classic group's (sources/kafka.py)
            sys.setswitchinterval(SWITCH_INTERVAL)
        self._sink = sink
        self._loop = asyncio.get_running_loop()
        configs = await asyncio.to_thread(
            configure_share_group,
            self.settings,
            self.group_id,
            self.offset_reset,
            int(self.terms.lock_sec * 1000),
        )
        self.offset_reset = configs.get(SHARE_RESET, self.offset_reset)
        # At least what was set (the broker took it); more when an operator set a longer lock.
        lock_ms = (
            int(configs.get(SHARE_LOCK_MS, "0") or 0)
            if configs.get(SHARE_LOCK_MS, "").isdigit()
            else 0
        )
        self.lock_sec = max(lock_ms / 1000, self.terms.lock_sec)
        limit = configs.get(SHARE_DELIVERY_LIMIT)
        self.delivery_limit = int(limit) if limit and limit.isdigit() else None
        await self._call(self._open)
        await self._call(self._first_round)
        log.info(
            "share group %r: reading %s (share.auto.offset.reset = %s, lock %.0f s, "
            "delivery count limit %s)",
            self.group_id,
            ", ".join(self.topics),
            self.offset_reset,
            self.lock_sec,
            self.delivery_limit if self.delivery_limit is not None else "?",
        )
        sink.assigned.set()  # no assignment to wait for: every member reads every partition
        self._task = self._loop.run_in_executor(self._thread, self._pump)  # until close()

    async def stop(self) -> None:
        """Fetch no more; the thread goes on applying acknowledgements (the drain's) until close."""
        assert self._loop is not None
        self._fetch_stopped = self._loop.create_future()
        self._fetching = False
        self._wake.set()
        if self._task is not None and not self._task.done():
            # Records of a fetch in progress are dispatched before this returns (the same queue).
            await asyncio.wait({self._fetch_stopped, self._task}, return_when="FIRST_COMPLETED")

    async def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._task is not None:
            await self._task
        if self._loop is not None:
            await self._call(self._close)
        self._thread.shutdown(wait=True)

    def alive(self) -> bool | None:
        if self._task is None or not self._fetching:
            return None
        return not self._task.done()

    def pause(self, tp: TP) -> None:
        return None  # a fetch never exceeds the group's room (max.poll.records)

    def resume(self, tp: TP) -> None:
        return None

    def flow_paused(self, tp: TP, paused: bool) -> None:
        return None

    def room_freed(self) -> None:
        return None

    def handed(self, tp: TP, offset: int) -> None:
        return None  # held since the fetch

    def settled(self, tp: TP, offset: int) -> bool:
        self._acknowledge(tp, offset, _ACCEPT)
        return False

    def abandoned(self, tp: TP, offset: int) -> None:
        self._acknowledge(tp, offset, _RELEASE)

    def skip(self, tp: TP, offset: int) -> bool:
        return False

    def open_count(self, tp: TP) -> int:
        return self._per_tp[tp]

    def lock_left(self, tp: TP, offset: int) -> float:
        """How long this member's lock on the record still holds (an estimate from when its fetch
        returned: the broker's clock started a little earlier); 0 when it holds none."""
        since = self._acquired.get((tp, offset))
        return 0.0 if since is None else since + self.lock_sec - time.monotonic()

    def forget(self, tp: TP) -> None:
        """`tp`'s lane is gone (the stop): release what it still holds, to the other members."""
        with self._lock:
            mine = [key for key in self._held if key[0] == tp]
        for key in mine:
            self._acknowledge(*key, _RELEASE)

    def now(self) -> float:
        return time.time()

    def call_later(self, seconds: float, callback: Callable[[], None]) -> Cancellable:
        assert self._loop is not None
        return self._loop.call_later(seconds, callback)

    def _acknowledge(self, tp: TP, offset: int, kind: Any) -> None:
        with self._lock:
            record = self._held.pop((tp, offset), None)
            if record is None:  # released already (forget, then a late answer)
                return
            self._acquired.pop((tp, offset), None)
            self._per_tp[tp] -= 1
            self._acks.append((record, kind))
            last = not self._held
        self.acknowledgements[tp[0], _KIND[kind]] += 1
        if last or not self._fetching:
            self._wake.set()

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        assert self._loop is not None
        return await self._loop.run_in_executor(self._thread, fn, *args)

    # ------------------------------------------------------------------ the consumer thread

    def _open(self) -> None:
        settings = {k: v for k, v in self.settings.items() if k not in _CLASSIC_ONLY}
        try:
            consumer = confluent_kafka.ShareConsumer(
                {
                    **settings,
                    "group.id": self.group_id,
                    "share.acknowledgement.mode": "explicit",
                    "max.poll.records": self.terms.max_records,
                }
            )
        except (confluent_kafka.KafkaException, ValueError, TypeError) as exc:
            text = exc.args[0].str() if isinstance(exc, confluent_kafka.KafkaException) else exc
            raise FreedomError(f'share group "{self.group_id}": {text}') from None
        consumer.set_acknowledgement_commit_callback(self._on_acknowledged)
        consumer.subscribe(self.topics)
        self._consumer = consumer

    def _first_round(self) -> None:
        """The first fetch, at start-up: a cluster with share groups turned off (share.version = 0)
        answers the member's first heartbeat with UNSUPPORTED_VERSION, a fatal error."""
        try:
            self._round(FIRST_POLL_SEC)
        except confluent_kafka.KafkaException as exc:
            err = exc.args[0]
            if err.code() != confluent_kafka.KafkaError.UNSUPPORTED_VERSION and not err.fatal():
                raise
            self._consumer.close()
            self._consumer = None
            raise ShareGroupsUnavailable(
                f'share group "{self.group_id}" at {self.settings.get("bootstrap.servers")}: '
                f"the cluster has share groups turned off ({err.str()}); a share group needs "
                f"{NEEDS_SHARE_GROUPS}"
            ) from None

    def _pump(self) -> None:
        """The consumer thread's loop, until close(): acknowledge, then fetch when nothing is held."""
        while not self._stop.is_set():
            try:
                self._round()
            except Exception:  # never let the consumer thread die silently
                log.exception("share group %r: fetch failed; retrying", self.group_id)
                self._stop.wait(1.0)

    def _take_acks(self) -> tuple[bool, bool]:
        """Apply the queued acknowledgements: whether nothing fetched is held any more, and
        whether there were any."""
        with self._lock:
            acks, self._acks = self._acks, []
            idle = not self._held
        consumer = self._consumer
        for record, kind in acks:
            try:
                consumer.acknowledge(record, kind)
            except confluent_kafka.KafkaException as exc:  # e.g. its lock expired meanwhile
                log.warning(
                    "share group %r: acknowledging %s[%d]@%d failed: %s",
                    self.group_id,
                    record.topic(),
                    record.partition(),
                    record.offset(),
                    exc,
                )
        return idle, bool(acks)

    def _round(self, poll_timeout: float | None = None) -> None:
        self.last_round = time.monotonic()
        consumer, sink, loop = self._consumer, self._sink, self._loop
        assert consumer is not None and sink is not None and loop is not None
        idle, acked = self._take_acks()
        if not self._fetching:
            if self._fetch_stopped is not None and not self._fetch_stopped.done():
                loop.call_soon_threadsafe(_resolve, self._fetch_stopped)
            if acked:
                consumer.commit_async()
            self._wake.wait(COMMIT_INTERVAL)
            self._wake.clear()
            return
        if not idle:
            # Records of the last fetch are still running: send what finished, wait for the rest.
            if acked:
                consumer.commit_async()
            self._wake.wait(max(COMMIT_INTERVAL, 0.05))
            self._wake.clear()
            return
        batch = consumer.poll(
            poll_timeout or self.poll_timeout
        )  # also sends the acknowledgements applied above
        if not batch:
            return
        out = []
        for record in batch:
            err = record.error()
            if err is None:
                out.append(record)
            else:
                log.warning("share group %r: %s", self.group_id, err.str())
        if not out:
            return
        now = time.monotonic()
        with self._lock:
            for record in out:
                tp = (record.topic(), record.partition())
                self._held[tp, record.offset()] = record
                self._acquired[tp, record.offset()] = now
                self._per_tp[tp] += 1
        for record in out:
            self.delivery_counts[record.topic(), record.delivery_count() or 1] += 1
        sink.handing(len(out))
        loop.call_soon_threadsafe(sink.dispatch, out)

    def _on_acknowledged(self, offsets: Any, exc: Any) -> None:
        """The broker's answer to acknowledgements sent (on the consumer thread)."""
        if exc is None:
            if self._ack_failures:
                log.info("share group %r: acknowledgements succeed again", self.group_id)
                self._ack_failures = 0
            return
        self._ack_failures += 1
        if self._ack_failures == 1:
            log.warning(
                "share group %r: acknowledging %d records failed (%s); the broker delivers them "
                "again",
                self.group_id,
                sum(len(v) for v in offsets.values()) if offsets else 0,
                exc,
            )

    def _close(self) -> None:
        consumer = self._consumer
        if consumer is None:
            return
        with self._lock:
            left = list(self._held)
        for key in left:  # nothing may stay acquired by a member that leaves
            self._acknowledge(*key, _RELEASE)
        self._take_acks()
        self._consumer = None
        try:
            consumer.commit_sync(self.drain_timeout)
        except confluent_kafka.KafkaException as exc:
            log.warning("share group %r: last acknowledgements failed: %s", self.group_id, exc)
        consumer.close()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
