"""One fetcher of a share group's source (sources/share.py): a confluent-kafka `ShareConsumer` in
explicit acknowledgement mode, its own member of the group, on its own dedicated thread; and the
records the source's fetchers hold, in one place (:class:`Holdings`).

Every call into a fetcher's ShareConsumer happens on its thread. Its loop applies the
acknowledgements the event loop queued, sends them (`commit_async`, at most every COMMIT_INTERVAL
while records are held), and fetches again only once every record of its last fetch is
acknowledged: the ShareConsumer refuses to poll before that (the client's rule). A slow record thus
holds its own fetcher's next fetch, and only that: the source's other fetchers go on fetching.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import threading
import time
from typing import Any

import confluent_kafka

from freedom.errors import FreedomError
from freedom.kafka.admin import NEEDS_SHARE_GROUPS, ShareGroupsUnavailable
from freedom.kafka.consumer.ledger import COMMIT_INTERVAL, TP
from freedom.kafka.consumer.sources import Sink

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

ACCEPT = confluent_kafka.AcknowledgeType.ACCEPT
RELEASE = confluent_kafka.AcknowledgeType.RELEASE
KIND = {ACCEPT: "accept", RELEASE: "release"}


class Holdings:
    """The records a source's fetchers hold (fetched, not acknowledged): which fetcher holds each
    (it alone can acknowledge it), since when, and how many per partition. One lock guards it all,
    between the event loop and the fetcher threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.owner: dict[tuple[TP, int], ShareFetcher] = {}
        self.acquired: dict[tuple[TP, int], float] = {}  # when (time.monotonic())
        self.per_tp: collections.Counter[TP] = collections.Counter()
        #: (topic, "accept" | "release") -> records acknowledged so (read by /metrics).
        self.acknowledgements: collections.Counter[tuple[str, str]] = collections.Counter()
        #: (topic, delivery count) -> records handed out with that count (read by /metrics).
        self.delivery_counts: collections.Counter[tuple[str, int]] = collections.Counter()

    def take(self, fetcher: ShareFetcher, records: list[Any]) -> None:
        """`fetcher` fetched `records` (its thread)."""
        now = time.monotonic()
        with self.lock:
            for record in records:
                tp = (record.topic(), record.partition())
                key = (tp, record.offset())
                before = self.owner.get(key)
                if before is not None:  # its lock expired at another fetcher: that one lost it
                    before.held.pop(key, None)
                    before.wake.set()
                else:
                    self.per_tp[tp] += 1
                self.owner[key] = fetcher
                fetcher.held[key] = record
                self.acquired[key] = now
                self.delivery_counts[record.topic(), record.delivery_count() or 1] += 1

    def acknowledge(self, key: tuple[TP, int], kind: Any) -> ShareFetcher | None:
        """Queue `kind` for the record at its fetcher: that fetcher, or None when no fetcher holds
        it (released already: forget, then a late answer)."""
        with self.lock:
            fetcher = self.owner.pop(key, None)
            if fetcher is None:
                return None
            record = fetcher.held.pop(key)
            self.acquired.pop(key, None)
            self.per_tp[key[0]] -= 1
            fetcher.acks.append((record, kind))
            fetcher.emptied = not fetcher.held
            self.acknowledgements[key[0][0], KIND[kind]] += 1
        return fetcher


class ShareFetcher:
    """One ShareConsumer of a share group's source, on its own thread."""

    def __init__(
        self,
        name: str,
        group_id: str,
        settings: dict[str, Any],
        topics: list[str],
        max_records: int,
        holdings: Holdings,
    ) -> None:
        self.name = name
        self.group_id = group_id
        self.settings = settings
        self.topics = topics
        self.max_records = max_records
        self.holdings = holdings
        self.held: dict[tuple[TP, int], Any] = {}  # fetched, not acknowledged (holdings.lock)
        self.acks: list[tuple[Any, Any]] = []  # (record, AcknowledgeType) to apply (the same)
        self.emptied = False  # the last acknowledgement queued left nothing held (the same)
        self.wake = threading.Event()  # the last held record settled, or the stop
        self.last_round = time.monotonic()
        self.fetching = True
        self.fetch_stopped: asyncio.Future[None] | None = None
        self.stop_event = threading.Event()
        self.task: asyncio.Future[None] | None = None
        self.sink: Sink | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.poll_timeout = 0.2
        self.drain_timeout = 10.0
        self._consumer: Any = None
        self._ack_failures = 0
        self.thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=name)

    async def call(self, fn: Any, *args: Any) -> Any:
        assert self.loop is not None
        return await self.loop.run_in_executor(self.thread, fn, *args)

    def run(self) -> None:
        """Its loop, on its thread, until close."""
        assert self.loop is not None
        self.task = self.loop.run_in_executor(self.thread, self._pump)

    # ------------------------------------------------------------------ its thread

    def open(self) -> None:
        settings = {k: v for k, v in self.settings.items() if k not in _CLASSIC_ONLY}
        try:
            consumer = confluent_kafka.ShareConsumer(
                {
                    **settings,
                    "group.id": self.group_id,
                    "share.acknowledgement.mode": "explicit",
                    "max.poll.records": self.max_records,
                }
            )
        except (confluent_kafka.KafkaException, ValueError, TypeError) as exc:
            text = exc.args[0].str() if isinstance(exc, confluent_kafka.KafkaException) else exc
            raise FreedomError(f'share group "{self.group_id}": {text}') from None
        consumer.set_acknowledgement_commit_callback(self._on_acknowledged)
        consumer.subscribe(self.topics)
        self._consumer = consumer

    def first_round(self) -> None:
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
        while not self.stop_event.is_set():
            try:
                self._round()
            except Exception:  # never let the fetcher's thread die silently
                log.exception("share group %r: fetch failed; retrying", self.group_id)
                self.stop_event.wait(1.0)

    def _take_acks(self) -> tuple[bool, bool]:
        """Apply the queued acknowledgements: whether nothing fetched is held any more, and
        whether there were any."""
        with self.holdings.lock:
            acks, self.acks = self.acks, []
            idle = not self.held
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
        consumer, sink, loop = self._consumer, self.sink, self.loop
        assert consumer is not None and sink is not None and loop is not None
        idle, acked = self._take_acks()
        if not self.fetching:
            if self.fetch_stopped is not None and not self.fetch_stopped.done():
                loop.call_soon_threadsafe(_resolve, self.fetch_stopped)
            if acked:
                consumer.commit_async()
            self.wake.wait(COMMIT_INTERVAL)
            self.wake.clear()
            return
        if not idle:
            # Records of the last fetch are still running: send what finished, wait for the rest.
            if acked:
                consumer.commit_async()
            self.wake.wait(max(COMMIT_INTERVAL, 0.05))
            self.wake.clear()
            return
        batch = consumer.poll(poll_timeout or self.poll_timeout)  # also sends the acks applied
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
        self.holdings.take(self, out)
        sink.handing(len(out))
        loop.call_soon_threadsafe(sink.dispatch, out)

    def _on_acknowledged(self, offsets: Any, exc: Any) -> None:
        """The broker's answer to acknowledgements sent (on the fetcher's thread)."""
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

    def close(self) -> None:
        """Release what it still holds (nothing may stay acquired by a member that leaves), send
        the last acknowledgements, leave the group."""
        consumer = self._consumer
        if consumer is None:
            return
        with self.holdings.lock:
            left = list(self.held)
        for key in left:
            self.holdings.acknowledge(key, RELEASE)
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
