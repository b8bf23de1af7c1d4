"""librdkafka settings of every client, and the hook to adjust them in code.

The seed's `kafka.SettingConfig` becomes :func:`setting_config`: a function registered with it
gets each client's settings dict (and the client's role and name) before the client is made,
and may change it. `kafka.toml` can also give settings per client (`settings = {...}`), which is
where TLS and SASL go.
"""

from __future__ import annotations

from typing import Any, Callable, Literal

Role = Literal["producer", "consumer", "admin"]
SettingHook = Callable[[dict[str, Any], Role, str], None]

_hooks: list[SettingHook] = []


def setting_config(hook: SettingHook) -> SettingHook:
    """Register `hook(settings, role, client_name)`, called for every Kafka client freedom makes.

    Usable as a decorator. `settings` is the librdkafka configuration dict; change it in place.
    """
    _hooks.append(hook)
    return hook


def clear_setting_hooks() -> None:
    """Forget every registered hook (for tests)."""
    _hooks.clear()


def client_settings(
    servers: tuple[str, ...], role: Role, name: str, base: dict[str, Any], configured: dict[str, Any]
) -> dict[str, Any]:
    """The settings of one client: freedom's defaults, then kafka.toml's `settings`, then the hooks."""
    settings: dict[str, Any] = {"bootstrap.servers": ",".join(servers), **base, **configured}
    for hook in _hooks:
        hook(settings, role, name)
    return settings


def redact(settings: dict[str, Any]) -> dict[str, Any]:
    """A copy safe to log: secrets (passwords, keys, tokens) replaced by '***'."""
    secret_words = ("password", "secret", "token", "key.pem", "private")
    return {k: ("***" if any(w in k for w in secret_words) else v) for k, v in settings.items()}
