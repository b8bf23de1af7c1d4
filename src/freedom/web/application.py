"""`Application`: the service. An ASGI app (FastAPI inside) that starts its infrastructure with it.

    app = freedom.Application()     # serve with: freedom run example:app

Set-up (config files, `@freedom.prepare` hooks) happens once, before the first request or at
`freedom run`; the Kafka infrastructure starts with the ASGI lifespan and stops with it.

Start-up and shutdown, in this order (README "Start-up and shutdown"):

1. the Kafka side: embedded broker, producer, consumer groups joined, database and outbox relay;
2. the user's start-up code: `Application(lifespan=...)` entered, then the `@app.on_startup`
   functions (they may publish);
3. deliveries to the handlers begin (HTTP and in-process alike);
   ... the service runs ...
4. the consumer proxies drain (no handler runs after this);
5. the user's shutdown code: the `@app.on_shutdown` functions, then the lifespan's exit (they may
   still publish);
6. the database and relay stop, the producer flushes and closes, the embedded broker stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import (
    Any,
    TypeVar,
    cast,
)

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute

from freedom.config.loading import (
    check_topic_overrides,
    find_config_dir,
    load_app_config,
    load_kafka_config,
)
from freedom.config.models import AppConfig, KafkaConfig
from freedom.domain import Database, DomainEventInfra, UnitOfWork
from freedom.domain import event_infra as domain_infra
from freedom.errors import FreedomError, RouteError
from freedom.kafka.consumer.delivery import EventRoute
from freedom.kafka.producer import Producer
from freedom.kafka.service import KafkaBackend, KafkaInfra
from freedom.kafka.transports.direct import DirectRoutes
from freedom.observability import endpoints as observability
from freedom.runner.addresses import port_of, proxy_addr_for, proxy_addr_mismatch
from freedom.web.controllers import Injectables
from freedom.web.deadline import enforce_deadlines
from freedom.web.direct_routes import compile_direct
from freedom.web.event_middleware import EventMiddleware
from freedom.web.failures import FailureAnswers
from freedom.web.guard import secure_event_routes
from freedom.web.http_direct import http_entry
from freedom.web.initiator import (
    Initiator,
    PrepareHook,
    calling_module,
    prepare_modules,
    registered_prepare_hooks,
    route_keys_with_slashes,
)
from freedom.web.route_order import move_event_routes_forward
from freedom.web.telemetry import cache_telemetry_check
from freedom.wire.outcomes import Outcome, handle_outcome

log = logging.getLogger("freedom")

#: A start-up or shutdown function: no arguments, plain or `async def`.
Hook = Callable[[], "Awaitable[None] | None"]
HookT = TypeVar("HookT", bound=Callable[[], Any])
EventMiddlewareT = TypeVar("EventMiddlewareT", bound=EventMiddleware)
#: `Application(lifespan=...)`: called with the Application, gives an async context manager whose
#: entry is start-up code and whose exit is shutdown code (as FastAPI's `lifespan`). What it yields,
#: when a mapping, is set on `app.fastapi.state` (`request.app.state.<name>` in a handler).
Lifespan = Callable[["Application"], contextlib.AbstractAsyncContextManager[Any]]


class StartupError(FreedomError):
    """The user's start-up code (lifespan or `@app.on_startup` function) raised: start-up stopped."""


def _name(fn: Any) -> str:
    return (
        f"{getattr(fn, '__module__', None) or '?'}.{getattr(fn, '__qualname__', None) or repr(fn)}"
    )


def _startup_error(what: str, exc: BaseException) -> StartupError:
    """One line: which code failed, the exception, and where it was raised (the traceback is in the
    DEBUG log)."""
    frames = traceback.extract_tb(exc.__traceback__)
    at = f" ({os.path.basename(frames[-1].filename)}, line {frames[-1].lineno})" if frames else ""
    text = " ".join(str(exc).split())
    log.debug("%s failed", what, exc_info=exc)
    return StartupError(f"{what} failed: {type(exc).__name__}{': ' + text if text else ''}{at}")


