"""The running service as the operations functions see it (:class:`freedom.ops.target.Target`):
its consumer clients, from the configuration it was set up with, and the topics it listens to."""

from __future__ import annotations

from typing import TYPE_CHECKING

from freedom.kafka.settings import client_settings, connection_settings
from freedom.ops.target import ClientTarget, OpsError, Target, servers_of

if TYPE_CHECKING:
    from freedom.web.application import Application


def app_target(app: Application) -> Target:
    """The consumer clients of the set-up `app` (as `freedom status module:app` loads them)."""
    kafka = app.kafka_config
    if kafka is None or not kafka.consumer_clients:
        raise OpsError(
            "no consumer clients configured (infra/kafka.toml): there are no consumer groups or "
            "dead-letter topics to show"
        )
    topics = tuple(sorted(app.event_routes))
    config_dir = app.config_dir
    # On the embedded broker, every client is on the one this service runs on (or shares).
    infra = app.kafka
    embedded = (
        infra.embedded.bootstrap
        if infra is not None and infra.use_embedded and infra.embedded is not None
        else None
    )
    clients = []
    for i, cc in enumerate(kafka.consumer_clients):
        where = f"consumer_clients[{i}] in {kafka.file}"
        servers = (embedded,) if embedded else servers_of(cc, where, None, config_dir)
        settings = client_settings(servers, "consumer", cc.group_id, {}, cc.librdkafka_settings)
        clients.append(ClientTarget(i, cc, connection_settings(settings), topics, where))
    return Target(tuple(clients), str(config_dir) if config_dir else None)
