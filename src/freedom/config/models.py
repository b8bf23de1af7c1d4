"""The configuration: `app.toml` and `infra/kafka.toml` as Pydantic models (types, defaults,
descriptions, checks), which are also what the code reads (`app.config`, `app.kafka_config`).

One model per table, split by file and section: app.toml (:mod:`freedom.config.app`), the client
entries of kafka.toml (:mod:`freedom.config.clients`), its subscriptions
(:mod:`freedom.config.subscriptions`), and here kafka.toml's `[consumer]`, `[producer]` and the
whole file. :mod:`freedom.config.loading` validates the files (with the environment's overrides,
:mod:`freedom.config.env`) against them, and :mod:`freedom.config.reference` writes
docs/configuration.md from them.

A check that fails raises :class:`~freedom.config.rules.Problem` with the key it is about
(relative to the model that checks it); :mod:`freedom.config.loading` turns it, like Pydantic's
own type errors, into one :class:`~freedom.errors.ConfigError` line naming the file or the
environment variable.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlsplit

from pydantic import Field, PrivateAttr, model_validator

from freedom.config.app import LOG_LEVELS, AppConfig, ConfigEntry
from freedom.config.clients import (
    ClientConfig,
    ConsumerClientConfig,
    ProducerClientConfig,
    TopicConsumeConfig,
)
from freedom.config.rules import (
    CONSUME_MODES,
    MAX_SECONDS,
    ConfigModel,
    Problem,
    check_listen_addr,
    check_seconds,
)
from freedom.config.secret import Keys, read_secret
from freedom.config.subscriptions import URL_KEY_PLACEHOLDER, SubscriptionConfig

#: `[consumer] inprocess_dispatch`: how in-process deliveries reach the handlers.
INPROCESS_DISPATCH = ("direct", "asgi")
#: `[consumer] http_dispatch`: how deliveries received over HTTP reach the handlers.
HTTP_DISPATCH = ("direct", "asgi")


class ConsumerSection(ConfigModel):
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
    inprocess_dispatch: str = Field(
        default="direct",
        description=(
            'With `proxy_addr = "inprocess"`: `"direct"` calls each event handler itself, without '
            "HTTP middleware (routes taking more than the request and the key go through the "
            'application); `"asgi"` calls the whole ASGI application, middleware included.'
        ),
    )
    http_dispatch: str = Field(
        default="direct",
        description=(
            'Deliveries this service receives over HTTP (from any consumer proxy): `"direct"` '
            "calls each event handler in front of the ASGI application, without HTTP middleware "
            "(routes taking more than the request and the key go through the application); "
            '`"asgi"` sends them through the whole application, middleware included.'
        ),
    )
    secret: str | None = Field(
        default=None,
        repr=False,
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
    _addr_given: bool = PrivateAttr(False)

    @model_validator(mode="after")
    def _check(self) -> ConsumerSection:
        self._addr_given = "proxy_addr" in self.model_fields_set
        self.proxy_addr = _proxy_addr(self.proxy_addr)
        if self.proxy_addr == "inprocess" and self.proxy_http2:
            raise Problem(
                "proxy_http2",
                'has no effect with proxy_addr = "inprocess" (no HTTP is involved); '
                "remove one of the two",
            )
        if self.inprocess_dispatch not in INPROCESS_DISPATCH:
            raise Problem(
                "inprocess_dispatch",
                f"must be one of {', '.join(repr(d) for d in INPROCESS_DISPATCH)}, "
                f'got "{self.inprocess_dispatch}"',
            )
        if self.http_dispatch not in HTTP_DISPATCH:
            raise Problem(
                "http_dispatch",
                f"must be one of {', '.join(repr(d) for d in HTTP_DISPATCH)}, "
                f'got "{self.http_dispatch}"',
            )
        self._secret = read_secret(Keys(self, ("secret", "secret_env"), Problem))
        return self

    @property
    def shared_secret(self) -> str | None:
        """The shared secret of `secret` or `secret_env` (None: not given)."""
        return self._secret

    @property
    def proxy_addr_explicit(self) -> bool:
        """False when proxy_addr was not given (file or environment): it then follows the listen
        address (:meth:`KafkaConfig.delivering_to`)."""
        return self._addr_given


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


class ProducerSection(ConfigModel):
    """`[producer]`: publishing."""

    open: bool = Field(
        default=False,
        description=(
            "Enable publishing. Without any `[[producer_clients]]` entry, one client on the embedded broker."
        ),
    )


class KafkaConfig(ConfigModel):
    """`conf/infra/kafka.toml`: the seed's keys plus a few documented additions."""

    consumer: ConsumerSection = Field(
        default_factory=ConsumerSection, description="The consumer proxy."
    )
    producer: ProducerSection = Field(default_factory=ProducerSection, description="Publishing.")
    producer_clients: list[ProducerClientConfig] = Field(
        default_factory=list, description="The clusters to publish to."
    )
    consumer_clients: list[ConsumerClientConfig] = Field(
        default_factory=list, description="The clusters and groups to consume from."
    )
    subscriptions: list[SubscriptionConfig] = Field(
        default_factory=list,
        description=(
            "`freedom proxy` only: the topics it delivers and where to (docs/standalone-proxy.md)."
        ),
    )

    #: The file read ("the environment" when every key came from variables), for messages.
    _file: str = PrivateAttr("kafka.toml")
    #: Every key with its value and source (`freedom config`), secrets masked.
    _entries: tuple[ConfigEntry, ...] = PrivateAttr(())
    #: The source of each key given (dotted key -> file path or environment variable), for errors.
    _sources: Mapping[str, str] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> KafkaConfig:
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
        # Open without a client entry: one client with the defaults, on the embedded broker.
        if self.producer.open and not self.producer_clients:
            self.producer_clients = [ProducerClientConfig.model_construct()]
        if self.consumer.open and not self.consumer_clients:
            self.consumer_clients = [ConsumerClientConfig.model_construct()]
        return self

    @property
    def file(self) -> str:
        """The file read (its path), or "the environment" when every key came from variables."""
        return self._file

    @property
    def entries(self) -> tuple[ConfigEntry, ...]:
        """Every key with its value and source (`freedom config`), secrets masked."""
        return self._entries

    @property
    def sources(self) -> Mapping[str, str]:
        """The source of each key given: dotted key -> file path or environment variable."""
        return self._sources

    @property
    def needs_embedded_broker(self) -> bool:
        """True when no client names its servers: the seed's example then runs on the embedded broker."""
        clients: list[ClientConfig] = [*self.producer_clients, *self.consumer_clients]
        return all(c.servers is None for c in clients)

    def delivering_to(self, proxy_addr: str) -> KafkaConfig:
        """A copy whose consumer proxy delivers to `proxy_addr` (the listen address it follows, or
        a worker's own port); `consumer.proxy_addr_explicit` stays as it was."""
        consumer = self.consumer.model_copy(update={"proxy_addr": proxy_addr})
        return self.model_copy(update={"consumer": consumer})


__all__ = [
    "AppConfig",
    "KafkaConfig",
    "ConsumerSection",
    "ProducerSection",
    "ClientConfig",
    "ProducerClientConfig",
    "ConsumerClientConfig",
    "TopicConsumeConfig",
    "SubscriptionConfig",
    "ConfigEntry",
    "URL_KEY_PLACEHOLDER",
    "Problem",
    "check_listen_addr",
    "check_seconds",
    "MAX_SECONDS",
    "LOG_LEVELS",
    "CONSUME_MODES",
]
