"""`Application`: the service. An ASGI app (FastAPI inside) that starts its infrastructure with it.

    app = freedom.Application()     # serve with: freedom run example:app

Set-up (config files, `@freedom.prepare` hooks) happens once, before the first request or at
`freedom run`; the Kafka infrastructure starts with the ASGI lifespan and stops with it.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Sequence

from fastapi import FastAPI

from .config import (AppConfig, KafkaConfig, check_topic_overrides, find_config_dir, load_app_config,
                     load_kafka_config)
from .controllers import Injectables
from .domain import Database, DomainEventInfra, UnitOfWork
from .domain import infra as domain_infra
from .initiator import Initiator, PrepareHook, registered_prepare_hooks, route_keys_with_slashes
from .infra.kafka.delivery import EventRoute
from .infra.kafka.infra import KafkaInfra
from .infra.kafka.producer import Producer
from .outcomes import Outcome, handle_outcome
from .security import secure_event_routes

log = logging.getLogger("freedom")


class Application:
    """A freedom service: controllers, events and the Kafka infrastructure behind them."""

    def __init__(
        self,
        *,
        config_dir: str | os.PathLike[str] | None = None,
        prepare: Sequence[PrepareHook] | None = None,
        embedded_broker: bool = False,
        title: str = "freedom",
    ) -> None:
        """`config_dir` overrides the config lookup; `prepare` replaces the `@freedom.prepare` hooks;
        `embedded_broker` forces the embedded broker for every Kafka client."""
        self._config_dir_arg = config_dir
        self._prepare = list(prepare) if prepare is not None else None
        self.embedded_broker = embedded_broker
        self.listen_addr: str | None = None  # overrides app.toml's listen_addr (freedom run --listen)
        self.fastapi = FastAPI(title=title, lifespan=self._lifespan)
        # Event handlers raise freedom.Retry / DeadLetter / Drop to choose their outcome (outcomes.py).
        self.fastapi.add_exception_handler(Outcome, handle_outcome)
        self.injectables: Injectables = {}
        self.config: AppConfig = AppConfig()
        self.kafka_config: KafkaConfig | None = None
        self.kafka: KafkaInfra | None = None
        self.event_routes: dict[str, EventRoute] = {}
        self.domain_event_infra: DomainEventInfra | None = None  # install_domain_event_infra
        self.database: Database | None = None  # install_database
        self.injectables[UnitOfWork] = lambda rt: UnitOfWork(self, rt)
        self._is_set_up = False
        self._started = False

    # ------------------------------------------------------------------ set-up

    def setup(self) -> "Application":
        """Read the config and run the prepare hooks (once). Raises ConfigError / RouteError."""
        if self._is_set_up:
            return self
        config_dir = find_config_dir(self._config_dir_arg)
        self.config = load_app_config(config_dir, listen_addr=self.listen_addr)
        self.kafka_config = load_kafka_config(config_dir)
        if self.kafka_config is not None:
            self.kafka = KafkaInfra(self.kafka_config, embedded=self.embedded_broker)
            kafka = self.kafka
            self.injectables[Producer] = lambda _rt: kafka.producer
        else:
            reason = "Kafka is not configured: create conf/infra/kafka.toml with [producer] open = true"
            disabled = Producer(disabled_reason=reason)
            self.injectables[Producer] = lambda _rt: disabled
        initiator = Initiator(self, self.fastapi, self.injectables)
        hooks = self._prepare if self._prepare is not None else registered_prepare_hooks()
        for hook in hooks:
            hook(initiator)
        self.event_routes = initiator.event_routes()
        if self.kafka_config is not None:  # a per-topic table for a topic nobody listens to is a mistake
            check_topic_overrides(self.kafka_config, self.event_routes)
        secure_event_routes(self.fastapi, self.event_routes, self.kafka_config, self.config.listen_addr)
        route_keys_with_slashes(self.fastapi, self.event_routes, getattr(self.kafka_config, "proxy_secret", None))
        self._is_set_up = True
        return self

    def install_domain_event_infra(self, infra: DomainEventInfra) -> None:
        """Install the one infrastructure entities publish domain events through (SPEC §6)."""
        domain_infra.install(self, infra)

    def install_database(self, database: Database) -> None:
        """Install the database whose outbox holds domain events until the relay publishes them."""
        database.install(self)

    @property
    def config_dir(self) -> Path | None:
        return find_config_dir(self._config_dir_arg)

    # ------------------------------------------------------------------ running

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if not self._is_set_up:
            self.setup()
        await self.fastapi(scope, receive, send)

    @contextlib.asynccontextmanager
    async def _lifespan(self, _api: FastAPI) -> AsyncIterator[None]:
        await self.start()
        try:
            yield
        finally:
            await self.stop()

    async def start(self) -> None:
        """Start the infrastructure: embedded broker, producer, consumer proxies."""
        self.setup()
        if self._started:
            return
        self._started = True
        if self.kafka is not None:
            try:
                await self.kafka.start(self.event_routes, app=self.fastapi)
            except BaseException:
                await self.kafka.stop()
                raise
            await self.kafka.wait_ready()
        if self.database is not None:
            try:
                await self.database.start(self)  # creates the outbox tables, starts the relay
            except BaseException:
                await self.stop()
                raise
        if self.kafka is not None:
            self.kafka.app_started.set()  # in-process deliveries may begin

    async def stop_consuming(self) -> None:
        """Stop the consumer proxies first (drain, commit), while the HTTP server still serves them."""
        if self.kafka is not None:
            for proxy in list(self.kafka.proxies):
                await proxy.stop()
            self.kafka.proxies.clear()

    async def stop(self) -> None:
        if self.database is not None and self._started:
            await self.database.stop()  # the relay first: it publishes through the producer
        if self.kafka is not None and self._started:
            await self.kafka.stop()
        self._started = False

    def run(self, *, host: str | None = None, port: int | None = None) -> None:
        """Serve the application (HTTP server and consumer proxy) until SIGINT/SIGTERM."""
        from .server import serve

        serve(self, host=host, port=port)

    @property
    def producer(self) -> Producer:
        """The producer, for publishing outside a controller (a script, a background task)."""
        self.setup()
        return self.injectables[Producer](None)  # type: ignore[arg-type]
