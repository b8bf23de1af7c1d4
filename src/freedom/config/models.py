"""The keys of `app.toml` and `infra/kafka.toml` as Pydantic models: types, defaults, descriptions, checks.

The models are the one description of the configuration: :mod:`freedom.config.loading` validates the
files (with the environment's overrides, :mod:`freedom.config.env`) against them, and
:mod:`freedom.config.reference` writes docs/configuration.md from them.

A check that fails raises :class:`Problem` with the key it is about (relative to the model that
checks it); :mod:`freedom.config.loading` turns it, like Pydantic's own type errors, into one
:class:`~freedom.errors.ConfigError` line naming the file or the environment variable.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from freedom.wire.outcomes import DEAD_LETTER_STATUSES

#: The longest duration a `*_sec` key may give (~24.8 days): librdkafka holds durations as 32-bit
#: milliseconds (`message.timeout.ms`); one bound for every duration key, far below what would
#: overflow a timer or a pause time.
MAX_SECONDS = 2_147_483

#: The `log_level` values app.toml accepts (Python's logging levels).
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

#: The `log_format` values app.toml accepts (json_logs.py).
LOG_FORMATS = ("text", "json")

#: sequential: one record at a time per partition, in offset order.
#: concurrent: up to max_in_flight records of the topic at once, in any order.
#: key-ordered: like concurrent, but records with the same key one after the other, in order.
CONSUME_MODES = ("sequential", "concurrent", "key-ordered")

#: Keys whose value is a secret: shown as `***` by `freedom config`, never in an error message.
SECRET_FIELDS = frozenset({"secret", "sasl_password", "ssl_key_password", "console_token"})


class Problem(ValueError):
    """A value a check refuses: `key` (a path below the model that raised it) and what is wrong."""

    def __init__(self, key: str | tuple[str | int, ...], problem: str) -> None:
        super().__init__(problem)
        self.key: tuple[str | int, ...] = (key,) if isinstance(key, str) else key
        self.problem = problem


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


def _seconds(name: str, value: float, *, zero_ok: bool = False) -> float:
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


class _Model(BaseModel):
    # strict: "retry_count = true" or "3" is an error, not 1 or 3; extra: an unknown key is an error.
    model_config = ConfigDict(extra="forbid", strict=True, validate_default=False)


def check_console_path(value: str, error: Callable[[str], Exception]) -> str:
    """app.toml's `console_path`: an absolute URL path of letters, digits and `._~-/`, not "/" alone."""
    path = value.rstrip("/")
    bad = sorted({c for c in path if not (c.isascii() and (c.isalnum() or c in "._~-/"))})
    if not path.startswith("/") or "//" in path or bad or not path.strip("/"):
        raise error(
            f'must be a path like "/_freedom/console" (letters, digits and ._~-/), got "{value}"'
        )
    return path


# ----------------------------------------------------------------------------- app.toml


class AppModel(_Model):
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

    @model_validator(mode="after")
    def _check(self) -> AppModel:
        self.console_path = check_console_path(
            self.console_path, lambda p: Problem("console_path", p)
        )
        if self.console_token is not None:
            from freedom.web.guard import MIN_SECRET_LENGTH

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
        self.listen_addr = check_listen_addr(self.listen_addr, lambda p: Problem("listen_addr", p))
        if self.log_format not in LOG_FORMATS:
            raise Problem(
                "log_format", f'must be one of {", ".join(LOG_FORMATS)}, got "{self.log_format}"'
            )
        self.liveness_timeout_sec = _seconds("liveness_timeout_sec", self.liveness_timeout_sec)
        if self.log_level.upper() not in LOG_LEVELS:
            raise Problem(
                "log_level", f'must be one of {", ".join(LOG_LEVELS)}, got "{self.log_level}"'
            )
        self.log_level = self.log_level.upper()
        return self


# ----------------------------------------------------------------------------- kafka.toml


