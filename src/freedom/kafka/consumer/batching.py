"""Batch delivery on the consumer proxy's side: records of a topic gathered into one request, and
the answer's per-record statuses turned back into one `DeliveryResult` per record.

For a topic bound with `listen_event(..., batch=BatchSettings(...))` the lane (lanes.py) starts
the records fetched together as one chunk: one task, one call of the proxy's batch path
(batch_path.py), which prepares them and hands them all to :meth:`Batcher.deliver_many`: each
record's entry goes into the topic's open batch (a full batch is sent and the rest fill the next),
with a future, not a task, per record; the chunk waits for all of them. A record delivered alone
(a `key-ordered` topic's, one delivered again in memory with `retry_count = 0`, or any while
spans are recorded: no batch path then) goes through :meth:`Batcher.deliver`, into the same open batch. A batch is sent when it holds
`max_records` records or its first record has waited `max_wait_ms`. Everything after the delivery
(retry, dead letter, drop, the commit and its rule) is the per-record path's, unchanged: each
record settles with its own answer (a chunk's records once the last of them is done). The envelope
and the answer are defined in freedom/wire/batch.py (and docs/scaling.md).

Which records wait together: those of one topic as read (a retry topic's apart from its main
topic's) that are in flight at once. In `concurrent` and `key-ordered` modes that is up to
`max_in_flight` records of the topic, from every partition (keep `max_in_flight` >= `max_records`);
in `sequential` mode the group starts up to `max_records` fetched records of a partition at once
and waits for all of them before the next batch of that partition (group.py).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from dataclasses import replace
from typing import Any

from freedom.kafka.consumer.delivery import (
    DeliveryResult,
    RawAnswer,
    RecordHeaders,
    Transport,
    UnsendableRecord,
    deadline_of,
    proxy_wait,
    request_headers,
    result_of,
)
from freedom.kafka.consumer.group import TopicPlan
from freedom.wire.batch import STATUSES
from freedom.wire.headers import BATCH_HEADER, DEADLINE_HEADER, MESSAGE_KEY_HEADER
from freedom.wire.outcomes import MAX_REASON
from freedom.wire.payloads import CONTENT_TYPE, JSON

log = logging.getLogger("freedom.kafka.batch")

#: The most bytes of a batch answer read (a longer one is cut, does not parse, and fails the batch).
MAX_ANSWER_BYTES = 16 * 1024 * 1024

#: What a record's retry or dead-letter copy says failed when the batch answer gave it `retry` or
#: `dead-letter`: `x-freedom-error: batch answer, handler asked: dead-letter (<reason>)`, and no
#: `x-freedom-status` (the request's 2xx was not this record's outcome; freedom/wire/batch.py).
BATCH_ANSWER = "batch answer"

_MESSAGE_KEY = MESSAGE_KEY_HEADER.encode()
_CONTENT_TYPE = CONTENT_TYPE.encode()
_REQUEST_HEADERS = [(CONTENT_TYPE.encode(), JSON.encode())]


def envelope_record(
    record: Any, key: str, headers: RecordHeaders, retry_count: int
) -> dict[str, Any]:
    """One record of the envelope (freedom/wire/batch.py); raises UnsendableRecord as a delivery would."""
    wire = request_headers(headers, key, retry_count)
    content_type = JSON
    event_id = ""
    out = []
    for k, v in wire:
        name, text = k.decode("ascii", "replace"), v.decode("utf-8", "replace")
        if k == _CONTENT_TYPE:
            content_type = text
        elif k == _MESSAGE_KEY:
            event_id = text
        out.append([name, text])
    value = record.value() or b""
    try:
        text, encoding = value.decode("utf-8"), "text"
    except UnicodeDecodeError:
        text, encoding = base64.b64encode(value).decode("ascii"), "base64"
    partition, offset = record.partition(), record.offset()
    return {
        "id": f"{partition}-{offset}",
        "event_id": event_id,
        "topic": record.topic(),
        "partition": partition,
        "offset": offset,
        "retry_count": retry_count,
        "content_type": content_type,
        "headers": out,
        "value": text,
        "value_encoding": encoding,
    }


class _Open:
    """A batch being filled: its records' envelope entries and the futures their deliveries wait on."""

    __slots__ = ("plan", "entries", "waiters", "timer")

    def __init__(self, plan: TopicPlan) -> None:
        self.plan = plan
        self.entries: list[dict[str, Any]] = []
        self.waiters: list[asyncio.Future[DeliveryResult]] = []
        self.timer: asyncio.Handle | None = None


