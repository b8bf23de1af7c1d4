"""A Kafka share group (KIP-932, "queues for Kafka") as a record source: the only module of the
consumer core that builds a confluent-kafka `ShareConsumer` (docs/share-groups.md).

Members of a share group read the same partitions together: the broker hands each record to one
member under an acquisition lock, and the member acknowledges it on its own, in any order:
ACCEPT (finished: delivered, dropped, or acknowledged on its retry or dead-letter topic), RELEASE
(given up: another member, or this one, gets it again at once with a higher delivery count). A
member that dies acknowledges nothing: its records come back when their locks expire. Nothing is
committed by offset, so there is no ledger here: `settled` is the ACCEPT, `abandoned` and `forget`
the RELEASE, `open_count` the records held unacknowledged.

Fetchers: a ShareConsumer in explicit acknowledgement mode fetches again only once every record of
its last fetch is acknowledged (the client's rule), so one consumer would let a slow record hold
up its whole instance. The source runs FETCHERS of them (share_fetcher.py), each its own member of
the group on its own dedicated thread, with its own held records and queued acknowledgements; a
record is acknowledged by the fetcher that holds it. While one waits for a slow record, the others
go on fetching. Two, because one slow record at a time is the case to cover: each more is a
librdkafka client (its threads, its connections to every broker) and a member the broker keeps,
and splits the fetch further; one only when the group runs one record at a time (max_in_flight =
1), where a second fetcher's records could only wait behind the first's, their locks running.
Each fetcher's `max.poll.records` is its share of ShareTerms.max_records (twice the group's
concurrency), so the instance holds no more than one consumer did, and the lanes still bound what
runs at once by max_in_flight. The broker may hand out a whole producer batch at once, whatever
`max.poll.records`. Its assignor shares a partition between members only when the group has more
members than partitions: a fetcher that reads a partition alone holds that partition's records
back while it waits (the other fetchers' partitions go on).
A record that waited so long for its turn that its lock no longer covers its deadline is released
rather than started (proxy.py): it must never run while the broker gives it to another member.

Start-up (`configure_share_group`, kafka/admin.py): the group's `share.auto.offset.reset` is set
from `initial_offset`, and its acquisition lock raised to ShareTerms.lock_sec when shorter, so a
delivery still running can never be handed to a second member at once. A cluster without share
groups refuses this: the service stops with one line; one with share groups turned off refuses the
first fetcher's first fetch (the others join only after it).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

from freedom.kafka.admin import (
    SHARE_DELIVERY_LIMIT,
    SHARE_LOCK_MS,
    SHARE_RESET,
    configure_share_group,
)
from freedom.kafka.consumer.ledger import TP
from freedom.kafka.consumer.sources import Cancellable, ShareTerms, Sink
from freedom.kafka.consumer.sources.kafka import SWITCH_INTERVAL
from freedom.kafka.consumer.sources.share_fetcher import ACCEPT, RELEASE, Holdings, ShareFetcher

log = logging.getLogger("freedom.kafka.proxy")

#: The fetchers of a share group's source (the module's notes say why two).
FETCHERS = 2


def fetchers_for(terms: ShareTerms) -> int:
    """How many fetchers a source with `terms` runs: FETCHERS, one when it runs one record at a
    time (its fetch is at most two records)."""
    return FETCHERS if terms.max_records > 2 else 1


class ShareSource:
    """One share group on Kafka: fetches the subscribed topics for a Sink through its fetchers,
    acknowledges each record after its outcome."""

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
        self._holdings = Holdings()
        #: (topic, "accept" | "release") -> records acknowledged so (read by /metrics).
        self.acknowledgements = self._holdings.acknowledgements
        #: (topic, delivery count) -> records handed out with that count (read by /metrics).
        self.delivery_counts = self._holdings.delivery_counts
        self._loop: asyncio.AbstractEventLoop | None = None
        self._fetching = True
        k = fetchers_for(terms)
        share = -(-terms.max_records // k)  # each fetcher's share of the fetch, rounded up
        self.fetchers = [
            ShareFetcher(
                f"freedom-share-{group_id}-{i}", group_id, settings, topics, share, self._holdings
            )
            for i in range(k)
        ]
        for fetcher in self.fetchers:
            fetcher.poll_timeout = poll_timeout
            fetcher.drain_timeout = drain_timeout
        self._started_at = time.monotonic()

    @property
    def last_round(self) -> float:
        """When the fetcher that went longest without one last began a round (/livez)."""
        return min((f.last_round for f in self.fetchers), default=self._started_at)

    @last_round.setter
    def last_round(self, when: float) -> None:
        for fetcher in self.fetchers:
            fetcher.last_round = when

    # ------------------------------------------------------------------ the port (loop side)

    async def start(self, sink: Sink) -> None:
        if sys.getswitchinterval() > SWITCH_INTERVAL:  # as a classic group's (sources/kafka.py)
            sys.setswitchinterval(SWITCH_INTERVAL)
        self._loop = asyncio.get_running_loop()
        for fetcher in self.fetchers:
            fetcher.sink, fetcher.loop = sink, self._loop
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
        first, others = self.fetchers[0], self.fetchers[1:]
        await first.call(first.open)
        await first.call(first.first_round)  # a cluster with share groups off refuses it
        try:
            await asyncio.gather(*(f.call(f.open) for f in others))
        except BaseException:
            await self.close()
            raise
        log.info(
            "share group %r: reading %s with %d member(s) (share.auto.offset.reset = %s, "
            "lock %.0f s, delivery count limit %s)",
            self.group_id,
            ", ".join(self.topics),
            len(self.fetchers),
            self.offset_reset,
            self.lock_sec,
            self.delivery_limit if self.delivery_limit is not None else "?",
        )
        sink.assigned.set()  # no assignment callback to wait for: the broker assigns as members fetch
        for fetcher in self.fetchers:
            fetcher.run()  # until close()

    async def stop(self) -> None:
        """Fetch no more; the fetchers go on applying acknowledgements (the drain's) until close."""
        assert self._loop is not None
        self._fetching = False
        waits = []
        for fetcher in self.fetchers:
            fetcher.fetch_stopped = self._loop.create_future()
            fetcher.fetching = False
            fetcher.wake.set()
            if fetcher.task is not None and not fetcher.task.done():
                # Records of a fetch in progress are dispatched before this returns (the same queue).
                waits.append(
                    asyncio.wait(
                        {fetcher.fetch_stopped, fetcher.task}, return_when="FIRST_COMPLETED"
                    )
                )
        await asyncio.gather(*waits)

    async def close(self) -> None:
        for fetcher in self.fetchers:
            fetcher.stop_event.set()
            fetcher.wake.set()
        await asyncio.gather(*(f.task for f in self.fetchers if f.task is not None))
        if self._loop is not None:
            await asyncio.gather(*(f.call(f.close) for f in self.fetchers))
        for fetcher in self.fetchers:
            fetcher.thread.shutdown(wait=True)

    def alive(self) -> bool | None:
        if not self._fetching or any(f.task is None for f in self.fetchers):
            return None
        return not any(f.task.done() for f in self.fetchers if f.task is not None)

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
        self._acknowledge(tp, offset, ACCEPT)
        return False

    def abandoned(self, tp: TP, offset: int) -> None:
        self._acknowledge(tp, offset, RELEASE)

    def skip(self, tp: TP, offset: int) -> bool:
        return False

    def open_count(self, tp: TP) -> int:
        return self._holdings.per_tp[tp]

    def lock_left(self, tp: TP, offset: int) -> float:
        """How long this member's lock on the record still holds (an estimate from when its fetch
        returned: the broker's clock started a little earlier); 0 when it holds none."""
        since = self._holdings.acquired.get((tp, offset))
        return 0.0 if since is None else since + self.lock_sec - time.monotonic()

    def forget(self, tp: TP) -> None:
        """`tp`'s lane is gone (the stop): release what it still holds, to the other members."""
        with self._holdings.lock:
            mine = [key for key in self._holdings.owner if key[0] == tp]
        for key in mine:
            self._acknowledge(*key, RELEASE)

    def now(self) -> float:
        return time.time()

    def call_later(self, seconds: float, callback: Callable[[], None]) -> Cancellable:
        assert self._loop is not None
        return self._loop.call_later(seconds, callback)

    def _acknowledge(self, tp: TP, offset: int, kind: Any) -> None:
        fetcher = self._holdings.acknowledge((tp, offset), kind)
        if fetcher is not None and (fetcher.emptied or not self._fetching):
            fetcher.wake.set()
