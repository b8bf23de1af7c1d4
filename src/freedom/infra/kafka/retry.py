"""Retry and dead-letter routing: where a record that was not handled goes next, and why.

SPEC §3: a record of topic T that fails goes to `{retry_prefix}T` with `x-retry-count` n + 1;
the one that fails with `x-retry-count` = `retry_count` goes to `{retry_fail_prefix}T`, the
dead-letter topic. Both keep the key, the value and the headers, and carry the reason headers
below (set at the first failure and kept, except the error, which is the last one). Producing
waits for the broker's acknowledgement: only then may the original offset be committed.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import threading
from dataclasses import dataclass
from typing import Any, Literal

import confluent_kafka

from ...config import ConsumerClientConfig
from ...errors import PublishError
from .delivery import RETRY_COUNT_HEADER, DeliveryResult
from .producer import PRODUCER_DEFAULTS

log = logging.getLogger("freedom.kafka.retry")

from ...headers import (ERROR_HEADER, FIRST_FAILURE_TIME_HEADER, ORIGINAL_OFFSET_HEADER, ORIGINAL_PARTITION_HEADER,
                        ORIGINAL_TOPIC_HEADER, STATUS_HEADER)

_SET_ONCE = (ORIGINAL_TOPIC_HEADER, ORIGINAL_PARTITION_HEADER, ORIGINAL_OFFSET_HEADER, FIRST_FAILURE_TIME_HEADER)
_REPLACED = (RETRY_COUNT_HEADER, ERROR_HEADER, STATUS_HEADER)

Next = Literal["done", "retry", "dead-letter", "redeliver"]


def header_value(record: Any, name: str) -> str | None:
    """The last value of header `name` of a confluent-kafka record, as text."""
    value = None
    for k, v in record.headers() or []:
        if k.lower() == name and v is not None:
            value = v
    return value.decode("utf-8", "replace") if value is not None else None


def retry_count_of(record: Any) -> int:
    """The record's `x-retry-count` (0 when absent or malformed)."""
    value = header_value(record, RETRY_COUNT_HEADER)
    try:
        return max(0, int(value)) if value is not None else 0
    except ValueError:
        return 0


def _now_text() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _connection_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """The settings of a consumer that also apply to a producer on the same cluster (address, TLS,
    SASL), and its logger (librdkafka's lines folded into `freedom.kafka.librdkafka`)."""
    keep = ("bootstrap.servers", "client.id", "client.rack", "broker.address.family", "logger")
    return {k: v for k, v in settings.items()
            if k in keep or k.startswith(("security.", "ssl.", "sasl.", "socket.", "enable.ssl."))}


@dataclass(frozen=True)
class Plan:
    """What happens next to a record that was delivered (or not), and where it goes."""

    next: Next
    topic: str | None = None  # the retry or dead-letter topic


