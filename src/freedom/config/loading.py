"""Loading and validating `conf/app.toml` and `conf/infra/kafka.toml`, with the environment's overrides.

The keys, their types, defaults and checks are Pydantic models (:mod:`freedom.config.models`);
every key can also come from an environment variable (:mod:`freedom.config.env`, one naming
rule: `FREEDOM_APP__LISTEN_ADDR`, `FREEDOM_KAFKA__CONSUMER_CLIENTS__0__GROUP_ID`, ...). Every
problem is reported as one :class:`ConfigError` naming the file and the key, or the environment
variable, and what is wrong, so that start-up stops with one clear line instead of a traceback.
The result is the plain frozen dataclasses below, which the rest of freedom uses.
"""

from __future__ import annotations

import difflib
import os
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from freedom.config.env import (
    PREFIXES,
    KeyPath,
    Overlay,
    Root,
    Source,
    check_stray,
    env_error,
    env_name,
    field_kind,
    field_order,
    file_sources,
    known_names,
    model_at,
    norm,
    one_line,
)
from freedom.config.models import (
    CONSUME_MODES,
    LOG_LEVELS,
    MAX_SECONDS,
    SECRET_FIELDS,
    AppModel,
    ConsumerClient,
    KafkaModel,
    Problem,
    ProducerClient,
    Subscription,
    check_listen_addr,
    check_seconds,
    type_name,
)
from freedom.errors import ConfigError
from freedom.wire.outcomes import DEAD_LETTER_STATUSES

__all__ = [
    "AppConfig",
    "KafkaConfig",
    "ProducerClientConfig",
    "ConsumerClientConfig",
    "TopicConsumeConfig",
    "ConfigEntry",
    "SubscriptionConfig",
    "CONSUME_MODES",
    "LOG_LEVELS",
    "MAX_SECONDS",
    "ConfigError",
    "check_seconds",
    "find_config_dir",
    "load_app_config",
    "load_kafka_config",
    "check_topic_overrides",
]

CONFIG_ENV = "FREEDOM_PROJECT_CONFIG"


