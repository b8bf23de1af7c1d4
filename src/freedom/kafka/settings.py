"""librdkafka settings of every client, and the hook to adjust them in code.

The seed's `kafka.SettingConfig` becomes :func:`setting_config`: a function registered with it
gets each client's settings dict (and the client's role and name) before the client is made,
and may change it. `kafka.toml` gives TLS and SASL per client with first-class keys
(`security_protocol`, `sasl_username`, `ssl_ca_location`, ...) and any other librdkafka property
under `settings = {...}`; the rules about them (freedom's defaults, the refused and the secret
properties, the checks done when kafka.toml is loaded) are :mod:`freedom.config.librdkafka`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from freedom.config.librdkafka import Role, hook_refusal
from freedom.kafka.client_logs import (
    LIBRDKAFKA_LOG,  # `freedom.kafka.librdkafka`, repeated lines folded
)

SettingHook = Callable[[dict[str, Any], Role, str], None]

_hooks: list[SettingHook] = []


def setting_config(hook: SettingHook) -> SettingHook:
    """Register `hook(settings, role, client_name)`, called for every Kafka client freedom makes.

    Usable as a decorator. `settings` is the librdkafka configuration dict; change it in place
    (e.g. set `sasl.password` from a secret store). Hooks run in registration order, after
    freedom's defaults and kafka.toml.
    """
    _hooks.append(hook)
    return hook


def clear_setting_hooks() -> None:
    """Forget every registered hook (for tests)."""
    _hooks.clear()


def client_settings(
    servers: tuple[str, ...],
    role: Role,
    name: str,
    base: dict[str, Any],
    configured: dict[str, Any],
) -> dict[str, Any]:
    """The settings of one client: freedom's defaults, then kafka.toml's `settings`, then the hooks.

    librdkafka's own log lines (a broker it cannot reach, say) go to the `freedom.kafka.librdkafka`
    logger rather than straight to stderr, so they take the service's log format and level.
    """
    settings: dict[str, Any] = {
        "bootstrap.servers": ",".join(servers),
        "logger": LIBRDKAFKA_LOG,
        **base,
        **configured,
    }
    for hook in _hooks:
        hook(settings, role, name)
    if _hooks:
        broken = hook_refusal(settings, role)
        if broken:
            from freedom.errors import ConfigError

            raise ConfigError("kafka.setting_config", f"{role} client {name!r}", broken)
    return settings


def connection_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """The part of a client's settings that says how to reach its cluster (address, TLS, SASL,
    sockets) and its logger (librdkafka's lines folded into `freedom.kafka.librdkafka`).

    The clients freedom derives from a configured one (the start-up check's admin client, the
    proxy's retry producer) take only these: the rest is role-specific (a consumer's group.id
    means nothing to a producer, and librdkafka warns about it).
    """
    keep = ("bootstrap.servers", "client.id", "client.rack", "broker.address.family", "logger")
    return {
        k: v
        for k, v in settings.items()
        if k in keep or k.startswith(("security.", "ssl.", "sasl.", "socket.", "enable.ssl."))
    }