class RetryRouter:
    """Decides and performs the next step of a record that was not handled, for one consumer client."""

    def __init__(self, config: ConsumerClientConfig, consumer_settings: dict[str, Any]) -> None:
        self.config = config
        self._settings = {**_connection_settings(consumer_settings), **PRODUCER_DEFAULTS}
        self._producer: confluent_kafka.Producer | None = None
        self._poller: threading.Thread | None = None
        self._poll_stop = threading.Event()
        self._fatal = False

    # ------------------------------------------------------------------ topics

    def retry_topic(self, topic: str) -> str:
        return f"{self.config.retry_prefix}{topic}"

    def fail_topic(self, topic: str) -> str | None:
        return f"{self.config.retry_fail_prefix}{topic}" if self.config.retry_fail_prefix else None

    def topics_to_create(self, topics: list[str]) -> list[str]:
        """The retry and dead-letter topics of `topics` this client may produce to."""
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
            return Plan("done")
        fail = self.fail_topic(source_topic)
        if result.outcome == "dead-letter":
            if fail:
                return Plan("dead-letter", fail)
            log.warning("the handler asked to dead-letter a record of %r, but retry_fail_prefix is empty: "
                        "treating it as a failure", source_topic)
        if self.config.retry_count == 0:
            return Plan("redeliver")
        if retry_count < self.config.retry_count:
            return Plan("retry", self.retry_topic(source_topic))
        assert fail is not None  # config: retry_fail_prefix is required when retry_count > 0
        return Plan("dead-letter", fail)

    # ------------------------------------------------------------------ producing

    def headers_for(self, record: Any, source_topic: str, retry_count: int,
                    result: DeliveryResult) -> list[tuple[str, str | bytes | None]]:
        """The record's headers with `x-retry-count` = `retry_count` and the reason headers."""
        headers: list[tuple[str, str | bytes | None]] = []
        present: set[str] = set()
        for k, v in record.headers() or []:
            name = k.lower()
            if name in _REPLACED:
                continue
            present.add(name)
            headers.append((k, v if v is not None else b""))
        first = {  # kept from the first failure when present
            ORIGINAL_TOPIC_HEADER: source_topic,
            ORIGINAL_PARTITION_HEADER: str(record.partition()),
            ORIGINAL_OFFSET_HEADER: str(record.offset()),
            FIRST_FAILURE_TIME_HEADER: _now_text(),
        }
        for name, value in first.items():
            if name not in present:
                headers.append((name, value.encode()))
        headers.append((RETRY_COUNT_HEADER, str(retry_count).encode()))
        headers.append((ERROR_HEADER, result.describe().encode("utf-8", "replace")[:1000]))
        if result.status is not None:
            headers.append((STATUS_HEADER, str(result.status).encode()))
        return headers

    def _client(self) -> confluent_kafka.Producer:
        if self._producer is None:
            self._producer = confluent_kafka.Producer(dict(self._settings))
            self._poll_stop = threading.Event()
            self._poller = threading.Thread(target=self._poll, args=(self._producer, self._poll_stop),
                                            name=f"freedom-retry-producer-{self.config.group_id}", daemon=True)
            self._poller.start()
        return self._producer

    @staticmethod
    def _poll(producer: confluent_kafka.Producer, stop: threading.Event) -> None:
        """Serve delivery reports (they resolve the futures of :meth:`send`)."""
        while not stop.is_set():
            producer.poll(0.1)

    async def send(self, topic: str, record: Any, headers: list[tuple[str, str | bytes | None]]) -> None:
        """Produce the record (same key and value) to `topic`; returns once the broker acknowledged it.

        Raises PublishError when the broker did not take it: the caller must then not commit.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()

        def resolve(err: Any) -> None:
            if future.done():
                return
            if err is None:
                future.set_result(None)
            else:
                future.set_exception(PublishError(f"could not produce to {topic!r}: {err.str()}"))

        def on_delivery(err: Any, _msg: Any) -> None:  # on the poll thread
            if err is not None and err.fatal():
                self._fatal = True
            loop.call_soon_threadsafe(resolve, err)

        producer = self._client()
        while True:
            try:
                producer.produce(topic, value=record.value() or b"", key=record.key(), headers=headers,
                                 on_delivery=on_delivery)
                break
            except BufferError:  # the local queue is full: let deliveries make room
                await asyncio.sleep(0.05)
            except confluent_kafka.KafkaException as exc:
                raise PublishError(f"could not produce to {topic!r}: {exc.args[0].str()}") from None
        try:
            await future
        except PublishError:
            if self._fatal and self._producer is producer:
                self._reset()
            raise

    def _reset(self) -> None:
        """Forget a producer in a fatal state (idempotence broken); the next send makes a new one."""
        log.warning("the retry producer of %r hit a fatal error; making a new one", self.config.group_id)
        self.close()
        self._fatal = False

    def close(self) -> None:
        """Wait (bounded) for records still queued, then stop the producer."""
        producer, self._producer = self._producer, None
        if producer is None:
            return
        left = producer.flush(10.0)
        self._poll_stop.set()
        if self._poller is not None:
            self._poller.join(1.0)
        if left:
            log.error("retry producer of %r stopped with %d records not acknowledged; their originals "
                      "stay uncommitted and are delivered again", self.config.group_id, left)
