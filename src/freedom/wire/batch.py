"""Batch delivery: a handler takes many records in one request and answers for each (docs/scaling.md).

    initiator.listen_event("orders", "OrderController.post_orders",
                           batch=freedom.BatchSettings(max_records=100, max_wait_ms=20))

    class OrderController:
        async def post_orders(self, batch: freedom.Batch) -> dict:
            for record in batch.records:
                order = record.parse(Order)          # typed (Pydantic), or record.data / .text / .load()
                if order.amount <= 0:
                    batch.dead_letter(record, "amount must be positive")
            return batch.answer()                    # the records not marked are ok

The consumer proxy POSTs up to `max_records` records of the topic in one JSON envelope (below),
waiting at most `max_wait_ms` for a batch to fill, and reads a status per record from the answer.
Each record then settles on its own, as a per-record delivery does: `ok` commits it, `retry` sends
it to the retry topic, `dead-letter` to the dead-letter topic, `drop` forgets it; the commit never
passes a record that has not settled. A failed request (not 2xx, a timeout, a connection error, an
answer that is not the JSON below, `x-freedom-outcome` on the answer) counts for every record.

The envelope (request body, `content-type: application/json`, header `x-freedom-batch: <count>`):

    {"topic": "orders",
     "records": [{"id": "0-41", "event_id": "order-7", "topic": "orders", "partition": 0,
                  "offset": 41, "retry_count": 0, "content_type": "application/json",
                  "headers": [["content-type", "application/json"], ["x-message-key", "order-7"], ...],
                  "value": "{\\"amount\\": 3}", "value_encoding": "text"}, ...]}

`id` is unique in the batch (`<partition>-<offset>`); `event_id` is the per-record delivery's
`x-message-key` (it repeats for records with the same key). `headers` are those a per-record
delivery would carry, in `freedom.wire.encoding`'s encoding; `value` is the record value as text when it is
valid UTF-8 (`value_encoding: "text"`), else standard base64 (`"base64"`).

The answer (2xx, `content-type: application/json`):

    {"statuses": [{"id": "0-41", "status": "ok"}, {"id": "0-42", "status": "retry", "reason": "..."}]}

`status` is `ok`, `retry`, `dead-letter` or `drop`; `reason` (optional) goes into the retry or
dead-letter record's `x-freedom-error`: `batch answer, handler asked: dead-letter (<reason>)`. Such
a record has no `x-freedom-status` (the request's 2xx was not its outcome; a failed request's
status is every record's). A record the statuses do not name, or with another status, is retried. An empty 2xx answer (or
`null`) is `ok` for every record.

This module is a leaf (Pydantic and freedom.wire.encoding only): the consumer proxy's batching
(infra/kafka/batching.py) and the handlers' helper share it.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from freedom.errors import RouteError
from freedom.wire.encoding import decode_headers, key_of
from freedom.wire.headers import BATCH_HEADER, KEY_HEADER
from freedom.wire.payloads import decode as _decode

#: The statuses a batch answer may give a record.
BatchStatus = Literal["ok", "retry", "dead-letter", "drop"]
STATUSES: tuple[str, ...] = ("ok", "retry", "dead-letter", "drop")

#: The most records one batch may hold, and the longest wait for one to fill.
MAX_RECORDS_LIMIT = 10_000
MAX_WAIT_MS_LIMIT = 60_000

__all__ = ["BATCH_HEADER", "Batch", "BatchRecord", "BatchSettings", "BatchStatus", "STATUSES"]


@dataclass(frozen=True)
class BatchSettings:
    """How `listen_event(..., batch=BatchSettings(...))` batches a topic's records.

    `max_records`: the most records in one request. `max_wait_ms`: how long the first record of a
    batch waits for others before the batch is sent anyway (0: only for those whose deliveries
    start in the same turn of the event loop). `record_type`: the type of one record's value (a
    Pydantic model, a dataclass, ...), for the service's AsyncAPI document (the topic's payload,
    inside the batch envelope); None: any value. Records are parsed with `record.parse(tp)`.
    """

    max_records: int = 100
    max_wait_ms: int = 20
    record_type: Any = None

    def __post_init__(self) -> None:
        for name, value, top in (
            ("max_records", self.max_records, MAX_RECORDS_LIMIT),
            ("max_wait_ms", self.max_wait_ms, MAX_WAIT_MS_LIMIT),
        ):
            low = 1 if name == "max_records" else 0
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= top:
                raise RouteError(
                    f"BatchSettings: {name} must be a whole number from {low} to {top}, got {value!r}"
                )


class BatchRecord(BaseModel):
    """One record of a batch, as the envelope carries it (see the module docstring)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str
    event_id: str = ""
    topic: str = ""
    partition: int = 0
    offset: int = 0
    retry_count: int = 0
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = Field(default_factory=list)
    value: str = ""
    value_encoding: Literal["text", "base64"] = "text"

    @property
    def data(self) -> bytes:
        """The record value's bytes."""
        if self.value_encoding == "base64":
            try:
                return base64.b64decode(self.value, validate=True)
            except (binascii.Error, ValueError):
                raise ValueError(f"batch record {self.id}: value is not valid base64") from None
        return self.value.encode("utf-8", "surrogatepass")

    @property
    def text(self) -> str:
        """The record value as text (UTF-8; undecodable bytes replaced)."""
        return self.value if self.value_encoding == "text" else self.data.decode("utf-8", "replace")

    def load(self) -> Any:
        """The record value parsed as JSON (raises ValueError when it is not JSON)."""
        return json.loads(self.data)

    def parse(self, tp: Any) -> Any:
        """The record value as `tp` (a Pydantic model, a dataclass, `dict`, ...), by freedom.wire.payloads'
        rule for its content-type; raises `freedom.wire.payloads.PayloadError` when it does not fit."""
        return _decode(self.data, self.content_type, tp)

    @property
    def record_headers(self) -> list[tuple[bytes, bytes]]:
        """The record's headers as (name, value) bytes, freedom's wire encoding undone."""
        raw = [
            (k.encode("utf-8", "replace"), v.encode("utf-8", "replace")) for k, v in self.headers
        ]
        return decode_headers(raw) or raw

    def header(self, name: str) -> str | None:
        """One header of the record (the last with that name), as text; None when absent."""
        wanted = name.lower().encode("utf-8", "replace")
        found = None
        for k, v in self.record_headers:
            if k.lower() == wanted:
                found = v.decode("utf-8", "replace")
        return found

    @property
    def key(self) -> bytes | None:
        """The record key (None for a record without one)."""
        raw = next((v for k, v in self.headers if k == KEY_HEADER), None)
        return key_of(self.event_id or None, raw)


