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
import collections
import concurrent.futures
import functools
import logging
import os
import threading
import time
import types
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import confluent_kafka

from freedom.config.librdkafka import scrub
from freedom.errors import ConfigError, PublishError, UnknownClientError
from freedom.kafka.send_observer import observed_publish
from freedom.kafka.topics import check_topic
from freedom.observability.metrics import count_sent
from freedom.observability.tracing import inject_trace
from freedom.wire.context import BUS_HEADER, MAX_BUS_BYTES
from freedom.wire.headers import check_message_headers
from freedom.wire.payloads import CONTENT_TYPE, JSON, encode

if TYPE_CHECKING:
    from freedom.web.runtime import Runtime

log = logging.getLogger("freedom.kafka.producer")

DEFAULT_MAX_BYTES = 1_000_000  # librdkafka's message.max.bytes default
_NO_HEADERS: Mapping[str, bytes] = types.MappingProxyType({})
_JSON_TYPE = JSON.encode()  # the content-type header value of objects sent as JSON
_GOOD_TOPICS_KEPT = (
    10_000  # topic names a Producer remembers as checked (bounded for generated names)
)


class ProducerClosedError(PublishError):
    """Publishing through a producer that was stopped with the service."""


class RecordTooLargeError(PublishError):
    """A record over the producer's or the broker's size limit."""


# Unused default keys, 32 upper-case hex characters each. One `os.urandom` read makes 256 of them
# (a system call per key was a tenth of a batch's cost); `deque.popleft` hands each out once, from
# any thread, without a lock. A forked child empties the pool, so it never repeats its parent's keys.
_KEYS_PER_READ = 256
_key_pool: collections.deque[str] = collections.deque()
os.register_at_fork(after_in_child=_key_pool.clear)


def new_key() -> str:
    """The default message key: a new unique id, 32 upper-case hex characters (docs/contract.md,
    "The published record")."""
    try:
        return _key_pool.popleft()
    except IndexError:
        hexed = os.urandom(16 * _KEYS_PER_READ).hex().upper()
        _key_pool.extend(hexed[i : i + 32] for i in range(32, len(hexed), 32))
        return hexed[:32]


@dataclass(frozen=True)
class Delivered:
    """Where the broker stored a published record."""

    topic: str
    partition: int
    offset: int
    key: str