def find_config_dir(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """The config directory: explicit, else `$FREEDOM_PROJECT_CONFIG`, else `./conf`, else `./server/conf`."""
    if explicit is not None:
        return Path(explicit)
    env = os.environ.get(CONFIG_ENV)
    if env:
        path = Path(env)
        if not path.is_dir():
            raise ConfigError(env, None, f"${CONFIG_ENV} points to a directory that does not exist")
        return path
    for candidate in (Path("conf"), Path("server/conf")):
        if candidate.is_dir():
            return candidate
    return None


def _load(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), None, f"not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:  # tomllib decodes the whole file as UTF-8 first
        line = exc.object[: exc.start].count(b"\n") + 1
        raise ConfigError(
            str(path),
            None,
            f"not valid TOML: not UTF-8 (byte 0x{exc.object[exc.start]:02x} "
            f"on line {line}); save the file as UTF-8",
        ) from None
    except OSError as exc:
        raise ConfigError(str(path), None, f"cannot be read: {exc.strerror}") from None


# ----------------------------------------------------------------------------- app.toml


@dataclass(frozen=True)
class ConfigEntry:
    """One key of the effective configuration, as `freedom config` shows it (secrets already `***`)."""

    key: str  # "listen_addr", "consumer_clients[0].settings.linger.ms"
    value: Any
    source: str  # "default", a file path, or an environment variable's name
    env: str  # the environment variable that sets it


@dataclass(frozen=True)
class AppConfig:
    """`conf/app.toml`: where the service listens and what it is called."""

    listen_addr: str = "127.0.0.1:8000"
    service_name: str = "freedom"
    log_level: str = "INFO"
    log_format: str = "text"  # "text" or "json" (json_logs.py)
    liveness_timeout_sec: float = 60.0  # /livez: the longest a heartbeat may be silent (health.py)
    console_token: str | None = field(
        default=None, repr=False
    )  # the web console's token (a secret); None: off
    console_path: str = "/_freedom/console"  # where the web console is served (console/)
    #: Where listen_addr came from, (file, key), for the error when it cannot be bound; for an
    #: environment variable ("environment FREEDOM_APP__LISTEN_ADDR", None).
    listen_from: tuple[str, str | None] = field(
        default=("app.toml", "listen_addr"), compare=False, repr=False
    )
    #: Every key with its value and source (`freedom config`).
    entries: tuple[ConfigEntry, ...] = field(default=(), compare=False, repr=False)

    @property
    def host(self) -> str:
        return self.listen_addr.rpartition(":")[0] or "127.0.0.1"

    @property
    def port(self) -> int:
        return int(self.listen_addr.rpartition(":")[2])


# ----------------------------------------------------------------------------- kafka.toml


@dataclass(frozen=True)
class ProducerClientConfig:
    """One `[[producer_clients]]` entry: a cluster messages can be published to."""

    servers: tuple[str, ...] | None  # None: no `servers` key, use the embedded broker
    name: str = ""
    delivery_timeout_sec: float = 30.0
    settings: dict[str, Any] = field(default_factory=dict, repr=False)  # may hold secrets


@dataclass(frozen=True)
class ConsumerClientConfig:
    """One `[[consumer_clients]]` entry: a cluster and consumer group the proxy reads from."""

    servers: tuple[str, ...] | None
    group_id: str = "freedom"
    retry_count: int = 0
    retry_group_id: str = "retry_freedom"
    retry_prefix: str = "retry-"
    retry_interval_sec: float = 45.0
    retry_fail_prefix: str = "fail-"
    initial_offset: str = "latest"
    settings: dict[str, Any] = field(default_factory=dict, repr=False)  # may hold secrets
    mode: str = "sequential"  # how records of a topic are delivered: see CONSUME_MODES
    max_in_flight: int = 500  # records of one topic delivered at once (concurrent, key-ordered)
    drain_timeout_sec: float = (
        10.0  # at a rebalance or stop: how long in-flight deliveries may finish
    )
    topics: dict[str, TopicConsumeConfig] = field(default_factory=dict)  # per-topic overrides
    #: answer statuses that dead-letter a record at once, without retries (outcomes.DEAD_LETTER_STATUSES)
    dead_letter_statuses: frozenset[int] = frozenset(DEAD_LETTER_STATUSES)
    retry_after_max_sec: float = (
        60.0  # the longest pause one Retry-After causes (infra/kafka/backpressure.py)
    )
    backpressure_max_sec: float = (
        300.0  # Retry-After pauses one record may take before it counts as failed (0: off)
    )
    head_of_line_timeout_sec: float | None = None  # the head-of-line guard (proxy.py); None: off

    def consume_config(self, topic: str) -> TopicConsumeConfig:
        """How `topic` is delivered: its `[consumer_clients.topics."T"]` entry, else the client's."""
        return self.topics.get(topic) or TopicConsumeConfig(
            self.mode,
            self.max_in_flight,
            self.dead_letter_statuses,
            retry_after_max_sec=self.retry_after_max_sec,
            backpressure_max_sec=self.backpressure_max_sec,
            head_of_line_timeout_sec=self.head_of_line_timeout_sec,
        )


@dataclass(frozen=True)
class TopicConsumeConfig:
    """How the consumer proxy delivers the records of one topic."""

    mode: str = "sequential"
    max_in_flight: int = 500
    dead_letter_statuses: frozenset[int] = frozenset(DEAD_LETTER_STATUSES)
    rate_limit_per_sec: float | None = (
        None  # deliveries started per second at most (backpressure.py); None: no limit
    )
    max_concurrency: int | None = (
        None  # deliveries waiting for their answer at once at most; None: no limit
    )
    retry_after_max_sec: float = 60.0
    backpressure_max_sec: float = 300.0
    head_of_line_timeout_sec: float | None = None


@dataclass(frozen=True)
class SubscriptionConfig:
    """One `[[subscriptions]]` entry (`freedom proxy`): a topic, the URL its records go to, and how.
    None: the consumer client's (or `[consumer]`'s) value."""

    topic: str
    url: str  # may hold {key} (config_models.URL_KEY_PLACEHOLDER)
    group_id: str | None = None  # the consumer client (None: the first)
    mode: str | None = None
    max_in_flight: int | None = None
    timeout_sec: float = 30.0
    http2: bool | None = None
    secret: str | None = field(default=None, repr=False)
    retry_count: int | None = None
    retry_interval_sec: float | None = None
    dead_letter_statuses: frozenset[int] | None = None
    rate_limit_per_sec: float | None = None  # None: no limit
    max_concurrency: int | None = None  # None: no limit
    retry_after_max_sec: float | None = None
    backpressure_max_sec: float | None = None
    head_of_line_timeout_sec: float | None = None  # None: the client's (off by default)


@dataclass(frozen=True)
class KafkaConfig:
    """`conf/infra/kafka.toml`, keys as in the seed plus a few documented additions."""

    consumer_open: bool = False
    proxy_addr: str = "http://127.0.0.1:8000"
    proxy_http2: bool = False
    producer_open: bool = False
    producer_clients: tuple[ProducerClientConfig, ...] = ()
    consumer_clients: tuple[ConsumerClientConfig, ...] = ()
    subscriptions: tuple[SubscriptionConfig, ...] = ()  # `freedom proxy` only (standalone.py)
    file: str = "kafka.toml"
    proxy_secret: str | None = field(
        default=None, repr=False
    )  # [consumer] secret / secret_env (security.py)
    # False when proxy_addr was not given (file or environment): it then follows the listen address.
    proxy_addr_explicit: bool = False
    #: Every key with its value and source (`freedom config`), secrets masked.
    entries: tuple[ConfigEntry, ...] = field(default=(), compare=False, repr=False)
    #: The source of each key given (dotted key -> file path or environment variable), for errors.
    sources: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    @property
    def needs_embedded_broker(self) -> bool:
        """True when no client names its servers: the seed's example then runs on the embedded broker."""
        clients: list[ProducerClientConfig | ConsumerClientConfig] = [
            *self.producer_clients,
            *self.consumer_clients,
        ]
        return all(c.servers is None for c in clients)


ENVIRONMENT = (
    "the environment"  # KafkaConfig.file when no kafka.toml exists: every key came from variables
)


def dotted(path: KeyPath) -> str:
    """A key's path as error messages write it: `consumer_clients[0].topics."event-sell".mode`."""
    out = ""
    for i, seg in enumerate(path):
        if isinstance(seg, int):
            out += f"[{seg}]"
        elif i and path[i - 1] == "topics":
            out += f'."{seg}"'
        else:
            out += f".{seg}" if out else seg
    return out


_EXPECTED = {
    "string_type": "a string",
    "int_type": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "bool_type": "true or false",
    "list_type": "an array",
    "dict_type": "a table",
    "model_type": "a table",
    "model_attributes_type": "a table",
}


class _Loaded:
    """One file's data with the environment applied, and where each key came from."""

    def __init__(
        self, root: Root, model: type[BaseModel], path: Path | None, environ: Mapping[str, str]
    ) -> None:
        self.root, self.model = root, model
        self.exists = path is not None and path.exists()
        self.file = str(path) if path is not None else f"{root}.toml"
        self.data: dict[str, Any] = _load(path) if path is not None and self.exists else {}
        self.sources: dict[KeyPath, Source] = file_sources(self.data, self.file)
        self.from_env = Overlay(root, model, self.data, self.sources).apply(environ)
        if not self.exists and self.from_env:
            self.file = ENVIRONMENT

    def source(self, path: KeyPath) -> Source:
        """The source of the key at `path`, or of the nearest table above it that was given whole."""
        for n in range(len(path), 0, -1):
            found = self.sources.get(path[:n])
            if found is not None and (n == len(path) or found.kind == "env"):
                return found
        return Source("default")

    def error(self, path: KeyPath, problem: str) -> ConfigError:
        """The one-line error about the key at `path`: naming the variable that gave it, else the file."""
        src = self.source(path)
        if src.kind == "env" or (src.kind == "default" and not self.exists):
            var = src.where if src.kind == "env" else env_name(self.root, path)
            if (
                src.kind == "env" and self.sources.get(path) != src
            ):  # a table given whole (JSON): which key in it
                problem = f"{dotted(path)}: {problem}"
            return env_error(var, problem, dotted(path))
        return ConfigError(self.file, one_line(dotted(path)) or None, one_line(problem))

    def validate(self) -> Any:
        try:
            return self.model.model_validate(self.data)
        except ValidationError as exc:
            raise self._translate(exc.errors()[0]) from None

    def _translate(self, err: Any) -> ConfigError:
        """Pydantic's error (several lines, with the input) as freedom's one line (never the input)."""
        loc: KeyPath = tuple(err["loc"])
        kind = err["type"]
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, Problem):
            return self.error((*loc, *cause.key), cause.problem)
        if kind == "extra_forbidden":
            model = model_at(self.model, loc[:-1])
            names = list(model.model_fields) if model is not None else []
            close = difflib.get_close_matches(str(loc[-1]), names, n=1, cutoff=0.6)
            hint = f'did you mean "{close[0]}"?' if close else "the keys here: " + ", ".join(names)
            return self.error(loc, f"unknown key ({hint}; see docs/configuration.md)")
        if kind in _EXPECTED:
            return self.error(loc, f"must be {_EXPECTED[kind]}, got {type_name(err['input'])}")
        return self.error(loc, str(err["msg"]))


