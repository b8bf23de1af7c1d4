"""Start-up checks against a cluster: is it reachable, and do the topics we listen on exist."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

import confluent_kafka
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]  # there at run time; not in its __all__

from freedom.config.librdkafka import scrub
from freedom.errors import FreedomError
from freedom.kafka.client_logs import FOLD
from freedom.kafka.settings import connection_settings

log = logging.getLogger("freedom.kafka.admin")


class ClusterUnreachable(FreedomError):
    """No broker of a configured cluster answered within the start-up wait."""


def _admin(settings: dict[str, Any], **extra: Any) -> AdminClient:
    # Only connection-level settings apply to the admin client, and the logger: without it
    # librdkafka prints every failed connection attempt of the start-up check to stderr itself.
    return AdminClient({**connection_settings(settings), **extra})


def check_reachable(settings: dict[str, Any], where: str, timeout: float = 15.0) -> None:
    """Raise ClusterUnreachable naming `where` (the config entry) when no broker answers in `timeout`.

    Authentication and TLS failures (wrong SASL credentials, an untrusted certificate) are not
    worth waiting for: they are reported as soon as librdkafka sees them, secrets scrubbed.
    """
    fatal: list[confluent_kafka.KafkaError] = []
    fatal_codes = (confluent_kafka.KafkaError._AUTHENTICATION, confluent_kafka.KafkaError._SSL)

    def on_error(err: confluent_kafka.KafkaError) -> None:
        if err.code() in fatal_codes:
            fatal.append(err)

    servers = settings.get("bootstrap.servers")
    try:
        admin = _admin(settings, error_cb=on_error)
    except (confluent_kafka.KafkaException, ValueError, TypeError) as exc:
        raise ClusterUnreachable(
            f"invalid Kafka client settings ({where}): {scrub(str(exc), settings)}"
        ) from None
    deadline = time.monotonic() + timeout
    while True:
        try:
            admin.list_topics(timeout=min(1.0, max(0.1, deadline - time.monotonic())))
            return
        except confluent_kafka.KafkaException as exc:
            last = exc.args[0].str()
        admin.poll(0)  # serves error_cb and hands librdkafka's log lines to the logger
        timed_out = time.monotonic() >= deadline
        if fatal or timed_out:
            del (
                admin
            )  # the raised error's traceback would keep the client (and its reconnects) alive
            FOLD.flush()  # the count of librdkafka's repeated lines comes before our error, not after
        if fatal:
            err = fatal[0]
            what = (
                "authentication failed" if err.code() == fatal_codes[0] else "TLS handshake failed"
            )
            raise ClusterUnreachable(
                f"cannot connect to Kafka at {servers} ({where}): {what}: {scrub(err.str(), settings)}; "
                "check the SASL username/password and the TLS settings (ssl_ca_location, security_protocol)"
            )
        if timed_out:
            raise ClusterUnreachable(
                f"cannot reach Kafka at {servers} ({where}) within {timeout:.0f} s: "
                f"{scrub(last, settings)}; check `servers`, and that the broker is running"
            )


def ensure_topics(
    settings: dict[str, Any], topics: Iterable[str], timeout: float = 15.0
) -> list[str]:
    """Create whichever of `topics` do not exist yet (broker's default partitions); returns the created ones.

    The consumer proxy does this before subscribing so that a record published right after
    start-up is not missed by a group that starts at the end of a new topic.
    """
    admin = _admin(settings)
    try:
        return _create_missing(admin, topics, timeout)
    finally:
        admin.poll(0)  # hands librdkafka's log lines of this client to the logger


def _create_missing(admin: AdminClient, topics: Iterable[str], timeout: float) -> list[str]:
    existing = set(admin.list_topics(timeout=timeout).topics)
    missing = [t for t in topics if t not in existing]
    if not missing:
        return []
    created = []
    futures = admin.create_topics(
        [NewTopic(t, num_partitions=-1, replication_factor=-1) for t in missing],
        operation_timeout=timeout,
        request_timeout=timeout,
    )
    for topic, future in futures.items():
        try:
            future.result(timeout)
            created.append(topic)
        except confluent_kafka.KafkaException as exc:
            err = exc.args[0]
            if err.code() == confluent_kafka.KafkaError.TOPIC_ALREADY_EXISTS:
                continue
            if err.code() in (
                confluent_kafka.KafkaError.INVALID_PARTITIONS,
                confluent_kafka.KafkaError.INVALID_REPLICATION_FACTOR,
                confluent_kafka.KafkaError.UNSUPPORTED_VERSION,
            ):
                # Brokers without KIP-464 defaults: one partition, one replica.
                admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(timeout)
                created.append(topic)
                continue
            raise
    if created:
        log.info("created topics %s", ", ".join(created))
    return created