class ProducerClient:
    """One librdkafka producer (one cluster), with a thread serving its delivery reports.

    The delivery reports arrive on that thread, one per record. Handing each one to its waiter is
    the expensive part of publishing from Python, so it is done in bulk where the waiter allows:
    a batch counts its records down and wakes its waiter once; `await msg.publish()` waiters of
    one event loop are woken together, one loop wake-up for all the reports that arrived while
    the loop was busy (see `_hand_over`).
    """

    def __init__(self, name: str, settings: dict[str, Any], *, client: Any = None) -> None:
        """`client` stands in for the librdkafka producer (freedom.testing's in-memory broker)."""
        self.name = name
        self.label = repr(name) if name else "(default)"
        self.settings = settings
        self.max_bytes = int(settings.get("message.max.bytes", DEFAULT_MAX_BYTES))
        try:
            self._producer = client if client is not None else confluent_kafka.Producer(settings)
        except (confluent_kafka.KafkaException, ValueError, TypeError) as exc:
            problem = (
                exc.args[0].str() if isinstance(exc, confluent_kafka.KafkaException) else str(exc)
            )
            raise ConfigError(
                "kafka.toml",
                f"producer client {self.label}",
                f"librdkafka refused the settings: {scrub(problem, settings)}",
            ) from None
        self._closed = False
        self._lock = threading.Lock()
        self._closing_failures: list[
            tuple[str, str, str]
        ] = []  # (topic, key, error) seen while closing
        # Outcomes waiting for their event loop to pick them up: loop -> [(future, outcome)].
        self._ready: dict[
            asyncio.AbstractEventLoop,
            list[tuple[asyncio.Future[Delivered], Delivered | PublishError]],
        ] = {}
        self._ready_lock = threading.Lock()
        self._thread = threading.Thread(
            target=self._serve, name=f"freedom-producer-{name or 'default'}", daemon=True
        )
        self._thread.start()

    def _serve(self) -> None:
        while not self._closed:
            try:
                self._producer.poll(0.1)
            except Exception:  # noqa: BLE001 - a bug in a callback must not stop every later delivery report
                log.exception("producer client %s: a delivery report failed", self.label)

    @property
    def closed(self) -> bool:
        return self._closed

    def queue(self, msg: Msg, on_delivery: Callable[[Any, Any], None]) -> None:
        """Hand `msg` to librdkafka; `on_delivery(err, record)` runs on a poll thread with the broker's answer.

        Raises at once (where the user called) for a closed producer or a record over the size limit.
        """
        topic = msg.topic
        headers: Any = (
            msg.wire_headers() or None
        )  # (confluent-kafka's stubs want a list of str | bytes | None)
        while True:
            try:
                with self._lock:  # close() cannot slip in between the check and the produce
                    if self._closed:
                        raise self._closed_error(topic)
                    self._producer.produce(
                        topic, msg.value, msg.key.encode(), on_delivery=on_delivery, headers=headers
                    )
                return
            except BufferError:
                # The local queue is full: wait for deliveries to make room instead of failing.
                if self._closed:
                    raise self._closed_error(topic) from None
                self._producer.poll(0.05)
            except confluent_kafka.KafkaException as exc:
                err = exc.args[0]
                if err.code() == confluent_kafka.KafkaError.MSG_SIZE_TOO_LARGE:
                    raise RecordTooLargeError(
                        f"message to {topic!r} is {msg.size()} bytes, over the limit of {self.max_bytes} bytes of "
                        f"producer client {self.label} (librdkafka message.max.bytes): send less, or raise "
                        "message.max.bytes in that client's `settings` in kafka.toml together with the topic's "
                        "max.message.bytes on the broker"
                    ) from None
                raise PublishError(
                    f"cannot publish to {topic!r} with producer client {self.label}: {err.str()}"
                ) from None

    def outcome(self, err: Any, record: Any, msg: Msg) -> Delivered | PublishError:
        """What the delivery report `(err, record)` of `msg` means: where it was stored, or the
        error its waiter gets. Topic and key are the record's, as queued (`msg` may have changed since)."""
        topic, key = record.topic(), record.key().decode()
        count_sent(topic, err)  # messaging_client_sent_messages_total (metrics.py)
        if err is None:
            return Delivered(topic, record.partition(), record.offset(), key)
        failure = self._delivery_error(err, topic, key, msg.size())
        if self._closed:
            self._closing_failures.append((topic, key, err.str()))
        return failure

    def produce(self, msg: Msg) -> concurrent.futures.Future[Delivered]:
        """Queue `msg`; the returned future (for a blocking waiter) resolves on the broker's answer."""
        # Left pending (not "running") so that a waiter giving up can cancel it; a failure that
        # arrives after that is logged below instead of vanishing.
        future: concurrent.futures.Future[Delivered] = concurrent.futures.Future()

        def on_delivery(err: Any, record: Any) -> None:  # runs on a poll thread
            outcome = self.outcome(err, record, msg)
            try:
                if isinstance(outcome, Delivered):
                    future.set_result(outcome)
                else:
                    future.set_exception(outcome)
            except concurrent.futures.InvalidStateError:  # the waiter gave up (cancelled)
                if err is not None:
                    log.error("%s (nobody was waiting for it any more)", outcome)

        self.queue(msg, on_delivery)
        return future

    def produce_for_loop(
        self, msg: Msg, loop: asyncio.AbstractEventLoop
    ) -> asyncio.Future[Delivered]:
        """Queue `msg`; the returned future of `loop` resolves on the broker's answer."""
        future: asyncio.Future[Delivered] = loop.create_future()
        # A partial rather than a closure: fewer objects per record for the garbage collector.
        self.queue(msg, functools.partial(self._report_to_loop, loop, future, msg))
        return future

    def _report_to_loop(
        self,
        loop: asyncio.AbstractEventLoop,
        future: asyncio.Future[Delivered],
        msg: Msg,
        err: Any,
        record: Any,
    ) -> None:  # runs on a poll thread
        self._hand_over(loop, future, self.outcome(err, record, msg))

    def _hand_over(
        self,
        loop: asyncio.AbstractEventLoop,
        future: asyncio.Future[Delivered],
        outcome: Delivered | PublishError,
    ) -> None:
        """Give `outcome` to a future of `loop`, from any thread.

        The first outcome for a loop schedules `_resolve` there (one wake-up); those that arrive
        before it runs join the same list instead of waking the loop again.
        """
        with self._ready_lock:
            waiting = self._ready.get(loop)
            if waiting is not None:
                waiting.append((future, outcome))
                return
            self._ready[loop] = [(future, outcome)]
        try:
            loop.call_soon_threadsafe(self._resolve, loop)
        except RuntimeError:  # the loop is closed: nobody can await these any more
            with self._ready_lock:
                lost = self._ready.pop(loop, [])
            for _, late in lost:
                if isinstance(late, PublishError):
                    log.error("%s (nobody was waiting for it any more)", late)

    def _resolve(self, loop: asyncio.AbstractEventLoop) -> None:
        """On `loop`: resolve every future whose outcome has arrived."""
        with self._ready_lock:
            arrived = self._ready.pop(loop, [])
        for future, outcome in arrived:
            if future.done():  # the waiter gave up (cancelled, timed out)
                if isinstance(outcome, PublishError):
                    log.error("%s (nobody was waiting for it any more)", outcome)
            elif isinstance(outcome, Delivered):
                future.set_result(outcome)
            else:
                future.set_exception(outcome)

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
            log.error(
                "producer client %s stopped with %d records not delivered: %s%s",
                self.label,
                len(failures),
                shown,
                more,
            )
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
            raise PublishError(
                f"{len(failed)} of {len(self.results)} messages were not delivered; first: {first}"
            )