def _entries(loaded: _Loaded, model: BaseModel, path: KeyPath = ()) -> list[ConfigEntry]:
    """The keys of a validated model with their values and sources, secrets as `***`."""
    from freedom.kafka.settings import is_secret

    out: list[ConfigEntry] = []
    for name in field_order(type(model)):
        info = type(model).model_fields[name]
        value, p = getattr(model, name), (*path, name)
        kind, _ = field_kind(info.annotation)
        if kind == "model":
            out += _entries(loaded, value, p)
        elif kind == "model_list":
            for i, item in enumerate(value):
                out += _entries(loaded, item, (*p, i))
        elif kind == "model_dict":
            for key, item in value.items():
                out += _entries(loaded, item, (*p, key))
        elif kind == "settings" and value:
            for key, v in value.items():
                shown = "***" if is_secret(key) else v
                out.append(
                    ConfigEntry(
                        dotted((*p, key)),
                        shown,
                        str(loaded.source((*p, key))),
                        env_name(loaded.root, (*p, key)),
                    )
                )
        elif value is not None:
            shown = "***" if name in SECRET_FIELDS else value
            out.append(
                ConfigEntry(dotted(p), shown, str(loaded.source(p)), env_name(loaded.root, p))
            )
    return out


# ----------------------------------------------------------------------------- app.toml


