"""`KafkaInfra`: the Kafka side of a service, started and stopped with it.

It owns the embedded broker (when used), the producer clients and one consumer proxy per
`[[consumer_clients]]` entry, and makes them from `kafka.toml`.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from freedom.config.librdkafka import PRODUCER_DEFAULTS
from freedom.config.models import ConsumerClientConfig, KafkaConfig
from freedom.kafka.admin import check_reachable, ensure_topics
from freedom.kafka.consumer.delivery import (
    INPROCESS,
    DeliveryResult,
    EventRoute,
    RawAnswer,
    Transport,
)
from freedom.kafka.consumer.proxy import ConsumerProxy
from freedom.kafka.producing.client import ProducerClient
from freedom.kafka.producing.producer import Producer
from freedom.kafka.settings import client_settings
from freedom.kafka.transports import make_transport
from freedom.kafka.transports.direct import DirectRoutes

log = logging.getLogger("freedom.kafka")


class AfterStartup:
    """A transport whose deliveries wait until the application has started, its user start-up code
    included (`app_started`), however long that takes: handlers may rely on what start-up made,
    over HTTP as in-process. Then the service's own wait (the port listening) gets its usual window."""

    def __init__(self, inner: Transport, started: asyncio.Event) -> None:
        self.inner, self.started = inner, started
        self.proxy_addr = inner.proxy_addr
        self.deliver = inner.deliver  # bound as they are: no extra call per delivery
        self.aclose = inner.aclose

    async def post(
        self,
        path: str,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        *,
        keep_body: int,
        wait: float | None = None,
    ) -> RawAnswer | DeliveryResult:
        """The inner transport's `post` (a batch, batching.py), found when a batch is sent."""
        return await self.inner.post(path, headers, body, keep_body=keep_body, wait=wait)

    async def wait_until_reachable(self, deadline: float, stop: asyncio.Event) -> bool:
        loop = asyncio.get_running_loop()
        window = deadline - loop.time()
        if not self.started.is_set():
            waiters = {
                asyncio.ensure_future(self.started.wait()),
                asyncio.ensure_future(stop.wait()),
            }
            try:
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waiters:
                    w.cancel()
            if not self.started.is_set():
                return False
        return await self.inner.wait_until_reachable(loop.time() + window, stop)


def delivery_path(
    proxy_addr: str, cfg: KafkaConfig, routes: dict[str, EventRoute], direct: DirectRoutes | None
) -> str:
    """The start-up line saying which path the service's deliveries take, and why."""
    if proxy_addr != INPROCESS:
        how = "HTTP/2 cleartext (h2c)" if cfg.consumer.proxy_http2 else "HTTP/1.1"
        return f"consumer deliveries: over {how} to {proxy_addr}"
    if direct is None:
        why = (
            'inprocess_dispatch = "asgi"'
            if cfg.consumer.inprocess_dispatch == "asgi"
            else "no direct calls were handed over"
        )
        return f"consumer deliveries: in-process through the ASGI application, every route ({why})"
    paths = sorted({r.path for r in routes.values()})
    fallbacks = [p for p in paths if p not in direct.calls]
    line = (
        f"consumer deliveries: in-process direct: {_routes(len(paths) - len(fallbacks))} "
        "(each handler called by the consumer proxy, without HTTP middleware)"
    )
    if fallbacks:
        why = "; ".join(f"{p}: {direct.fallbacks.get(p, 'no direct call')}" for p in fallbacks)
        line += f"; ASGI: {_routes(len(fallbacks))} ({why})"
    return line


def _routes(n: int) -> str:
    return f"{n} route" if n == 1 else f"{n} routes"


class KafkaBackend:
    """What the Kafka side runs on: the clusters of kafka.toml (this class). freedom.testing's
    TestBroker replaces it with an in-memory broker: only the librdkafka clients change (the
    producer client's librdkafka producer, the consumer groups' loop, the admin calls); the
    publishing, delivery, outcome and retry code is the same."""

    #: False for a stand-in broker: no embedded broker is started, deliveries are in-process.
    real = True

    def default_config(self) -> KafkaConfig | None:
        """The configuration of an application without kafka.toml: none (Kafka is off)."""
        return None

    def proxy_addr(self, configured: str) -> str:
        return configured

    def producer_client(self, name: str, settings: dict[str, Any]) -> ProducerClient:
        return ProducerClient(name, settings)

    async def check_reachable(self, settings: dict[str, Any], where: str) -> None:
        await asyncio.to_thread(check_reachable, settings, where)

    async def ensure_topics(self, settings: dict[str, Any], topics: list[str]) -> None:
        await asyncio.to_thread(ensure_topics, settings, topics)

    def consumer_proxy(
        self,
        config: ConsumerClientConfig,
        settings: dict[str, Any],
        routes: dict[str, EventRoute],
        delivery: Transport,
    ) -> ConsumerProxy:
        return ConsumerProxy(config, settings, routes, delivery)


