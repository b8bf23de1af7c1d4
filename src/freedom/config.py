"""Loading and validating `conf/app.toml` and `conf/infra/kafka.toml`.

Every problem is reported as one :class:`ConfigError` naming the file, the key and what is
wrong, so that start-up stops with one clear line instead of a traceback.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Literal
from urllib.parse import urlsplit

from .errors import ConfigError

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


class _Table:
    """Reads typed keys out of one TOML table and rejects keys nobody asked for."""

    def __init__(self, file: str, prefix: str, data: Any) -> None:
        self.file, self.prefix = file, prefix
        if not isinstance(data, dict):
            raise ConfigError(file, prefix.rstrip("."), f"must be a table, got {_type_name(data)}")
        self.data = dict(data)

    def _key(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def error(self, name: str, problem: str) -> ConfigError:
        return ConfigError(self.file, self._key(name), problem)

    def get(self, name: str, kind: type | tuple[type, ...], default: Any) -> Any:
        if name not in self.data:
            return default
        value = self.data.pop(name)
        # bool is an int subclass: "retry_count = true" must not pass as 1.
        if isinstance(value, bool) and kind in (int, float, (int, float)):
            raise self.error(name, f"must be {_kind_name(kind)}, got a boolean")
        if not isinstance(value, kind):
            raise self.error(name, f"must be {_kind_name(kind)}, got {_type_name(value)}")
        return value

    def seconds(self, name: str, default: float, *, zero_ok: bool = False) -> float:
        """A duration in seconds: finite, not negative (greater than 0 unless `zero_ok`), at most MAX_SECONDS."""
        return check_seconds(self.get(name, (int, float), default), lambda p: self.error(name, p), zero_ok=zero_ok)

    def table(self, name: str) -> dict[str, Any]:
        value = self.data.pop(name, {})
        if not isinstance(value, dict):
            raise self.error(name, f"must be a table, got {_type_name(value)}")
        return value

    def done(self) -> None:
        if self.data:
            name = sorted(self.data)[0]
            raise self.error(name, "unknown key (check the spelling; see the README for the keys)")


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {str: "a string", bool: "true or false", int: "an integer", float: "a number",
             list: "an array", dict: "a table"}
    if isinstance(kind, tuple):
        return " or ".join(names.get(k, k.__name__) for k in kind)
    return names.get(kind, kind.__name__)


def _type_name(value: Any) -> str:
    return {str: "a string", bool: "a boolean", int: "an integer", float: "a number",
            list: "an array", dict: "a table"}.get(type(value), type(value).__name__)


#: The longest duration a `*_sec` key may give (~24.8 days): librdkafka holds durations as 32-bit
#: milliseconds (`message.timeout.ms`); one bound for every duration key, far below what would
#: overflow a timer or a pause time.
MAX_SECONDS = 2_147_483


def check_seconds(value: int | float, error: Callable[[str], Exception], *, zero_ok: bool = False) -> float:
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


def _load(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), None, f"not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:  # tomllib decodes the whole file as UTF-8 first
        line = exc.object[:exc.start].count(b"\n") + 1
        raise ConfigError(str(path), None, f"not valid TOML: not UTF-8 (byte 0x{exc.object[exc.start]:02x} "
                                           f"on line {line}); save the file as UTF-8") from None
    except OSError as exc:
        raise ConfigError(str(path), None, f"cannot be read: {exc.strerror}") from None


# ----------------------------------------------------------------------------- app.toml


#: The `log_level` values app.toml accepts (Python's logging levels).
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


@dataclass(frozen=True)
class AppConfig:
    """`conf/app.toml`: where the service listens and what it is called."""

    listen_addr: str = "127.0.0.1:8000"
    service_name: str = "freedom"
    log_level: str = "INFO"
    #: Where listen_addr came from, (file, key), for the error when it cannot be bound.
    listen_from: tuple[str, str] = field(default=("app.toml", "listen_addr"), compare=False, repr=False)

    @property
    def host(self) -> str:
        return self.listen_addr.rpartition(":")[0] or "127.0.0.1"

    @property
    def port(self) -> int:
        return int(self.listen_addr.rpartition(":")[2])


def _listen_addr(value: str, file: str, key: str) -> str:
    """`host:port` checked; a bare `:port` listens on every interface."""
    host, sep, port = value.rpartition(":")
    if not sep or not _is_port(port) or host.startswith("[") != host.endswith("]"):
        raise ConfigError(file, key, f'must look like "127.0.0.1:8000", got "{value}"')
    return value if host else f"0.0.0.0:{port}"


def _is_port(text: str) -> bool:
    """A TCP port number, 1 to 65535, in ASCII digits (str.isdigit also takes "³" and "٣")."""
    return text.isascii() and text.isdigit() and 0 < int(text) < 65536


def _log_level(t: _Table) -> str:
    level = t.get("log_level", str, AppConfig.log_level)
    if level.upper() not in LOG_LEVELS:
        raise t.error("log_level", f'must be one of {", ".join(LOG_LEVELS)}, got "{level}"')
    return level.upper()


def load_app_config(config_dir: Path | None, *, listen_addr: str | None = None) -> AppConfig:
    """Read `app.toml`; `listen_addr` (from `freedom run --listen`) overrides the file's."""
    path = config_dir / "app.toml" if config_dir else None
    file = str(path) if path else "app.toml"
    cfg = AppConfig(listen_from=(file, "listen_addr (not set: the default)"))
    if path is not None and path.exists():
        t = _Table(file, "", _load(path))
        given = "listen_addr" in t.data
        cfg = AppConfig(
            listen_addr=_listen_addr(t.get("listen_addr", str, AppConfig.listen_addr), file, "listen_addr"),
            service_name=t.get("service_name", str, AppConfig.service_name),
            log_level=_log_level(t),
            listen_from=(file, "listen_addr") if given else cfg.listen_from,
        )
        t.done()
    if listen_addr is not None:
        cfg = replace(cfg, listen_addr=_listen_addr(listen_addr, "freedom run", "--listen"),
                      listen_from=("freedom run", "--listen"))
    return cfg


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
    drain_timeout_sec: float = 10.0  # at a rebalance or stop: how long in-flight deliveries may finish
    topics: dict[str, "TopicConsumeConfig"] = field(default_factory=dict)  # per-topic overrides

    def consume_config(self, topic: str) -> "TopicConsumeConfig":
        """The mode and bound of `topic`: its `[consumer_clients.topics."T"]` entry, else the client's."""
        return self.topics.get(topic) or TopicConsumeConfig(self.mode, self.max_in_flight)


