"""Publishing messages: `Producer.new_msg(...)` builds a `Msg`, `await msg.publish()` sends it.

`publish()` returns once the broker has acknowledged the record (acks from all in-sync replicas,
idempotent producer, so librdkafka's own retries neither lose nor duplicate it) and raises
:class:`PublishError` when it cannot be delivered within the client's `delivery_timeout_sec`.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

import confluent_kafka

from ...bus import BUS_HEADER
from ...errors import PublishError, UnknownClientError
from ...tracing import TRACEPARENT, make_traceparent
from .topics import check_topic

if TYPE_CHECKING:
    from ...runtime import Runtime

log = logging.getLogger("freedom.kafka.producer")

PRODUCER_DEFAULTS: dict[str, Any] = {
    "enable.idempotence": True,
    "acks": "all",
    "linger.ms": 2,
    "compression.type": "lz4",
}


def new_key() -> str:
    """The default message key: a new unique id, 32 upper-case hex characters (SPEC §3)."""
    return secrets.token_hex(16).upper()


@dataclass(frozen=True)
class Delivered:
    """Where the broker stored a published record."""

    topic: str
    partition: int
    offset: int
    key: str


class ProducerClient:
    """One librdkafka producer (one cluster), with a thread serving its delivery reports."""

    def __init__(self, name: str, settings: dict[str, Any]) -> None:
        self.name = name
        self.settings = settings
        self._producer = confluent_kafka.Producer(settings)
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name=f"freedom-producer-{name or 'default'}", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._closed:
            self._producer.poll(0.1)

    def produce(
        self, topic: str, value: bytes, key: bytes, headers: list[tuple[str, bytes]], on_delivery: Any
    ) -> None:
        if self._closed:
            raise PublishError(f"cannot publish to {topic!r}: the producer is closed (the service is shutting down)")
        while True:
            try:
                self._producer.produce(topic, value=value, key=key, headers=headers, on_delivery=on_delivery)
                return
            except BufferError:
                # The local queue is full: wait for deliveries to make room instead of failing.
                self._producer.poll(0.05)
            except confluent_kafka.KafkaException as exc:
                raise PublishError(f"cannot publish to {topic!r}: {exc.args[0].str()}") from None

    def flush(self, timeout: float) -> int:
        """Wait for every queued record to be delivered or fail; returns how many are left."""
        return self._producer.flush(timeout)

    def close(self, timeout: float = 10.0) -> int:
        left = self.flush(timeout)
        self._closed = True
        self._thread.join(timeout=1.0)
        if left:
            log.error("producer %r stopped with %d records not acknowledged by the broker", self.name, left)
        return left


class Producer:
    """The publishing side, injected into controllers annotated `producer: kafka.Producer`."""

    def __init__(self, clients: Mapping[str, ProducerClient] | None = None, default: str | None = None,
                 disabled_reason: str | None = None) -> None:
        self._clients = dict(clients or {})
        self._default = default if default is not None else next(iter(self._clients), None)
        self._disabled_reason = disabled_reason

    @property
    def client_names(self) -> list[str]:
        return list(self._clients)

    def new_msg(self, topic: str, content: bytes | str, client: str | None = None) -> "Msg":
        """A message to `topic` with `content` as its value; `client` names a `[[producer_clients]]` entry."""
        msg = Msg(self, check_topic(topic), content)
        if client is not None:
            msg.select_client(client)
        return msg

    def client(self, name: str | None) -> ProducerClient:
        if self._disabled_reason:
            raise PublishError(self._disabled_reason)
        key = self._default if name is None else name
        if key is None or key not in self._clients:
            known = ", ".join(repr(n) for n in self._clients) or "none"
            raise UnknownClientError(f"no producer client named {name!r} in kafka.toml (known: {known})")
        return self._clients[key]

    async def send(self, msg: "Msg") -> Delivered:
        client = self.client(msg.client)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Delivered] = loop.create_future()
        key = msg.key

        def resolve(err: Any, record: Any) -> None:
            if future.done():
                return
            if err is not None:
                future.set_exception(PublishError(
                    f"message to {msg.topic!r} was not delivered by producer client {client.name or 'default'!r}: {err.str()}"
                ))
            else:
                future.set_result(Delivered(record.topic(), record.partition(), record.offset(), key))

        def on_delivery(err: Any, record: Any) -> None:  # called on the client's poll thread
            loop.call_soon_threadsafe(resolve, err, record)

        client.produce(msg.topic, msg.value, key.encode(), msg.wire_headers(), on_delivery)
        return await future

    def close(self, timeout: float = 10.0) -> None:
        for client in self._clients.values():
            client.close(timeout)


class Msg:
    """A message being built; every setter returns the message, so calls chain."""

    def __init__(self, producer: Producer, topic: str, content: bytes | str) -> None:
        if isinstance(content, str):
            content = content.encode()
        elif isinstance(content, (bytearray, memoryview)):
            content = bytes(content)
        elif not isinstance(content, bytes):
            raise TypeError(
                f"message content must be bytes or str, got {type(content).__name__} (serialise it first, e.g. json.dumps(obj).encode())"
            )
        self._producer = producer
        self.topic = topic
        self.value: bytes = content
        self.headers: dict[str, bytes] = {}
        self.key: str = new_key()
        self.client: str | None = None
        self.runtime: Runtime | None = None

    def set_headers(self, headers: Mapping[str, str | bytes]) -> "Msg":
        """Add headers to the record (values str, sent as UTF-8, or bytes)."""
        if not isinstance(headers, Mapping):
            raise TypeError(f"headers must be a mapping of str to str, got {type(headers).__name__}")
        for name, value in headers.items():
            if not isinstance(name, str) or not name:
                raise TypeError(f"header names must be non-empty strings, got {name!r}")
            if isinstance(value, str):
                value = value.encode()
            elif not isinstance(value, bytes):
                raise TypeError(f"header {name!r} must have a str or bytes value, got {type(value).__name__}")
            self.headers[name.lower()] = value
        return self

    def set_runtime(self, runtime: "Runtime") -> "Msg":
        """Carry the request's bus and trace on to whoever handles the message."""
        self.runtime = runtime
        return self

    def select_client(self, name: str) -> "Msg":
        """Publish through the `[[producer_clients]]` entry called `name`; unknown names raise here."""
        self._producer.client(name)
        self.client = name
        return self

    def set_key(self, key: str | bytes) -> "Msg":
        """Set the record key (it decides the partition; the handler gets it as the event id)."""
        if isinstance(key, bytes):
            key = key.decode()
        if not isinstance(key, str) or not key:
            raise TypeError(f"message key must be a non-empty str, got {key!r}")
        self.key = key
        return self

    def wire_headers(self) -> list[tuple[str, bytes]]:
        headers = dict(self.headers)
        if self.runtime is not None:
            headers[BUS_HEADER] = self.runtime.bus.to_header()
            headers[TRACEPARENT] = make_traceparent(self.runtime.trace_id).encode()
        return list(headers.items())

    async def publish(self) -> Delivered:
        """Send the record; returns where the broker stored it, raises PublishError if it could not."""
        return await self._producer.send(self)