class _Keys:
    """The given keys of one model, as settings.py's `security_settings` and security.py's
    `read_secret` read them (the `KeySource` protocol); types are already checked."""

    def __init__(self, model: BaseModel, names: tuple[str, ...]) -> None:
        self.data: dict[str, Any] = {
            n: getattr(model, n) for n in names if getattr(model, n) is not None
        }

    def get(self, name: str, kind: type | tuple[type, ...], default: Any) -> Any:
        return self.data.pop(name, default)

    def error(self, name: str, problem: str) -> Exception:
        return Problem(name, problem)


class ConsumerSection(_Model):
    """`[consumer]`: the consumer proxy."""

    open: bool = Field(
        default=False, description="Run the consumer proxy (deliver records to the event routes)."
    )
    proxy_addr: str = Field(
        default="http://127.0.0.1:8000",
        description=(
            "The service's base URL, where records are posted; when not given it follows the listen "
            'address. `"inprocess"` calls the application directly, without HTTP.'
        ),
    )
    proxy_http2: bool = Field(
        default=False, description="Deliver over HTTP/2 cleartext (h2c); needs the `http2` extra."
    )
    secret: str | None = Field(
        default=None,
        description=(
            "The shared secret the proxy sends with every delivery (at least 16 printable ASCII "
            "characters); event routes answer 401 without it. Prefer `secret_env`."
        ),
    )
    secret_env: str | None = Field(
        default=None,
        description=(
            'The name of the environment variable holding the shared secret, e.g. "FREEDOM_PROXY_SECRET".'
        ),
    )
    _secret: str | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _check(self) -> ConsumerSection:
        self.proxy_addr = _proxy_addr(self.proxy_addr)
        if self.proxy_addr == "inprocess" and self.proxy_http2:
            raise Problem(
                "proxy_http2",
                'has no effect with proxy_addr = "inprocess" (no HTTP is involved); '
                "remove one of the two",
            )
        from freedom.web.guard import read_secret

        self._secret = read_secret(_Keys(self, ("secret", "secret_env")))
        return self


def _proxy_addr(value: str) -> str:
    """`[consumer] proxy_addr`: "inprocess", or an http(s) URL with a host and a valid port."""
    addr = value.rstrip("/")
    if (
        addr == "inprocess"
    ):  # the consumer proxy calls the application directly (transports/asgi.py)
        return addr
    try:
        url = urlsplit(addr)
        port = url.port  # raises ValueError for a port out of range or not a number
    except (
        ValueError
    ) as exc:  # "http://[::1:8000" (unclosed bracket), "http://h:99999", "http://h:abc"
        raise Problem("proxy_addr", f'is not a valid URL ({exc}): "{addr}"') from None
    if url.scheme not in ("http", "https"):
        raise Problem(
            "proxy_addr",
            f'must start with "http://" or "https://" (or be "inprocess" to call '
            f'the application directly), got "{addr}"',
        )
    if not url.hostname:
        raise Problem("proxy_addr", f'has no host: "{addr}"')
    if port == 0:
        raise Problem("proxy_addr", f'the port must be 1 to 65535: "{addr}"')
    if url.query or url.fragment or "?" in addr or "#" in addr:
        raise Problem("proxy_addr", f'must be a base URL without "?" or "#": "{addr}"')
    return addr


class ProducerSection(_Model):
    """`[producer]`: publishing."""

    open: bool = Field(
        default=False,
        description=(
            "Enable publishing. Without any `[[producer_clients]]` entry, one client on the embedded broker."
        ),
    )


_SECURITY = (
    "security_protocol",
    "sasl_mechanism",
    "sasl_username",
    "sasl_password",
    "sasl_password_env",
    "ssl_ca_location",
    "ssl_certificate_location",
    "ssl_key_location",
    "ssl_key_password",
    "ssl_key_password_env",
    "ssl_check_hostname",
)


