"""The outbox relay: publishes pending outbox rows, marking each done only after the broker's ack.

It runs as a task of the service, started and stopped with it. It publishes whatever is pending
at start-up (rows left by a crash), right after a unit of work commits (it is woken), and every
`interval` seconds (rows whose publish failed, e.g. while the broker was down).

Order: the rows of one round are grouped by key (the aggregate's identity); each group is
published one row at a time, in outbox order, the next only after the previous was acknowledged,
and a group stops at its first failure, so a later event of an aggregate never overtakes an
earlier one. Groups are published concurrently.

Delivery is at least once: a crash between the broker's ack and marking the row done publishes
that row again after the restart (an idempotent handler, `uow.already_processed()`, absorbs it).
Only the instance holding the lease relays, so service instances sharing a database do not race.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from freedom.domain import outbox
from freedom.domain.events import DomainEvent

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

log = logging.getLogger("freedom.outbox")

Publish = Callable[[DomainEvent], Awaitable[None]]
LEASE_NAME = "relay"


class OutboxRelay:
    """Publishes the outbox of one database through one publish function."""

    def __init__(
        self,
        engine: AsyncEngine,
        publish: Publish,
        *,
        owner: str,
        interval: float = 1.0,
        batch: int = 500,
        lease_ttl: float = 30.0,
        keep_published: float = 3600.0,
        retry_backoff: float = 0.5,
    ) -> None:
        self.engine = engine
        self.publish = publish
        self.owner = owner
        self.interval = interval
        self.batch = batch
        self.lease_ttl = lease_ttl
        self.keep_published = keep_published
        self.retry_backoff = retry_backoff
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._last_purge = 0.0

    def start(self) -> None:
        self._stop.clear()
        self._task = asyncio.create_task(self._run(), name="freedom-outbox-relay")

    def wake(self) -> None:
        """Publish now (a unit of work has just committed events)."""
        self._wake.set()

    async def stop(self, timeout: float = 15.0) -> None:
        """Stop after the round in flight (bounded by `timeout`), and hand the lease back."""
        self._stop.set()
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            except TimeoutError:
                log.warning(
                    "the outbox relay did not finish its round within %.0f s; stopping it", timeout
                )
                self._task.cancel()
                try:
                    await self._task
                except (asyncio.CancelledError, Exception):  # noqa: BLE001
                    pass
            self._task = None
        try:
            async with self.engine.begin() as conn:
                await outbox.release_lease(conn, LEASE_NAME, self.owner)
        except Exception:  # noqa: BLE001 - the lease expires on its own
            log.warning("could not release the outbox relay lease", exc_info=True)

    async def _run(self) -> None:
        failed_rounds = 0
        while not self._stop.is_set():
            self._wake.clear()
            try:
                _, failed, full = await self.run_once()
            except Exception:  # noqa: BLE001 - a database hiccup must not end the relay
                log.exception("the outbox relay round failed; retrying")
                failed, full = 1, False
            if full and not failed:
                continue  # more is pending: go on at once
            failed_rounds = failed_rounds + 1 if failed else 0
            # After failures, retry soon, then less often (at most every max(interval, 5 s)).
            delay = (
                min(self.retry_backoff * 2 ** (failed_rounds - 1), max(self.interval, 5.0))
                if failed_rounds
                else self.interval
            )
            try:
                await asyncio.wait_for(self._wake.wait(), delay)
            except TimeoutError:
                pass

    async def run_once(self) -> tuple[int, int, bool]:
        """One round: publish up to `batch` pending rows. Returns (published, failed, batch was full)."""
        async with self.engine.begin() as conn:
            if not await outbox.take_lease(conn, LEASE_NAME, self.owner, self.lease_ttl):
                return 0, 0, False
            rows = await outbox.pending(conn, self.batch)
        if not rows:
            await self._purge()
            return 0, 0, False
        groups: OrderedDict[str, list[tuple[int, DomainEvent]]] = OrderedDict()
        for row_id, event in rows:
            groups.setdefault(event.key, []).append((row_id, event))
        done: list[int] = []
        failures: dict[int, str] = {}

        async def publish_group(group: list[tuple[int, DomainEvent]]) -> None:
            for row_id, event in group:
                if self._stop.is_set():
                    return
                try:
                    await self.publish(event)
                except Exception as exc:  # noqa: BLE001 - retried next round, in order
                    failures[row_id] = f"{type(exc).__name__}: {exc}"
                    return
                done.append(row_id)

        await asyncio.gather(*(publish_group(g) for g in groups.values()))
        async with self.engine.begin() as conn:
            if done:
                await outbox.mark_published(conn, sorted(done))
            if failures:
                await outbox.mark_failed(conn, failures)
        if failures:
            first = next(iter(failures.values()))
            log.warning(
                "outbox: %d event(s) not published yet (%s); retrying", len(failures), first
            )
        return len(done), len(failures), len(rows) == self.batch

    async def _purge(self) -> None:
        loop = asyncio.get_running_loop()
        if loop.time() - self._last_purge < max(self.interval * 60, 60.0):
            return
        self._last_purge = loop.time()
        older = outbox.now() - dt.timedelta(seconds=self.keep_published)
        async with self.engine.begin() as conn:
            n = await outbox.purge_published(conn, older)
        if n:
            log.debug("outbox: purged %d published rows", n)
