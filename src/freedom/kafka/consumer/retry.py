"""Retry and dead-letter routing: where a record that was not handled goes next, and why.

docs/contract.md, "Retries and dead letters": a record of topic T that fails goes to
`{retry_prefix}T` with `x-retry-count` n + 1; the one that fails with `x-retry-count` =
`retry_count` goes to `{retry_fail_prefix}T`, the dead-letter topic. Both keep the key, the value
and the headers, and carry the reason headers (set at the first failure and kept, except the error,
which is the last one). Producing waits for the broker's acknowledgement: only then may the original
offset be committed.

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

import asyncio
import datetime
import hashlib
import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import confluent_kafka

from freedom.config.librdkafka import PRODUCER_DEFAULTS
from freedom.config.models import ConsumerClientConfig
from freedom.errors import PublishError
from freedom.kafka.consumer.delivery import DeliveryResult, forged_control
from freedom.kafka.settings import connection_settings
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

#: Produce errors about the record itself: trying the same record again can never succeed
#: (docs/contract.md, "Every record settles").
#: MSG_SIZE_TOO_LARGE: over the topic's max.message.bytes (broker) or message.max.bytes (librdkafka,
#: locally); RECORD_LIST_TOO_LARGE: over the broker's segment size; INVALID_RECORD: the broker's
#: validation refused it (e.g. no key on a compacted topic). Everything else is held and retried:
#: broker down, timeouts, leader changes, and also authorization and unknown-topic errors, which are
#: configuration faults that hit every record alike and that fixing the ACL or the topic cures;
#: dead-lettering on them would empty a whole topic into its dead letters (or lose records when the
#: dead-letter topic is the one refused). INVALID_TIMESTAMP is held too: the retry producer stamps
#: each record with its own clock, so it is about clocks or the topic's timestamp settings.
PERMANENT_PRODUCE_ERRORS = frozenset(
    {
        confluent_kafka.KafkaError.MSG_SIZE_TOO_LARGE,
        confluent_kafka.KafkaError.RECORD_LIST_TOO_LARGE,
        confluent_kafka.KafkaError.INVALID_RECORD,
    }
)

#: librdkafka's own size check of the retry producer: well above the broker's default
#: message.max.bytes (1,048,588), so that the retry/dead-letter topic's limit decides, not the
#: client's 1,000,000-byte default (a record the publisher sent with a raised limit must fit).
RETRY_PRODUCER_MAX_BYTES = 16 * 1024 * 1024

Header = tuple[str, "str | bytes | None"]

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


class ProduceRefused(PublishError):
    """A retry or dead-letter record the broker (or librdkafka, locally) did not take.

    `permanent`: about the record itself (PERMANENT_PRODUCE_ERRORS), so the same record can never
    be produced to that topic; otherwise a fault of the moment or of the configuration.
    """

    def __init__(self, message: str, *, code: int, permanent: bool, local: bool) -> None:
        super().__init__(message)
        self.code = code
        self.permanent = permanent
        self.local = local


@dataclass(frozen=True)
class Copy:
    """What is produced to a retry or dead-letter topic for one record."""

    key: bytes | None
    value: bytes
    headers: list[Header] = field(default_factory=list)
    kind: Literal["full", "value-omitted", "minimal"] = "full"

    def size(self) -> int:
        """Key, value and header bytes (the record batch adds about 70 bytes of framing)."""
        return (
            len(self.key or b"")
            + len(self.value)
            + sum(
                len(k.encode()) + len(v if isinstance(v, bytes) else (v or "").encode())
                for k, v in self.headers
            )
        )


def _refused(topic: str, err: Any, size: int, *, local: bool) -> ProduceRefused:
    code = err.code()
    permanent = code in PERMANENT_PRODUCE_ERRORS
    if code == confluent_kafka.KafkaError.MSG_SIZE_TOO_LARGE:
        where = "librdkafka's message.max.bytes" if local else "the topic's max.message.bytes"
        what = f"the record is too large: {size} bytes with the proxy's headers, over {where} (MSG_SIZE_TOO_LARGE)"
    else:
        what = f"{err.str()} ({err.name()})"
    return ProduceRefused(
        f"could not produce to {topic!r}: {what}", code=code, permanent=permanent, local=local
    )


class ProducerClient(Protocol):
    """A producer for the retry and dead-letter copies: `producer.produce(...)` with an
    `on_delivery` callback, `fatal` once librdkafka reported a fatal error, `close` (bounded)."""

    producer: Any
    fatal: bool

    def close(self, timeout: float) -> int: ...


class RetryProducer:
    """One librdkafka producer and the thread serving its delivery reports."""

    def __init__(self, settings: dict[str, Any], name: str) -> None:
        self.producer = confluent_kafka.Producer(settings)
        self.fatal = False
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll, name=name, daemon=True)
        self._poller.start()

    def _poll(self) -> None:
        """Serve delivery reports (they resolve the futures of RetryRouter.send)."""
        while not self._stop.is_set():
            self.producer.poll(0.1)

    def close(self, timeout: float) -> int:
        """Wait (bounded) for queued records, then stop; returns how many were not acknowledged."""
        left = self.producer.flush(timeout)
        self._stop.set()
        self._poller.join(1.0)
        return left


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
        make_client: Callable[[dict[str, Any], str], ProducerClient] = RetryProducer,
    ) -> None:
        self.config = config
        self._make_client = make_client
        self._settings = {**connection_settings(consumer_settings), **PRODUCER_DEFAULTS}
        self._settings["message.max.bytes"] = RETRY_PRODUCER_MAX_BYTES
        self._clients: dict[str, ProducerClient] = {}  # "shared", and "solo" (one record per batch)
        self._lock = threading.Lock()

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

    # ------------------------------------------------------------------ producing

    def _client(self, kind: str) -> ProducerClient:
        with self._lock:
            client = self._clients.get(kind)
            if client is None:
                settings = dict(self._settings)
                if kind == "solo":  # one record per batch: a refusal is about this record alone
                    settings.update({"linger.ms": 0, "batch.num.messages": 1})
                client = self._clients[kind] = self._make_client(
                    settings, f"freedom-retry-producer-{kind}-{self.config.group_id}"
                )
            return client

    async def produce(self, topic: str, copy: Copy) -> None:
        """Produce `copy` to `topic`; returns once the broker acknowledged it.

        Raises ProduceRefused; `permanent` only when the record alone was refused: librdkafka does
        not split a batch the broker refuses as too large, so every record batched with a large one
        is refused with it. A permanent refusal is therefore confirmed by producing the record
        again alone (a producer that sends one record per batch) before it counts.
        """
        try:
            await self.send(topic, copy)
        except ProduceRefused as exc:
            if not exc.permanent or exc.local:
                raise
            await self.send(topic, copy, solo=True)

    async def send(self, topic: str, copy: Copy, *, solo: bool = False) -> None:
        """Produce `copy` to `topic` once; returns once the broker acknowledged it.

        Raises ProduceRefused when the broker (or librdkafka) did not take it: the caller must then
        not commit the original.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        size = copy.size()
        client = self._client("solo" if solo else "shared")

        def resolve(err: Any) -> None:
            if future.done():
                return
            if err is None:
                future.set_result(None)
            else:
                future.set_exception(_refused(topic, err, size, local=False))

        def on_delivery(err: Any, _msg: Any) -> None:  # on the poll thread
            if err is not None and err.fatal():
                client.fatal = True
            loop.call_soon_threadsafe(resolve, err)

        while True:
            try:
                client.producer.produce(
                    topic,
                    value=copy.value,
                    key=copy.key,
                    headers=copy.headers,
                    on_delivery=on_delivery,
                )
                break
            except BufferError:  # the local queue is full: let deliveries make room
                await asyncio.sleep(0.05)
            except confluent_kafka.KafkaException as exc:
                raise _refused(topic, exc.args[0], size, local=True) from None
        try:
            await future
        except ProduceRefused:
            if client.fatal:
                self._reset(client)
            raise

    def _reset(self, client: ProducerClient) -> None:
        """Forget a producer in a fatal state (idempotence broken); the next send makes a new one."""
        with self._lock:
            for kind, known in list(self._clients.items()):
                if known is client:
                    del self._clients[kind]
                    break
            else:
                return
        log.warning(
            "the retry producer of %r hit a fatal error; making a new one", self.config.group_id
        )
        threading.Thread(target=client.close, args=(10.0,), daemon=True).start()

    def close(self) -> None:
        """Wait (bounded) for records still queued, then stop the producers."""
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            left = client.close(10.0)
            if left:
                log.error(
                    "retry producer of %r stopped with %d records not acknowledged; their originals "
                    "stay uncommitted and are delivered again",
                    self.config.group_id,
                    left,
                )


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