class _Client(_Model):
    """The keys every client entry has: its brokers, TLS/SASL, and librdkafka properties."""

    servers: list[str] | None = Field(
        default=None,
        description=(
            'Broker addresses, "host:port" (":9092" is 127.0.0.1:9092); in the environment, comma-separated. '
            "Not given: the embedded broker. An empty list is an error."
        ),
    )
    security_protocol: str | None = Field(
        default=None, description="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL."
    )
    sasl_mechanism: str | None = Field(
        default=None, description="PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, GSSAPI or OAUTHBEARER."
    )
    sasl_username: str | None = Field(default=None, description="The SASL user name.")
    sasl_password: str | None = Field(
        default=None, description="The SASL password (secret). Prefer `sasl_password_env`."
    )
    sasl_password_env: str | None = Field(
        default=None, description="The environment variable holding the SASL password."
    )
    ssl_ca_location: str | None = Field(
        default=None, description="The CA certificate file (PEM) to verify the brokers."
    )
    ssl_certificate_location: str | None = Field(
        default=None, description="The client certificate file (PEM), for mutual TLS."
    )
    ssl_key_location: str | None = Field(
        default=None, description="The client private key file (PEM), for mutual TLS."
    )
    ssl_key_password: str | None = Field(
        default=None,
        description="The private key's password (secret). Prefer `ssl_key_password_env`.",
    )
    ssl_key_password_env: str | None = Field(
        default=None, description="The environment variable holding the private key's password."
    )
    ssl_check_hostname: bool | None = Field(
        default=None,
        description="Verify the broker's host name against its certificate (librdkafka's default: yes).",
    )
    settings: dict[str, Any] = Field(
        default_factory=dict,
        description=(
            'librdkafka properties passed as they are, e.g. `settings = { "linger.ms" = 5 }` (quote dotted '
            "names); checked at start-up; the properties freedom's guarantees depend on are refused."
        ),
    )
    _librdkafka: dict[str, Any] = PrivateAttr(default_factory=dict)  # settings + the TLS/SASL keys

    def _check_servers(self) -> None:
        if self.servers is None:
            return
        if not self.servers:
            raise Problem(
                "servers",
                'is empty: list at least one broker address, like ["127.0.0.1:9092"], '
                "or remove the key to use the embedded broker",
            )
        out = []
        for s in self.servers:
            if not s.strip():
                raise Problem("servers", f'each entry must be a "host:port" string, got {s!r}')
            host, sep, port = s.strip().rpartition(":")
            if (
                not sep
                or not port.isascii()
                or not port.isdigit()
                or any(c in host for c in ", \t")
            ):
                raise Problem("servers", f'"{s}" is not a "host:port" address')
            if not is_port(port):
                raise Problem("servers", f'"{s}": the port must be 1 to 65535')
            out.append(
                f"{host or '127.0.0.1'}:{port}"
            )  # the seed writes ":9092" for the local broker
        self.servers = out

    def _check_settings(self, role: Literal["producer", "consumer"], base: dict[str, Any]) -> None:
        """`settings` (librdkafka properties) plus the TLS/SASL keys, checked before any client starts.

        A property freedom's guarantees depend on is refused with the reason, and each of the others
        must be one librdkafka knows, with a value it takes (a client is built from them, on top of
        `base`, freedom's own settings for the role, without connecting). Combinations are judged
        when the client is made, after the setting_config hooks.
        """
        from freedom.kafka.settings import invalid_setting, refused_setting, security_settings

        for k, v in self.settings.items():
            if isinstance(
                v, dict
            ):  # settings = { linger.ms = 5 }: TOML reads the bare dotted key as a table
                raise Problem(
                    ("settings", k),
                    "must be a string, number or boolean, got a table "
                    f'(quote a dotted property name: "{k}.{next(iter(v), "")}" = ...)',
                )
            if not isinstance(v, (str, int, float, bool)):
                raise Problem(
                    ("settings", k), f"must be a string, number or boolean, got {type_name(v)}"
                )
            if isinstance(v, float) and not math.isfinite(v):
                raise Problem(("settings", k), f"must be a finite number, got {v}")
            reason = refused_setting(k, v, role)
            if reason:
                raise Problem(("settings", k), reason)
        settings = {**self.settings, **security_settings(_Keys(self, _SECURITY))}
        problem = invalid_setting(settings, role, base)
        if problem is not None:
            key, reason = problem
            raise Problem(("settings", key), reason)
        self._librdkafka = settings


