"""`freedom proxy --config DIR`: the consumer proxy on its own, delivering to any HTTP service.

No Python application: the topics and where their records go are kafka.toml's `[[subscriptions]]`
(topic -> URL, `{key}` in it taking the event id), read by the `[[consumer_clients]]` entries'
groups. Each record is delivered by the same code as a service's proxy (ConsumerProxy, ConsumerGroup,
RetryRouter, the HTTP/1.1 and h2c transports), so the commit rule, retry topics, dead letters
with reasons, delivery modes and the shared secret are the same (docs/standalone-proxy.md).

The one seam: :class:`SubscriptionTransport`, a Transport that hands each topic's deliveries to
its subscription's own transport (its base URL, timeout, secret, HTTP version). The route's path
is the URL's path and query, so the transports build the request exactly as for a service.

Subscriptions of one consumer client with the same retry settings share one ConsumerProxy (one
main and one retry group member); a subscription with its own `retry_count` or
`retry_interval_sec` gets a ConsumerProxy of its own, a second member of the same groups that
subscribes to its topic only (Kafka assigns each topic's partitions among its subscribers).

The process serves `GET /metrics`, `/livez` and `/readyz` on app.toml's `listen_addr` (or
`--listen`), from the same modules as a service's (freedom.observability.metrics, freedom.observability.health).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from freedom.config.loading import (
    check_topic_overrides,
    find_config_dir,
    load_app_config,
    load_kafka_config,
)
from freedom.config.models import (
    URL_KEY_PLACEHOLDER,
    AppConfig,
    ConsumerClientConfig,
    KafkaConfig,
    SubscriptionConfig,
    TopicConsumeConfig,
)
from freedom.errors import ConfigError, FreedomError
from freedom.kafka.admin import check_reachable, ensure_topics
from freedom.kafka.consumer.delivery import (
    DeliveryResult,
    EventRoute,
    RawAnswer,
    RecordHeaders,
    Transport,
)
from freedom.kafka.consumer.proxy import ConsumerProxy
from freedom.kafka.embedded import Located, locate
from freedom.kafka.settings import client_settings
from freedom.observability import health, metrics

log = logging.getLogger("freedom.proxy")

__all__ = [
    "ProxyPlan",
    "StandaloneProxy",
    "SubscriptionTransport",
    "plan",
    "target_of",
    "add_parser",
    "command",
]

#: The most connections one subscription's HTTP/1.1 transport keeps to its endpoint.
MAX_CONNECTIONS = 1000


def target_of(sub: SubscriptionConfig) -> tuple[str, EventRoute]:
    """The base URL (`scheme://host:port`) of a subscription and the route its records take there:
    the URL's path and query, `{key}` its parameter."""
    parts = urlsplit(sub.url)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    param = URL_KEY_PLACEHOLDER.strip("{}") if URL_KEY_PLACEHOLDER in path else None
    return f"{parts.scheme}://{parts.netloc}", EventRoute(sub.topic, path, param)


def make_target_transport(sub: SubscriptionConfig, kafka: KafkaConfig) -> Transport:
    """The transport of one subscription: HTTP/1.1, or h2c (`http2`, else `[consumer] proxy_http2`),
    with its secret (else `[consumer]`'s). Its timeout is the route's (`timeout_sec`, else the
    client's `delivery_timeout_sec`: :func:`_topic_config`, which the ConsumerProxy puts on the route)."""
    base, _ = target_of(sub)
    http2 = sub.http2 if sub.http2 is not None else kafka.consumer.proxy_http2
    secret = sub.shared_secret if sub.shared_secret is not None else kafka.consumer.shared_secret
    if http2:
        from freedom.kafka.transports.http import HttpTransport

        return HttpTransport(base, secret=secret)
    from freedom.kafka.transports.http1 import Http1Transport

    bound = sub.max_in_flight or 100
    return Http1Transport(base, secret=secret, max_connections=min(bound, MAX_CONNECTIONS))


class SubscriptionTransport:
    """A Transport sending each topic's records to its own subscription's transport (by route.topic)."""

    def __init__(self, targets: dict[str, Transport]) -> None:
        self._targets = targets
        self._unique = list({id(t): t for t in targets.values()}.values())
        self.proxy_addr = ", ".join(sorted({t.proxy_addr for t in self._unique}))

    async def wait_until_reachable(self, deadline: float, stop: asyncio.Event) -> bool:
        """True once every endpoint accepts connections; False at the deadline."""
        results = await asyncio.gather(
            *(t.wait_until_reachable(deadline, stop) for t in self._unique)
        )
        return all(results)

    async def deliver(
        self, route: EventRoute, key: str, value: bytes, headers: RecordHeaders, retry_count: int
    ) -> DeliveryResult:
        return await self._targets[route.topic].deliver(route, key, value, headers, retry_count)

    async def post(
        self,
        path: str,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        *,
        keep_body: int,
        wait: float | None = None,
    ) -> RawAnswer | DeliveryResult:
        """No batches: a subscription delivers each record on its own."""
        return DeliveryResult(
            error="batch delivery is not available with freedom proxy's subscriptions"
        )

    async def aclose(self) -> None:
        await asyncio.gather(*(t.aclose() for t in self._unique), return_exceptions=True)


