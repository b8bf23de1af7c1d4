"""The consumer proxy's batch path: a chunk of a batch topic's records (lanes.py starts the records
of a partition fetched together as one task) delivered and settled in one call.

Each record is prepared as `ConsumerProxy._handle` prepares it (the wait for the service, once; its
retry count, key and headers; its replay claim verified), then all of them go to the Batcher in one
call (:meth:`Batcher.deliver_many`: a future per record, no task). Each answer is planned and
observed as a per-record delivery's; a record whose answer is plainly done (no outcome) is
finished there. The others (dropped, delivered again in memory with `retry_count = 0`, retried,
dead-lettered) go on alone through the per-record code (`_attempts` from that first answer, then
the forwarder, forward.py), each in a task of its own that the lane starts and settles: log lines, metrics and headers are those of a per-record delivery.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from freedom.kafka.consumer.delivery import DeliveryResult
    from freedom.kafka.consumer.keys import EventId
    from freedom.kafka.consumer.plan import TopicPlan
    from freedom.kafka.consumer.proxy import ConsumerProxy
    from freedom.kafka.consumer.retry import Plan

log = logging.getLogger("freedom.kafka.proxy")


async def handle_batch(
    proxy: ConsumerProxy, records: list[Any], plan: TopicPlan, lost: asyncio.Event
) -> list[bool | Awaitable[bool]]:
    """Deliver `records` (of one partition, in offset order): for each, True when its answer
    finished it, False when it was given up (its partition went away), or the rest of its way (a
    retry, a dead letter, a drop, a redelivery: an awaitable giving that, which the lane runs on
    its own so that it holds back no other record of the chunk)."""
    if not proxy._service_up.is_set() and not await proxy._service_ready(lost):
        return [False] * len(records)
    prepared: list[tuple[Any, EventId, Any, int, str | None]] = []
    for record in records:
        n, note, key, headers, claim = proxy._prepare(record, plan)
        if claim is not None:
            key.verified_replay = await proxy.replays.verified(record, claim, plan.source_topic)
        prepared.append((record, key, headers, n, note))
    started = time.perf_counter()
    results = await proxy.batcher.deliver_many(plan, [p[:4] for p in prepared])
    seconds = time.perf_counter() - started
    out: list[bool | Awaitable[bool]] = []
    for (record, key, headers, n, note), result in zip(prepared, results):
        step = proxy.router.plan(plan.source_topic, n, result)
        proxy.observer.delivered(record, plan, result, step, seconds)
        if step.next == "done" and result.outcome is None:
            out.append(True)
        else:  # goes on alone, from this answer on (the lane runs it in a task of its own)
            out.append(_alone(proxy, record, plan, lost, key, headers, n, note, (result, step)))
    return out


async def _alone(
    proxy: ConsumerProxy,
    record: Any,
    plan: TopicPlan,
    lost: asyncio.Event,
    key: EventId,
    headers: Any,
    n: int,
    note: str | None,
    first: tuple[DeliveryResult, Plan],
) -> bool:
    """The per-record path of one record of the batch, from its batch answer on (a bug in it
    leaves this record uncommitted, as the lane does for a record of its own)."""
    try:
        attempt = await proxy._attempts(record, plan, lost, key, headers, n, first=first)
        if isinstance(attempt, bool):
            return attempt
        result, step, where = attempt
        return await proxy.forwarder.forward(
            record, plan, step, n, result, lost, where, note=note, replay=key.verified_replay
        )
    except Exception:
        log.exception(
            "handling %s[%d]@%d failed", record.topic(), record.partition(), record.offset()
        )
        return False