class PendingBatch:
    """A batch whose records are all queued (accepted); wait for the broker's answers with `wait()`/`result()`.

    Each record's outcome goes straight into its slot from the delivery-report thread; the waiter
    is woken once, by the last one.
    """

    def __init__(self, msgs: list[Msg]) -> None:
        size = len(msgs)
        self._msgs = msgs
        self._results: list[Delivered | PublishError | None] = [None] * size
        self._left = size
        self._lock = threading.Lock()
        self._done: concurrent.futures.Future[None] = concurrent.futures.Future()
        # Running, so that a cancelled `wait()` cannot cancel it: other waiters, and the last
        # record's report setting it, still find it as it should be.
        self._done.set_running_or_notify_cancel()
        if size == 0:
            self._done.set_result(None)

    def _settle(self, index: int, outcome: Delivered | PublishError) -> None:
        """Record the outcome of message `index` (any thread); the last one wakes the waiters."""
        self._results[index] = outcome
        with self._lock:
            self._left -= 1
            last = self._left == 0
        if last:
            self._done.set_result(None)

    def _reporter(self, client: ProducerClient) -> Callable[[int, Any, Any], None]:
        """The delivery callback of this batch's records sent by `client`; each record's own callback
        is `functools.partial(reporter, index)`. Only the index is bound per record: a partial
        whose arguments are all ints is one object for the garbage collector to track, where a
        closure is half a dozen (with 10,000 records in flight, the collector's full passes were a
        quarter of a batch's time)."""
        msgs = self._msgs

        def report(index: int, err: Any, record: Any) -> None:  # runs on a poll thread
            self._settle(index, client.outcome(err, record, msgs[index]))

        return report

    def _collect(self) -> BatchResult:
        return BatchResult(list(self._results))  # type: ignore[arg-type] # every slot is filled once done

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

    def __init__(
        self,
        clients: Mapping[str, ProducerClient] | None = None,
        default: str | None = None,
        disabled_reason: str | None = None,
    ) -> None:
        self._clients = dict(clients or {})
        self._default = default if default is not None else next(iter(self._clients), None)
        self._disabled_reason = disabled_reason
        self._good_topics: set[str] = (
            set()
        )  # names check_topic accepted: checked once, not per message

    @property
    def client_names(self) -> list[str]:
        return list(self._clients)

    def new_msg(self, topic: str, content: object, client: str | None = None) -> Msg:
        """A message to `topic` carrying `content`; `client` names a `[[producer_clients]]` entry.

        `content` is bytes or str (the value as it is, no content-type added), or an object sent as
        JSON with `content-type: application/json`: a Pydantic model, a dataclass, a dict or list
        (see freedom.wire.payloads). Anything that cannot be serialised is a TypeError naming its type.
        """
        if topic.__class__ is not str or topic not in self._good_topics:
            check_topic(topic)
            if len(self._good_topics) < _GOOD_TOPICS_KEPT:
                self._good_topics.add(topic)
        msg = Msg(self, topic, content)
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
            raise UnknownClientError(
                f"no producer client named {name!r} in kafka.toml (known: {known})"
            )
        return self._clients[key]

    async def send(self, msg: Msg) -> Delivered:
        """Publish one message and wait for the broker's acknowledgement (used by `msg.publish()`),
        in its `send` span, timed (observer.py)."""
        return await observed_publish(msg, self.client(msg.client))

    def accept_batch(self, msgs: Iterable[Msg]) -> PendingBatch:
        """Queue every message now (from any thread) and return at once.

        Once this returns, the records are the producer's responsibility: they are delivered even
        if the service stops right away. A message that cannot even be queued (too large, closed
        producer) gets its error in the batch result instead of stopping the others.
        """
        msgs = list(msgs)
        for msg in msgs:
            if not isinstance(msg, Msg):
                raise TypeError(
                    f"publish_batch takes Msg objects (from producer.new_msg), got {type(msg).__name__}"
                )
        batch = PendingBatch(msgs)
        clients: dict[str | None, tuple[ProducerClient, Callable[[int, Any, Any], None]]] = {}
        for i, msg in enumerate(msgs):
            try:
                if msg.client not in clients:
                    client = self.client(msg.client)
                    clients[msg.client] = (client, batch._reporter(client))
                client, report = clients[msg.client]
                client.queue(msg, functools.partial(report, i))
            except UnknownClientError:
                raise
            except PublishError as exc:
                batch._settle(i, exc)
        return batch

    async def publish_batch(self, msgs: Iterable[Msg]) -> BatchResult:
        """Publish many messages pipelined; returns each one's outcome (see BatchResult.failed)."""
        return await self.accept_batch(msgs).wait()

    def close(self, timeout: float = 10.0) -> list[tuple[str, str, str]]:
        """Flush and close every client; returns `(topic, key, error)` of records not delivered."""
        failures: list[tuple[str, str, str]] = []
        for client in self._clients.values():
            failures += client.close(timeout)
        return failures