class ProducerClient(_Client):
    """One `[[producer_clients]]` entry: a cluster messages can be published to."""

    name: str = Field(
        default="",
        description=(
            "The name `Msg.select_client(name)` picks; unique. The unnamed (else the first) client is the default."
        ),
    )
    delivery_timeout_sec: float = Field(
        default=30.0,
        description=(
            "How long `publish()` may take before it raises (at least 0.001, at most 2147483)."
        ),
    )

    @model_validator(mode="after")
    def _check(self) -> ProducerClient:
        self._check_servers()
        timeout = _seconds("delivery_timeout_sec", self.delivery_timeout_sec)
        if timeout < 0.001:  # librdkafka's message.timeout.ms = 0 means "forever"
            raise Problem("delivery_timeout_sec", f"must be at least 0.001 (1 ms), got {timeout}")
        self.delivery_timeout_sec = timeout
        from freedom.kafka.producer import PRODUCER_DEFAULTS

        self._check_settings(
            "producer", {**PRODUCER_DEFAULTS, "message.timeout.ms": int(timeout * 1000)}
        )
        return self


_RATE_LIMIT = (
    "At most this many deliveries of the topic start per second, evenly spaced, per process "
    "(docs/consumer-proxy.md#backpressure). Not given: no limit."
)
_MAX_CONCURRENCY = (
    "At most this many deliveries of the topic waiting for their answer at once, per process, across "
    "its partitions and retries (in addition to `max_in_flight`). Not given: no limit."
)
_RETRY_AFTER_MAX = (
    "The longest pause one `429`/`503` answer's `Retry-After` causes (longer ones are cut to it; "
    "the shortest is 1 s)."
)
_BACKPRESSURE_MAX = (
    "How long `Retry-After` pauses may hold one record back in all before its `429`/`503` counts "
    "as a failed attempt (retried or dead-lettered as usual). 0: `Retry-After` is not read."
)
_HEAD_OF_LINE = (
    "The head-of-line guard: a record not settled this long after its first delivery started "
    "(redeliveries in place and `Retry-After` pauses included) has its delivery cancelled and goes "
    "to its retry topic, or with `retry_count = 0` to its dead-letter topic, so that its "
    "partition's commit can pass it. Not given: off."
)
#: The highest rate_limit_per_sec accepted (a delivery per microsecond).
MAX_RATE_PER_SEC = 1_000_000


def _check_pressure(m: Any) -> None:
    """The backpressure and head-of-line keys of a consumer client, a topic table or a subscription
    (those it has; None: not given)."""
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
    for name in ("retry_after_max_sec", "backpressure_max_sec", "head_of_line_timeout_sec"):
        value = getattr(m, name, None)
        if value is not None:
            setattr(m, name, _seconds(name, value, zero_ok=name == "backpressure_max_sec"))


