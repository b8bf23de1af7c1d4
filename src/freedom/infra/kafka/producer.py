"""Publishing messages: `Producer.new_msg(...)` builds a `Msg`, which is sent one of three ways.

- `await msg.publish()` in async code: returns once the broker has acknowledged the record
  (acks from all in-sync replicas, idempotent producer, so librdkafka's own retries neither lose
  nor duplicate it), raises :class:`PublishError` when it cannot be delivered within the client's
  `delivery_timeout_sec`.
- `msg.publish_sync()` in synchronous code (a plain `def` handler, a script): the same, blocking.
- `await producer.publish_batch(msgs)` (or `producer.accept_batch(msgs)` then `.result()`) for
  many records: all are queued at once and pipelined by librdkafka, and each gets its own outcome.

A record accepted by any of these is flushed when the service stops; whatever the broker did not
acknowledge by then is reported (to its waiter and in the log), never dropped silently.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Mapping

import confluent_kafka

from ...bus import BUS_HEADER, MAX_BUS_BYTES
from ...errors import ConfigError, PublishError, UnknownClientError
from ...tracing import inject_trace
from .settings import scrub
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
DEFAULT_MAX_BYTES = 1_000_000  # librdkafka's message.max.bytes default

# RFC 9110 token: what an HTTP header name may contain (record headers become HTTP headers).
_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
# Names the consumer proxy sets itself, or does not forward: a record header with one of them
# would never reach the handler as given.
_PROXY_HEADERS = {"x-message-key", "x-retry-count", "x-freedom-secret"}
_HOP_BY_HOP = {"content-length", "transfer-encoding", "host", "connection", "upgrade", "keep-alive", "te",
               "trailer", "http2-settings", "proxy-connection"}


class ProducerClosedError(PublishError):
    """Publishing through a producer that was stopped with the service."""


class RecordTooLargeError(PublishError):
    """A record over the producer's or the broker's size limit."""


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
        self.label = repr(name) if name else "(default)"
        self.settings = settings
        self.max_bytes = int(settings.get("message.max.bytes", DEFAULT_MAX_BYTES))
        try:
            self._producer = confluent_kafka.Producer(settings)
        except (confluent_kafka.KafkaException, ValueError, TypeError) as exc:
            problem = exc.args[0].str() if isinstance(exc, confluent_kafka.KafkaException) else str(exc)
            raise ConfigError("kafka.toml", f"producer client {self.label}",
                              f"librdkafka refused the settings: {scrub(problem, settings)}") from None
        self._closed = False
        self._lock = threading.Lock()
        self._closing_failures: list[tuple[str, str, str]] = []  # (topic, key, error) seen while closing
        self._thread = threading.Thread(target=self._serve, name=f"freedom-producer-{name or 'default'}", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._closed:
            self._producer.poll(0.1)

    @property
    def closed(self) -> bool:
        return self._closed

    def produce(self, msg: "Msg") -> "concurrent.futures.Future[Delivered]":
        """Queue `msg` in librdkafka; the future resolves on the broker's acknowledgement or failure.

        Raises at once (where the user called) for a closed producer or a record over the size limit.
        """
        # Left pending (not "running") so that a waiter giving up can cancel it; a failure that
        # arrives after that is logged below instead of vanishing.
        future: concurrent.futures.Future[Delivered] = concurrent.futures.Future()
        topic, key = msg.topic, msg.key
        size = len(msg.value) + len(key.encode()) + sum(len(k) + len(v) for k, v in msg.wire_headers())

        def on_delivery(err: Any, record: Any) -> None:  # runs on a poll thread
            if err is None:
                outcome: Any = Delivered(record.topic(), record.partition(), record.offset(), key)
            else:
                outcome = self._delivery_error(err, topic, key, size)
                if self._closed:
                    self._closing_failures.append((topic, key, err.str()))
            try:
                if isinstance(outcome, Delivered):
                    future.set_result(outcome)
                else:
                    future.set_exception(outcome)
            except concurrent.futures.InvalidStateError:  # the waiter gave up (cancelled)
                if err is not None:
                    log.error("%s (nobody was waiting for it any more)", outcome)

        while True:
            try:
                with self._lock:  # close() cannot slip in between the check and the produce
                    if self._closed:
                        raise self._closed_error(topic)
                    self._producer.produce(topic, value=msg.value, key=key.encode(), headers=msg.wire_headers(),
                                           on_delivery=on_delivery)
                return future
            except BufferError:
                # The local queue is full: wait for deliveries to make room instead of failing.
                if self._closed:
                    raise self._closed_error(topic) from None
                self._producer.poll(0.05)
            except confluent_kafka.KafkaException as exc:
                err = exc.args[0]
                if err.code() == confluent_kafka.KafkaError.MSG_SIZE_TOO_LARGE:
                    raise RecordTooLargeError(
                        f"message to {topic!r} is {size} bytes, over the limit of {self.max_bytes} bytes of producer "
                        f"client {self.label} (librdkafka message.max.bytes): send less, or raise message.max.bytes "
                        "in that client's `settings` in kafka.toml together with the topic's max.message.bytes on the broker"
                    ) from None
                raise PublishError(f"cannot publish to {topic!r} with producer client {self.label}: {err.str()}") from None

    def _delivery_error(self, err: Any, topic: str, key: str, size: int) -> PublishError:
        code = err.code()
        if code == confluent_kafka.KafkaError.MSG_SIZE_TOO_LARGE:
            return RecordTooLargeError(
                f"message to {topic!r} (key {key}) is {size} bytes and the broker rejected it as too large: "
                "send less, or raise the topic's max.message.bytes (and the broker's message.max.bytes)"
            )
        if code == confluent_kafka.KafkaError._PURGE_QUEUE:
            return ProducerClosedError(
                f"message to {topic!r} (key {key}) was not delivered: the service stopped before the broker "
                f"acknowledged it; it was never sent (producer client {self.label})"
            )
        if code == confluent_kafka.KafkaError._PURGE_INFLIGHT:
            return ProducerClosedError(
                f"message to {topic!r} (key {key}) was not delivered: the service stopped before the broker "
                f"acknowledged it; it was sent, so the broker may have stored it (producer client {self.label})"
            )
        return PublishError(
            f"message to {topic!r} (key {key}) was not delivered by producer client {self.label}: {err.str()}"
        )

    def _closed_error(self, topic: str) -> ProducerClosedError:
        return ProducerClosedError(
            f"cannot publish to {topic!r}: the producer is closed (the service has stopped or is stopping)"
        )

    def close(self, timeout: float = 10.0) -> list[tuple[str, str, str]]:
        """Refuse new records, flush the queued ones for up to `timeout` s, give up on the rest.

        Returns `(topic, key, error)` of every record that was not delivered; each is logged, and
        whoever waits for it gets a :class:`PublishError`.
        """
        with self._lock:
            if self._closed:
                return []
            self._closed = True
        self._thread.join(timeout=1.0)
        left = self._producer.flush(timeout)
        if left:
            self._producer.purge(in_queue=True, in_flight=True)
            self._producer.flush(1.0)  # serves the purged records' delivery reports
        failures = list(self._closing_failures)
        if failures:
            shown = "; ".join(f"{t} key {k}: {e}" for t, k, e in failures[:20])
            more = f" (and {len(failures) - 20} more)" if len(failures) > 20 else ""
            log.error("producer client %s stopped with %d records not delivered: %s%s",
                      self.label, len(failures), shown, more)
        return failures


@dataclass
class BatchResult:
    """The outcome of every message of a batch, in the order they were given."""

    results: list[Delivered | PublishError]

    @property
    def delivered(self) -> list[Delivered]:
        return [r for r in self.results if isinstance(r, Delivered)]

    @property
    def failed(self) -> list[tuple[int, PublishError]]:
        """`(index in the batch, error)` of each message that was not delivered."""
        return [(i, r) for i, r in enumerate(self.results) if isinstance(r, PublishError)]

    @property
    def ok(self) -> bool:
        return not self.failed

    def raise_for_failures(self) -> None:
        """Raise a PublishError summarising the failures, if there are any."""
        failed = self.failed
        if failed:
            first = failed[0][1]
            raise PublishError(f"{len(failed)} of {len(self.results)} messages were not delivered; first: {first}")


@dataclass
class PendingBatch:
    """A batch whose records are all queued (accepted); wait for the broker's answers with `wait()`/`result()`."""

    futures: list["concurrent.futures.Future[Delivered] | PublishError"]
    _done: "concurrent.futures.Future[None]" = field(default_factory=concurrent.futures.Future)

    def __post_init__(self) -> None:
        pending = [f for f in self.futures if isinstance(f, concurrent.futures.Future)]
        remaining = [len(pending)]
        lock = threading.Lock()

        def one_done(_: Any) -> None:
            with lock:
                remaining[0] -= 1
                last = remaining[0] == 0
            if last:
                self._done.set_result(None)

        if not pending:
            self._done.set_result(None)
        for f in pending:
            f.add_done_callback(one_done)

    def _collect(self) -> BatchResult:
        out: list[Delivered | PublishError] = []
        for f in self.futures:
            if isinstance(f, PublishError):
                out.append(f)
                continue
            exc = f.exception()
            out.append(exc if isinstance(exc, PublishError) else PublishError(str(exc)) if exc else f.result())
        return BatchResult(out)

    async def wait(self) -> BatchResult:
        """Wait (without blocking the loop) until every record is acknowledged or failed."""
        await asyncio.wrap_future(self._done)
        return self._collect()

    def result(self, timeout: float | None = None) -> BatchResult:
        """Block until every record is acknowledged or failed; TimeoutError after `timeout` s."""
        _check_not_on_loop("PendingBatch.result()", "await pending.wait()")
        self._done.result(timeout)
        return self._collect()