#: sequential: one record at a time per partition, in offset order.
#: concurrent: up to max_in_flight records of the topic at once, in any order.
#: key-ordered: like concurrent, but records with the same key one after the other, in order.
CONSUME_MODES = ("sequential", "concurrent", "key-ordered")


@dataclass(frozen=True)
class TopicConsumeConfig:
    """How the consumer proxy delivers the records of one topic."""

    mode: str = "sequential"
    max_in_flight: int = 500


def _consume_config(t: _Table, default: TopicConsumeConfig) -> TopicConsumeConfig:
    """Read `mode` and `max_in_flight` of a client or topic table, checking them."""
    mode = t.get("mode", str, default.mode)
    if mode not in CONSUME_MODES:
        raise t.error("mode", f'must be one of {", ".join(repr(m) for m in CONSUME_MODES)}, got "{mode}"')
    bound = t.get("max_in_flight", int, default.max_in_flight)
    if bound < 1:
        raise t.error("max_in_flight", f"must be 1 or more, got {bound}")
    return TopicConsumeConfig(mode, bound)


def _topic_overrides(t: _Table, default: TopicConsumeConfig) -> dict[str, TopicConsumeConfig]:
    """`[consumer_clients.topics."event-sell"] mode = "concurrent"`: per-topic delivery settings."""
    out = {}
    for topic, raw in t.table("topics").items():
        sub = _Table(t.file, f'{t.prefix}topics."{topic}".', raw)
        out[topic] = _consume_config(sub, default)
        sub.done()
    return out


