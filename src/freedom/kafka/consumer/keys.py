"""The event id of a record (the message key as the handler sees it), and records in log lines.

A record's key is bytes (or none); a delivery carries the event id as text in the route's path
parameter and in `x-message-key`. This module is the one place that makes one from the other,
by the rule of `freedom.wire.encoding`: the key itself when it is plain text, else an id in the `~`
marker space (`~b64.…`, `~sha256.…`, `~pos.…`), so that no two records share an id.
"""

from __future__ import annotations

import re
from typing import Any

from freedom.wire.encoding import key_id, position_id, printable
from freedom.wire.headers import (
    ORIGINAL_OFFSET_HEADER,
    ORIGINAL_PARTITION_HEADER,
    ORIGINAL_TOPIC_HEADER,
)

__all__ = ["EventId", "record_key", "event_id", "where", "printable"]

_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}")
_NUMBER = re.compile(r"[0-9]{1,19}")


class EventId(str):
    """The event id of one record (a `str`: what the path parameter and `x-message-key` carry),
    with what the transports need besides: the record's key bytes (None for a record without a
    key) and whether the proxy wrote the record (read from a retry or dead-letter topic: its
    `x-freedom-*` reason headers are the proxy's own; on a main topic they come from outside)."""

    key: bytes | None
    proxy_written: bool
    #: A main-topic record whose replay headers the proxy checked against the dead letter they
    #: name (replays.py): those are freedom's own and travel on; set by the proxy.
    verified_replay: bool
    #: A share group's record: how many times the broker has handed it out (`x-delivery-count`);
    #: None for a classic group's. Set by the proxy.
    delivery_count: int | None

    def __new__(cls, text: str, key: bytes | None, proxy_written: bool = False) -> EventId:
        self = super().__new__(cls, text)
        self.key = key
        self.proxy_written = proxy_written
        self.verified_replay = False
        self.delivery_count = None
        return self


def event_id(key: str | bytes | None, proxy_written: bool = False) -> EventId:
    """The event id of a key given as text or bytes (what callers of a transport that have no
    record pass; records go through :func:`record_key`); an `EventId` is returned as it is."""
    if isinstance(key, EventId):
        return key
    raw = key.encode("utf-8", "surrogatepass") if isinstance(key, str) else (key or b"")
    return EventId(key_id(raw), raw, proxy_written)


def record_key(record: Any, from_retry_topic: bool, *, dead_letter_prefix: str = "") -> EventId:
    """The event id of a confluent-kafka record.

    A record without a key (null or empty) gets `~pos.<topic>.<partition>.<offset>` of the record
    as first read: on a topic the proxy writes (a retry topic, or a dead-letter topic, whose name
    starts with `dead_letter_prefix`, that a service listens on), the original's position from the
    `x-freedom-original-*` headers the proxy wrote, so that a retry has the id of its first
    delivery; on a main topic those headers come from outside and are ignored.
    """
    proxy_written = (
        from_retry_topic
        or bool(dead_letter_prefix)
        and record.topic().startswith(dead_letter_prefix)
    )
    key = record.key()
    if key:
        return EventId(key_id(key), key, proxy_written)
    topic, partition, offset = record.topic(), record.partition(), record.offset()
    if proxy_written:
        t = _header_text(record, ORIGINAL_TOPIC_HEADER)
        p = _header_text(record, ORIGINAL_PARTITION_HEADER)
        o = _header_text(record, ORIGINAL_OFFSET_HEADER)
        if t and p and o and _TOPIC.fullmatch(t) and _NUMBER.fullmatch(p) and _NUMBER.fullmatch(o):
            topic, partition, offset = t, int(p), int(o)
    return EventId(position_id(topic, partition, offset), key, proxy_written)


def _header_text(record: Any, name: str) -> str | None:
    """The last value of header `name` of a record, as text (not retry.header_value: retry.py
    imports delivery.py, which imports this module)."""
    value = None
    for k, v in record.headers() or []:
        if k.lower() == name and v is not None:
            value = v
    return value.decode("utf-8", "replace") if value is not None else None


def where(record: Any, key: str) -> str:
    """The record, for log lines: `topic[partition]@offset (key K)`, control characters escaped."""
    return f"{record.topic()}[{record.partition()}]@{record.offset()} (key {printable(key)})"
