"""Kafka topic names: what is legal, and checking it where the user named the topic."""

from __future__ import annotations

import re

_LEGAL = re.compile(r"^[A-Za-z0-9._-]+$")
MAX_TOPIC_LENGTH = 249


def check_topic(topic: object) -> str:
    """Return `topic` if Kafka accepts it as a topic name, else raise ValueError saying why."""
    if not isinstance(topic, str):
        raise TypeError(f"topic must be a string, got {type(topic).__name__}")
    if not topic:
        raise ValueError("topic name is empty")
    if topic in (".", ".."):
        raise ValueError(f"topic name {topic!r} is not allowed by Kafka")
    if len(topic) > MAX_TOPIC_LENGTH:
        raise ValueError(
            f"topic name is {len(topic)} characters long; Kafka allows at most {MAX_TOPIC_LENGTH}"
        )
    if not _LEGAL.match(topic):
        bad = sorted({c for c in topic if not _LEGAL.match(c)})
        raise ValueError(
            f"topic name {topic!r} has characters Kafka does not allow ({''.join(bad)!r}); "
            "use letters, digits, '.', '_' and '-'"
        )
    return topic