def load_app_config(config_dir: Path | None, *, listen_addr: str | None = None) -> AppConfig:
    """Read `app.toml` and the `FREEDOM_APP__*` variables; `listen_addr` (from `freedom run --listen`)
    overrides both."""
    environ = os.environ
    loaded = _Loaded("app", AppModel, config_dir / "app.toml" if config_dir else None, environ)
    model: AppModel = loaded.validate()
    src = loaded.source(("listen_addr",))
    listen_from: tuple[str, str | None] = {
        "env": (f"environment {src.where}", None),
        "file": (loaded.file, "listen_addr"),
    }.get(src.kind, (loaded.file, "listen_addr (not set: the default)"))
    entries = _entries(loaded, model)
    if listen_addr is not None:

        def error(p: str) -> ConfigError:
            return ConfigError("freedom run", "--listen", p)

        model.listen_addr = check_listen_addr(listen_addr, error)
        listen_from = ("freedom run", "--listen")
        entries = [
            replace(e, value=model.listen_addr, source="freedom run --listen")
            if e.key == "listen_addr"
            else e
            for e in entries
        ]
    return AppConfig(
        listen_addr=model.listen_addr,
        service_name=model.service_name,
        log_level=model.log_level,
        log_format=model.log_format,
        liveness_timeout_sec=model.liveness_timeout_sec,
        console_token=model.console_token,
        console_path=model.console_path,
        listen_from=listen_from,
        entries=tuple(entries),
    )


