"""Start-up checks against a cluster: is it reachable, and do the topics we listen on exist."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterable, Mapping
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


#: How long every bootstrap address must keep refusing connections before the check gives up.
REFUSED_FOR = 0.5


def _addresses(servers: str) -> list[tuple[str, int]]:
    """(host, port) of each entry of `bootstrap.servers` ("host:port,[::1]:9092,proto://h:p")."""
    out = []
    for entry in servers.split(","):
        entry = entry.strip().rpartition("://")[2]
        if not entry:
            continue
        host, colon, port = entry.rpartition(":")
        if not colon or not port.isdigit() or (host.count(":") and not host.startswith("[")):
            host, port = entry, "9092"  # no port (librdkafka's default), or a bare IPv6 address
        out.append((host.strip("[]"), int(port)))
    return out


def all_refused(servers: Any, timeout: float = 0.5) -> bool:
    """True when a TCP connection to every address of every bootstrap server is refused: nothing
    listens there, so waiting for the broker is pointless. A name that does not resolve, a timeout,
    an unreachable network or a connection that opens is False (the caller waits, as for a broker
    that may still come up)."""
    if not isinstance(servers, str):
        return False
    addresses = _addresses(servers)
    if not addresses:
        return False
    for host, port in addresses:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError):
            return False
        for family, kind, proto, _, addr in infos:
            try:
                with socket.socket(family, kind, proto) as sock:
                    sock.settimeout(timeout)
                    sock.connect(addr)
            except ConnectionRefusedError:
                continue
            except OSError:
                return False
            return False  # something listens there
    return True


def check_reachable(settings: dict[str, Any], where: str, timeout: float = 15.0) -> None:
    """Raise ClusterUnreachable naming `where` (the config entry) when no broker answers in `timeout`.

    Authentication and TLS failures (wrong SASL credentials, an untrusted certificate) are not
    worth waiting for: they are reported as soon as librdkafka sees them, secrets scrubbed. Nor is
    a cluster where nothing listens: when every bootstrap address has refused TCP connections for
    REFUSED_FOR seconds (`all_refused`), the check stops within about a second instead of `timeout`.
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
    refused_since: float | None = None  # every address has refused since then
    probing = True  # until an address answers otherwise: then wait as for any broker down
    wait = 0.25  # a reachable broker's first answer; then 1 s, or 0.25 s while refused
    while True:
        try:
            admin.list_topics(timeout=min(wait, max(0.1, deadline - time.monotonic())))
            return
        except confluent_kafka.KafkaException as exc:
            last = exc.args[0].str()
        admin.poll(0)  # serves error_cb and hands librdkafka's log lines to the logger
        now = time.monotonic()
        if probing and all_refused(servers):
            refused_since = now if refused_since is None else refused_since
            wait = 0.25
        else:
            refused_since, probing, wait = None, False, 1.0
        refused = refused_since is not None and now - refused_since >= REFUSED_FOR
        timed_out = now >= deadline
        if fatal or timed_out or refused:
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
        if refused:
            raise ClusterUnreachable(
                f"cannot reach Kafka at {servers} ({where}): connection refused, nothing listens "
                "there; check `servers`, and that the broker is running"
            )
        if timed_out:
            raise ClusterUnreachable(
                f"cannot reach Kafka at {servers} ({where}) within {timeout:.0f} s: "
                f"{scrub(last, settings)}; check `servers`, and that the broker is running"
            )


def ensure_topics(
    settings: dict[str, Any],
    topics: Iterable[str],
    timeout: float = 15.0,
    *,
    like: Mapping[str, str] | None = None,
) -> list[str]:
    """Create whichever of `topics` do not exist yet; returns the created ones.

    A topic `like` maps to another (a retry or dead-letter topic to its main topic) gets that
    topic's partition count; the others the broker's default. An existing one with fewer
    partitions than its `like` topic is left as it is, with a warning.

    The consumer proxy does this before subscribing so that a record published right after
    start-up is not missed by a group that starts at the end of a new topic.
    """
    admin = _admin(settings)
    try:
        return _create_missing(admin, topics, timeout, like or {})
    finally:
        admin.poll(0)  # hands librdkafka's log lines of this client to the logger


def _partitions(metadata: Any, topic: str | None) -> int:
    """How many partitions `topic` has in `metadata` (-1: unknown, the broker's default applies)."""
    found = metadata.get(topic) if topic is not None else None
    if found is None or found.error is not None or not found.partitions:
        return -1
    return len(found.partitions)