class Batcher:
    """Gathers the records of batch topics into requests and shares the answers out (one per consumer proxy)."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        # (topic as read, partition in sequential mode, else None) -> the batch being filled: a
        # sequential batch holds one partition's records, in offset order.
        self._open: dict[tuple[str, int | None], _Open] = {}
        self._sending: set[asyncio.Task[None]] = set()
        self._warned: set[str] = set()

    async def deliver(
        self, record: Any, plan: TopicPlan, key: str, headers: RecordHeaders, retry_count: int
    ) -> DeliveryResult:
        """Deliver `record` in its topic's next batch; its own result, never raises for the
        service's or the network's faults."""
        try:
            entry = envelope_record(record, key, headers, retry_count)
        except UnsendableRecord as exc:
            return exc.result()
        return await self._add(record, plan, entry)

    async def deliver_many(
        self, plan: TopicPlan, records: list[tuple[Any, str, RecordHeaders, int]]
    ) -> list[DeliveryResult]:
        """Deliver (record, key, headers, retry count) of one partition in the topic's next batch(es)
        at once: one future per record, awaited together; their results in order, as `deliver`."""
        results: list[DeliveryResult | None] = [None] * len(records)
        waiting: list[tuple[int, asyncio.Future[DeliveryResult]]] = []
        for i, (record, key, headers, retry_count) in enumerate(records):
            try:
                entry = envelope_record(record, key, headers, retry_count)
            except UnsendableRecord as exc:
                results[i] = exc.result()
                continue
            waiting.append((i, self._add(record, plan, entry)))
        if waiting:
            for (i, _), result in zip(waiting, await asyncio.gather(*(w for _, w in waiting))):
                results[i] = result
        return [r for r in results if r is not None]

    def _add(
        self, record: Any, plan: TopicPlan, entry: dict[str, Any]
    ) -> asyncio.Future[DeliveryResult]:
        """Put `entry` in its topic's open batch (opened here, sent here when full); its future."""
        settings = plan.route.batch
        assert settings is not None
        topic = record.topic()
        slot = (topic, record.partition() if plan.mode == "sequential" else None)
        batch = self._open.get(slot)
        if batch is None:
            batch = self._open[slot] = _Open(plan)
            loop = asyncio.get_running_loop()
            if settings.max_wait_ms > 0:
                batch.timer = loop.call_later(settings.max_wait_ms / 1000, self._flush, slot, batch)
            else:  # what is there now: the records whose deliveries start in this turn of the loop
                batch.timer = loop.call_soon(self._flush, slot, batch)
            if (
                plan.mode != "sequential"
                and plan.max_in_flight < settings.max_records
                and topic not in self._warned
            ):
                self._warned.add(topic)
                log.warning(
                    "%s: max_in_flight = %d is below the batch's max_records = %d: batches hold at most "
                    "%d records",
                    topic,
                    plan.max_in_flight,
                    settings.max_records,
                    plan.max_in_flight,
                )
        waiter: asyncio.Future[DeliveryResult] = asyncio.get_running_loop().create_future()
        batch.entries.append(entry)
        batch.waiters.append(waiter)
        if len(batch.entries) >= settings.max_records:
            self._flush(slot, batch)
        return waiter

    def _flush(self, slot: tuple[str, int | None], batch: _Open) -> None:
        if self._open.get(slot) is batch:
            del self._open[slot]
        if batch.timer is not None:
            batch.timer.cancel()
            batch.timer = None
        if not batch.entries:
            return
        task = asyncio.ensure_future(self._send(batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, batch: _Open) -> None:
        try:
            results = await self._exchange(batch)
        except Exception as exc:  # noqa: BLE001 - a bug here must not leave deliveries waiting forever
            log.exception("batch delivery to %s failed", batch.plan.route.path)
            results = [
                DeliveryResult(error=f"batch delivery failed: {type(exc).__name__}: {exc}")
            ] * len(batch.entries)
        for waiter, result in zip(batch.waiters, results):
            if not waiter.done():  # cancelled: the partition went away meanwhile
                waiter.set_result(result)

    async def _exchange(self, batch: _Open) -> list[DeliveryResult]:
        body = json.dumps(
            {"topic": batch.plan.source_topic, "records": batch.entries},
            ensure_ascii=False,
            separators=(",", ":"),
        ).encode("utf-8", "surrogatepass")
        deadline = deadline_of(batch.plan.route)  # the batch's: the topic's delivery_timeout_sec
        headers = [
            *_REQUEST_HEADERS,
            (BATCH_HEADER.encode(), str(len(batch.entries)).encode()),
            (DEADLINE_HEADER.encode(), str(max(1, round(deadline * 1000))).encode()),
        ]
        answer = await self.transport.post(
            batch.plan.route.path,
            headers,
            body,
            keep_body=MAX_ANSWER_BYTES,
            wait=proxy_wait(deadline),
        )
        return results_of(answer, [e["id"] for e in batch.entries])


def results_of(answer: RawAnswer | DeliveryResult, ids: list[str]) -> list[DeliveryResult]:
    """One DeliveryResult per record id, from a batch answer (the rule of freedom/wire/batch.py)."""
    if isinstance(answer, DeliveryResult):
        return [answer] * len(ids)
    status = answer.status
    if answer.outcome is not None or not 200 <= status < 300:
        whole = result_of(
            status, answer.outcome, answer.reason, answer.body or None, failure=answer.failure
        )
        if whole.trace is None or len(ids) < 2:
            return [whole] * len(ids)
        # The handler's traceback is the batch's: logged with its first record only (proxy.py).
        return [whole, *[replace(whole, trace=None)] * (len(ids) - 1)]
    text = answer.body.strip()
    if not text or text == b"null":
        return [DeliveryResult(status=status)] * len(ids)
    try:
        data = json.loads(text)
        statuses = data["statuses"] if isinstance(data, dict) else None
        if not isinstance(statuses, list):
            raise ValueError('no "statuses" list')
    except (ValueError, KeyError) as exc:
        # Not a success: the error (no status) makes it a failure, retried as any other.
        failed = DeliveryResult(
            error=f'HTTP {status}, but the batch answer is not {{"statuses": [...]}}: {exc}'
        )
        return [failed] * len(ids)
    given: dict[str, DeliveryResult] = {}
    for item in statuses:
        if not isinstance(item, dict) or not isinstance(item.get("id"), str):
            continue
        given[item["id"]] = _one(status, item)
    missing = DeliveryResult(
        error=f"HTTP {status}, but the batch answer gave no status for this record"
    )
    return [given.get(i, missing) for i in ids]


def _one(status: int, item: dict[str, Any]) -> DeliveryResult:
    what = item.get("status")
    reason = item.get("reason")
    reason = reason[:MAX_REASON] if isinstance(reason, str) and reason else None
    if what == "ok":
        return DeliveryResult(status=status)
    if what in STATUSES:  # the record's own outcome, not the request's status
        return DeliveryResult(error=BATCH_ANSWER, outcome=what, reason=reason)
    shown = repr(what)[:60]
    return DeliveryResult(
        error=f"HTTP {status}, but the batch answer gave status {shown} for this record "
        f"(expected one of {', '.join(STATUSES)})"
    )
