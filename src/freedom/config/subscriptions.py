"""kafka.toml's `[[subscriptions]]` entries (`freedom proxy`): a topic and the URL its records go to,
as a Pydantic model; keys not given are the consumer client's (or `[consumer]`'s), which
`freedom proxy` applies."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from pydantic import Field, PrivateAttr, field_validator, model_validator

from freedom.config.rules import (
    MAX_CONCURRENCY,
    RATE_LIMIT,
    ConfigModel,
    Problem,
    check_consume,
    check_pressure,
    check_retry_count,
    delivery_timeout,
    seconds,
    statuses,
)
from freedom.config.secret import Keys, read_secret

#: The placeholder of a subscription's `url` that takes the record's event id (its key), percent-encoded.
URL_KEY_PLACEHOLDER = "{key}"
_TOPIC_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


def _target_url(value: str, http2: bool | None) -> str:
    """A subscription's `url`: http(s) with a host, a valid port, no credentials or fragment, printable
    ASCII, and no `{...}` but `{key}`."""
    bad = next((c for c in value if not (c.isascii() and c.isprintable()) or c == " "), None)
    if bad is not None:
        raise Problem(
            "url",
            f"must be printable ASCII without spaces (percent-encode the rest), got {value!r}",
        )
    try:
        url = urlsplit(value)
        port = url.port  # ValueError for a port out of range or not a number
    except ValueError as exc:
        raise Problem("url", f'is not a valid URL ({exc}): "{value}"') from None
    if url.scheme not in ("http", "https"):
        raise Problem("url", f'must start with "http://" or "https://", got "{value}"')
    if not url.hostname or port == 0:
        raise Problem("url", f'needs a host and a port of 1 to 65535: "{value}"')
    if "{" in url.netloc or "}" in url.netloc:
        raise Problem(
            "url", f'{URL_KEY_PLACEHOLDER} goes in the path or the query, not the host: "{value}"'
        )
    if "@" in url.netloc:
        raise Problem(
            "url",
            "must not hold credentials (user:password@); the endpoint is authenticated "
            "by `secret` / `secret_env`",
        )
    if url.fragment or "#" in value:
        raise Problem("url", f'must not have a "#" fragment: "{value}"')
    rest = (url.path + "?" + url.query).replace(URL_KEY_PLACEHOLDER, "")
    if "{" in rest or "}" in rest:
        raise Problem(
            "url",
            f'the only placeholder is {URL_KEY_PLACEHOLDER} (the record\'s key), got "{value}"',
        )
    if http2 and url.scheme == "https":
        raise Problem("http2", "h2c is HTTP/2 without TLS: use an http:// url, or remove http2")
    return value


class SubscriptionConfig(ConfigModel):
    """One `[[subscriptions]]` entry, read by `freedom proxy` only: a topic and the URL its records are posted to."""

    topic: str = Field(description="The topic whose records are delivered (required).")
    url: str = Field(
        description=(
            'Where each record is POSTed (required), e.g. "http://orders:8080/events/{key}": `{key}` '
            "(in the path or the query, optional) is the record's event id (its key), percent-encoded. "
            "Any HTTP/1.1 service, or h2c with `http2`."
        )
    )
    group_id: str | None = Field(
        default=None,
        description=(
            "The `[[consumer_clients]]` entry (by its `group_id`) whose groups read the topic; not given: the first entry."
        ),
    )
    mode: str | None = Field(
        default=None, description="As the client's `mode`, for this subscription."
    )
    max_in_flight: int | None = Field(
        default=None, description="As the client's `max_in_flight`, for this subscription."
    )
    timeout_sec: float | None = Field(
        default=None,
        description=(
            "How long one delivery may take: the deadline sent as `x-freedom-timeout-ms` (a freedom "
            "service cancels its handler then), and 1 s later the delivery counts as failed; at most "
            "3600. Not given: the client's `delivery_timeout_sec` for the topic (30 s by default)."
        ),
    )
    http2: bool | None = Field(
        default=None,
        description=(
            "Deliver over HTTP/2 cleartext (h2c, needs the `http2` extra); not given: `[consumer] proxy_http2`."
        ),
    )
    secret: str | None = Field(
        default=None,
        repr=False,
        description=(
            "The shared secret sent as `x-freedom-secret` with every delivery (at least 16 printable ASCII "
            "characters); not given: `[consumer]`'s. Prefer `secret_env`."
        ),
    )
    secret_env: str | None = Field(
        default=None, description="The environment variable holding `secret`."
    )
    retry_count: int | None = Field(
        default=None, description="As the client's `retry_count`, for this subscription."
    )
    retry_interval_sec: float | None = Field(
        default=None, description=("As the client's `retry_interval_sec`, for this subscription.")
    )
    dead_letter_statuses: frozenset[int] | None = Field(
        default=None,
        description=(
            "As the client's `dead_letter_statuses`, for this subscription (replaces the client's list)."
        ),
    )
    rate_limit_per_sec: float | None = Field(
        default=None, description=RATE_LIMIT.replace("the topic", "the subscription")
    )
    max_concurrency: int | None = Field(
        default=None, description=MAX_CONCURRENCY.replace("the topic", "the subscription")
    )
    retry_after_max_sec: float | None = Field(
        default=None, description=("As the client's `retry_after_max_sec`, for this subscription.")
    )
    backpressure_max_sec: float | None = Field(
        default=None, description=("As the client's `backpressure_max_sec`, for this subscription.")
    )
    head_of_line_timeout_sec: float | None = Field(
        default=None,
        description=("As the client's `head_of_line_timeout_sec`, for this subscription."),
    )
    _secret: str | None = PrivateAttr(None)

    @field_validator("dead_letter_statuses", mode="before")
    @classmethod
    def _statuses(cls, value: Any) -> Any:
        return statuses(value)

    @model_validator(mode="after")
    def _check(self) -> SubscriptionConfig:
        if (
            not self.topic
            or len(self.topic) > 249
            or not set(self.topic) <= _TOPIC_CHARS
            or self.topic in (".", "..")
        ):
            raise Problem(
                "topic",
                f"must be a Kafka topic name (1 to 249 letters, digits, '.', '_', '-'), got {self.topic!r}",
            )
        self.url = _target_url(self.url, self.http2)
        check_consume(self.mode, self.max_in_flight)
        if self.timeout_sec is not None:
            self.timeout_sec = delivery_timeout("timeout_sec", self.timeout_sec)
        if self.retry_interval_sec is not None:
            self.retry_interval_sec = seconds(
                "retry_interval_sec", self.retry_interval_sec, zero_ok=True
            )
        check_retry_count(self.retry_count)
        check_pressure(self)
        self._secret = read_secret(Keys(self, ("secret", "secret_env"), Problem))
        return self

    @property
    def shared_secret(self) -> str | None:
        """The secret of `secret` or `secret_env` (None: not given, `[consumer]`'s applies)."""
        return self._secret