class Batch(BaseModel):
    """A batch of records, as a handler parameter (`batch: freedom.Batch`): mark the records that
    are not ok, and return :meth:`answer`."""

    model_config = ConfigDict(extra="ignore")

    topic: str = ""
    records: list[BatchRecord] = Field(default_factory=list)
    _marks: dict[str, dict[str, str]] = PrivateAttr(default_factory=dict)

    def __len__(self) -> int:
        return len(self.records)

    def _mark(self, record: BatchRecord | str, status: str, reason: str) -> None:
        rid = record if isinstance(record, str) else record.id
        mark = {"id": rid, "status": status}
        if reason:
            mark["reason"] = reason
        self._marks[rid] = mark

    def ok(self, record: BatchRecord | str) -> None:
        """The record is handled (the default for a record not marked)."""
        self._mark(record, "ok", "")

    def retry(self, record: BatchRecord | str, reason: str = "") -> None:
        """Deliver the record again later, through the retry topic (as `raise freedom.Retry`)."""
        self._mark(record, "retry", reason)

    def dead_letter(self, record: BatchRecord | str, reason: str = "") -> None:
        """Send the record to the dead-letter topic now (as `raise freedom.DeadLetter`)."""
        self._mark(record, "dead-letter", reason)

    def drop(self, record: BatchRecord | str, reason: str = "") -> None:
        """Forget the record (logged) and commit it (as `raise freedom.Drop`)."""
        self._mark(record, "drop", reason)

    def answer(self) -> dict[str, Any]:
        """The answer's body: a status for every record, `ok` for those not marked."""
        return {
            "statuses": [
                self._marks.get(r.id) or {"id": r.id, "status": "ok"} for r in self.records
            ]
        }