class TopicOverride(_Model):
    """`[consumer_clients.topics."T"]`: how the records of topic T are delivered (the client's by default)."""

    mode: str | None = Field(default=None, description="As the client's `mode`, for this topic.")
    max_in_flight: int | None = Field(
        default=None, description="As the client's `max_in_flight`, for this topic."
    )
    dead_letter_statuses: list[int] | None = Field(
        default=None,
        description=(
            "As the client's `dead_letter_statuses`, for this topic (replaces the client's list)."
        ),
    )
    rate_limit_per_sec: float | None = Field(default=None, description=_RATE_LIMIT)
    max_concurrency: int | None = Field(default=None, description=_MAX_CONCURRENCY)
    retry_after_max_sec: float | None = Field(
        default=None, description="As the client's `retry_after_max_sec`, for this topic."
    )
    backpressure_max_sec: float | None = Field(
        default=None, description="As the client's `backpressure_max_sec`, for this topic."
    )
    head_of_line_timeout_sec: float | None = Field(
        default=None, description=("As the client's `head_of_line_timeout_sec`, for this topic.")
    )

    @field_validator("dead_letter_statuses", mode="before")
    @classmethod
    def _statuses(cls, value: Any) -> Any:
        return _status_list(value)

    @model_validator(mode="after")
    def _check(self) -> TopicOverride:
        _check_consume(self.mode, self.max_in_flight)
        _check_statuses(self.dead_letter_statuses)
        _check_pressure(self)
        return self


def _status_list(value: Any) -> Any:
    """Statuses written as text (an environment variable, `"422"`) as integers; the rest is checked strictly."""
    if isinstance(value, list):
        return [
            int(v) if isinstance(v, str) and v.strip().isascii() and v.strip().isdigit() else v
            for v in value
        ]
    return value


def _check_statuses(statuses: list[int] | None) -> None:
    for i, status in enumerate(statuses or ()):
        if not 400 <= status <= 599:
            raise Problem(
                ("dead_letter_statuses", i),
                f"must be an HTTP failure status, 400 to 599, got {status}",
            )


def _check_consume(mode: str | None, bound: int | None) -> None:
    if mode is not None and mode not in CONSUME_MODES:
        raise Problem(
            "mode", f'must be one of {", ".join(repr(m) for m in CONSUME_MODES)}, got "{mode}"'
        )
    if bound is not None and bound < 1:
        raise Problem("max_in_flight", f"must be 1 or more, got {bound}")


def _check_prefix(name: str, prefix: str) -> None:
    bad = sorted({c for c in prefix if not (c.isascii() and (c.isalnum() or c in "._-"))})
    if bad:
        raise Problem(
            name,
            f"has characters Kafka topic names do not allow ({''.join(bad)!r}); "
            "use letters, digits, '.', '_' and '-'",
        )