def _create_missing(
    admin: AdminClient, topics: Iterable[str], timeout: float, like: Mapping[str, str]
) -> list[str]:
    topics = list(topics)
    existing = admin.list_topics(timeout=timeout).topics
    missing = [t for t in topics if t not in existing]
    for t in topics:
        have, want = _partitions(existing, t), _partitions(existing, like.get(t))
        if t in existing and 0 < have < want:
            log.warning(
                "%s has %d partition(s) and %s has %d: its records are handled by at most %d "
                "consumer(s) at once; add partitions to it (kafka-topics.sh --alter --partitions %d)",
                t,
                have,
                like[t],
                want,
                have,
                want,
            )
    if not missing:
        return []
    created = []
    wanted = {t: _partitions(existing, like.get(t)) for t in missing}
    futures = admin.create_topics(
        [NewTopic(t, num_partitions=wanted[t], replication_factor=-1) for t in missing],
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
                # Brokers without KIP-464 defaults: one replica (and one partition unless known).
                admin.create_topics([NewTopic(topic, max(1, wanted[topic]), 1)])[topic].result(
                    timeout
                )
                created.append(topic)
                continue
            raise
    if created:
        log.info("created topics %s", ", ".join(created))
    return created


class ShareGroupsUnavailable(FreedomError):
    """The cluster cannot serve a configured share group, or refused its configuration."""


#: The share-group configs freedom reads at start-up (KIP-932's group configs).
SHARE_RESET = "share.auto.offset.reset"
SHARE_LOCK_MS = "share.record.lock.duration.ms"
SHARE_DELIVERY_LIMIT = "share.delivery.count.limit"

#: What the start-up check says a share group needs.
NEEDS_SHARE_GROUPS = "Apache Kafka 4.2 or later with share groups enabled (share.version >= 1)"


def configure_share_group(
    settings: dict[str, Any], group_id: str, offset_reset: str, lock_ms: int, timeout: float = 15.0
) -> dict[str, str]:
    """Set a share group's `share.auto.offset.reset` and raise its acquisition lock to `lock_ms`
    when it is shorter (a lock longer than asked is kept), then return the group's configs.

    A cluster without share groups refuses the group's config resource: ShareGroupsUnavailable,
    one line naming what is needed. So does a lock above the broker's maximum
    (`group.share.max.record.lock.duration.ms`)."""
    from confluent_kafka.admin import (  # type: ignore[attr-defined]
        AlterConfigOpType,
        ConfigEntry,
        ConfigResource,
    )

    servers = settings.get("bootstrap.servers")
    admin = _admin(settings)
    resource = ConfigResource(ConfigResource.Type.GROUP, group_id)

    def read() -> dict[str, str]:
        found = admin.describe_configs([resource], request_timeout=timeout)[resource]
        return {e.name: e.value for e in found.result(timeout).values() if e.value is not None}

    try:
        current = read()
        if SHARE_RESET not in current:
            # Apache Kafka 4.x lists every share.* group config, defaults included, even for a
            # group not made yet; a broker without share groups (the embedded one) lists none.
            raise ShareGroupsUnavailable(
                f'share group "{group_id}" at {servers}: the cluster has no share groups (it '
                f"lists no share.* config for the group); a share group needs {NEEDS_SHARE_GROUPS}"
            )
        wanted = [
            ConfigEntry(SHARE_RESET, offset_reset, incremental_operation=AlterConfigOpType.SET)
        ]
        lock_now = int(current.get(SHARE_LOCK_MS, "0") or 0)
        if lock_now < lock_ms:
            wanted.append(
                ConfigEntry(
                    SHARE_LOCK_MS, str(lock_ms), incremental_operation=AlterConfigOpType.SET
                )
            )
        target = ConfigResource(ConfigResource.Type.GROUP, group_id, incremental_configs=wanted)
        for future in admin.incremental_alter_configs([target], request_timeout=timeout).values():
            try:
                future.result(timeout)
            except confluent_kafka.KafkaException as exc:
                if len(wanted) == 1:
                    raise
                raise ShareGroupsUnavailable(
                    f'share group "{group_id}" at {servers}: the cluster refused an acquisition '
                    f"lock of {lock_ms} ms, the longest delivery_timeout_sec of its topics plus "
                    f"5 s ({_text(exc, settings)}); lower delivery_timeout_sec, or raise the "
                    "broker's group.share.max.record.lock.duration.ms"
                ) from None
        # The broker answers a describe with the old values for a moment after an alter (30-130 ms
        # measured): read until what was set shows, within the timeout.
        deadline = time.monotonic() + timeout
        while True:
            found = read()
            if all(found.get(e.name) == e.value for e in wanted) or time.monotonic() > deadline:
                return found
            time.sleep(0.05)
    except confluent_kafka.KafkaException as exc:
        raise ShareGroupsUnavailable(
            f'share group "{group_id}" at {servers}: the cluster refused its configuration '
            f"({_text(exc, settings)}); a share group needs {NEEDS_SHARE_GROUPS}"
        ) from None


def _text(exc: confluent_kafka.KafkaException, settings: dict[str, Any]) -> str:
    """A client error as one line, secrets scrubbed."""
    err = exc.args[0]
    return " ".join(scrub(err.str() if hasattr(err, "str") else str(err), settings).split())
