"""Retry and dead-letter routing: where a record that was not handled goes next, and why.

docs/contract.md, "Retries and dead letters": a record of topic T that fails goes to
`{retry_prefix}T` with `x-retry-count` n + 1; the one that fails with `x-retry-count` =
`retry_count` goes to `{retry_fail_prefix}T`, the dead-letter topic. Both keep the key, the value
and the headers, and carry the reason headers (set at the first failure and kept, except the error,
which is the last one). Producing them (copy_producer.py) waits for the broker's acknowledgement: only
then may the original offset be committed.

docs/contract.md, "Every record settles": a failure that can never succeed as it is
(DeliveryResult.permanent) goes to the dead-letter topic at once; so does a record its retry topic
refuses as too large. A record too large even for the dead-letter topic goes there as a copy without
its value (then without its key and own headers too): see :meth:`RetryRouter.copies`. Produce errors
are permanent only when they are about the record itself (PERMANENT_PRODUCE_ERRORS); the rest
(broker down, timeouts, authorization, unknown topic) are held and retried, never a loss.

The reason headers are the proxy's own: on a record that arrives on a main topic they came from
outside and are replaced from the record's real position; on a retry record they are kept.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from freedom.config.models import ConsumerClientConfig
from freedom.kafka.consumer.copy_producer import (
    PERMANENT_PRODUCE_ERRORS as PERMANENT_PRODUCE_ERRORS,
)
from freedom.kafka.consumer.copy_producer import (
    RETRY_PRODUCER_MAX_BYTES as RETRY_PRODUCER_MAX_BYTES,
)
from freedom.kafka.consumer.copy_producer import Copy as Copy
from freedom.kafka.consumer.copy_producer import CopyProducer, Header, new_producer
from freedom.kafka.consumer.copy_producer import ProduceRefused as ProduceRefused
from freedom.kafka.consumer.delivery import DeliveryResult, forged_control
from freedom.kafka.producing.client import ProducerClient
from freedom.wire.headers import (
    ERROR_HEADER,
    FIRST_FAILURE_TIME_HEADER,
    HEADERS_OMITTED_HEADER,
    KEY_OMITTED_HEADER,
    KEY_SHA256_HEADER,
    ORIGINAL_OFFSET_HEADER,
    ORIGINAL_PARTITION_HEADER,
    ORIGINAL_TOPIC_HEADER,
    REASON_HEADERS,
    RETRY_COUNT_HEADER,
    STATUS_HEADER,
    VALUE_OMITTED_HEADER,
    header_key,
)

log = logging.getLogger("freedom.kafka.consumer.retry")

_REPLACED = (RETRY_COUNT_HEADER, ERROR_HEADER, STATUS_HEADER)
#: What the last-resort dead-letter copy keeps of the headers (cut to _MINIMAL_VALUE_BYTES each).
_MINIMAL_KEPT = frozenset((RETRY_COUNT_HEADER, *REASON_HEADERS))
_MINIMAL_VALUE_BYTES = 256
_ERROR_BYTES = 1000  # x-freedom-error is cut to this many bytes

Next = Literal["done", "retry", "dead-letter", "redeliver"]
Origin = Literal["main", "retry", "dead-letter"]  # the kind of topic a record was read from


def header_value(record: Any, name: str) -> str | None:
    """The last value of header `name` of a confluent-kafka record, as text."""
    value = None
    for k, v in record.headers() or []:
        if k.lower() == name and v is not None:
            value = v
    return value.decode("utf-8", "replace") if value is not None else None


_COUNT = re.compile(r"[0-9]{1,9}")


def retry_count_of(record: Any) -> int | None:
    """The `x-retry-count` of a retry record: 1 to 9 ASCII digits (the last such header), else None
    (absent, empty, signed, non-decimal, or too large: the caller decides, see proxy.py)."""
    value = header_value(record, RETRY_COUNT_HEADER)
    if value is None or not _COUNT.fullmatch(value):
        return None
    return int(value)


def _now_text() -> str:
    return (
        datetime.datetime.now(datetime.UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


@dataclass(frozen=True)
class Plan:
    """What happens next to a record that was delivered (or not), and where it goes."""

    next: Next
    topic: str | None = None  # the retry or dead-letter topic
    #: Why a record is dead-lettered without its retries, for x-freedom-error (None: it is not).
    not_retried: str | None = None


#: The step of a record that was handled (the common case: one object, not one per record).
_DONE = Plan("done")


class RetryRouter:
    """Decides and performs the next step of a record that was not handled, for one consumer client."""

    def __init__(
        self,
        config: ConsumerClientConfig,
        consumer_settings: dict[str, Any],
        make_client: Callable[[dict[str, Any], str], ProducerClient] = new_producer,
    ) -> None:
        """`make_client(settings, name)` makes the producers of the copies (clients.py's
        `ProxyClients.retry_producer`)."""
        self.config = config
        self.producer = CopyProducer(config.group_id, consumer_settings, make_client)
        #: Produce a copy, returning once the broker acknowledged it (CopyProducer.produce).
        self.produce = self.producer.produce

    # ------------------------------------------------------------------ topics

    def retry_topic(self, topic: str) -> str:
        return f"{self.config.retry_prefix}{topic}"

    def fail_topic(self, topic: str) -> str | None:
        return f"{self.config.retry_fail_prefix}{topic}" if self.config.retry_fail_prefix else None

    def topics_to_create(self, topics: list[str]) -> list[str]:
        """The retry and dead-letter topics of `topics` this client may produce to (the dead-letter
        topic also with `retry_count = 0`: permanent failures and the handler's DeadLetter go there)."""
        out = []
        for t in topics:
            if self.config.retry_count > 0:
                out.append(self.retry_topic(t))
            fail = self.fail_topic(t)
            if fail:
                out.append(fail)
        return out

    # ------------------------------------------------------------------ decision

    def plan(self, source_topic: str, retry_count: int, result: DeliveryResult) -> Plan:
        """What to do after a delivery of a record of `source_topic` carrying `retry_count`."""
        if result.ok:
            return _DONE
        fail = self.fail_topic(source_topic)
        # The handler's explicit "retry" decides over a permanent verdict (the outcome header first).
        permanent = result.permanent and result.outcome != "retry"
        why = (
            "a permanent failure: dead-lettered without retries"
            if permanent and result.outcome is None
            else None
        )
        if (
            not permanent
            and result.outcome is None
            and result.status is not None
            and result.status in self.config.consume_config(source_topic).dead_letter_statuses
        ):
            # A status that can never succeed on a retry (422: the body failed validation, ...).
            permanent = True
            why = f"HTTP {result.status} is in dead_letter_statuses: dead-lettered without retries"
        if result.outcome == "dead-letter" or permanent:
            if fail:
                return Plan("dead-letter", fail, not_retried=why)
            if permanent:
                log.error(
                    "a record of %r can never be delivered as it is (%s), but retry_fail_prefix is empty, "
                    "so there is no dead-letter topic: delivering it again, holding its partition",
                    source_topic,
                    result.describe(),
                )
            else:
                log.warning(
                    "the handler asked to dead-letter a record of %r, but retry_fail_prefix is empty: "
                    "treating it as a failure",
                    source_topic,
                )
        if self.config.retry_count == 0:
            return Plan("redeliver")
        if retry_count < self.config.retry_count:
            return Plan("retry", self.retry_topic(source_topic))
        assert fail is not None  # config: retry_fail_prefix is required when retry_count > 0
        return Plan("dead-letter", fail)

    # ------------------------------------------------------------------ what is produced

    def headers_for(
        self,
        record: Any,
        source_topic: str,
        retry_count: int,
        result: DeliveryResult,
        *,
        origin: Origin,
        note: str | None = None,
        replay: bool = False,
    ) -> list[Header]:
        """The record's headers with `x-retry-count` = `retry_count` and the reason headers.

        `origin` is the kind of topic the record was read from (:meth:`origin`). From a main topic,
        the proxy-owned headers the record carries came from outside: they are dropped, and the
        original topic, partition, offset and first-failure time are the record's own. From a
        topic the proxy writes they are the proxy's and kept. A retry record without them (a Go
        freedom service writes only `x-retry-count`) gets the original topic, which is known, and
        no partition, offset or time, which are not: the retry record's own would be a lie. A
        dead-letter record without them (a service listens on fail-T) gets its own position there,
        where it was first read. `note` is added to the error (why the record was not retried, ...).
        `replay`: a main-topic record whose replay headers the proxy checked (replays.py): they are
        kept. Names are compared in every spelling (headers.header_key), and another spelling than
        freedom's of a proxy-owned header is dropped from any topic.
        """
        headers: list[Header] = []
        present: set[str] = set()
        for k, v in record.headers() or []:
            name = k.lower()
            key = header_key(name)
            if key in _REPLACED:
                continue
            if forged_control(name, key, from_main=origin == "main", replay=replay):
                continue
            present.add(name)
            headers.append((k, v if v is not None else b""))
        first = {ORIGINAL_TOPIC_HEADER: source_topic}  # kept from the first failure when present
        if origin != "retry":
            first[ORIGINAL_PARTITION_HEADER] = str(record.partition())
            first[ORIGINAL_OFFSET_HEADER] = str(record.offset())
            first[FIRST_FAILURE_TIME_HEADER] = _now_text()
        for name, value in first.items():
            if name not in present:
                headers.append((name, value.encode()))
        headers.append((RETRY_COUNT_HEADER, str(retry_count).encode()))
        headers.append((ERROR_HEADER, _error_text(result.describe(), note)))
        if result.status is not None:
            headers.append((STATUS_HEADER, str(result.status).encode()))
        return headers

    def origin(self, record: Any, source_topic: str) -> Origin:
        """Which kind of topic `record` was read from: a retry topic (read by the retry group for
        `source_topic`), a dead-letter topic (a listened topic named `{retry_fail_prefix}...`:
        the proxy wrote its records too), or a main topic (records from outside)."""
        if record.topic() != source_topic:
            return "retry"
        prefix = self.config.retry_fail_prefix
        if prefix and source_topic.startswith(prefix):
            return "dead-letter"
        return "main"

    @staticmethod
    def copies(record: Any, headers: list[Header]) -> list[Copy]:
        """What may go to the dead-letter topic for `record`, the most complete first.

        1. the record as it is (key, value, `headers`);
        2. without its value: empty value, `x-freedom-value-omitted: <value size>`;
        3. the last resort, when even the key and headers are too large: no key, only the proxy's
           reason headers (each cut to 256 bytes), the key's size and SHA-256, and how many of the
           record's own headers were left out.
        """
        key, value = record.key(), record.value() or b""
        out = [
            Copy(key, value, list(headers), "full"),
            Copy(
                key,
                b"",
                [*headers, (VALUE_OMITTED_HEADER, str(len(value)).encode())],
                "value-omitted",
            ),
        ]
        kept = [(k, _cut(v)) for k, v in headers if k.lower() in _MINIMAL_KEPT]
        minimal: list[Header] = [*kept, (VALUE_OMITTED_HEADER, str(len(value)).encode())]
        if key is not None:
            minimal.append((KEY_OMITTED_HEADER, str(len(key)).encode()))
            minimal.append((KEY_SHA256_HEADER, hashlib.sha256(key).hexdigest().encode()))
        minimal.append((HEADERS_OMITTED_HEADER, str(len(headers) - len(kept)).encode()))
        out.append(Copy(None, b"", minimal, "minimal"))
        return out

    def close(self) -> None:
        """Wait (bounded) for copies still queued, then stop the producers."""
        self.producer.close()


def _cut(value: str | bytes | None, limit: int = _MINIMAL_VALUE_BYTES) -> bytes:
    raw = value if isinstance(value, bytes) else (value or "").encode()
    return raw[:limit]


def _error_text(described: str, note: str | None) -> bytes:
    """The `x-freedom-error` value: the last failure, then `note`, at most _ERROR_BYTES bytes of
    UTF-8 cut at a character boundary (the note is kept whole when the failure's text is long)."""
    tail = _utf8(f"; {note}", _ERROR_BYTES // 2) if note else b""
    return _utf8(described, _ERROR_BYTES - len(tail)) + tail


def _utf8(text: str, limit: int) -> bytes:
    """`text` as UTF-8, cut to at most `limit` bytes without splitting a character."""
    raw = text.encode("utf-8", "replace")
    return raw[:limit].decode("utf-8", "ignore").encode() if len(raw) > limit else raw
