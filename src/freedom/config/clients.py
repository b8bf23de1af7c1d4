"""kafka.toml's client entries: `[[producer_clients]]`, `[[consumer_clients]]` and their
`[consumer_clients.topics."T"]` tables, as Pydantic models (types, defaults, descriptions,
checks); the validated models are the configuration the Kafka side reads.

Derived values are the models' own: a client's librdkafka properties with its TLS/SASL keys
(:attr:`ClientConfig.librdkafka_settings`), and how a topic's records are delivered, its table's
keys or else its client's (:meth:`ConsumerClientConfig.consume_config`).
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field, PrivateAttr, field_validator, model_validator

from freedom.config.librdkafka import (
    CONSUMER_DEFAULTS,
    PRODUCER_DEFAULTS,
    invalid_setting,
    refused_setting,
    security_settings,
)
from freedom.config.rules import (
    BACKPRESSURE_MAX,
    DELIVERY_TIMEOUT,
    HEAD_OF_LINE,
    MAX_CONCURRENCY,
    RATE_LIMIT,
    RETRY_AFTER_MAX,
    ConfigModel,
    Problem,
    check_consume,
    check_prefix,
    check_pressure,
    check_retry_count,
    inherited,
    is_port,
    seconds,
    statuses,
    to_tuple,
    type_name,
)
from freedom.config.secret import Keys
from freedom.wire.outcomes import DEAD_LETTER_STATUSES

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


class ClientConfig(ConfigModel):
    """The keys every client entry has: its brokers, TLS/SASL, and librdkafka properties."""

    servers: tuple[str, ...] | None = Field(
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
        default=None,
        repr=False,
        description="The SASL password (secret). Prefer `sasl_password_env`.",
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
        repr=False,
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
        repr=False,  # may hold secrets
        description=(
            'librdkafka properties passed as they are, e.g. `settings = { "linger.ms" = 5 }` (quote dotted '
            "names); checked at start-up; the properties freedom's guarantees depend on are refused."
        ),
    )
    _librdkafka: dict[str, Any] = PrivateAttr(default_factory=dict)  # settings + the TLS/SASL keys

    @field_validator("servers", mode="before")
    @classmethod
    def _servers(cls, value: Any) -> Any:
        return to_tuple(value)

    @property
    def librdkafka_settings(self) -> dict[str, Any]:
        """The client's librdkafka properties: `settings` with the TLS/SASL keys as properties
        (secrets resolved, so never logged: see freedom.config.librdkafka.redact)."""
        return self._librdkafka

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
        self.servers = tuple(out)

    def _check_settings(self, role: Literal["producer", "consumer"], base: dict[str, Any]) -> None:
        """`settings` (librdkafka properties) plus the TLS/SASL keys, checked before any client starts.

        A property freedom's guarantees depend on is refused with the reason, and each of the others
        must be one librdkafka knows, with a value it takes (a client is built from them, on top of
        `base`, freedom's own settings for the role, without connecting). Combinations are judged
        when the client is made, after the setting_config hooks.
        """
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
        settings = {**self.settings, **security_settings(Keys(self, _SECURITY, Problem))}
        problem = invalid_setting(settings, role, base)
        if problem is not None:
            key, reason = problem
            raise Problem(("settings", key), reason)
        self._librdkafka = settings


class ProducerClientConfig(ClientConfig):
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
    def _check(self) -> ProducerClientConfig:
        self._check_servers()
        timeout = seconds("delivery_timeout_sec", self.delivery_timeout_sec)
        if timeout < 0.001:  # librdkafka's message.timeout.ms = 0 means "forever"
            raise Problem("delivery_timeout_sec", f"must be at least 0.001 (1 ms), got {timeout}")
        self.delivery_timeout_sec = timeout
        self._check_settings(
            "producer", {**PRODUCER_DEFAULTS, "message.timeout.ms": int(timeout * 1000)}
        )
        return self


class TopicConsumeConfig(ConfigModel):
    """`[consumer_clients.topics."T"]`: how the records of topic T are delivered (the client's by default)."""

    mode: str = inherited("sequential", "As the client's `mode`, for this topic.")
    max_in_flight: int = inherited(500, "As the client's `max_in_flight`, for this topic.")
    delivery_timeout_sec: float = inherited(
        30.0, "As the client's `delivery_timeout_sec`, for this topic."
    )
    dead_letter_statuses: frozenset[int] = inherited(
        frozenset(DEAD_LETTER_STATUSES),
        "As the client's `dead_letter_statuses`, for this topic (replaces the client's list).",
    )
    rate_limit_per_sec: float | None = Field(default=None, description=RATE_LIMIT)
    max_concurrency: int | None = Field(default=None, description=MAX_CONCURRENCY)
    retry_after_max_sec: float = inherited(
        60.0, "As the client's `retry_after_max_sec`, for this topic."
    )
    backpressure_max_sec: float = inherited(
        300.0, "As the client's `backpressure_max_sec`, for this topic."
    )
    head_of_line_timeout_sec: float | None = inherited(
        None, "As the client's `head_of_line_timeout_sec`, for this topic."
    )
    #: The keys the table gives; the others are its client's (filled in by the client's check).
    _given: frozenset[str] = PrivateAttr(frozenset())

    @field_validator("dead_letter_statuses", mode="before")
    @classmethod
    def _statuses(cls, value: Any) -> Any:
        return statuses(value)

    @model_validator(mode="after")
    def _check(self) -> TopicConsumeConfig:
        self._given = frozenset(self.model_fields_set)
        check_consume(self.mode, self.max_in_flight)
        check_pressure(self)
        return self

    @property
    def given(self) -> frozenset[str]:
        """The keys the table gives (the others are its client's)."""
        return self._given


#: The keys of a topic table that are, when not given, its client's.
_INHERITED = tuple(
    name
    for name, info in TopicConsumeConfig.model_fields.items()
    if isinstance(info.json_schema_extra, dict) and info.json_schema_extra.get("inherited")
)


class ConsumerClientConfig(ClientConfig):
    """One `[[consumer_clients]]` entry: a cluster and consumer group the proxy reads from."""

    group_id: str = Field(
        default="freedom", description="The consumer group; unique among the consumer clients."
    )
    share_group: bool = Field(
        default=False,
        description=(
            "Read as a Kafka share group (Apache Kafka 4.2 or later, docs/share-groups.md): "
            "`group_id` names the share group, members share partitions, each record is "
            'acknowledged on its own, in no order; `mode` is "concurrent".'
        ),
    )
    initial_offset: str = Field(
        default="latest",
        description=(
            'Where a new group starts: "latest" or "earliest" (a share group\'s '
            '`share.auto.offset.reset`, "earliest" when not given).'
        ),
    )
    retry_count: int = Field(
        default=0,
        description=(
            "Retries through the retry topic of a record whose delivery fails, at most 100; then "
            "the record goes to the dead-letter topic. 0: no retry topic; a failed record is "
            "delivered again in place with backoff, holding its partition."
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
        default=500,
        description="Records of one topic delivered at once (concurrent, key-ordered); at most 100000.",
    )
    delivery_timeout_sec: float = Field(default=30.0, description=DELIVERY_TIMEOUT)
    drain_timeout_sec: float = Field(
        default=10.0,
        description=("At a rebalance or stop: how long in-flight deliveries may finish."),
    )
    dead_letter_statuses: frozenset[int] = Field(
        default=frozenset(DEAD_LETTER_STATUSES),
        description=(
            "The answer statuses that send a record to the dead-letter topic at once, without retries: "
            "the request can never succeed as it is (422: the body failed validation). The default is "
            "Knative's rule: 4xx, except 401, 403, 404, 405, 408, 409, 423, 424, 425 and 429, which are "
            "retried like 5xx (docs/typed-events.md). `[]`: every failure is retried."
        ),
    )
    retry_after_max_sec: float = Field(default=60.0, description=RETRY_AFTER_MAX)
    backpressure_max_sec: float = Field(default=300.0, description=BACKPRESSURE_MAX)
    head_of_line_timeout_sec: float | None = Field(default=None, description=HEAD_OF_LINE)
    topics: dict[str, TopicConsumeConfig] = Field(
        default_factory=dict,
        description=(
            '`[consumer_clients.topics."T"]`: `mode`, `max_in_flight`, `delivery_timeout_sec`, '
            "`dead_letter_statuses`, `rate_limit_per_sec`, `max_concurrency`, `retry_after_max_sec`, "
            "`backpressure_max_sec` and `head_of_line_timeout_sec` of topic T (a topic some event "
            "listens to)."
        ),
    )

    @field_validator("dead_letter_statuses", mode="before")
    @classmethod
    def _statuses(cls, value: Any) -> Any:
        return statuses(value)

    @model_validator(mode="after")
    def _check(self) -> ConsumerClientConfig:
        self._check_servers()
        self.retry_interval_sec = seconds(
            "retry_interval_sec", self.retry_interval_sec, zero_ok=True
        )
        self._check_settings("consumer", {**CONSUMER_DEFAULTS, "group.id": "freedom-config-check"})
        check_consume(self.mode, self.max_in_flight)
        self.drain_timeout_sec = seconds("drain_timeout_sec", self.drain_timeout_sec)
        check_prefix("retry_prefix", self.retry_prefix)
        check_prefix("retry_fail_prefix", self.retry_fail_prefix)
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
        check_retry_count(self.retry_count)
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
        check_pressure(self)
        if self.share_group:
            self._check_share()
        guarded = [
            (("head_of_line_timeout_sec",), self.head_of_line_timeout_sec),
            *(
                (("topics", t, "head_of_line_timeout_sec"), o.head_of_line_timeout_sec)
                for t, o in self.topics.items()
                if "head_of_line_timeout_sec" in o.given
            ),
        ]
        for key, guard in guarded:
            if guard is not None and not retries and not self.retry_fail_prefix:
                raise Problem(
                    key,
                    "the guard moves a stuck record to its retry or dead-letter topic: give "
                    "retry_count > 0 or a retry_fail_prefix, or remove it",
                )
        for topic in self.topics.values():  # what a topic table leaves out is the client's
            for name in _INHERITED:
                if name not in topic.given:
                    setattr(topic, name, getattr(self, name))
        return self

    def _check_share(self) -> None:
        """A share group hands each record to whichever member acquires it, in no order: its mode
        is concurrent (the default here); a new group starts at the earliest record unless told."""
        unordered = (
            "a share group delivers records in no order (each to the member that acquires it): "
            'use "concurrent" or leave mode out, or use a classic group (share_group = false), got "{}"'
        )
        if "mode" in self.model_fields_set and self.mode != "concurrent":
            raise Problem("mode", unordered.format(self.mode))
        self.mode = "concurrent"
        for name, topic in self.topics.items():
            if "mode" in topic.given and topic.mode != "concurrent":
                raise Problem(("topics", name, "mode"), unordered.format(topic.mode))
        if "initial_offset" not in self.model_fields_set:
            self.initial_offset = "earliest"
        if self.retry_count == 0 and not self.retry_fail_prefix:
            raise Problem(
                "retry_fail_prefix",
                "a share group needs a dead-letter topic (or retry_count > 0): the broker "
                "archives a record it has handed out share.delivery.count.limit times",
            )

    def consume_config(self, topic: str) -> TopicConsumeConfig:
        """How `topic` is delivered: its `[consumer_clients.topics."T"]` table (what it leaves out
        filled in with the client's keys), else the client's keys."""
        found = self.topics.get(topic)
        if found is not None:
            return found
        return TopicConsumeConfig.model_construct(
            **{name: getattr(self, name) for name in _INHERITED}
        )