def _check_not_on_loop(what: str, instead: str) -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise RuntimeError(f"{what} would block the event loop: in async code use `{instead}` instead")


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
        """The client called `name` (None: the default one); raises UnknownClientError naming the known ones."""
        if self._disabled_reason:
            raise ProducerClosedError(self._disabled_reason)
        key = self._default if name is None else name
        if key is None or key not in self._clients:
            known = ", ".join(repr(n) for n in self._clients) or "none"
            raise UnknownClientError(f"no producer client named {name!r} in kafka.toml (known: {known})")
        return self._clients[key]

    async def send(self, msg: "Msg") -> Delivered:
        """Publish one message and wait for the broker's acknowledgement (used by `msg.publish()`)."""
        future = self.client(msg.client).produce(msg)
        return await asyncio.wrap_future(future)

    def accept_batch(self, msgs: Iterable["Msg"]) -> PendingBatch:
        """Queue every message now (from any thread) and return at once.

        Once this returns, the records are the producer's responsibility: they are delivered even
        if the service stops right away. A message that cannot even be queued (too large, closed
        producer) gets its error in the batch result instead of stopping the others.
        """
        futures: list[concurrent.futures.Future[Delivered] | PublishError] = []
        for msg in msgs:
            if not isinstance(msg, Msg):
                raise TypeError(f"publish_batch takes Msg objects (from producer.new_msg), got {type(msg).__name__}")
            try:
                futures.append(self.client(msg.client).produce(msg))
            except UnknownClientError:
                raise
            except PublishError as exc:
                futures.append(exc)
        return PendingBatch(futures)

    async def publish_batch(self, msgs: Iterable["Msg"]) -> BatchResult:
        """Publish many messages pipelined; returns each one's outcome (see BatchResult.failed)."""
        return await self.accept_batch(msgs).wait()

    def close(self, timeout: float = 10.0) -> list[tuple[str, str, str]]:
        """Flush and close every client; returns `(topic, key, error)` of records not delivered."""
        failures: list[tuple[str, str, str]] = []
        for client in self._clients.values():
            failures += client.close(timeout)
        return failures


