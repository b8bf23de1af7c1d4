"""What a share group's records get beyond a classic group's (docs/share-groups.md): the proxy asks
these rules before a start and after a failure with no retry topic; the acknowledgements themselves
are the source's (sources/share.py).

- The terms the group's source is made with: a lock covering the longest deadline plus a margin,
  and fetches of twice the concurrency.
- A record starts only while this member's lock on it still covers its deadline: a fetch can bring
  a whole producer batch, and a record that waited in the backlog past that would run while the
  broker hands it to another member. It is released instead, unless this is its last delivery
  (the broker would archive it unhandled).
- A failure with `retry_count = 0` is released after a backoff (any member gets it again, with a
  higher delivery count) rather than redelivered in place, which would hold its lock; at the
  group's delivery count limit it goes to the dead-letter topic instead of being archived.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from freedom.kafka.consumer.delivery import DeliveryResult, deadline_of
from freedom.kafka.consumer.keys import record_key
from freedom.kafka.consumer.keys import where as _where
from freedom.kafka.consumer.observer import ProxyObserver
from freedom.kafka.consumer.plan import TopicPlan, wait_event
from freedom.kafka.consumer.sources import SHARE_LOCK_MARGIN_SEC, RecordSource, ShareTerms
from freedom.observability.failures import log_with_traceback

log = logging.getLogger("freedom.kafka.proxy")


def share_terms(plans: dict[str, TopicPlan], fetch_batch: int) -> ShareTerms:
    """The terms of a share group reading `plans`' topics."""
    return ShareTerms(
        lock_sec=max(p.route.timeout_sec or 0.0 for p in plans.values()) + SHARE_LOCK_MARGIN_SEC,
        max_records=max(1, min(fetch_batch, *(2 * p.max_in_flight for p in plans.values()))),
    )


class ShareRules:
    """The rules of one share group's records, on its source's locks and delivery counts."""

    def __init__(self, group_id: str, source: RecordSource, observer: ProxyObserver) -> None:
        self.group_id = group_id
        self.source = source
        self.observer = observer
        self.late_locks = 0  # records released because their lock ran out in the backlog

    @property
    def limit(self) -> int | None:
        """The group's share.delivery.count.limit (read by the source at start-up)."""
        limit = getattr(self.source, "delivery_limit", None)
        return limit if isinstance(limit, int) else None

    def lock_covers(self, record: Any, plan: TopicPlan) -> bool:
        """Whether `record` may start: this member's lock on it still covers its deadline (and a
        second), or it is at its last delivery."""
        lock_left = getattr(self.source, "lock_left", None)
        left = (
            float("inf")
            if lock_left is None
            else lock_left((record.topic(), record.partition()), record.offset())
        )
        if left >= deadline_of(plan.route) + 1.0:
            return True
        limit = self.limit
        if limit is not None and (record.delivery_count() or 1) >= limit:
            return True  # a release now would have the broker archive it: its last chance is now
        self.late_locks += 1
        if self.late_locks == 1 or self.late_locks % 1000 == 0:
            log.warning(
                "share group %r: %s waited in this instance's backlog until its lock (%.1f s left) "
                "no longer covers its deadline; released to the group (%d so far: publish in "
                "smaller producer batches, or give the topic a longer delivery_timeout_sec)",
                self.group_id,
                _where(record, record_key(record, False)),
                left,
                self.late_locks,
            )
        return False

    async def release_failed(
        self,
        record: Any,
        plan: TopicPlan,
        lost: asyncio.Event,
        result: DeliveryResult,
        key: str,
    ) -> bool | None:
        """A failed record with no retry topic: False once it waited its backoff (the group then
        releases it), or None at the delivery count limit (it goes to its dead-letter topic)."""
        count = record.delivery_count() or 1
        limit = self.limit
        if limit is not None and count >= limit:
            return None
        backoff = min(0.5 * 2 ** (count - 1), SHARE_LOCK_MARGIN_SEC / 2)  # within the lock
        log_with_traceback(
            log,
            logging.WARNING,
            result.trace,
            "delivery of %s to %s failed: %s; released to the share group in %.1f s "
            "(delivery %d of %s)",
            _where(record, key),
            plan.route.path,
            result.describe(),
            backoff,
            count,
            limit if limit is not None else "?",
            extra=self.observer.log_fields(record, "redeliver"),
        )
        await wait_event(lost, backoff)
        return False