class KafkaInfra:
    """Producer and consumer proxies of one service, made from its `kafka.toml`."""

    def __init__(
        self,
        config: KafkaConfig,
        *,
        embedded: bool = False,
        ready_timeout: float = 30.0,
        backend: KafkaBackend | None = None,
        config_dir: Path | None = None,
    ) -> None:
        self.config = config
        #: Where the embedded broker is recorded for the operations commands (broker_state.py).
        self.config_dir = config_dir
        self.backend = backend or KafkaBackend()
        self.use_embedded = (embedded or config.needs_embedded_broker) and self.backend.real
        self.ready_timeout = ready_timeout
        self.embedded: Any = None
        self.producer = Producer(disabled_reason="the Kafka producer is not started yet")
        self.proxies: list[ConsumerProxy] = []
        self.delivery: Transport | None = None
        # Set by the Application once it has started (user start-up code included): every delivery
        # waits for it (AfterStartup), HTTP deliveries then also for the server to listen.
        self.app_started = asyncio.Event()

    def use_backend(self, backend: KafkaBackend) -> None:
        """Run the Kafka side on `backend` (before start): freedom.testing's in-memory broker."""
        self.backend = backend
        self.use_embedded = self.use_embedded and backend.real

    def _servers(self, servers: tuple[str, ...] | None) -> tuple[str, ...]:
        if self.use_embedded:
            return (self.embedded.bootstrap,)
        if (
            servers is None
        ):  # only on a backend that needs none (freedom.testing's in-memory broker)
            return ("memory",)
        return servers

    async def start(
        self,
        routes: dict[str, EventRoute],
        app: Any = None,
        direct_calls: DirectRoutes | None = None,
    ) -> None:
        """Start the clients; `app` is the ASGI application in-process delivery calls, and
        `direct_calls` the handlers it calls directly (`inprocess_dispatch = "direct"`)."""
        cfg = self.config
        if self.use_embedded and cfg.consumer.open:
            _refuse_share_groups_on_embedded(cfg)
        if self.use_embedded:
            from freedom.kafka.embedded import broker_for

            # `freedom run --reload` runs the broker in its supervisor, kept across reloads;
            # `freedom broker` runs one for the config directories it is recorded in.
            self.embedded = broker_for(self.config_dir)
            await asyncio.to_thread(self.embedded.start)
            log.warning(
                "using the embedded Kafka broker at %s: %s",
                self.embedded.bootstrap,
                self.embedded.lifetime,
            )
            for path in getattr(self.embedded, "recorded", ()):
                log.info(
                    "recorded the embedded broker in %s: freedom status, dlq and offsets reach it",
                    path,
                )

        if cfg.producer.open:
            clients = {}
            for i, c in enumerate(cfg.producer_clients):
                base = {
                    **PRODUCER_DEFAULTS,
                    "message.timeout.ms": int(c.delivery_timeout_sec * 1000),
                }
                settings = client_settings(
                    self._servers(c.servers), "producer", c.name, base, c.librdkafka_settings
                )
                await self.backend.check_reachable(settings, f"producer_clients[{i}] in {cfg.file}")
                clients[c.name] = self.backend.producer_client(c.name, settings)
            unnamed = "" if "" in clients else None
            self.producer = Producer(clients, default=unnamed)
        else:
            self.producer = Producer(
                disabled_reason=f"the Kafka producer is off: set [producer] open = true in {cfg.file}"
            )

        if cfg.consumer.open:
            if not routes:
                log.warning(
                    "[consumer] open = true in %s, but no event is bound (initiator.listen_event)",
                    cfg.file,
                )
            else:
                proxy_addr = self.backend.proxy_addr(cfg.consumer.proxy_addr)
                direct = direct_calls if cfg.consumer.inprocess_dispatch == "direct" else None
                self.delivery = AfterStartup(
                    make_transport(
                        proxy_addr,
                        http2=cfg.consumer.proxy_http2,
                        secret=cfg.consumer.shared_secret,
                        app=app,
                        ready=self.app_started,
                        direct=direct if proxy_addr == INPROCESS else None,
                    ),
                    self.app_started,
                )
                log.info("%s", delivery_path(proxy_addr, cfg, routes, direct))
                for i, cc in enumerate(cfg.consumer_clients):
                    # Tansu holds a new group's join for half the session timeout: keep it short there.
                    base = {"session.timeout.ms": 6000} if self.use_embedded else {}
                    settings = client_settings(
                        self._servers(cc.servers),
                        "consumer",
                        cc.group_id,
                        base,
                        cc.librdkafka_settings,
                    )
                    where = f"consumer_clients[{i}] in {cfg.file}"
                    await self.backend.check_reachable(settings, where)
                    await self.backend.ensure_topics(settings, list(routes))
                    proxy = self.backend.consumer_proxy(cc, settings, routes, self.delivery)
                    await proxy.start()
                    self.proxies.append(proxy)

    async def wait_ready(self) -> None:
        """Wait (bounded) until every consumer group got its partitions, so no early record is missed."""
        if not self.proxies:
            return
        try:
            await asyncio.wait_for(
                asyncio.gather(*(p.assigned.wait() for p in self.proxies)), self.ready_timeout
            )
        except TimeoutError:
            log.warning(
                "consumer groups not assigned partitions within %.0f s; continuing",
                self.ready_timeout,
            )

    async def stop(self) -> None:
        """Stop the proxies (drain, commit), then flush the producer, then the embedded broker."""
        for proxy in self.proxies:
            try:
                await proxy.stop()
            except Exception:  # noqa: BLE001 - keep stopping the rest
                log.exception("stopping consumer group %r failed", proxy.config.group_id)
        self.proxies.clear()
        if self.delivery is not None:
            await self.delivery.aclose()
        await asyncio.to_thread(self.producer.close)
        self.producer = Producer(disabled_reason="cannot publish: the service has stopped")
        if self.embedded is not None:
            await asyncio.to_thread(self.embedded.stop)
            self.embedded = None


def _refuse_share_groups_on_embedded(cfg: KafkaConfig) -> None:
    """The embedded broker has no share groups (its client would wait for records forever)."""
    from freedom.kafka.admin import NEEDS_SHARE_GROUPS, ShareGroupsUnavailable

    for i, client in enumerate(cfg.consumer_clients):
        if client.share_group:
            raise ShareGroupsUnavailable(
                f"{cfg.file}: consumer_clients[{i}].share_group: the embedded broker has no share "
                f"groups; a share group needs {NEEDS_SHARE_GROUPS}: give the client its `servers`, "
                "or remove share_group"
            )
