"""librdkafka settings of every client: TLS/SASL keys of kafka.toml, and the hook to adjust them in code.

The seed's `kafka.SettingConfig` becomes :func:`setting_config`: a function registered with it
gets each client's settings dict (and the client's role and name) before the client is made,
and may change it. `kafka.toml` gives TLS and SASL per client with first-class keys
(`security_protocol`, `sasl_username`, `ssl_ca_location`, ... see :data:`SECURITY_KEYS`) and any
other librdkafka property under `settings = {...}`.

Secrets (passwords, keys, tokens) never reach a log line or an error message: :func:`redact`
hides them in a settings dict and :func:`scrub` removes their values from a text.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable, Literal, Protocol

from .logs import LIBRDKAFKA_LOG  # `freedom.kafka.librdkafka`, repeated lines folded

Role = Literal["producer", "consumer", "admin"]
SettingHook = Callable[[dict[str, Any], Role, str], None]

SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "GSSAPI", "OAUTHBEARER")

#: kafka.toml key -> librdkafka property. `*_env` keys name an environment variable holding the value.
SECURITY_KEYS: dict[str, str] = {
    "security_protocol": "security.protocol",
    "sasl_mechanism": "sasl.mechanism",
    "sasl_username": "sasl.username",
    "sasl_password": "sasl.password",
    "ssl_ca_location": "ssl.ca.location",
    "ssl_certificate_location": "ssl.certificate.location",
    "ssl_key_location": "ssl.key.location",
    "ssl_key_password": "ssl.key.password",
}
_SECRET_KEYS = ("sasl_password", "ssl_key_password")
_FILE_KEYS = ("ssl_ca_location", "ssl_certificate_location", "ssl_key_location")
_SECRET_WORDS = ("password", "secret", "token", "key.pem", "private", "oauthbearer.config")

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
    servers: tuple[str, ...], role: Role, name: str, base: dict[str, Any], configured: dict[str, Any]
) -> dict[str, Any]:
    """The settings of one client: freedom's defaults, then kafka.toml's `settings`, then the hooks.

    librdkafka's own log lines (a broker it cannot reach, say) go to the `freedom.kafka.librdkafka`
    logger rather than straight to stderr, so they take the service's log format and level.
    """
    settings: dict[str, Any] = {"bootstrap.servers": ",".join(servers), "logger": LIBRDKAFKA_LOG,
                                **base, **configured}
    for hook in _hooks:
        hook(settings, role, name)
    return settings


def is_secret(name: str) -> bool:
    """True for settings whose value must never be shown (passwords, private keys, tokens)."""
    name = name.lower()
    return any(w in name for w in _SECRET_WORDS)


def redact(settings: dict[str, Any]) -> dict[str, Any]:
    """A copy safe to log: secrets (passwords, keys, tokens) replaced by '***'."""
    return {k: ("***" if is_secret(k) else v) for k, v in settings.items()}


def scrub(text: str, settings: dict[str, Any]) -> str:
    """`text` with the value of every secret setting replaced by '***' (for error messages)."""
    for k, v in settings.items():
        if is_secret(k) and isinstance(v, str) and len(v) >= 3:
            text = text.replace(v, "***")
    return text


class KeySource(Protocol):
    """What :func:`security_settings` reads from: one table of kafka.toml (config.py's `_Table`)."""

    data: dict[str, Any]

    def get(self, name: str, kind: type | tuple[type, ...], default: Any) -> Any: ...

    def error(self, name: str, problem: str) -> Exception: ...


def security_settings(t: KeySource) -> dict[str, Any]:
    """Read the TLS/SASL keys of one client table into librdkafka properties, checking them.

    The checks catch what would otherwise surface only as a connection failure: an unknown
    protocol or mechanism, SASL or TLS keys with a protocol that does not use them, a certificate
    file that does not exist, a password environment variable that is not set.
    """
    out: dict[str, Any] = {}
    values: dict[str, str] = {}
    for key in SECURITY_KEYS:
        value = t.get(key, str, None)
        env_key = f"{key}_env"
        env_name = t.get(env_key, str, None) if key in _SECRET_KEYS else None
        if value is not None and env_name is not None:
            raise t.error(key, f"is given twice (as {key} and {env_key}); keep one, preferably {env_key}")
        if env_name is not None:
            if not env_name:
                raise t.error(env_key, "must name an environment variable")
            value = os.environ.get(env_name)
            if not value:
                raise t.error(env_key, f"the environment variable {env_name} is not set (or empty)")
        if value is None:
            continue
        if not value and key not in _SECRET_KEYS:
            raise t.error(key, "must not be empty (remove the key instead)")
        values[key] = value
    check_hostname = t.get("ssl_check_hostname", bool, None)

    protocol = values.get("security_protocol", "").upper()
    if protocol:
        if protocol not in SECURITY_PROTOCOLS:
            raise t.error("security_protocol", f'must be one of {", ".join(SECURITY_PROTOCOLS)}, got "{values["security_protocol"]}"')
        values["security_protocol"] = protocol
    if "sasl_mechanism" in values:
        mech = values["sasl_mechanism"].upper()
        if mech not in SASL_MECHANISMS:
            raise t.error("sasl_mechanism", f'must be one of {", ".join(SASL_MECHANISMS)}, got "{values["sasl_mechanism"]}"')
        values["sasl_mechanism"] = mech
    uses_sasl = protocol.startswith("SASL_")
    uses_tls = protocol in ("SSL", "SASL_SSL")
    for key in values:
        if key.startswith("sasl_") and not uses_sasl:
            raise t.error(key, f'is set but security_protocol is "{protocol or "PLAINTEXT"}": '
                               'set security_protocol = "SASL_SSL" (or "SASL_PLAINTEXT")')
        if key.startswith("ssl_") and not uses_tls:
            raise t.error(key, f'is set but security_protocol is "{protocol or "PLAINTEXT"}": '
                               'set security_protocol = "SSL" or "SASL_SSL"')
    if check_hostname is not None and not uses_tls:
        raise t.error("ssl_check_hostname", 'applies only with security_protocol = "SSL" or "SASL_SSL"')
    for key in _FILE_KEYS:
        if key in values and not Path(values[key]).is_file():
            raise t.error(key, f'no such file: "{values[key]}"')
    for key, value in values.items():
        out[SECURITY_KEYS[key]] = value
    if check_hostname is not None:
        out["ssl.endpoint.identification.algorithm"] = "https" if check_hostname else "none"
    return out