@dataclass(frozen=True)
class ProxyPlan:
    """One ConsumerProxy to run: its consumer client (index in kafka.toml), its effective settings
    (the client's, with the subscriptions' retry and per-topic settings) and its subscriptions."""

    client_index: int
    config: ConsumerClientConfig
    subscriptions: tuple[SubscriptionConfig, ...]


def plan(kafka: KafkaConfig, embedded: Located | None = None) -> list[ProxyPlan]:
    """The ConsumerProxies that serve kafka.toml's subscriptions (ConfigError when there are none
    or no consumer client to read them). A client without servers reads from the embedded broker
    `embedded` found for the config directory (`freedom broker`'s, a service's)."""
    if not kafka.subscriptions:
        raise ConfigError(
            kafka.file,
            "subscriptions",
            "no [[subscriptions]] entry: add one per topic, like "
            '[[subscriptions]] topic = "orders" url = "http://orders:8080/events/{key}" '
            "(docs/standalone-proxy.md)",
        )
    if not kafka.consumer_clients:
        raise ConfigError(
            kafka.file,
            "consumer_clients",
            "no [[consumer_clients]] entry: add one with the "
            "servers and group_id the proxy reads with",
        )
    check_topic_overrides(
        kafka, [s.topic for s in kafka.subscriptions]
    )  # a table for a topic no one reads
    by_group = {c.group_id: i for i, c in enumerate(kafka.consumer_clients)}
    groups: dict[tuple[int, int, float], list[SubscriptionConfig]] = {}
    for sub in kafka.subscriptions:
        index = by_group[sub.group_id] if sub.group_id is not None else 0
        client = kafka.consumer_clients[index]
        if client.servers is None and (embedded is None or embedded.bootstrap is None):
            why = f" ({embedded.problem})" if embedded is not None and embedded.problem else ""
            raise ConfigError(
                kafka.file,
                f"consumer_clients[{index}].servers",
                'freedom proxy reads from a cluster: give its servers, like ["kafka:9092"], or '
                f"run freedom broker for this config directory{why}",
            )
        if client.share_group and client.servers is None:
            raise ConfigError(
                kafka.file,
                f"consumer_clients[{index}].share_group",
                "the embedded broker has no share groups; a share group needs Apache Kafka 4.2 "
                "or later with share groups enabled: give the client its `servers`",
            )
        if client.share_group and sub.mode not in (None, "concurrent"):
            raise ConfigError(
                kafka.file,
                f"subscriptions[{kafka.subscriptions.index(sub)}].mode",
                "a share group delivers records in no order (each to the member that acquires "
                f'it): use "concurrent" or leave mode out, got "{sub.mode}"',
            )
        retries = sub.retry_count if sub.retry_count is not None else client.retry_count
        interval = (
            sub.retry_interval_sec
            if sub.retry_interval_sec is not None
            else client.retry_interval_sec
        )
        groups.setdefault((index, retries, interval), []).append(sub)
    out = []
    for (index, retries, interval), subs in groups.items():
        client = kafka.consumer_clients[index]
        topics = {s.topic: _topic_config(s, client.consume_config(s.topic)) for s in subs}
        for i, s in enumerate(kafka.subscriptions):
            if (
                s in subs
                and topics[s.topic].head_of_line_timeout_sec is not None
                and not retries
                and not client.retry_fail_prefix
            ):
                raise ConfigError(
                    kafka.file,
                    f"subscriptions[{i}].head_of_line_timeout_sec",
                    "the guard moves a stuck record to its retry or dead-letter topic: give "
                    "retry_count > 0 or the client a retry_fail_prefix, or remove it",
                )
        config = client.model_copy(
            update={"retry_count": retries, "retry_interval_sec": interval, "topics": topics}
        )
        out.append(ProxyPlan(index, config, tuple(subs)))
    return out