def _check_prefix(t: _Table, name: str, prefix: str) -> None:
    bad = sorted({c for c in prefix if not (c.isascii() and (c.isalnum() or c in "._-"))})
    if bad:
        raise t.error(name, f"has characters Kafka topic names do not allow ({''.join(bad)!r}); "
                            "use letters, digits, '.', '_' and '-'")


@dataclass(frozen=True)
class KafkaConfig:
    """`conf/infra/kafka.toml`, keys as in the seed plus a few documented additions."""

    consumer_open: bool = False
    proxy_addr: str = "http://127.0.0.1:8000"
    proxy_http2: bool = False
    producer_open: bool = False
    producer_clients: tuple[ProducerClientConfig, ...] = ()
    consumer_clients: tuple[ConsumerClientConfig, ...] = ()
    file: str = "kafka.toml"
    proxy_secret: str | None = field(default=None, repr=False)  # [consumer] secret / secret_env (security.py)
    # False when proxy_addr was not given (file or environment): it then follows the listen address.
    proxy_addr_explicit: bool = False

    @property
    def needs_embedded_broker(self) -> bool:
        """True when no client names its servers: the seed's example then runs on the embedded broker."""
        clients = [*self.producer_clients, *self.consumer_clients]
        return all(c.servers is None for c in clients)


def _servers(t: _Table) -> tuple[str, ...] | None:
    if "servers" not in t.data:
        return None
    servers = t.get("servers", list, None)
    if not servers:
        raise t.error("servers", "is empty: list at least one broker address, like [\"127.0.0.1:9092\"], "
                                 "or remove the key to use the embedded broker")
    out = []
    for s in servers:
        if not isinstance(s, str) or not s.strip():
            raise t.error("servers", f"each entry must be a \"host:port\" string, got {s!r}")
        host, sep, port = s.strip().rpartition(":")
        if not sep or not port.isascii() or not port.isdigit() or any(c in host for c in ", \t"):
            raise t.error("servers", f'"{s}" is not a "host:port" address')
        if not _is_port(port):
            raise t.error("servers", f'"{s}": the port must be 1 to 65535')
        # The seed writes ":9092" for the local broker.
        out.append(f"{host or '127.0.0.1'}:{port}")
    return tuple(out)


def _settings(t: _Table, role: Literal["producer", "consumer"], base: dict[str, Any]) -> dict[str, Any]:
    """`settings = {...}` (librdkafka properties, passed as they are) plus the TLS/SASL keys.

    Checked here, before any client starts: a property freedom's guarantees depend on is refused
    with the reason, and each of the others must be one librdkafka knows, with a value it takes (a
    client is built from them, on top of `base`, freedom's own settings for the role, without
    connecting). Combinations are judged when the client is made, after the setting_config hooks.
    """
    from .infra.kafka.settings import invalid_setting, refused_setting, security_settings

    raw = t.table("settings")
    for k, v in raw.items():
        if isinstance(v, dict):  # settings = { linger.ms = 5 }: TOML reads the bare dotted key as a table
            raise t.error(f"settings.{k}", "must be a string, number or boolean, got a table "
                                           f'(quote a dotted property name: "{k}.{next(iter(v), "")}" = ...)')
        if not isinstance(v, (str, int, float, bool)):
            raise t.error(f"settings.{k}", f"must be a string, number or boolean, got {_type_name(v)}")
        if isinstance(v, float) and not math.isfinite(v):
            raise t.error(f"settings.{k}", f"must be a finite number, got {v}")
        reason = refused_setting(k, v, role)
        if reason:
            raise t.error(f"settings.{k}", reason)
    settings = {**raw, **security_settings(t)}
    problem = invalid_setting(settings, role, base)
    if problem is not None:
        key, reason = problem
        raise t.error(f"settings.{key}", reason)
    return settings