class ConsumerClient(_Client):
    """One `[[consumer_clients]]` entry: a cluster and consumer group the proxy reads from."""

    group_id: str = Field(
        default="freedom", description="The consumer group; unique among the consumer clients."
    )
    initial_offset: str = Field(
        default="latest", description='Where a new group starts: "latest" or "earliest".'
    )
    retry_count: int = Field(
        default=0,
        description=(
            "Retries of a record whose delivery fails (0: none; the record goes to the dead-letter topic)."
        ),
    )
    retry_group_id: str = Field(
        default="retry_freedom",
        description="The consumer group of the retry topics; differs from group_id.",
    )
    retry_prefix: str = Field(
        default="retry-", description="Retry topic of topic T: `{retry_prefix}T`."
    )
    retry_interval_sec: float = Field(
        default=45.0,
        description="How long a record waits on the retry topic before its next delivery.",
    )
    retry_fail_prefix: str = Field(
        default="fail-", description="Dead-letter topic of topic T: `{retry_fail_prefix}T`."
    )
    mode: str = Field(
        default="sequential",
        description=(
            '"sequential" (one record at a time per partition), "concurrent" (up to max_in_flight at once) '
            'or "key-ordered" (concurrent, records with the same key in order).'
        ),
    )
    max_in_flight: int = Field(
        default=500, description="Records of one topic delivered at once (concurrent, key-ordered)."
    )
    drain_timeout_sec: float = Field(
        default=10.0,
        description=("At a rebalance or stop: how long in-flight deliveries may finish."),
    )
    dead_letter_statuses: list[int] = Field(
        default=list(DEAD_LETTER_STATUSES),
        description=(
            "The answer statuses that send a record to the dead-letter topic at once, without retries: "
            "the request can never succeed as it is (422: the body failed validation). The default is "
            "Knative's rule: 4xx, except 401, 403, 404, 405, 408, 409, 423, 424, 425 and 429, which are "
            "retried like 5xx (docs/typed-events.md). `[]`: every failure is retried."
        ),
    )
    retry_after_max_sec: float = Field(default=60.0, description=_RETRY_AFTER_MAX)
    backpressure_max_sec: float = Field(default=300.0, description=_BACKPRESSURE_MAX)
    head_of_line_timeout_sec: float | None = Field(default=None, description=_HEAD_OF_LINE)
    topics: dict[str, TopicOverride] = Field(
        default_factory=dict,
        description=(
            '`[consumer_clients.topics."T"]`: `mode`, `max_in_flight`, `dead_letter_statuses`, '
            "`rate_limit_per_sec`, `max_concurrency`, `retry_after_max_sec`, `backpressure_max_sec` and "
            "`head_of_line_timeout_sec` of topic T (a topic some event listens to)."
        ),
    )

    @field_validator("dead_letter_statuses", mode="before")
    @classmethod
    def _statuses(cls, value: Any) -> Any:
        return _status_list(value)

    @model_validator(mode="after")
    def _check(self) -> ConsumerClient:
        self._check_servers()
        self.retry_interval_sec = _seconds(
            "retry_interval_sec", self.retry_interval_sec, zero_ok=True
        )
        from freedom.kafka.consumer.group import CONSUMER_DEFAULTS

        self._check_settings("consumer", {**CONSUMER_DEFAULTS, "group.id": "freedom-config-check"})
        _check_consume(self.mode, self.max_in_flight)
        _check_statuses(self.dead_letter_statuses)
        self.drain_timeout_sec = _seconds("drain_timeout_sec", self.drain_timeout_sec)
        _check_prefix("retry_prefix", self.retry_prefix)
        _check_prefix("retry_fail_prefix", self.retry_fail_prefix)
        retries = self.retry_count > 0
        if retries and not self.retry_fail_prefix:
            raise Problem(
                "retry_fail_prefix",
                "must not be empty when retry_count > 0 "
                "(records that fail every retry go to the dead-letter topic)",
            )
        if retries and self.retry_prefix == self.retry_fail_prefix:
            raise Problem("retry_fail_prefix", "must differ from retry_prefix")
        if not self.group_id:
            raise Problem("group_id", "must not be empty")
        if self.retry_count < 0:
            raise Problem("retry_count", "must be 0 (no retries) or more")
        if self.initial_offset not in ("latest", "earliest"):
            raise Problem(
                "initial_offset", f'must be "latest" or "earliest", got "{self.initial_offset}"'
            )
        if retries and not self.retry_prefix:
            raise Problem("retry_prefix", "must not be empty when retry_count > 0")
        if retries and not self.retry_group_id:
            raise Problem("retry_group_id", "must not be empty when retry_count > 0")
        if retries and self.retry_group_id == self.group_id:
            raise Problem("retry_group_id", "must differ from group_id")
        _check_pressure(self)
        guarded = [
            (("head_of_line_timeout_sec",), self.head_of_line_timeout_sec),
            *(
                (("topics", t, "head_of_line_timeout_sec"), o.head_of_line_timeout_sec)
                for t, o in self.topics.items()
            ),
        ]
        for key, guard in guarded:
            if guard is not None and not retries and not self.retry_fail_prefix:
                raise Problem(
                    key,
                    "the guard moves a stuck record to its retry or dead-letter topic: give "
                    "retry_count > 0 or a retry_fail_prefix, or remove it",
                )
        return self


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


