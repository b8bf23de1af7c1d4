"""The message key of a record as the handler sees it (the event id), and records in log lines.

A record's key is bytes; a delivery carries it as text in the route's path parameter and in
`x-message-key`. This module is the one place that turns one into the other.
"""

from __future__ import annotations

from typing import Any

from ...headers import ORIGINAL_OFFSET_HEADER, ORIGINAL_PARTITION_HEADER, ORIGINAL_TOPIC_HEADER
from .retry import header_value


def record_key(record: Any) -> str:
    """The message key as text; a record published without a key gets `topic-partition-offset`
    (of the original record, for a retry)."""
    key = record.key()
    if key:
        try:
            return key.decode("utf-8")
        except UnicodeDecodeError:
            return key.hex().upper()
    topic = header_value(record, ORIGINAL_TOPIC_HEADER)
    partition = header_value(record, ORIGINAL_PARTITION_HEADER)
    offset = header_value(record, ORIGINAL_OFFSET_HEADER)
    if topic and partition and offset:
        return f"{topic}-{partition}-{offset}"
    return f"{record.topic()}-{record.partition()}-{record.offset()}"


def where(record: Any, key: str) -> str:
    """The record, for log lines: `topic[partition]@offset (key K)`."""
    return f"{record.topic()}[{record.partition()}]@{record.offset()} (key {key})"