def _topic_config(sub: SubscriptionConfig, client: TopicConsumeConfig) -> TopicConsumeConfig:
    """How a subscription's records are delivered: its own keys, else its client's for the topic."""

    def given(value: Any, default: Any) -> Any:
        return default if value is None else value

    return client.model_copy(
        update={
            "mode": sub.mode or client.mode,
            "max_in_flight": sub.max_in_flight or client.max_in_flight,
            "delivery_timeout_sec": given(sub.timeout_sec, client.delivery_timeout_sec),
            "dead_letter_statuses": given(sub.dead_letter_statuses, client.dead_letter_statuses),
            "rate_limit_per_sec": given(sub.rate_limit_per_sec, client.rate_limit_per_sec),
            "max_concurrency": given(sub.max_concurrency, client.max_concurrency),
            "retry_after_max_sec": given(sub.retry_after_max_sec, client.retry_after_max_sec),
            "backpressure_max_sec": given(sub.backpressure_max_sec, client.backpressure_max_sec),
            "head_of_line_timeout_sec": given(
                sub.head_of_line_timeout_sec, client.head_of_line_timeout_sec
            ),
        }
    )


class StandaloneProxy:
    """The consumer proxies of `freedom proxy`, started and stopped together.

    freedom.observability.metrics and freedom.observability.health read a service's groups from `app.kafka.proxies`: this
    object is its own `kafka`, so they read it the same way."""

    def __init__(
        self, kafka: KafkaConfig, app: AppConfig | None = None, embedded: Located | None = None
    ) -> None:
        self.kafka_config = kafka
        self.config = app or AppConfig()
        self.plans = plan(kafka, embedded)
        #: The embedded broker the clients without servers read from.
        self.embedded = embedded.bootstrap if embedded is not None else None
        self.proxies: list[ConsumerProxy] = []
        self.transports: list[Transport] = []
        self._started = False
        self.draining = False

    @property
    def kafka(self) -> StandaloneProxy:
        return self

    async def start(self) -> None:
        """Reach each cluster, create missing topics, then join the groups (ConfigError / FreedomError
        when a cluster cannot be reached)."""
        try:
            for p in self.plans:
                cc = p.config
                on_embedded = cc.servers is None
                settings = client_settings(
                    cc.servers or (cast(str, self.embedded),),
                    "consumer",
                    cc.group_id,
                    # The embedded broker holds a new group's join for half the session timeout.
                    {"session.timeout.ms": 6000} if on_embedded else {},
                    cc.librdkafka_settings,
                )
                where = f"consumer_clients[{p.client_index}] in {self.kafka_config.file}"
                await asyncio.to_thread(check_reachable, settings, where)
                routes: dict[str, EventRoute] = {}
                targets: dict[str, Transport] = {}
                for sub in p.subscriptions:
                    _, routes[sub.topic] = target_of(sub)
                    targets[sub.topic] = make_target_transport(sub, self.kafka_config)
                transport = SubscriptionTransport(targets)
                self.transports.append(transport)
                await asyncio.to_thread(ensure_topics, settings, list(routes))
                proxy = ConsumerProxy(cc, settings, routes, transport)
                await proxy.start()
                self.proxies.append(proxy)
                for sub in p.subscriptions:
                    log.info("delivering %s (group %s) to %s", sub.topic, cc.group_id, sub.url)
        except BaseException:
            await self.stop()
            raise
        self._started = True

    async def stop(self) -> None:
        """Drain and commit every proxy, then close the connections to the endpoints."""
        self.draining = True
        for proxy in list(self.proxies):
            try:
                await proxy.stop()
            except Exception:  # noqa: BLE001 - keep stopping the rest
                log.exception("stopping consumer group %r failed", proxy.config.group_id)
        self.proxies.clear()
        for transport in self.transports:
            await transport.aclose()
        self.transports.clear()

    def readiness(self) -> list[str]:
        """What keeps the proxy from being ready: one line per part (empty: ready)."""
        if self.draining:
            return ["the proxy is stopping"]
        if not self._started:
            return ["the proxy has not started"]
        problems = []
        for proxy in self.proxies:
            for group in proxy.groups:
                if not group.assigned.is_set():
                    problems.append(
                        f"consumer group {group.group_id!r}: no partition assignment yet"
                    )
            if not proxy._service_up.is_set():
                problems.append(
                    f"consumer group {proxy.config.group_id!r}: waiting for "
                    f"{proxy.delivery.proxy_addr} to accept connections"
                )
        return problems + health.consumer_problems(self.proxies)


def ops_app(proxy: StandaloneProxy, tick: health.LoopTick) -> Starlette:
    """The proxy's own HTTP application: `GET /metrics`, `/livez`, `/readyz` (docs/observability.md)."""

    async def metrics_endpoint(_request: Request) -> Response:
        return Response(await metrics.exposition(proxy), media_type=metrics.CONTENT_TYPE_LATEST)

    async def livez(_request: Request) -> Response:
        return _answer(health.liveness(proxy, tick, proxy.config.liveness_timeout_sec), "live")

    async def readyz(_request: Request) -> Response:
        return _answer(proxy.readiness(), "ready")

    return Starlette(
        routes=[
            Route("/metrics", metrics_endpoint),
            Route("/livez", livez),
            Route("/readyz", readyz),
        ]
    )