# ----------------------------------------------------------------------------- kafka.toml


def load_kafka_config(config_dir: Path | None) -> KafkaConfig | None:
    """Read `infra/kafka.toml` and the `FREEDOM_KAFKA__*` variables; None when neither exists (Kafka is off).

    Also refuses a FREEDOM_* variable that looks meant for freedom but is none of its names. The
    variables a `*_env` key names are read when the file is loaded too.
    """
    environ = os.environ
    loaded = _Loaded(
        "kafka", KafkaModel, config_dir / "infra" / "kafka.toml" if config_dir else None, environ
    )
    model: KafkaModel | None = loaded.validate() if loaded.exists or loaded.from_env else None
    targets = set()
    if model is not None:  # variables named by a *_env key are the user's secrets, not typos
        clients: list[Any] = [
            model.consumer,
            *model.producer_clients,
            *model.consumer_clients,
            *model.subscriptions,
        ]
        targets = {
            v
            for c in clients
            for k in ("secret_env", "sasl_password_env", "ssl_key_password_env")
            if isinstance(v := getattr(c, k, None), str)
        }
    check_stray(
        environ, targets, [*known_names("app", AppModel), *known_names("kafka", KafkaModel)]
    )
    if model is None:
        return None

    producer_clients = [
        ProducerClientConfig(
            servers=tuple(p.servers) if p.servers is not None else None,
            name=p.name,
            delivery_timeout_sec=p.delivery_timeout_sec,
            settings=p._librdkafka,
        )
        for p in model.producer_clients
    ]
    consumer_clients = [_consumer_client(c) for c in model.consumer_clients]
    entries = _entries(loaded, model)
    if model.producer.open and not producer_clients:
        producer_clients.append(ProducerClientConfig(servers=None))
        entries += _entries(loaded, ProducerClient.model_construct(), ("producer_clients", 0))
    if model.consumer.open and not consumer_clients:
        consumer_clients.append(ConsumerClientConfig(servers=None))
        entries += _entries(loaded, ConsumerClient.model_construct(), ("consumer_clients", 0))
    consumer = loaded.data.get("consumer")
    return KafkaConfig(
        consumer_open=model.consumer.open,
        proxy_addr=model.consumer.proxy_addr,
        proxy_http2=model.consumer.proxy_http2,
        producer_open=model.producer.open,
        producer_clients=tuple(producer_clients),
        consumer_clients=tuple(consumer_clients),
        subscriptions=tuple(_subscription(s) for s in model.subscriptions),
        file=loaded.file,
        proxy_secret=model.consumer._secret,
        proxy_addr_explicit=isinstance(consumer, dict) and "proxy_addr" in consumer,
        entries=tuple(entries),
        sources={dotted(k): v.where for k, v in loaded.sources.items()},
    )


def _subscription(s: Subscription) -> SubscriptionConfig:
    return SubscriptionConfig(
        topic=s.topic,
        url=s.url,
        group_id=s.group_id,
        mode=s.mode,
        max_in_flight=s.max_in_flight,
        timeout_sec=s.timeout_sec,
        http2=s.http2,
        secret=s._secret,
        retry_count=s.retry_count,
        retry_interval_sec=s.retry_interval_sec,
        dead_letter_statuses=frozenset(s.dead_letter_statuses)
        if s.dead_letter_statuses is not None
        else None,
        rate_limit_per_sec=s.rate_limit_per_sec,
        max_concurrency=s.max_concurrency,
        retry_after_max_sec=s.retry_after_max_sec,
        backpressure_max_sec=s.backpressure_max_sec,
        head_of_line_timeout_sec=s.head_of_line_timeout_sec,
    )


