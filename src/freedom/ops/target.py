"""What the operations commands work on: the service's consumer clients, from its configuration.

`freedom status module:app` loads the application as `freedom run` does (so its listened topics
and its `setting_config` hooks are known); `freedom status --config DIR` reads only kafka.toml:
a standalone proxy's topics (and their retry settings) are its `[[subscriptions]]`, a service's
are found on the cluster (the group's committed offsets, the topic prefixes).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from freedom.config.loading import find_config_dir, load_kafka_config
from freedom.config.models import ConsumerClientConfig, KafkaConfig, SubscriptionConfig
from freedom.errors import FreedomError
from freedom.kafka.settings import client_settings, connection_settings


class OpsError(FreedomError):
    """A user mistake or an unreachable cluster: one line, exit 2."""


@dataclass(frozen=True)
class ClientTarget:
    """One `[[consumer_clients]]` entry: its config, how to reach its cluster, its listened topics."""

    index: int
    config: ConsumerClientConfig
    settings: dict[str, Any] = field(repr=False)  # connection settings only (may hold secrets)
    topics: tuple[str, ...] | None  # None: not known (no module:app given)
    where: str  # "consumer_clients[0] in conf/infra/kafka.toml"
    #: topic -> (retry_count, retry_interval_sec) where a subscription sets its own (freedom proxy)
    retries: Mapping[str, tuple[int, float]] = field(default_factory=dict)

    @property
    def servers(self) -> str:
        return str(self.settings.get("bootstrap.servers", ""))

    def retry_count_of(self, topic: str) -> int:
        """The retry_count records of `topic` get: its subscription's, else the client's."""
        return self.retries[topic][0] if topic in self.retries else self.config.retry_count

    def retry_interval_of(self, topic: str) -> float:
        return self.retries[topic][1] if topic in self.retries else self.config.retry_interval_sec

    def retry_topic(self, topic: str) -> str:
        return f"{self.config.retry_prefix}{topic}"

    def fail_topic(self, topic: str) -> str | None:
        return f"{self.config.retry_fail_prefix}{topic}" if self.config.retry_fail_prefix else None


@dataclass(frozen=True)
class Target:
    """Every consumer client of one service."""

    clients: tuple[ClientTarget, ...]
    config_dir: str | None

    def client_for_group(self, group: str) -> ClientTarget:
        """The client whose main or retry group is `group`, else the first (same cluster, usually)."""
        for c in self.clients:
            if group in (c.config.group_id, c.config.retry_group_id):
                return c
        return self.clients[0]


def servers_of(
    cc: ConsumerClientConfig,
    where: str,
    embedded: str | None = None,
    config_dir: str | Path | None = None,
) -> tuple[str, ...]:
    """The bootstrap servers of the consumer client `cc` (`where` names it in errors): its own, else
    the embedded broker's: `embedded`, else the one $FREEDOM_EMBEDDED_BOOTSTRAP names, else the one
    recorded in `config_dir` (by the service running on it, the `freedom run --reload`/`--workers`
    parent or `freedom broker`: kafka/broker_state.py); OpsError when there is none."""
    if cc.servers is not None:
        return cc.servers
    if embedded:
        return (embedded,)
    from freedom.kafka.embedded import EmbeddedBrokerError, locate

    try:
        found = locate(Path(config_dir) if config_dir is not None else None)
    except EmbeddedBrokerError as exc:
        raise OpsError(str(exc)) from None
    if found.bootstrap is not None:
        return (found.bootstrap,)
    raise OpsError(
        f"{where} has no servers, and {found.problem}: start the service (freedom run) or "
        "freedom broker with this config directory, or set servers in kafka.toml"
    )


def target_of(
    kafka: KafkaConfig | None,
    topics: Iterable[str] | None,
    config_dir: str | None = None,
    *,
    embedded_bootstrap: str | None = None,
) -> Target:
    """The target of a loaded configuration (the web console: the running service's own, with
    its listened topics and, on the embedded broker, its address)."""
    if kafka is None or not kafka.consumer_clients:
        raise OpsError(
            f"no consumer clients configured (infra/kafka.toml in {config_dir or 'the config directory'}): "
            "there are no consumer groups or dead-letter topics to inspect"
        )
    listened = tuple(sorted(topics)) if topics is not None else None
    clients = []
    for i, cc in enumerate(kafka.consumer_clients):
        where = f"consumer_clients[{i}] in {kafka.file}"
        settings = client_settings(
            servers_of(cc, where, embedded_bootstrap, config_dir),
            "consumer",
            cc.group_id,
            {},
            cc.librdkafka_settings,
        )
        client_topics, retries = listened, {}
        if (
            listened is None and kafka.subscriptions
        ):  # a standalone proxy's: known without its commits
            subs = _subscriptions_of(kafka, i)
            client_topics = tuple(sorted({s.topic for s in subs}))
            retries = {
                s.topic: (
                    cc.retry_count if s.retry_count is None else s.retry_count,
                    cc.retry_interval_sec if s.retry_interval_sec is None else s.retry_interval_sec,
                )
                for s in subs
            }
        clients.append(
            ClientTarget(i, cc, connection_settings(settings), client_topics, where, retries)
        )
    return Target(tuple(clients), config_dir)


def _subscriptions_of(kafka: KafkaConfig, index: int) -> list[SubscriptionConfig]:
    """The `[[subscriptions]]` the consumer client `index` reads (no group_id: the first client's),
    as `freedom proxy` runs them (standalone.plan)."""
    group = kafka.consumer_clients[index].group_id
    return [
        s
        for s in kafka.subscriptions
        if (s.group_id == group if s.group_id is not None else index == 0)
    ]


def application_target(app: Any) -> Target:
    """The consumer clients of a loaded (set up) application: its kafka.toml, its listened topics."""
    config_dir = str(app.config_dir) if app.config_dir else None
    return target_of(app.kafka_config, sorted(app.event_routes), config_dir)


def config_target(config: str | None) -> Target:
    """The consumer clients of the config directory `config` (None: the default directory)."""
    directory = find_config_dir(config)
    if directory is None:
        raise OpsError(
            "no config directory: give module:app or --config DIR (default: "
            "$FREEDOM_PROJECT_CONFIG, ./conf, ./server/conf)"
        )
    if not directory.is_dir():
        raise OpsError(f"--config {config}: no such directory")
    return target_of(load_kafka_config(directory), None, str(directory))
