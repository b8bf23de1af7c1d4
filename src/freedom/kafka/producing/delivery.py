"""A `Msg` through a `ProducerClient`: queueing it, and what its delivery report means.

Queueing raises at once, where the user called, for a closed producer or a record over the size
limit. The report becomes `Delivered` (where the broker stored the record) or the `PublishError`
its waiter gets; a blocking waiter gets it through a concurrent future (:func:`produce`), an awaited
`msg.publish()` through a future of its loop, resolved in bulk by the client (:func:`produce_for_loop`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import confluent_kafka

from freedom.errors import PublishError
from freedom.kafka.producing.client import OnDelivery, ProducerClient, ProducerClosedError, log
from freedom.observability.metrics import count_sent

if TYPE_CHECKING:
    from freedom.kafka.producing.msg import Msg


class RecordTooLargeError(PublishError):
    """A record over the producer's or the broker's size limit."""


@dataclass(frozen=True)
class Delivered:
    """Where the broker stored a published record."""

    topic: str
    partition: int
    offset: int
    key: str


def queue(client: ProducerClient, msg: Msg, on_delivery: OnDelivery) -> None:
    """Hand `msg` to `client`; `on_delivery(err, record)` runs on a poll thread with the broker's answer.

    Raises at once (where the user called) for a closed producer or a record over the size limit.
    """
    headers: Any = (
        msg.wire_headers() or None
    )  # (confluent-kafka's stubs: list of str | bytes | None)
    try:
        client.produce(msg.topic, msg.value, msg.key.encode(), headers, on_delivery)
    except confluent_kafka.KafkaException as exc:
        err, topic = exc.args[0], msg.topic
        if err.code() == confluent_kafka.KafkaError.MSG_SIZE_TOO_LARGE:
            raise RecordTooLargeError(
                f"message to {topic!r} is {msg.size()} bytes, over the limit of {client.max_bytes} bytes of "
                f"producer client {client.label} (librdkafka message.max.bytes): send less, or raise "
                "message.max.bytes in that client's `settings` in kafka.toml together with the topic's "
                "max.message.bytes on the broker"
            ) from None
        raise PublishError(
            f"cannot publish to {topic!r} with producer client {client.label}: {err.str()}"
        ) from None


def outcome(client: ProducerClient, err: Any, record: Any, msg: Msg) -> Delivered | PublishError:
    """What the delivery report `(err, record)` of `msg` means: where it was stored, or the
    error its waiter gets. Topic and key are the record's, as queued (`msg` may have changed since)."""
    topic, key = record.topic(), record.key().decode()
    count_sent(topic, err)  # messaging_client_sent_messages_total (metrics.py)
    if err is None:
        return Delivered(topic, record.partition(), record.offset(), key)
    client.note_undelivered(topic, key, err.str())  # kept only while the client closes
    return delivery_error(err, topic, key, msg.size(), client.label)


def delivery_error(err: Any, topic: str, key: str, size: int, label: str) -> PublishError:
    """The error of a record (`size` bytes) that producer client `label` did not deliver."""
    code = err.code()
    if code == confluent_kafka.KafkaError.MSG_SIZE_TOO_LARGE:
        return RecordTooLargeError(
            f"message to {topic!r} (key {key}) is {size} bytes and the broker rejected it as too large: "
            "send less, or raise the topic's max.message.bytes (and the broker's message.max.bytes)"
        )
    if code == confluent_kafka.KafkaError._PURGE_QUEUE:
        return ProducerClosedError(
            f"message to {topic!r} (key {key}) was not delivered: the service stopped before the broker "
            f"acknowledged it; it was never sent (producer client {label})"
        )
    if code == confluent_kafka.KafkaError._PURGE_INFLIGHT:
        return ProducerClosedError(
            f"message to {topic!r} (key {key}) was not delivered: the service stopped before the broker "
            f"acknowledged it; it was sent, so the broker may have stored it (producer client {label})"
        )
    return PublishError(
        f"message to {topic!r} (key {key}) was not delivered by producer client {label}: {err.str()}"
    )


def produce(client: ProducerClient, msg: Msg) -> concurrent.futures.Future[Delivered]:
    """Queue `msg`; the returned future (for a blocking waiter) resolves on the broker's answer."""
    # Left pending (not "running") so that a waiter giving up can cancel it; a failure that
    # arrives after that is logged below instead of vanishing.
    future: concurrent.futures.Future[Delivered] = concurrent.futures.Future()

    def on_delivery(err: Any, record: Any) -> None:  # runs on a poll thread
        result = outcome(client, err, record, msg)
        try:
            if isinstance(result, Delivered):
                future.set_result(result)
            else:
                future.set_exception(result)
        except concurrent.futures.InvalidStateError:  # the waiter gave up (cancelled)
            if err is not None:
                log.error("%s (nobody was waiting for it any more)", result)

    queue(client, msg, on_delivery)
    return future


def produce_for_loop(
    client: ProducerClient, msg: Msg, loop: asyncio.AbstractEventLoop
) -> asyncio.Future[Delivered]:
    """Queue `msg`; the returned future of `loop` resolves on the broker's answer."""
    future: asyncio.Future[Delivered] = loop.create_future()
    # A partial rather than a closure: fewer objects per record for the garbage collector.
    queue(client, msg, functools.partial(_report_to_loop, client, loop, future, msg))
    return future


def _report_to_loop(
    client: ProducerClient,
    loop: asyncio.AbstractEventLoop,
    future: asyncio.Future[Delivered],
    msg: Msg,
    err: Any,
    record: Any,
) -> None:  # runs on a poll thread
    client.hand_over(loop, future, outcome(client, err, record, msg))


def check_not_on_loop(what: str, instead: str) -> None:
    """Raise when called on a running event loop: a blocking wait there would stall it."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise RuntimeError(f"{what} would block the event loop: in async code use `{instead}` instead")