def hide_event_routes(api: FastAPI, routes: Mapping[str, EventRoute]) -> None:
    """Leave the routes that `listen_event` bound out of the OpenAPI document: the consumer proxy
    calls them, not the service's HTTP clients (the AsyncAPI document describes them)."""
    paths = {r.path for r in routes.values()}
    for route in api.router.routes:
        if isinstance(route, APIRoute) and route.path in paths and "POST" in (route.methods or ()):
            route.include_in_schema = False
    api.openapi_schema = None  # made again, without them, when first asked for


class Application:
    """A freedom service: controllers, events and the Kafka infrastructure behind them."""

    def __init__(
        self,
        *,
        config_dir: str | os.PathLike[str] | None = None,
        prepare: Sequence[PrepareHook | ModuleType] | None = None,
        embedded_broker: bool = False,
        title: str | None = None,
        lifespan: Lifespan | None = None,
    ) -> None:
        """`config_dir` overrides the config lookup; `prepare` lists the start-up hooks (functions
        taking the Initiator, or modules: the `@freedom.prepare` hooks each registered) instead of
        the `@freedom.prepare` hooks of the module this Application is made in;
        `embedded_broker` forces the embedded broker for every Kafka client; `lifespan(app)` is an
        async context manager run around the service's life, once the Kafka side is up (as FastAPI's);
        `title` is the OpenAPI document's title (default: app.toml's `service_name`)."""
        self._config_dir_arg = config_dir
        #: The module this Application was made in (its `__name__`): its `@freedom.prepare` hooks
        #: are this application's, and the test broker looks for its conf/ next to it.
        self.module_name = calling_module()
        if prepare is not None:
            for item in prepare:
                if not (isinstance(item, ModuleType) or callable(item)):
                    raise RouteError(
                        f"Application(prepare=[...]): {item!r} is neither a function taking the "
                        "Initiator nor a module; list start-up hooks, or modules whose "
                        "@freedom.prepare hooks to run"
                    )
        self._prepare = list(prepare) if prepare is not None else None
        self._app_hooks: list[PrepareHook] = []  # @app.prepare
        self.embedded_broker = embedded_broker
        self.listen_addr: str | None = (
            None  # overrides app.toml's listen_addr (freedom run --listen)
        )
        self.fastapi = FastAPI(title=title or "freedom", lifespan=self._lifespan)
        cache_telemetry_check(
            self.fastapi
        )  # FastAPI's per-request OpenTelemetry lookup (fastapi_telemetry.py)
        self._title = title
        # Event handlers raise freedom.Retry / DeadLetter / Drop to choose their outcome (outcomes.py).
        self.fastapi.add_exception_handler(Outcome, handle_outcome)
        # The AsyncAPI document of the event bindings (asyncapi.py): GET /asyncapi.json.
        self.fastapi.add_api_route(
            "/asyncapi.json", self._asyncapi, methods=["GET"], include_in_schema=False
        )
        #: What the Kafka side runs on: None for kafka.toml's clusters; freedom.testing.TestBroker sets
        #: its in-memory broker (before set-up).
        self.kafka_backend: KafkaBackend | None = None
        #: topic -> (payload type, description) of `initiator.publishes` (the AsyncAPI document's sends).
        self.declared_publishes: dict[str, tuple[Any, str | None]] = {}
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
        if lifespan is not None and inspect.isasyncgenfunction(lifespan):
            lifespan = contextlib.asynccontextmanager(
                lifespan
            )  # as Starlette: the decorator may be left out
        self.lifespan = lifespan
        self._startup_hooks: list[Hook] = []
        self._shutdown_hooks: list[Hook] = []
        self._event_middleware: list[EventMiddleware] = []
        self._failures = FailureAnswers()  # made again from app.toml's error_detail at set-up
        self._user_code: contextlib.AsyncExitStack | None = (
            None  # the lifespan entered, until shutdown
        )
        self._user_started = False  # every start-up function returned: shutdown code is owed
        self._draining: asyncio.Future[None] | None = None
        #: The address the service is served on: listen_addr, or Application.run()'s host and port.
        self.serving_addr: str | None = None
        #: A worker's own delivery port (deliver_to), where its consumer proxy posts instead.
        self._own_delivery: str | None = None
        #: What __call__ hands requests to: the FastAPI application, or from start-up on the HTTP
        #: entry in front of it that calls event handlers directly (web/http_direct.py).
        self._asgi: Callable[..., Awaitable[None]] = self.fastapi

    # ------------------------------------------------------------------ start-up and shutdown code

    def on_startup(self, fn: HookT) -> HookT:
        """Decorator: run `fn()` (plain or async, no arguments) at start-up, after the Kafka side
        is ready (it may publish) and before the first delivery to a handler; functions run in the
        order they were registered, after the lifespan's entry. If one raises, start-up stops."""
        self._startup_hooks.append(fn)
        return fn

    def on_shutdown(self, fn: HookT) -> HookT:
        """Decorator: run `fn()` (plain or async, no arguments) at shutdown, once the consumer
        proxies have drained (no handler runs any more) and before the producer closes (it may
        still publish); in the order registered, before the lifespan's exit."""
        self._shutdown_hooks.append(fn)
        return fn

    def event_middleware(self, fn: EventMiddlewareT) -> EventMiddlewareT:
        """Decorator: wrap every direct delivery to an event handler in
        `async def fn(delivery: freedom.EventDelivery, call_next) -> freedom.DeliveryResult`
        (`return await call_next(delivery)` runs the rest, the handler at the end). Functions run
        in the order registered, the first outermost, on direct deliveries only (deliveries through
        the ASGI application run its HTTP middleware instead); register them before start-up."""
        given: Any = fn  # (iscoroutinefunction narrows what it checks)
        if not inspect.iscoroutinefunction(given):
            raise RouteError(
                f"app.event_middleware({_name(fn)}): an event middleware is an `async def "
                "fn(delivery, call_next)` returning `await call_next(delivery)`"
            )
        if self._started:
            raise RouteError(
                f"app.event_middleware({_name(fn)}): the application has started already; "
                "register event middleware before it starts"
            )
        self._event_middleware.append(fn)
        return fn

    def direct_calls(self) -> DirectRoutes | None:
        """The handlers the consumer proxy calls directly (web/direct.py), when in-process
        deliveries are to be direct (`inprocess_dispatch = "direct"`, the default); None otherwise."""
        cfg = self.kafka.config if self.kafka is not None else None
        if cfg is None or not cfg.consumer.open or cfg.consumer.inprocess_dispatch != "direct":
            return None
        return compile_direct(
            self.fastapi, self.event_routes, self._failures, self._event_middleware
        )

    # ------------------------------------------------------------------ set-up

    def prepare(self, hook: PrepareHook) -> PrepareHook:
        """Decorator: a start-up hook of this application only, `hook(initiator)`, run at set-up
        after the `@freedom.prepare` (or `prepare=[...]`) hooks, in the order registered."""
        if self._is_set_up:
            raise RouteError(
                f"app.prepare({_name(hook)}): the application is set up already; register "
                "start-up hooks before it starts (at import time, or in make_app())"
            )
        self._app_hooks.append(hook)
        return hook

    def prepare_hooks(self) -> list[PrepareHook]:
        """The start-up hooks set-up runs, in order: `prepare=[...]` (a module in it: the hooks it
        registered), else the `@freedom.prepare` hooks of the module the application was made in;
        then the `@app.prepare` hooks."""
        if self._prepare is None:
            hooks = registered_prepare_hooks(self.module_name)
            others = [m for m in prepare_modules() if m != self.module_name]
            if not hooks and not self._app_hooks and others:
                log.warning(
                    "the Application made in %s runs no start-up hook: a @freedom.prepare hook "
                    "belongs to the module that registers it, and %s registered some; to run them "
                    "here, name them: freedom.Application(prepare=[%s])",
                    self.module_name,
                    ", ".join(others),
                    ", ".join(others),
                )
            return hooks + self._app_hooks
        listed: list[PrepareHook] = []
        for item in self._prepare:
            if not isinstance(item, ModuleType):
                listed.append(item)
                continue
            found = registered_prepare_hooks(item.__name__)
            if not found:
                raise RouteError(
                    f"Application(prepare=[{item.__name__}]): module {item.__name__} registered "
                    "no @freedom.prepare hook; list its start-up functions instead, or decorate "
                    "them with @freedom.prepare"
                )
            listed.extend(found)
        return listed + self._app_hooks

    def setup(self) -> Application:
        """Read the config and run the prepare hooks (once). Raises ConfigError / RouteError."""
        if self._is_set_up:
            return self
        config_dir = find_config_dir(self._config_dir_arg)
        self.config = load_app_config(config_dir, listen_addr=self.listen_addr)
        self.kafka_config = load_kafka_config(config_dir)
        if self.kafka_config is None and self.kafka_backend is not None:
            self.kafka_config = self.kafka_backend.default_config()
        self.serving_addr = self.config.listen_addr
        if self.kafka_config is not None:
            self.kafka_config = self._following(self.kafka_config, self.serving_addr)
            self.kafka = KafkaInfra(
                self.kafka_config,
                embedded=self.embedded_broker,
                backend=self.kafka_backend,
                config_dir=config_dir,
            )
            kafka = self.kafka
            self.injectables[Producer] = lambda _rt: kafka.producer
        else:
            reason = (
                "Kafka is not configured: create conf/infra/kafka.toml with [producer] open = true"
            )
            disabled = Producer(disabled_reason=reason)
            self.injectables[Producer] = lambda _rt: disabled
        initiator = Initiator(self, self.fastapi, self.injectables)
        for hook in self.prepare_hooks():
            hook(initiator)
        self.event_routes = initiator.event_routes()
        if (
            self.kafka_config is not None
        ):  # a per-topic table for a topic nobody listens to is a mistake
            check_topic_overrides(self.kafka_config, self.event_routes)
        if self._title is None:
            self.fastapi.title = self.config.service_name
        hide_event_routes(
            self.fastapi, self.event_routes
        )  # they are in the AsyncAPI document, not OpenAPI
        secure_event_routes(
            self.fastapi, self.event_routes, self.kafka_config, self.config.listen_addr
        )
        # A handler running past its delivery's x-freedom-timeout-ms is cancelled (deadline.py);
        # one that raises is answered 500 naming the exception (failures.py).
        self._failures = FailureAnswers(detail=self.config.error_detail)
        enforce_deadlines(
            self.fastapi, {r.path for r in self.event_routes.values()}, self._failures
        )
        route_keys_with_slashes(
            self.fastapi,
            self.event_routes,
            self.kafka_config.consumer.shared_secret if self.kafka_config is not None else None,
        )
        observability.install(self)  # GET /metrics, /livez, /readyz; app.toml's log_format
        from freedom.console import install as install_console

        install_console(self)  # the web console, when app.toml sets console_token (docs/console.md)
        # Deliveries skip the GET-only documents' path matches (route_order.py).
        move_event_routes_forward(self.fastapi, {r.path for r in self.event_routes.values()})
        self._is_set_up = True
        return self

    @staticmethod
    def _following(config: KafkaConfig, listen_addr: str) -> KafkaConfig:
        """`config` with proxy_addr following `listen_addr` when kafka.toml does not set it."""
        if config.consumer.proxy_addr_explicit:
            return config
        return config.delivering_to(proxy_addr_for(listen_addr))

    def serve_on(self, listen_addr: str) -> None:
        """Record that the service is served on `listen_addr` (Application.run's host and port, after
        set-up): a proxy_addr not set explicitly follows it."""
        self.setup()
        self.serving_addr = listen_addr
        if self.kafka_config is not None:
            self._use_kafka_config(self._following(self.kafka_config, listen_addr))

    def deliver_to(self, base_url: str) -> None:
        """Point the consumer proxy's HTTP deliveries at `base_url` (a worker's own port, server.py),
        leaving the listen address as it is. Before start()."""
        self.setup()
        self._own_delivery = base_url
        if self.kafka_config is not None:
            self._use_kafka_config(self.kafka_config.delivering_to(base_url))

    def _use_kafka_config(self, config: KafkaConfig) -> None:
        """`config` for the Kafka side from now on (set up, not started yet)."""
        self.kafka_config = config
        if self.kafka is not None:
            self.kafka.config = config

    def _warn_proxy_addr(self) -> None:
        """One start-up warning when an explicit proxy_addr points at a port of this machine the
        service does not listen on (`--listen` changed the port, but kafka.toml still names the old one).
        None for a worker of `freedom run --workers` delivering to its own port (deliver_to): its
        proxy_addr named the service's own address, and freedom moved it there on purpose."""
        cfg, listen = self.kafka_config, self.serving_addr or self.config.listen_addr
        if (
            self._own_delivery is not None
            or cfg is None
            or not cfg.consumer.open
            or not self.event_routes
            or not cfg.consumer.proxy_addr_explicit
        ):
            return
        if proxy_addr_mismatch(cfg.consumer.proxy_addr, listen):
            file, key = self.config.listen_from
            source = f"{file}: {key}" if key else file
            log.warning(
                "[consumer] proxy_addr = %s (%s) points at port %s of this machine, but the service "
                "listens on %s (%s): deliveries go to that other port; remove proxy_addr to follow "
                "the listen address, or ignore this if something there forwards to the service",
                cfg.consumer.proxy_addr,
                cfg.file,
                port_of(cfg.consumer.proxy_addr),
                listen,
                source,
            )

    def install_domain_event_infra(self, infra: DomainEventInfra) -> None:
        """Install the one infrastructure entities publish domain events through
        (docs/contract.md, "Domain events on the wire")."""
        domain_infra.install(self, infra)

    def install_database(self, database: Database) -> None:
        """Install the database whose outbox holds domain events until the relay publishes them."""
        database.install(self)

    async def _asyncapi(self) -> JSONResponse:
        from freedom.web.asyncapi import document

        return JSONResponse(document(self))

    @property
    def config_dir(self) -> Path | None:
        return find_config_dir(self._config_dir_arg)

    # ------------------------------------------------------------------ running

    async def __call__(
        self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]
    ) -> None:
        if not self._is_set_up:
            self.setup()
        await self._asgi(scope, receive, send)

    @contextlib.asynccontextmanager
    async def _lifespan(self, _api: FastAPI) -> AsyncIterator[None]:
        await self.start()
        try:
            yield
        finally:
            await self.stop()

    async def start(self) -> None:
        """Start the Kafka side (embedded broker, producer, consumer groups), the database, then the
        user's start-up code; deliveries to handlers begin after it. On any failure what was
        started is stopped again; user code that raised is a :class:`StartupError` (one line)."""
        self.setup()
        if self._started:
            return
        self._started = True
        self._warn_proxy_addr()
        try:
            if self.kafka is not None:
                await self.kafka.start(
                    self.event_routes, app=self.fastapi, direct_calls=self.direct_calls()
                )
                await self.kafka.wait_ready()
            if self.database is not None:
                await self.database.start(self)  # creates the outbox tables, starts the relay
            await self._run_startup_code()
        except BaseException:
            await self.stop()
            raise
        # Deliveries received over HTTP: to the event handlers directly, unless http_dispatch =
        # "asgi" (web/http_direct.py); the application itself for everything else.
        self._asgi = http_entry(
            self.fastapi,
            self.event_routes,
            self.kafka_config,
            self._failures,
            self._event_middleware,
        )
        if self.kafka is not None:
            self.kafka.app_started.set()  # deliveries may begin (HTTP and in-process alike)

    async def _run_startup_code(self) -> None:
        self._user_code = contextlib.AsyncExitStack()
        if self.lifespan is not None:
            try:
                state = await self._user_code.enter_async_context(self.lifespan(self))
            except Exception as exc:
                raise _startup_error(f"the lifespan {_name(self.lifespan)}", exc) from exc
            if isinstance(state, Mapping):
                for k, v in state.items():
                    setattr(self.fastapi.state, k, v)
        # Then FastAPI's own @app.fastapi.on_event("startup") handlers (its lifespan is ours).
        for hook in [*self._startup_hooks, *getattr(self.fastapi.router, "on_startup", ())]:
            try:
                result = hook()
                if inspect.isawaitable(result):
                    await result
            except Exception as exc:
                raise _startup_error(f"the start-up function {_name(hook)}", exc) from exc
        self._user_started = True

    async def _run_shutdown_code(self) -> None:
        """The `@on_shutdown` functions (only when start-up finished), then the lifespan's exit;
        a failure is logged and the rest still runs: the producer must still be flushed."""
        if self._user_started:
            self._user_started = False
            for hook in [*self._shutdown_hooks, *getattr(self.fastapi.router, "on_shutdown", ())]:
                try:
                    result = hook()
                    if inspect.isawaitable(result):
                        await result
                except Exception:  # noqa: BLE001 - keep stopping
                    log.exception("the shutdown function %s failed", _name(hook))
        stack, self._user_code = self._user_code, None
        if stack is not None:
            try:
                await stack.aclose()
            except Exception:  # noqa: BLE001
                log.exception("the lifespan %s failed at its exit", _name(self.lifespan))

    async def stop_consuming(self) -> None:
        """Stop the consumer proxies first (drain, commit), while the HTTP server still serves them.

        Called by the server at the first signal and again by :meth:`stop`: the second call waits
        for the same drain, so shutdown code never starts while a handler still runs."""
        if self.kafka is None:
            return
        if self._draining is None:
            self._draining = asyncio.ensure_future(self._drain(self.kafka))
        await asyncio.shield(self._draining)

    @staticmethod
    async def _drain(kafka: KafkaInfra) -> None:
        for proxy in list(kafka.proxies):
            try:
                await proxy.stop()
            except Exception:  # noqa: BLE001 - keep stopping the rest
                log.exception("stopping consumer group %r failed", proxy.config.group_id)
        kafka.proxies.clear()

    async def stop(self) -> None:
        """Drain the consumer proxies, run the user's shutdown code, then stop the database and
        relay, flush and close the producer, and stop the embedded broker."""
        if not self._started:
            return
        self._started = False
        try:
            await self.stop_consuming()
            await self._run_shutdown_code()
        finally:
            try:
                if self.database is not None:
                    await (
                        self.database.stop()
                    )  # the relay before the producer: it publishes through it
            finally:
                if self.kafka is not None:
                    await self.kafka.stop()
                    self.kafka.app_started.clear()
                self._draining = None

    def run(self, *, host: str | None = None, port: int | None = None) -> None:
        """Serve the application (HTTP server and consumer proxy) until SIGINT/SIGTERM."""
        from freedom.runner.server import serve

        serve(self, host=host, port=port)

    @property
    def producer(self) -> Producer:
        """The producer, for publishing outside a controller (a script, a background task)."""
        self.setup()
        return cast(Producer, self.injectables[Producer](None))  # type: ignore[arg-type]
