"""What the configuration models share: their base class, :class:`Problem`, and the checks of
values several tables have (durations, addresses, delivery modes, statuses, backpressure).

A check that fails raises :class:`Problem` with the key it is about (relative to the model that
checks it); :mod:`freedom.config.loading` turns it, like Pydantic's own type errors, into one
:class:`~freedom.errors.ConfigError` line naming the file or the environment variable.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

#: The longest duration a `*_sec` key may give (~24.8 days): librdkafka holds durations as 32-bit
#: milliseconds (`message.timeout.ms`); one bound for every duration key, far below what would
#: overflow a timer or a pause time.
MAX_SECONDS = 2_147_483

#: sequential: one record at a time per partition, in offset order.
#: concurrent: up to max_in_flight records of the topic at once, in any order.
#: key-ordered: like concurrent, but records with the same key one after the other, in order.
CONSUME_MODES = ("sequential", "concurrent", "key-ordered")

#: Keys whose value is a secret: shown as `***` by `freedom config`, never in an error message.
SECRET_FIELDS = frozenset({"secret", "sasl_password", "ssl_key_password", "console_token"})

#: The highest rate_limit_per_sec accepted (a delivery per microsecond).
MAX_RATE_PER_SEC = 1_000_000

#: The longest `delivery_timeout_sec` (and a subscription's `timeout_sec`): one hour. A delivery is
#: one HTTP request; a handler that needs longer should hand the work on and answer at once.
MAX_DELIVERY_TIMEOUT_SEC = 3600

#: The most retries `retry_count` may ask for: each waits `retry_interval_sec` on the retry topic
#: (45 s by default: 100 retries are over an hour); a record that fails that often goes to the
#: dead-letter topic.
MAX_RETRY_COUNT = 100

#: The highest `max_in_flight`: each record in flight is a task and, over HTTP/1.1, a connection
#: (an open file) to the service; the fetched records waiting to start are bounded by it too.
MAX_IN_FLIGHT = 100_000


class Problem(ValueError):
    """A value a check refuses: `key` (a path below the model that raised it) and what is wrong."""

    def __init__(self, key: str | tuple[str | int, ...], problem: str) -> None:
        super().__init__(problem)
        self.key: tuple[str | int, ...] = (key,) if isinstance(key, str) else key
        self.problem = problem


class ConfigModel(BaseModel):
    """The base of every table's model."""

    # strict: "retry_count = true" or "3" is an error, not 1 or 3; extra: an unknown key is an error.
    model_config = ConfigDict(extra="forbid", strict=True, validate_default=False)


def inherited(default: Any, description: str) -> Any:
    """The Field of a key whose value, when not given, is the enclosing table's (a topic table's
    `mode` is its client's, filled in when the client is validated; `default` is the enclosing
    table's default): the reference shows it optional, without a default of its own."""
    return Field(default=default, description=description, json_schema_extra={"inherited": True})


def type_name(value: Any) -> str:
    """How an error message calls the type of a TOML value."""
    return {
        str: "a string",
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        list: "an array",
        dict: "a table",
    }.get(type(value), type(value).__name__)


def check_seconds(
    value: int | float, error: Callable[[str], Exception], *, zero_ok: bool = False
) -> float:
    """`value` as seconds, or `error(problem)` raised: inf and nan would mean a wait that never ends."""
    if isinstance(value, float) and not math.isfinite(value):
        raise error(f"must be a finite number of seconds, got {value}")
    if value < 0 and zero_ok:
        raise error("must not be negative")
    if value <= 0 and not zero_ok:
        raise error("must be greater than 0")
    if value > MAX_SECONDS:
        raise error(f"must be at most {MAX_SECONDS} seconds (about 24.8 days), got {value}")
    return float(value)


def seconds(name: str, value: float, *, zero_ok: bool = False) -> float:
    """The duration key `name` checked (:func:`check_seconds`), as float seconds."""
    return check_seconds(value, lambda p: Problem(name, p), zero_ok=zero_ok)


def is_port(text: str) -> bool:
    """A TCP port number, 1 to 65535, in ASCII digits (str.isdigit also takes "³" and "٣")."""
    return text.isascii() and text.isdigit() and 0 < int(text) < 65536


def check_listen_addr(value: str, error: Callable[[str], Exception]) -> str:
    """`host:port` checked; a bare `:port` listens on every interface."""
    host, sep, port = value.rpartition(":")
    if not sep or not is_port(port) or host.startswith("[") != host.endswith("]"):
        raise error(f'must look like "127.0.0.1:8000", got "{value}"')
    return value if host else f"0.0.0.0:{port}"


def to_tuple(value: Any) -> Any:
    """An array (a list, from TOML, JSON or the environment) as a tuple; the rest is checked strictly."""
    return tuple(value) if isinstance(value, list) else value


def statuses(value: Any) -> Any:
    """`dead_letter_statuses`: an array of HTTP failure statuses (statuses written as text, from an
    environment variable, as integers) as a frozenset; a Pydantic "before" validator, so the
    problems name the entry by its place in the array."""
    if value is None or isinstance(value, frozenset):
        return value
    if not isinstance(value, list):
        raise Problem((), f"must be an array, got {type_name(value)}")
    items = [
        int(v) if isinstance(v, str) and v.strip().isascii() and v.strip().isdigit() else v
        for v in value
    ]
    for i, status in enumerate(items):
        if type(status) is not int:
            raise Problem((i,), f"must be an integer, got {type_name(status)}")
    for i, status in enumerate(items):
        if not 400 <= status <= 599:
            raise Problem((i,), f"must be an HTTP failure status, 400 to 599, got {status}")
    return frozenset(items)