class Msg:
    """A message being built; every setter returns the message, so calls chain."""

    def __init__(self, producer: Producer, topic: str, content: object) -> None:
        if content.__class__ is bytes:  # the hot path: bytes are the value as they are
            value: bytes = content
            content_type: bytes | None = None
        else:
            value, label = encode(content)  # TypeError naming the type when it cannot be serialised
            content_type = _JSON_TYPE if label == JSON else label.encode() if label else None
        self._producer = producer
        self.topic = topic
        self.value: bytes = value
        #: What freedom labels the value with (`application/json` for objects it serialised; None
        #: for bytes and str); a `content-type` given to set_headers wins (payloads.py).
        self.content_type: bytes | None = content_type
        # Both start as one shared empty mapping and are replaced, never changed in place: two
        # fewer objects per message for the garbage collector (a batch makes thousands of messages).
        self.headers: Mapping[str, bytes] = _NO_HEADERS
        self.context_headers: Mapping[str, bytes] = _NO_HEADERS
        self.key: str = new_key()
        self.client: str | None = None
        self.runtime: Runtime | None = None

    def set_headers(self, headers: Mapping[str, str | bytes]) -> Msg:
        """Add headers to the record (values str, sent as UTF-8, or bytes); names are HTTP header names."""
        self.headers = {**self.headers, **check_message_headers(headers)}
        return self

    def set_runtime(self, runtime: Runtime) -> Msg:
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
        self.context_headers = {
            BUS_HEADER: bus,
            **{k: v.encode() for k, v in inject_trace(runtime.trace).items()},
        }
        return self

    def select_client(self, name: str) -> Msg:
        """Publish through the `[[producer_clients]]` entry called `name`; unknown names raise here."""
        if not isinstance(name, str):
            raise TypeError(f"client name must be a str, got {type(name).__name__}")
        self._producer.client(name)
        self.client = name
        return self

    def set_key(self, key: str | bytes) -> Msg:
        """Set the record key (it decides the partition; the handler gets it as the event id)."""
        if isinstance(key, bytes):
            key = key.decode()
        if not isinstance(key, str) or not key:
            raise TypeError(f"message key must be a non-empty str, got {key!r}")
        self.key = key
        return self

    def wire_headers(self) -> list[tuple[str, bytes]]:
        """The record's headers: `content-type` (unless the user set one), the user's, then the bus
        and trace context of `set_runtime`."""
        headers = self.headers
        if self.content_type is not None and CONTENT_TYPE not in headers:
            headers = {CONTENT_TYPE: self.content_type, **headers}
        if not self.context_headers:
            return list(headers.items())
        return list({**headers, **self.context_headers}.items())

    def size(self) -> int:
        """The record's size as the error messages give it: value, key and headers."""
        return (
            len(self.value)
            + len(self.key.encode())
            + sum(len(k) + len(v) for k, v in self.wire_headers())
        )

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
