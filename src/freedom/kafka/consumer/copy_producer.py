"""`CopyProducer`: produces the retry and dead-letter copies of one consumer client.

The copies go through the producer adapter (kafka/producing/client.py), made by
`ProxyClients.retry_producer` (clients.py; the test broker's in memory). Producing waits for the
broker's acknowledgement: only then may the original offset be committed. A refusal is a
:class:`ProduceRefused`, `permanent` only when it is about the record itself
(PERMANENT_PRODUCE_ERRORS), confirmed by producing the record again alone.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import confluent_kafka

from freedom.config.librdkafka import PRODUCER_DEFAULTS
from freedom.errors import PublishError
from freedom.kafka.producing.client import ProducerClient, ProducerClosedError
from freedom.kafka.settings import connection_settings

log = logging.getLogger("freedom.kafka.consumer.retry")

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


def new_producer(settings: dict[str, Any], name: str) -> ProducerClient:
    """A producer for the retry and dead-letter copies, its delivery-report thread called `name`."""
    return ProducerClient(name, settings, thread_name=name)


def _key_text(key: bytes | None) -> str:
    return key.decode("utf-8", "replace") if key is not None else "(none)"


class CopyProducer:
    """The producers of one consumer client's retry and dead-letter copies: a shared one, and a
    "solo" one (one record per batch) that confirms a permanent refusal."""

    def __init__(
        self,
        group_id: str,
        consumer_settings: dict[str, Any],
        make_client: Callable[[dict[str, Any], str], ProducerClient] = new_producer,
    ) -> None:
        self.group_id = group_id
        self._make_client = make_client
        self._settings = {**connection_settings(consumer_settings), **PRODUCER_DEFAULTS}
        self._settings["message.max.bytes"] = RETRY_PRODUCER_MAX_BYTES
        self._clients: dict[str, ProducerClient] = {}  # "shared", and "solo" (one record per batch)
        self._lock = threading.Lock()

    def _client(self, kind: str) -> ProducerClient:
        with self._lock:
            client = self._clients.get(kind)
            if client is None:
                settings = dict(self._settings)
                if kind == "solo":  # one record per batch: a refusal is about this record alone
                    settings.update({"linger.ms": 0, "batch.num.messages": 1})
                client = self._clients[kind] = self._make_client(
                    settings, f"freedom-retry-producer-{kind}-{self.group_id}"
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

        def on_delivery(err: Any, record: Any) -> None:  # on the poll thread
            if err is None:
                client.hand_over(loop, future, None)
                return
            if err.fatal():
                client.fatal = True
            key = record.key() if record is not None else None
            client.note_undelivered(topic, _key_text(key), err.str())  # kept while closing
            client.hand_over(loop, future, _refused(topic, err, size, local=False))

        while True:
            try:
                client.produce(topic, copy.value, copy.key, copy.headers, on_delivery, wait=False)
                break
            except BufferError:  # the local queue is full: let deliveries make room
                await asyncio.sleep(0.05)
            except confluent_kafka.KafkaException as exc:
                raise _refused(topic, exc.args[0], size, local=True) from None
            except ProducerClosedError as exc:  # closed under it (the router is closing)
                raise ProduceRefused(
                    str(exc), code=confluent_kafka.KafkaError._DESTROY, permanent=False, local=True
                ) from None
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
        log.warning("the retry producer of %r hit a fatal error; making a new one", self.group_id)
        threading.Thread(target=client.close, args=(10.0,), daemon=True).start()

    def close(self) -> None:
        """Wait (bounded) for copies still queued, then stop the producers."""
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            left = len(client.close(10.0))
            if left:
                log.error(
                    "retry producer of %r stopped with %d records not acknowledged; their originals "
                    "stay uncommitted and are delivered again",
                    self.group_id,
                    left,
                )
