"""TLS and SASL to the cluster (docs/security.md, "TLS and SASL to Kafka"), against a real Apache Kafka with TLS and SASL listeners.

The broker here is its own instance (module-scoped), so the shared one stays plain. Its
certificates come from a throw-away CA that the set-up makes with `trustme`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import (
    AdminClient,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialUpsertion,
)
from cryptography.hazmat.primitives import serialization

import freedom
from freedom.config.loading import load_kafka_config
from freedom.errors import ConfigError
from freedom.infra import kafka
from freedom.kafka.admin import ClusterUnreachable
from freedom.kafka.settings import clear_setting_hooks
from freedom.testing import ServiceThread, free_port, wait_until, write_config
from tests.apps import Recorder, shop_app
from tests.kafka.broker import ApacheKafka

PLAIN_USERS = {"alice": "alice-Secret-1234"}
SCRAM_USER, SCRAM_PASSWORD = "carol", "carol-Scram-5678"
PASSWORD_ENV = "FREEDOM_TEST_KAFKA_PASSWORD"


@dataclass
class SecureKafka:
    broker: ApacheKafka
    ca_file: Path
    other_ca_file: Path  # a CA the broker's certificate does not come from

    @property
    def sasl_ssl(self) -> str:
        return self.broker.address("SASL_SSL")

    @property
    def ssl(self) -> str:
        return self.broker.address("SSL")


@pytest.fixture(scope="module")
def secure_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureKafka]:
    d = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    trustme.CA().cert_pem.write_to_path(str(d / "other-ca.pem"))
    # Java reads unencrypted PKCS#8 keys from a PEM keystore (ssl.keystore.type=PEM).
    key = serialization.load_pem_private_key(cert.private_key_pem.bytes(), None)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (d / "server.pem").write_bytes(pem + b"".join(c.bytes() for c in cert.cert_chain_pems))
    users = " ".join(f'user_{u}="{p}"' for u, p in PLAIN_USERS.items())
    broker = ApacheKafka(
        extra_listeners={"SASL_SSL": "SASL_SSL", "SSL": "SSL"},
        extra_properties={
            "sasl.enabled.mechanisms": "PLAIN,SCRAM-SHA-256",
            "listener.name.sasl_ssl.plain.sasl.jaas.config": f"org.apache.kafka.common.security.plain.PlainLoginModule required {users};",
            "listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config": "org.apache.kafka.common.security.scram.ScramLoginModule required;",
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": str(d / "server.pem"),
        },
    )
    try:
        broker.start()
        admin = AdminClient({"bootstrap.servers": broker.bootstrap})
        upsert = UserScramCredentialUpsertion(
            SCRAM_USER,
            ScramCredentialInfo(ScramMechanism.SCRAM_SHA_256, 4096),
            SCRAM_PASSWORD.encode(),
        )
        for f in admin.alter_user_scram_credentials([upsert]).values():
            f.result(30)
        yield SecureKafka(broker, d / "ca.pem", d / "other-ca.pem")
    finally:
        broker.close()


def sasl_client(
    secure: SecureKafka, mechanism: str = "PLAIN", user: str = "alice", **extra: Any
) -> dict[str, Any]:
    return {
        "servers": [secure.sasl_ssl],
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": mechanism,
        "sasl_username": user,
        "sasl_password_env": PASSWORD_ENV,
        "ssl_ca_location": str(secure.ca_file),
        **extra,
    }


def values(bootstrap_settings: dict[str, Any], topic: str, expected: int) -> list[bytes]:
    c = Consumer(
        {
            **bootstrap_settings,
            "group.id": f"check-{uuid.uuid4().hex[:6]}",
            "enable.auto.commit": False,
        }
    )
    c.assign([TopicPartition(topic, 0, 0)])
    out: list[bytes] = []
    deadline = time.monotonic() + 30
    try:
        while len(out) < expected and time.monotonic() < deadline:
            out += [m.value() for m in c.consume(10, 0.5) if m.error() is None]
    finally:
        c.close()
    return out


@pytest.mark.parametrize(
    "mechanism, user, password",
    [
        ("PLAIN", "alice", PLAIN_USERS["alice"]),
        ("SCRAM-SHA-256", SCRAM_USER, SCRAM_PASSWORD),
    ],
    ids=["PLAIN", "SCRAM-SHA-256"],
)
def test_sasl_over_tls_publishes_and_consumes(
    secure_kafka, tmp_path, monkeypatch, mechanism, user, password
):
    monkeypatch.setenv(PASSWORD_ENV, password)
    topic = f"secure-{uuid.uuid4().hex[:8]}"
    port = free_port()
    client = sasl_client(secure_kafka, mechanism, user)
    write_config(
        tmp_path,
        app={"listen_addr": f"127.0.0.1:{port}"},
        kafka={
            "consumer": {"open": True, "proxy_addr": f"http://127.0.0.1:{port}"},
            "producer": {"open": True},
            "producer_clients": [client],
            "consumer_clients": [
                {
                    **client,
                    "group_id": f"g-{uuid.uuid4().hex[:8]}",
                    "settings": {"session.timeout.ms": 6000},
                }
            ],
        },
    )
    recorder = Recorder()
    with ServiceThread(shop_app(tmp_path, recorder, topic)) as svc:
        assert httpx.get(f"{svc.base_url}/shop/5", timeout=30).text == "ok"
        calls = wait_until(recorder.snapshot, 30, what="the delivery through the SASL_SSL cluster")
    assert calls[0].body == {"ID": 5, "Amount": 10}


def test_tls_only_listener(secure_kafka, tmp_path):
    topic = f"secure-{uuid.uuid4().hex[:8]}"
    write_config(
        tmp_path,
        kafka={
            "producer": {"open": True},
            "producer_clients": [
                {
                    "servers": [secure_kafka.ssl],
                    "security_protocol": "SSL",
                    "ssl_ca_location": str(secure_kafka.ca_file),
                }
            ],
        },
    )
    app = freedom.Application(config_dir=tmp_path, prepare=[])
    with ServiceThread(app, port=free_port()):
        app.producer.new_msg(topic, b"over TLS").publish_sync(timeout=30)
    settings = {
        "bootstrap.servers": secure_kafka.ssl,
        "security.protocol": "SSL",
        "ssl.ca.location": str(secure_kafka.ca_file),
    }
    assert values(settings, topic, 1) == [b"over TLS"]


async def test_wrong_password_is_a_clear_error_within_seconds(secure_kafka, tmp_path, monkeypatch):
    wrong = "not-the-Password-42"
    monkeypatch.setenv(PASSWORD_ENV, wrong)
    write_config(
        tmp_path,
        kafka={"producer": {"open": True}, "producer_clients": [sasl_client(secure_kafka)]},
    )
    app = freedom.Application(config_dir=tmp_path, prepare=[])
    started = time.monotonic()
    with pytest.raises(ClusterUnreachable) as info:
        await app.start()
    elapsed = time.monotonic() - started
    message = str(info.value)
    assert elapsed < 10, f"took {elapsed:.1f} s"
    assert f"cannot connect to Kafka at {secure_kafka.sasl_ssl} (producer_clients[0] in" in message
    assert "authentication failed" in message and "Invalid username or password" in message
    assert wrong not in message


async def test_untrusted_broker_certificate_is_a_clear_error(secure_kafka, tmp_path, monkeypatch):
    monkeypatch.setenv(PASSWORD_ENV, PLAIN_USERS["alice"])
    client = sasl_client(secure_kafka, ssl_ca_location=str(secure_kafka.other_ca_file))
    write_config(tmp_path, kafka={"producer": {"open": True}, "producer_clients": [client]})
    started = time.monotonic()
    with pytest.raises(ClusterUnreachable) as info:
        await freedom.Application(config_dir=tmp_path, prepare=[]).start()
    assert time.monotonic() - started < 10
    assert "TLS handshake failed" in str(info.value) and "certificate verify failed" in str(
        info.value
    )


async def test_setting_hook_supplies_the_credentials(secure_kafka, tmp_path):
    """The seed's kafka.SettingConfig: code adjusts each client's settings (here: the password from a vault)."""
    seen: list[tuple[str, str]] = []

    @kafka.setting_config
    def from_vault(settings: dict[str, Any], role: str, name: str) -> None:
        seen.append((role, name))
        settings["sasl.password"] = PLAIN_USERS[settings["sasl.username"]]

    topic = f"secure-{uuid.uuid4().hex[:8]}"
    client = {
        k: v
        for k, v in sasl_client(secure_kafka, name="vaulted").items()
        if k != "sasl_password_env"
    }
    write_config(tmp_path, kafka={"producer": {"open": True}, "producer_clients": [client]})
    app = freedom.Application(config_dir=tmp_path, prepare=[])
    try:
        await app.start()
        delivered = await app.producer.new_msg(topic, b"hooked").publish()
        assert delivered.offset == 0
    finally:
        await app.stop()
        clear_setting_hooks()
    assert ("producer", "vaulted") in seen


# ----------------------------------------------------------------------------- config checks (no broker)


@pytest.mark.parametrize(
    "client, problem",
    [
        (
            {"security_protocol": "TLS"},
            'security_protocol: must be one of PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL, got "TLS"',
        ),
        (
            {"security_protocol": "SASL_SSL", "sasl_mechanism": "MD5"},
            "sasl_mechanism: must be one of PLAIN",
        ),
        ({"sasl_username": "alice"}, 'sasl_username: is set but security_protocol is "PLAINTEXT"'),
        (
            {"security_protocol": "SASL_PLAINTEXT", "ssl_ca_location": "/etc/hosts"},
            'ssl_ca_location: is set but security_protocol is "SASL_PLAINTEXT"',
        ),
        (
            {"security_protocol": "SSL", "ssl_ca_location": "/no/such/ca.pem"},
            'ssl_ca_location: no such file: "/no/such/ca.pem"',
        ),
        (
            {"security_protocol": "SASL_SSL", "sasl_password_env": "FREEDOM_TEST_UNSET_PW"},
            "sasl_password_env: the environment variable FREEDOM_TEST_UNSET_PW is not set",
        ),
        (
            {
                "security_protocol": "SASL_SSL",
                "sasl_password": "pw-One-Two",
                "sasl_password_env": PASSWORD_ENV,
            },
            "sasl_password: is given twice",
        ),
        ({"security_protocol": "SASL_SSL", "sasl_username": 7}, "sasl_username: must be a string"),
    ],
)
def test_bad_security_keys_are_config_errors(tmp_path, monkeypatch, client, problem):
    monkeypatch.delenv("FREEDOM_TEST_UNSET_PW", raising=False)
    monkeypatch.setenv(PASSWORD_ENV, "env-Password-99")
    write_config(
        tmp_path,
        kafka={
            "producer": {"open": True},
            "producer_clients": [{"servers": ["127.0.0.1:9092"], **client}],
        },
    )
    with pytest.raises(ConfigError) as info:
        load_kafka_config(tmp_path)
    message = str(info.value)
    assert f"producer_clients[0].{problem}" in message
    assert "pw-One-Two" not in message and "env-Password-99" not in message


def test_security_keys_map_to_librdkafka_and_stay_out_of_repr(tmp_path, monkeypatch):
    monkeypatch.setenv(PASSWORD_ENV, "env-Password-99")
    write_config(
        tmp_path,
        kafka={
            "consumer": {"open": True},
            "consumer_clients": [
                {
                    "servers": ["127.0.0.1:9092"],
                    "security_protocol": "sasl_ssl",
                    "sasl_mechanism": "scram-sha-512",
                    "sasl_username": "bob",
                    "sasl_password_env": PASSWORD_ENV,
                    "ssl_check_hostname": False,
                }
            ],
        },
    )
    cfg = load_kafka_config(tmp_path)
    assert cfg is not None
    assert cfg.consumer_clients[0].librdkafka_settings == {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "bob",
        "sasl.password": "env-Password-99",
        "ssl.endpoint.identification.algorithm": "none",
    }
    assert "env-Password-99" not in repr(cfg)