def _proxy_addr(t: _Table) -> str:
    """`[consumer] proxy_addr`: "inprocess", or an http(s) URL with a host and a valid port."""
    addr = t.get("proxy_addr", str, KafkaConfig.proxy_addr).rstrip("/")
    if addr == "inprocess":  # the consumer proxy calls the application directly (transports/asgi.py)
        return addr
    try:
        url = urlsplit(addr)
        port = url.port  # raises ValueError for a port out of range or not a number
    except ValueError as exc:  # "http://[::1:8000" (unclosed bracket), "http://h:99999", "http://h:abc"
        raise t.error("proxy_addr", f'is not a valid URL ({exc}): "{addr}"') from None
    if url.scheme not in ("http", "https"):
        raise t.error("proxy_addr", f'must start with "http://" or "https://" (or be "inprocess" to call '
                                    f'the application directly), got "{addr}"')
    if not url.hostname:
        raise t.error("proxy_addr", f'has no host: "{addr}"')
    if port == 0:
        raise t.error("proxy_addr", f'the port must be 1 to 65535: "{addr}"')
    if url.query or url.fragment or "?" in addr or "#" in addr:
        raise t.error("proxy_addr", f'must be a base URL without "?" or "#": "{addr}"')
    return addr


def load_kafka_config(config_dir: Path | None) -> KafkaConfig | None:
    """Read `infra/kafka.toml`; None when the file does not exist (Kafka is then off)."""
    path = config_dir / "infra" / "kafka.toml" if config_dir else None
    if path is None or not path.exists():
        return None
    file = str(path)
    root = _Table(file, "", _load(path))

    consumer = _Table(file, "consumer.", root.table("consumer"))
    consumer_open = consumer.get("open", bool, False)
    proxy_addr_explicit = "proxy_addr" in consumer.data
    proxy_addr = _proxy_addr(consumer)
    proxy_http2 = consumer.get("proxy_http2", bool, False)
    if proxy_addr == "inprocess" and proxy_http2:
        raise consumer.error("proxy_http2", 'has no effect with proxy_addr = "inprocess" (no HTTP is involved); '
                                            "remove one of the two")
    from .security import read_secret

    proxy_secret = read_secret(consumer)
    consumer.done()

    producer = _Table(file, "producer.", root.table("producer"))
    producer_open = producer.get("open", bool, False)
    producer.done()

    from .infra.kafka.group import CONSUMER_DEFAULTS
    from .infra.kafka.producer import PRODUCER_DEFAULTS

    producer_clients = []
    seen: set[str] = set()
    for i, raw in enumerate(root.get("producer_clients", list, [])):
        t = _Table(file, f"producer_clients[{i}].", raw)
        servers, name = _servers(t), t.get("name", str, "")
        timeout = t.seconds("delivery_timeout_sec", 30.0)
        if timeout < 0.001:  # librdkafka's message.timeout.ms = 0 means "forever"
            raise t.error("delivery_timeout_sec", f"must be at least 0.001 (1 ms), got {timeout}")
        base = {**PRODUCER_DEFAULTS, "message.timeout.ms": int(timeout * 1000)}  # as infra.py makes it
        client = ProducerClientConfig(servers=servers, name=name, delivery_timeout_sec=timeout,
                                      settings=_settings(t, "producer", base))
        if client.name in seen:
            raise t.error("name", f'"{client.name}" is used by two producer clients; names must be unique')
        seen.add(client.name)
        t.done()
        producer_clients.append(client)

    consumer_clients = []
    groups: set[str] = set()
    for i, raw in enumerate(root.get("consumer_clients", list, [])):
        t = _Table(file, f"consumer_clients[{i}].", raw)
        d = ConsumerClientConfig
        client = ConsumerClientConfig(
            servers=_servers(t),
            group_id=t.get("group_id", str, d.group_id),
            retry_count=t.get("retry_count", int, d.retry_count),
            retry_group_id=t.get("retry_group_id", str, d.retry_group_id),
            retry_prefix=t.get("retry_prefix", str, d.retry_prefix),
            retry_interval_sec=t.seconds("retry_interval_sec", d.retry_interval_sec, zero_ok=True),
            retry_fail_prefix=t.get("retry_fail_prefix", str, d.retry_fail_prefix),
            initial_offset=t.get("initial_offset", str, d.initial_offset),
            settings=_settings(t, "consumer", {**CONSUMER_DEFAULTS, "group.id": "freedom-config-check"}),
        )
        consume = _consume_config(t, TopicConsumeConfig(d.mode, d.max_in_flight))
        drain = t.seconds("drain_timeout_sec", d.drain_timeout_sec)
        client = dataclasses.replace(client, mode=consume.mode, max_in_flight=consume.max_in_flight,
                                     drain_timeout_sec=drain, topics=_topic_overrides(t, consume))
        _check_prefix(t, "retry_prefix", client.retry_prefix)
        _check_prefix(t, "retry_fail_prefix", client.retry_fail_prefix)
        if client.retry_count > 0 and not client.retry_fail_prefix:
            raise t.error("retry_fail_prefix", "must not be empty when retry_count > 0 "
                                               "(records that fail every retry go to the dead-letter topic)")
        if client.retry_count > 0 and client.retry_prefix == client.retry_fail_prefix:
            raise t.error("retry_fail_prefix", "must differ from retry_prefix")
        if not client.group_id:
            raise t.error("group_id", "must not be empty")
        if client.retry_count < 0:
            raise t.error("retry_count", "must be 0 (no retries) or more")
        if client.initial_offset not in ("latest", "earliest"):
            raise t.error("initial_offset", f'must be "latest" or "earliest", got "{client.initial_offset}"')
        if client.retry_count > 0 and not client.retry_prefix:
            raise t.error("retry_prefix", "must not be empty when retry_count > 0")
        if client.retry_count > 0 and not client.retry_group_id:
            raise t.error("retry_group_id", "must not be empty when retry_count > 0")
        if client.retry_count > 0 and client.retry_group_id == client.group_id:
            raise t.error("retry_group_id", "must differ from group_id")
        if client.group_id in groups:
            raise t.error("group_id", f'"{client.group_id}" is used by two consumer clients')
        groups.add(client.group_id)
        t.done()
        consumer_clients.append(client)
    root.done()

    if producer_open and not producer_clients:
        producer_clients.append(ProducerClientConfig(servers=None))
    if consumer_open and not consumer_clients:
        consumer_clients.append(ConsumerClientConfig(servers=None))
    return KafkaConfig(
        consumer_open=consumer_open, proxy_addr=proxy_addr, proxy_http2=proxy_http2,
        producer_open=producer_open, producer_clients=tuple(producer_clients),
        consumer_clients=tuple(consumer_clients), file=file, proxy_secret=proxy_secret,
        proxy_addr_explicit=proxy_addr_explicit,
    )


def check_topic_overrides(config: KafkaConfig, listened: Iterable[str]) -> None:
    """Refuse a `[consumer_clients.topics."T"]` table for a topic no event listens to (a typo, or a
    listener that moved): its settings would silently apply to nothing. Called once the event routes
    are known (Application.setup)."""
    topics = sorted(set(listened))
    for i, client in enumerate(config.consumer_clients):
        for topic in client.topics:
            if topic not in topics:
                known = ", ".join(f'"{t}"' for t in topics) if topics else "none"
                raise ConfigError(config.file, f'consumer_clients[{i}].topics."{topic}"',
                                  f"no event listens to this topic (the listened topics: {known})")
