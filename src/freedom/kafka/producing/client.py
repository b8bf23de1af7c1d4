"""`ProducerClient`: the one adapter that owns a librdkafka producer.

It makes the producer (librdkafka's refusal of the settings is a one-line ConfigError), serves its
delivery reports on a thread of its own, hands the outcomes of awaited records to their event loop
in bulk, and flushes and closes it. Every producer of the service is one: the producer clients of
kafka.toml (the user's `Msg`s, the outbox relay's events) and the consumer proxy's retry and
dead-letter producers. What a record and its report mean is the caller's (delivery.py for a `Msg`,
consumer/copy_producer.py for a retry copy); the in-memory test broker swaps only the librdkafka producer
(`client=`). The transactional replay producer (ops/jobs.py) is the one other librdkafka producer.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any

import confluent_kafka

from freedom.config.librdkafka import scrub
from freedom.errors import ConfigError, PublishError

#: The logger of the publishing path; its name is the one the docs show and log filters know.
log = logging.getLogger("freedom.kafka.producer")

DEFAULT_MAX_BYTES = 1_000_000  # librdkafka's message.max.bytes default

OnDelivery = Callable[[Any, Any], None]


class ProducerClosedError(PublishError):
    """Publishing through a producer that was stopped with the service."""


class ProducerClient:
    """One librdkafka producer (one cluster), with a thread serving its delivery reports.

    The delivery reports arrive on that thread, one per record. Handing each one to its waiter is
    the expensive part of publishing from Python, so it is done in bulk where the waiter allows:
    the waiters of one event loop are woken together, one loop wake-up for all the reports that
    arrived while the loop was busy (see :meth:`hand_over`).
    """

    def __init__(
        self,
        name: str,
        settings: dict[str, Any],
        *,
        client: Any = None,
        thread_name: str | None = None,
    ) -> None:
        """`client` stands in for the librdkafka producer (freedom.testing's in-memory broker);
        `thread_name` names the delivery-report thread (default `freedom-producer-{name}`)."""
        self.name = name
        self.label = repr(name) if name else "(default)"
        self.settings = settings
        self.max_bytes = int(settings.get("message.max.bytes", DEFAULT_MAX_BYTES))
        #: Set by the owner once librdkafka reported a fatal error (the idempotent producer's state
        #: is lost): such a client takes no more records, and its owner makes a new one.
        self.fatal = False
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
        # (topic, key, error) of the records reported undelivered while closing (note_undelivered).
        self._closing_failures: list[tuple[str, str, str]] = []
        # Outcomes waiting for their event loop to pick them up: loop -> [(future, outcome)].
        self._ready: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Any]]] = {}
        self._ready_lock = threading.Lock()
        self._thread = threading.Thread(
            target=self._serve,
            name=thread_name or f"freedom-producer-{name or 'default'}",
            daemon=True,
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

    def produce(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None,
        headers: Any,
        on_delivery: OnDelivery,
        *,
        wait: bool = True,
    ) -> None:
        """Hand a record to librdkafka; `on_delivery(err, record)` runs on a poll thread with the
        broker's answer.

        A full local queue is waited out (deliveries make room) unless `wait` is false: then it is
        the caller's BufferError. Raises ProducerClosedError once the client is closed, and
        librdkafka's own refusal (confluent_kafka.KafkaException) for the caller to explain.
        """
        while True:
            try:
                with self._lock:  # close() cannot slip in between the check and the produce
                    if self._closed:
                        raise self._closed_error(topic)
                    self._producer.produce(
                        topic, value, key, on_delivery=on_delivery, headers=headers
                    )
                return
            except BufferError:
                if not wait:
                    raise
                if self._closed:
                    raise self._closed_error(topic) from None
                self._producer.poll(0.05)

    def hand_over(
        self, loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any], outcome: Any
    ) -> None:
        """Give `outcome` to a future of `loop`, from any thread: an exception is raised to its
        waiter, anything else is its result.

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
            elif isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)

    def note_undelivered(self, topic: str, key: str, error: str) -> None:
        """Count a record reported undelivered while the client closes: :meth:`close` returns it."""
        if self._closed:
            self._closing_failures.append((topic, key, error))

    def _closed_error(self, topic: str) -> ProducerClosedError:
        return ProducerClosedError(
            f"cannot publish to {topic!r}: the producer is closed (the service has stopped or is stopping)"
        )

    def close(self, timeout: float = 10.0) -> list[tuple[str, str, str]]:
        """Refuse new records, flush the queued ones for up to `timeout` s, give up on the rest.

        Returns `(topic, key, error)` of every record that was not delivered (as the callers
        reported them, :meth:`note_undelivered`); each is logged, and whoever waits for it gets
        the error of its delivery report.
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