def _answer(problems: list[str], good: str) -> Response:
    if problems:
        return JSONResponse({"status": f"not {good}", "problems": problems}, status_code=503)
    return JSONResponse({"status": good})


class _Server(uvicorn.Server):
    """uvicorn, whose first SIGINT/SIGTERM drains the proxies before the HTTP server stops."""

    def __init__(self, config: uvicorn.Config, proxy: StandaloneProxy) -> None:
        super().__init__(config)
        self._proxy = proxy
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: Any = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: Any) -> None:
        if self._proxy.draining or self._loop is None:
            super().handle_exit(sig, frame)
            return
        log.info("stopping: draining the consumer proxies (signal again to stop at once)")
        self._proxy.draining = True
        self._loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self._drain_then_exit()))

    async def _drain_then_exit(self) -> None:
        try:
            await self._proxy.stop()
        except Exception:  # noqa: BLE001
            log.exception("draining the consumer proxies failed")
        self.should_exit = True


def serve(proxy: StandaloneProxy) -> None:
    """Run `proxy` and its operations endpoints until SIGINT/SIGTERM."""
    from freedom.runner.server import bind_listen_socket, freeze_startup_objects, run

    sock = bind_listen_socket(
        cast(Any, proxy)
    )  # an address in use is a config error, before Kafka starts
    tick = health.LoopTick()
    config = uvicorn.Config(
        ops_app(proxy, tick),
        host=proxy.config.host,
        port=proxy.config.port,
        log_config=None,
        lifespan="off",
        access_log=False,
    )
    server = _Server(config, proxy)

    async def main() -> None:
        try:
            await proxy.start()
        except BaseException:
            sock.close()
            raise
        tick.start()
        freeze_startup_objects()
        log.info(
            "serving /metrics, /livez and /readyz on %s:%d", config.host, sock.getsockname()[1]
        )
        try:
            await server.serve(sockets=[sock])
        finally:
            await tick.stop()
            await proxy.stop()

    run(main())


# ----------------------------------------------------------------------------- the command


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """`freedom proxy`: the subcommand's arguments."""
    p: argparse.ArgumentParser = sub.add_parser(
        "proxy",
        help="run only the consumer proxy: deliver kafka.toml's [[subscriptions]] to any HTTP service",
    )
    p.add_argument(
        "--config",
        help="the config directory (default: $FREEDOM_PROJECT_CONFIG, ./conf, ./server/conf)",
    )
    p.add_argument(
        "--listen",
        help="host:port of /metrics, /livez and /readyz (default: listen_addr of app.toml)",
    )
    p.add_argument(
        "--log-level",
        metavar="LEVEL",
        help="DEBUG, INFO, WARNING, ERROR or CRITICAL (overrides app.toml)",
    )
    return p


def command(args: argparse.Namespace) -> int:
    """Run `freedom proxy`; a user mistake raises FreedomError (one line, exit 2)."""
    from freedom.config.loading import LOG_LEVELS
    from freedom.observability.json_logs import use_log_format

    if args.log_level is not None and args.log_level.upper() not in LOG_LEVELS:
        raise FreedomError(
            f'--log-level: must be one of {", ".join(LOG_LEVELS)}, got "{args.log_level}"'
        )
    config_dir = find_config_dir(args.config)
    if config_dir is None or not config_dir.is_dir():
        shown = args.config or os.environ.get("FREEDOM_PROJECT_CONFIG") or "./conf"
        raise FreedomError(f"--config: {shown} is not a directory (it holds infra/kafka.toml)")
    kafka = load_kafka_config(Path(config_dir))
    if kafka is None:
        raise ConfigError(
            str(Path(config_dir) / "infra" / "kafka.toml"),
            None,
            "not found: freedom proxy reads its [[consumer_clients]] and [[subscriptions]] there",
        )
    if args.listen is not None:  # checked here, so that a mistake names this command's option
        from freedom.config.models import check_listen_addr

        check_listen_addr(
            args.listen, lambda problem: ConfigError("freedom proxy", "--listen", problem)
        )
    app = load_app_config(Path(config_dir), listen_addr=args.listen)
    if args.listen:  # bind errors name --listen, as `freedom run --listen` does
        app = app.listening_as(("freedom proxy", "--listen"))
    use_log_format(app.log_format)
    logging.getLogger().setLevel(args.log_level.upper() if args.log_level else app.log_level)
    embedded = None
    if any(c.servers is None for c in kafka.consumer_clients):  # the embedded broker's, if running
        embedded = locate(Path(config_dir))
        if embedded.bootstrap is not None:
            log.info(
                "reading from the embedded broker at %s (%s)", embedded.bootstrap, embedded.source
            )
    serve(StandaloneProxy(kafka, app, embedded))
    return 0