def check_consume(mode: str | None, bound: int | None) -> None:
    """A `mode` and a `max_in_flight` (None: not given)."""
    if mode is not None and mode not in CONSUME_MODES:
        raise Problem(
            "mode", f'must be one of {", ".join(repr(m) for m in CONSUME_MODES)}, got "{mode}"'
        )
    if bound is not None and bound < 1:
        raise Problem("max_in_flight", f"must be 1 or more, got {bound}")
    if bound is not None and bound > MAX_IN_FLIGHT:
        raise Problem(
            "max_in_flight",
            f"must be at most {MAX_IN_FLIGHT} (each record in flight holds a connection to the "
            f"service), got {bound}",
        )


def check_retry_count(count: int | None) -> None:
    """A `retry_count` (None: not given): 0 to :data:`MAX_RETRY_COUNT`."""
    if count is not None and count < 0:
        raise Problem("retry_count", "must be 0 (no retries) or more")
    if count is not None and count > MAX_RETRY_COUNT:
        raise Problem(
            "retry_count",
            f"must be at most {MAX_RETRY_COUNT} (each retry waits retry_interval_sec), got {count}",
        )


def delivery_timeout(name: str, value: float) -> float:
    """A delivery timeout (`delivery_timeout_sec`, a subscription's `timeout_sec`) as float
    seconds: finite, greater than 0, at most :data:`MAX_DELIVERY_TIMEOUT_SEC`."""
    value = seconds(name, value)
    if value > MAX_DELIVERY_TIMEOUT_SEC:
        raise Problem(
            name,
            f"must be at most {MAX_DELIVERY_TIMEOUT_SEC} seconds (one hour; a handler that needs "
            f"longer should hand the work on and answer at once), got {value:g}",
        )
    return value


def check_prefix(name: str, prefix: str) -> None:
    """A retry or dead-letter topic prefix: only characters topic names allow."""
    bad = sorted({c for c in prefix if not (c.isascii() and (c.isalnum() or c in "._-"))})
    if bad:
        raise Problem(
            name,
            f"has characters Kafka topic names do not allow ({''.join(bad)!r}); "
            "use letters, digits, '.', '_' and '-'",
        )


def check_pressure(m: Any) -> None:
    """The backpressure, delivery timeout and head-of-line keys of a consumer client, a topic table
    or a subscription (those it has; None: not given), durations made float seconds."""
    rate = getattr(m, "rate_limit_per_sec", None)
    if rate is not None and (not math.isfinite(rate) or not 0 < rate <= MAX_RATE_PER_SEC):
        raise Problem(
            "rate_limit_per_sec",
            f"must be a number of deliveries per second, greater than 0 and at "
            f"most {MAX_RATE_PER_SEC}, got {rate}",
        )
    bound = getattr(m, "max_concurrency", None)
    if bound is not None and bound < 1:
        raise Problem("max_concurrency", f"must be 1 or more, got {bound}")
    timeout = getattr(m, "delivery_timeout_sec", None)
    if timeout is not None:
        m.delivery_timeout_sec = delivery_timeout("delivery_timeout_sec", timeout)
    for name in ("retry_after_max_sec", "backpressure_max_sec", "head_of_line_timeout_sec"):
        value = getattr(m, name, None)
        if value is not None:
            setattr(m, name, seconds(name, value, zero_ok=name == "backpressure_max_sec"))


DELIVERY_TIMEOUT = (
    "How long one delivery may take: the handler's deadline, sent as `x-freedom-timeout-ms`; "
    "freedom's event routes cancel the handler then and answer 504, and the proxy counts a "
    "delivery without an answer 1 s later as failed (docs/consumer-proxy.md#timeouts). At most 3600."
)
RATE_LIMIT = (
    "At most this many deliveries of the topic start per second, evenly spaced, per process "
    "(docs/consumer-proxy.md#backpressure). Not given: no limit."
)
MAX_CONCURRENCY = (
    "At most this many deliveries of the topic waiting for their answer at once, per process, across "
    "its partitions and retries (in addition to `max_in_flight`). Not given: no limit."
)
RETRY_AFTER_MAX = (
    "The longest pause one `429`/`503` answer's `Retry-After` causes (longer ones are cut to it; "
    "the shortest is 1 s)."
)
BACKPRESSURE_MAX = (
    "How long `Retry-After` pauses may hold one record back in all before its `429`/`503` counts "
    "as a failed attempt (retried or dead-lettered as usual). 0: `Retry-After` is not read."
)
HEAD_OF_LINE = (
    "The head-of-line guard: a record not settled this long after its first delivery started "
    "(redeliveries in place and `Retry-After` pauses included) has its delivery cancelled and goes "
    "to its retry topic, or with `retry_count = 0` to its dead-letter topic, so that its "
    "partition's commit can pass it. Not given: off."
)
