"""`conf/app.toml`: the model of its keys (types, defaults, descriptions, checks), which is also
the configuration the service reads (`app.config`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import Field, PrivateAttr, model_validator

from freedom.config.rules import ConfigModel, Problem, check_listen_addr, seconds
from freedom.config.secret import MIN_SECRET_LENGTH

#: The `log_level` values app.toml accepts (Python's logging levels).
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

#: The `log_format` values app.toml accepts (json_logs.py).
LOG_FORMATS = ("text", "json")


@dataclass(frozen=True)
class ConfigEntry:
    """One key of the effective configuration, as `freedom config` shows it (secrets already `***`)."""

    key: str  # "listen_addr", "consumer_clients[0].settings.linger.ms"
    value: Any
    source: str  # "default", a file path, or an environment variable's name
    env: str  # the environment variable that sets it


def check_console_path(value: str, error: Callable[[str], Exception]) -> str:
    """app.toml's `console_path`: an absolute URL path of letters, digits and `._~-/`, not "/" alone."""
    path = value.rstrip("/")
    bad = sorted({c for c in path if not (c.isascii() and (c.isalnum() or c in "._~-/"))})
    if not path.startswith("/") or "//" in path or bad or not path.strip("/"):
        raise error(
            f'must be a path like "/_freedom/console" (letters, digits and ._~-/), got "{value}"'
        )
    return path


class AppConfig(ConfigModel):
    """`conf/app.toml`: where the service listens and what it is called."""

    listen_addr: str = Field(
        default="127.0.0.1:8000",
        description=(
            'Where the HTTP server listens, "host:port" (":8000": every interface). '
            "`freedom run --listen` overrides it."
        ),
    )
    service_name: str = Field(default="freedom", description="The service's name.")
    log_level: str = Field(
        default="INFO",
        description=(
            "DEBUG, INFO, WARNING, ERROR or CRITICAL (any case). The Kafka client's own messages come "
            "through the `freedom.kafka.librdkafka` logger."
        ),
    )
    log_format: str = Field(
        default="text",
        description=(
            '"text" (one line per record) or "json" (one JSON object per line, with the trace id, and '
            "topic, partition, offset and outcome on the consumer proxy's lines: docs/observability.md)."
        ),
    )
    error_detail: bool = Field(
        default=True,
        description=(
            "When an event handler raises, its route answers 500 naming the exception's type and "
            "message (`ValueError: amount must be positive`), which the consumer proxy writes into "
            "`x-freedom-error` of the retry and dead-letter records and into its log lines. `false`: "
            "the type alone (`ValueError`), for services whose exception messages may hold personal "
            "data; the traceback the service logs still has the message (docs/consumer-proxy.md)."
        ),
    )
    liveness_timeout_sec: float = Field(
        default=60.0,
        description=(
            "`/livez` answers 503 when the consumer thread or the event loop has made no progress for "
            "this long. Keep it above `drain_timeout_sec` + 25 s: a rebalance may hold the consumer "
            "thread that long."
        ),
    )
    console_token: str | None = Field(
        default=None,
        repr=False,
        description=(
            "Turns the web console on (docs/console.md): the token an operator logs in with, or sends as "
            "`Authorization: Bearer <token>` (at least 16 printable ASCII characters; a secret: prefer "
            "the environment variable). Not set: the console is off (its paths answer 404)."
        ),
    )
    console_path: str = Field(
        default="/_freedom/console",
        description=('Where the web console is served, a path like "/_freedom/console".'),
    )
    console_token_label: str = Field(
        default="console",
        description=(
            "Who the console token stands for, in the audit line of a replay started from the web "
            'console (`dlq replay by console token "<label>" ...`), where the commands name the '
            'login name: a team or a person, e.g. "oncall-payments" (1 to 64 printable characters, '
            "no spaces around)."
        ),
    )
    #: Where listen_addr came from, for the error when it cannot be bound (set by the loader).
    _listen_from: tuple[str, str | None] = PrivateAttr(("app.toml", "listen_addr"))
    #: Every key with its value and source (set by the loader).
    _entries: tuple[ConfigEntry, ...] = PrivateAttr(())

    @model_validator(mode="after")
    def _check(self) -> AppConfig:
        self.console_path = check_console_path(
            self.console_path, lambda p: Problem("console_path", p)
        )
        if self.console_token is not None:
            token = self.console_token
            if (
                len(token) < MIN_SECRET_LENGTH
                or not token.isascii()
                or not token.isprintable()
                or token != token.strip()
            ):
                raise Problem(
                    "console_token",
                    f"must be at least {MIN_SECRET_LENGTH} printable ASCII characters "
                    "without spaces around; make one with: "
                    "python -c 'import secrets; print(secrets.token_urlsafe(32))'",
                )
        label = self.console_token_label
        if not 1 <= len(label) <= 64 or not label.isprintable() or label != label.strip():
            raise Problem(
                "console_token_label",
                f"must be 1 to 64 printable characters without spaces around, got {label!r}",
            )
        self.listen_addr = check_listen_addr(self.listen_addr, lambda p: Problem("listen_addr", p))
        if self.log_format not in LOG_FORMATS:
            raise Problem(
                "log_format", f'must be one of {", ".join(LOG_FORMATS)}, got "{self.log_format}"'
            )
        self.liveness_timeout_sec = seconds("liveness_timeout_sec", self.liveness_timeout_sec)
        if self.log_level.upper() not in LOG_LEVELS:
            raise Problem(
                "log_level", f'must be one of {", ".join(LOG_LEVELS)}, got "{self.log_level}"'
            )
        self.log_level = self.log_level.upper()
        return self

    @property
    def host(self) -> str:
        return self.listen_addr.rpartition(":")[0] or "127.0.0.1"

    @property
    def port(self) -> int:
        return int(self.listen_addr.rpartition(":")[2])

    @property
    def listen_from(self) -> tuple[str, str | None]:
        """Where listen_addr came from, (file, key), for the error when it cannot be bound; for an
        environment variable ("environment FREEDOM_APP__LISTEN_ADDR", None)."""
        return self._listen_from

    @property
    def entries(self) -> tuple[ConfigEntry, ...]:
        """Every key with its value and source (`freedom config`), secrets masked."""
        return self._entries

    def listening_as(self, listen_from: tuple[str, str | None]) -> AppConfig:
        """A copy whose `listen_from` is `listen_from` (`freedom proxy --listen`, say)."""
        copy = self.model_copy()
        copy._listen_from = listen_from
        return copy