class Subscription(_Model):
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
    timeout_sec: float = Field(
        default=30.0, description="How long one delivery may take before it counts as failed."
    )
    http2: bool | None = Field(
        default=None,
        description=(
            "Deliver over HTTP/2 cleartext (h2c, needs the `http2` extra); not given: `[consumer] proxy_http2`."
        ),
    )
    secret: str | None = Field(
        default=None,
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
    dead_letter_statuses: list[int] | None = Field(
        default=None,
        description=(
            "As the client's `dead_letter_statuses`, for this subscription (replaces the client's list)."
        ),
    )
    rate_limit_per_sec: float | None = Field(
        default=None, description=_RATE_LIMIT.replace("the topic", "the subscription")
    )
    max_concurrency: int | None = Field(
        default=None, description=_MAX_CONCURRENCY.replace("the topic", "the subscription")
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
        return _status_list(value)

    @model_validator(mode="after")
    def _check(self) -> Subscription:
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
        _check_consume(self.mode, self.max_in_flight)
        _check_statuses(self.dead_letter_statuses)
        self.timeout_sec = _seconds("timeout_sec", self.timeout_sec)
        if self.retry_interval_sec is not None:
            self.retry_interval_sec = _seconds(
                "retry_interval_sec", self.retry_interval_sec, zero_ok=True
            )
        if self.retry_count is not None and self.retry_count < 0:
            raise Problem("retry_count", "must be 0 (no retries) or more")
        _check_pressure(self)
        from freedom.web.guard import read_secret

        self._secret = read_secret(_Keys(self, ("secret", "secret_env")))
        return self


class KafkaModel(_Model):
    """`conf/infra/kafka.toml`: the seed's keys plus a few documented additions."""

    consumer: ConsumerSection = Field(
        default_factory=ConsumerSection, description="The consumer proxy."
    )
    producer: ProducerSection = Field(default_factory=ProducerSection, description="Publishing.")
    producer_clients: list[ProducerClient] = Field(
        default_factory=list, description="The clusters to publish to."
    )
    consumer_clients: list[ConsumerClient] = Field(
        default_factory=list, description="The clusters and groups to consume from."
    )
    subscriptions: list[Subscription] = Field(
        default_factory=list,
        description=(
            "`freedom proxy` only: the topics it delivers and where to (docs/standalone-proxy.md)."
        ),
    )

    @model_validator(mode="after")
    def _check(self) -> KafkaModel:
        names: set[str] = set()
        for i, p in enumerate(self.producer_clients):
            if p.name in names:
                raise Problem(
                    ("producer_clients", i, "name"),
                    f'"{p.name}" is used by two producer clients; names must be unique',
                )
            names.add(p.name)
        groups: set[str] = set()
        for i, c in enumerate(self.consumer_clients):
            if c.group_id in groups:
                raise Problem(
                    ("consumer_clients", i, "group_id"),
                    f'"{c.group_id}" is used by two consumer clients',
                )
            groups.add(c.group_id)
        subscribed: set[tuple[str, str]] = set()
        for i, s in enumerate(self.subscriptions):
            if s.group_id is not None and s.group_id not in groups:
                known = ", ".join(f'"{g}"' for g in sorted(groups)) or "none"
                raise Problem(
                    ("subscriptions", i, "group_id"),
                    f'"{s.group_id}" is not the group_id of a [[consumer_clients]] entry (they are: {known})',
                )
            group = (
                s.group_id
                if s.group_id is not None
                else (self.consumer_clients[0].group_id if self.consumer_clients else "")
            )
            if (group, s.topic) in subscribed:
                raise Problem(
                    ("subscriptions", i, "topic"),
                    f'"{s.topic}" is subscribed twice by the group "{group}"',
                )
            subscribed.add((group, s.topic))
        return self


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


__all__ = [
    "AppModel",
    "KafkaModel",
    "ConsumerSection",
    "ProducerSection",
    "ProducerClient",
    "ConsumerClient",
    "TopicOverride",
    "Subscription",
    "URL_KEY_PLACEHOLDER",
    "Problem",
    "check_seconds",
    "MAX_SECONDS",
    "LOG_LEVELS",
    "CONSUME_MODES",
]
