"""The Kafka client settings: freedom's librdkafka defaults, the refused and the secret properties,
and the checks of kafka.toml's `settings` and TLS/SASL keys.

The rules only: the Kafka side (its `client_settings`) builds each client's settings from them
(and runs the `setting_config` hooks), and the configuration models (:mod:`freedom.config.clients`) check
kafka.toml against them when it is loaded, before any client starts:
:func:`refused_setting` refuses the properties freedom's guarantees depend on (with the reason),
and :func:`invalid_setting` has librdkafka check the rest by building a client that never connects.

Secrets (passwords, keys, tokens) never reach a log line or an error message: :func:`redact`
hides them in a settings dict and :func:`scrub` removes their values from a text.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Literal

from freedom.config.secret import KeySource

Role = Literal["producer", "consumer", "admin"]

#: freedom's settings of every producer (publishing and the proxy's retry producer).
PRODUCER_DEFAULTS: dict[str, Any] = {
    "enable.idempotence": True,
    "acks": "all",
    "linger.ms": 2,
    "compression.type": "lz4",
}

#: freedom's settings of every consumer (the proxy's groups).
CONSUMER_DEFAULTS: dict[str, Any] = {
    "enable.auto.commit": False,
    "enable.auto.offset.store": False,
    "enable.partition.eof": False,
    "session.timeout.ms": 30000,
    "max.poll.interval.ms": 300000,
    # librdkafka's prefetch queue (default 64 MB) counts towards the proxy's memory: keep it modest.
    "queued.max.messages.kbytes": 16384,
}

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


_OFF = ("false", "0")


def hook_refusal(settings: dict[str, Any], role: Role) -> str | None:
    """Why the settings a `setting_config` hook left would break freedom's guarantees, else None.

    kafka.toml's `settings` are checked at load (:func:`refused_setting`); a hook runs later, in
    code (when the Kafka side builds the client's settings), so the same guarantees are checked
    again on what it leaves.
    """
    if role == "consumer":
        for key in ("enable.auto.commit", "auto.commit.enable", "enable.auto.offset.store"):
            if key in settings and str(settings[key]).lower() not in _OFF:
                return f"a hook set {key} = {settings[key]!r}: {REFUSED['consumer'][key]}"
    if role == "producer":
        for key in _ACKS_KEYS:
            if key in settings and str(settings[key]).lower() not in ("all", "-1"):
                return f"a hook set {key} = {settings[key]!r}: {_ACKS}"
    return None


_SERVERS = "set by freedom from `servers` (or the embedded broker): list the brokers in servers"
_ACKS = (
    "publish() reports success only once every in-sync replica has the record (acks = all); "
    "with fewer, a broker failure can lose a published record"
)
_TIMEOUT = "set by freedom from delivery_timeout_sec (how long publish() may take): use that key"

#: Properties of `settings` freedom sets itself, per role, and why a user value is refused.
REFUSED: dict[str, dict[str, str]] = {
    "any": {"bootstrap.servers": _SERVERS, "metadata.broker.list": _SERVERS},
    "consumer": {
        "group.id": "set by freedom: use group_id (and retry_group_id for the retry group)",
        "auto.offset.reset": "set by freedom: use initial_offset (the retry group always starts at the earliest offset)",
        "enable.auto.commit": "the proxy commits an offset only once its record is settled (delivered, or on its "
        "retry or dead-letter topic); automatic commits would commit records still in "
        "flight, lost in a crash",
        "auto.commit.enable": "an old name of enable.auto.commit, which the proxy must control (it commits an "
        "offset only once its record is settled)",
        "enable.auto.offset.store": "the proxy stores an offset only once its record is settled (delivered, or on "
        "its retry or dead-letter topic); storing offsets at fetch would commit "
        "records still in flight, lost in a crash",
    },
    "producer": {
        "message.timeout.ms": _TIMEOUT,
        "delivery.timeout.ms": _TIMEOUT,
        "transactional.id": "freedom's producer does not use transactions: a transactional producer would "
        "refuse every publish",
    },
}
_ACKS_KEYS = ("acks", "request.required.acks")
_CALLBACKS = ("logger", "on_delivery", "on_commit", "opaque")


def refused_setting(name: str, value: Any, role: Role) -> str | None:
    """Why kafka.toml may not give librdkafka property `name` to a client of `role`; None when it may."""
    if name in _CALLBACKS or name.endswith("_cb"):
        return (
            "is a callback, which kafka.toml cannot give: register a hook in code "
            "(kafka.setting_config) to set it"
        )
    reason = REFUSED["any"].get(name) or REFUSED.get(role, {}).get(name)
    if reason:
        return reason
    if role == "producer" and name in _ACKS_KEYS and str(value).lower() not in ("all", "-1"):
        return f'must be "all" (got {value!r}): {_ACKS}'
    return None


_SILENT = logging.Logger("freedom.settings-check")  # not in the hierarchy, so never propagates
_SILENT.addHandler(logging.NullHandler())


_CREATE = ("Failed to create producer: ", "Failed to create consumer: ")


def _refusal(settings: dict[str, Any], role: Role) -> str | None:
    """librdkafka's reason for refusing `settings` for a client of `role`, else None.

    A client is built and dropped at once: without `bootstrap.servers` it has no broker to connect
    to, and with log_level 0 it prints nothing. A reason starting with "Failed to create" is about
    the combination (checked when the client is made), any other about one property.
    """
    import confluent_kafka

    conf = {**settings, "log_level": 0, "logger": _SILENT}
    try:
        if role == "consumer":
            confluent_kafka.Consumer(conf).close()
        else:
            confluent_kafka.Producer(conf)
    except confluent_kafka.KafkaException as exc:
        err = exc.args[0]
        text = err.str() if isinstance(err, confluent_kafka.KafkaError) else str(err)
    except (ValueError, TypeError) as exc:
        text = str(exc)
    else:
        return None
    return text


def invalid_setting(
    settings: dict[str, Any], role: Role, base: dict[str, Any]
) -> tuple[str, str] | None:
    """The property of `settings` librdkafka refuses for a client of `role` (unknown, or a bad value),
    and librdkafka's reason, secrets scrubbed; None when it accepts each of them.

    Only each property on its own is judged here: a combination librdkafka refuses (SASL without a
    password, say) may still be completed by a :func:`setting_config` hook in code, so librdkafka
    judges that when the client is made, after the hooks.
    """
    if _refusal({**base, **settings}, role) is None:
        return None
    for key, value in settings.items():
        alone = _refusal({**base, key: value}, role)
        if alone is not None and not alone.startswith(_CREATE):
            return key, f"librdkafka refuses it: {scrub(alone, settings)}"
    return None


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
            raise t.error(
                key, f"is given twice (as {key} and {env_key}); keep one, preferably {env_key}"
            )
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
            raise t.error(
                "security_protocol",
                f'must be one of {", ".join(SECURITY_PROTOCOLS)}, got "{values["security_protocol"]}"',
            )
        values["security_protocol"] = protocol
    if "sasl_mechanism" in values:
        mech = values["sasl_mechanism"].upper()
        if mech not in SASL_MECHANISMS:
            raise t.error(
                "sasl_mechanism",
                f'must be one of {", ".join(SASL_MECHANISMS)}, got "{values["sasl_mechanism"]}"',
            )
        values["sasl_mechanism"] = mech
    uses_sasl = protocol.startswith("SASL_")
    uses_tls = protocol in ("SSL", "SASL_SSL")
    for key in values:
        if key.startswith("sasl_") and not uses_sasl:
            raise t.error(
                key,
                f'is set but security_protocol is "{protocol or "PLAINTEXT"}": '
                'set security_protocol = "SASL_SSL" (or "SASL_PLAINTEXT")',
            )
        if key.startswith("ssl_") and not uses_tls:
            raise t.error(
                key,
                f'is set but security_protocol is "{protocol or "PLAINTEXT"}": '
                'set security_protocol = "SSL" or "SASL_SSL"',
            )
    if check_hostname is not None and not uses_tls:
        raise t.error(
            "ssl_check_hostname", 'applies only with security_protocol = "SSL" or "SASL_SSL"'
        )
    for key in _FILE_KEYS:
        if key in values and not Path(values[key]).is_file():
            raise t.error(key, f'no such file: "{values[key]}"')
    for key, value in values.items():
        out[SECURITY_KEYS[key]] = value
    if check_hostname is not None:
        out["ssl.endpoint.identification.algorithm"] = "https" if check_hostname else "none"
    return out