def _consumer_client(c: ConsumerClient) -> ConsumerClientConfig:
    return ConsumerClientConfig(
        servers=tuple(c.servers) if c.servers is not None else None,
        group_id=c.group_id,
        retry_count=c.retry_count,
        retry_group_id=c.retry_group_id,
        retry_prefix=c.retry_prefix,
        retry_interval_sec=c.retry_interval_sec,
        retry_fail_prefix=c.retry_fail_prefix,
        initial_offset=c.initial_offset,
        settings=c._librdkafka,
        mode=c.mode,
        max_in_flight=c.max_in_flight,
        drain_timeout_sec=c.drain_timeout_sec,
        dead_letter_statuses=frozenset(c.dead_letter_statuses),
        retry_after_max_sec=c.retry_after_max_sec,
        backpressure_max_sec=c.backpressure_max_sec,
        head_of_line_timeout_sec=c.head_of_line_timeout_sec,
        topics={
            t: TopicConsumeConfig(
                o.mode or c.mode,
                o.max_in_flight or c.max_in_flight,
                frozenset(
                    c.dead_letter_statuses
                    if o.dead_letter_statuses is None
                    else o.dead_letter_statuses
                ),
                rate_limit_per_sec=o.rate_limit_per_sec,
                max_concurrency=o.max_concurrency,
                retry_after_max_sec=_given(o.retry_after_max_sec, c.retry_after_max_sec),
                backpressure_max_sec=_given(o.backpressure_max_sec, c.backpressure_max_sec),
                head_of_line_timeout_sec=_given(
                    o.head_of_line_timeout_sec, c.head_of_line_timeout_sec
                ),
            )
            for t, o in c.topics.items()
        },
    )


def _given(value: Any, default: Any) -> Any:
    """`value`, else (None: not given) `default`."""
    return default if value is None else value


def check_topic_overrides(config: KafkaConfig, listened: Iterable[str]) -> None:
    """Refuse a `[consumer_clients.topics."T"]` table for a topic no event listens to (a typo, or a
    listener that moved): its settings would silently apply to nothing. Called once the event routes
    are known (Application.setup).

    A topic an environment variable names (`..._TOPICS__EVENT_SELL__MODE`) is matched to the listened
    topic it spells (`event-sell`): environment variable names cannot hold `-` or `.`.
    """
    topics = sorted(set(listened))
    for i, client in enumerate(config.consumer_clients):
        for topic in list(client.topics):
            if topic in topics:
                continue
            key = f'consumer_clients[{i}].topics."{topic}"'
            var = config.sources.get(key, "")
            if var.startswith(PREFIXES["kafka"]):
                spelled = [t for t in topics if norm(t) == norm(topic) and t not in client.topics]
                if (
                    len(spelled) == 1
                ):  # the dict is the config's own; it is re-keyed once, at set-up
                    client.topics[spelled[0]] = client.topics.pop(topic)
                    new = f'consumer_clients[{i}].topics."{spelled[0]}"'
                    object.__setattr__(
                        config,
                        "entries",
                        tuple(  # what `freedom config` shows follows
                            replace(e, key=new + e.key[len(key) :])
                            if e.key.startswith(key + ".")
                            else e
                            for e in config.entries
                        ),
                    )
                    continue
            known = ", ".join(f'"{t}"' for t in topics) if topics else "none"
            problem = f"no event listens to this topic (the listened topics: {known})"
            if var.startswith(PREFIXES["kafka"]):
                raise env_error(var, problem, key)
            raise ConfigError(config.file, key, problem)