def _check_headers(headers: Any) -> dict[str, bytes]:
    if not isinstance(headers, Mapping):
        raise TypeError(f"headers must be a mapping of str to str, got {type(headers).__name__}")
    out: dict[str, bytes] = {}
    for name, value in headers.items():
        if not isinstance(name, str):
            raise TypeError(f"header names must be str, got {type(name).__name__} ({name!r})")
        if not _HEADER_NAME.match(name):
            raise ValueError(
                f"header name {name!r} is not a valid HTTP header name (the consumer proxy delivers headers "
                "over HTTP): use ASCII letters, digits and - _ . ! # $ % & ' * + ^ ` | ~, no spaces"
            )
        if name.lower() in _PROXY_HEADERS:
            raise ValueError(f"header {name!r} is set by the consumer proxy when it delivers the record, "
                             "so the handler would never see this value: use another name")
        if name.lower() in _HOP_BY_HOP:
            raise ValueError(f"header {name!r} is an HTTP connection header, which the consumer proxy does not "
                             "forward to the handler: use another name")
        if isinstance(value, str):
            raw = value.encode()
        elif isinstance(value, (bytes, bytearray, memoryview)):
            raw = bytes(value)
        else:
            raise TypeError(f"header {name!r} must have a str or bytes value, got {type(value).__name__} ({value!r})")
        if b"\r" in raw or b"\n" in raw or b"\0" in raw:
            raise ValueError(f"header {name!r} has a line break or NUL in its value, which HTTP does not allow")
        out[name.lower()] = raw
    return out


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
        self.context_headers: dict[str, bytes] = {}
        self.key: str = new_key()
        self.client: str | None = None
        self.runtime: Runtime | None = None

    def set_headers(self, headers: Mapping[str, str | bytes]) -> "Msg":
        """Add headers to the record (values str, sent as UTF-8, or bytes); names are HTTP header names."""
        self.headers.update(_check_headers(headers))
        return self

    def set_runtime(self, runtime: "Runtime") -> "Msg":
        """Carry the request's bus and trace on to whoever handles the message.

        The bus is copied now: later changes to `runtime.bus` do not reach this message.
        """
        bus = runtime.bus.to_header()
        if len(bus) > MAX_BUS_BYTES:
            raise ValueError(
                f"the runtime's bus is {len(bus)} bytes as JSON, over the {MAX_BUS_BYTES}-byte limit of the "
                f"{BUS_HEADER} header (receivers would ignore it): keep ids in the bus, not data"
            )
        self.runtime = runtime
        self.context_headers = {BUS_HEADER: bus, **{k: v.encode() for k, v in inject_trace(runtime.trace).items()}}
        return self

    def select_client(self, name: str) -> "Msg":
        """Publish through the `[[producer_clients]]` entry called `name`; unknown names raise here."""
        if not isinstance(name, str):
            raise TypeError(f"client name must be a str, got {type(name).__name__}")
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
        """The record's headers: the user's, then the bus and trace context of `set_runtime`."""
        return list({**self.headers, **self.context_headers}.items())

    async def publish(self) -> Delivered:
        """Send the record; returns where the broker stored it, raises PublishError if it could not."""
        return await self._producer.send(self)

    def publish_sync(self, timeout: float | None = None) -> Delivered:
        """`publish()` for synchronous code (a plain `def` handler, a script): blocks until acknowledged.

        `timeout` (seconds) bounds the wait; without it the client's `delivery_timeout_sec` does.
        """
        _check_not_on_loop("publish_sync()", "await msg.publish()")
        future = self._producer.client(self.client).produce(self)
        started = time.monotonic()
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()  # nobody waits any more: a later failure is logged
            raise PublishError(
                f"message to {self.topic!r} (key {self.key}) was not acknowledged within "
                f"{time.monotonic() - started:.1f} s; it may still be delivered"
            ) from None
