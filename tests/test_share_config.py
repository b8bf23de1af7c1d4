"""`share_group = true` in kafka.toml: what a share group's client accepts and what it refuses, each
refusal one line naming the file, the key and the fix (docs/share-groups.md)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from freedom.config.loading import ConfigError, load_kafka_config
from tests.test_config import SEED, SERVICES, kafka_toml

SHARED = SEED.replace('group_id = "freedom"', 'group_id = "freedom"\nshare_group = true')


def test_a_share_group_is_concurrent_and_starts_at_the_earliest_record_by_default(tmp_path):
    client = load_kafka_config(kafka_toml(tmp_path, SHARED)).consumer_clients[0]
    assert client.share_group
    assert client.mode == "concurrent"
    assert client.initial_offset == "earliest"
    assert client.consume_config("orders").mode == "concurrent"


def test_a_share_group_keeps_the_initial_offset_it_is_given(tmp_path):
    text = SHARED.replace("share_group = true", 'share_group = true\ninitial_offset = "latest"')
    assert load_kafka_config(kafka_toml(tmp_path, text)).consumer_clients[0].initial_offset == (
        "latest"
    )


def test_a_classic_group_is_unchanged(tmp_path):
    client = load_kafka_config(kafka_toml(tmp_path, SEED)).consumer_clients[0]
    assert not client.share_group
    assert (client.mode, client.initial_offset) == ("sequential", "latest")


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ('mode = "sequential"', "consumer_clients[0].mode"),
        ('mode = "key-ordered"', "consumer_clients[0].mode"),
        (
            '[consumer_clients.topics."orders"]\nmode = "key-ordered"',
            'consumer_clients[0].topics."orders".mode',
        ),
    ],
)
def test_an_ordered_mode_is_refused_for_a_share_group(tmp_path, extra, key):
    with pytest.raises(ConfigError) as info:
        load_kafka_config(kafka_toml(tmp_path, SHARED + extra + "\n"))
    assert info.value.key == key
    assert "share group delivers records in no order" in str(info.value)
    assert "\n" not in str(info.value)


def test_an_explicit_concurrent_mode_is_accepted(tmp_path):
    text = SHARED + 'mode = "concurrent"\n'
    assert load_kafka_config(kafka_toml(tmp_path, text)).consumer_clients[0].mode == "concurrent"


def test_a_share_group_without_retries_needs_a_dead_letter_topic(tmp_path):
    text = SHARED.replace("retry_count = 3", "retry_count = 0").replace(
        'retry_fail_prefix = "fail-"', 'retry_fail_prefix = ""'
    )
    with pytest.raises(ConfigError) as info:
        load_kafka_config(kafka_toml(tmp_path, text))
    assert info.value.key == "consumer_clients[0].retry_fail_prefix"
    assert "share.delivery.count.limit" in str(info.value)


def test_the_environment_turns_a_client_into_a_share_group(tmp_path, monkeypatch):
    monkeypatch.setenv("FREEDOM_KAFKA__CONSUMER_CLIENTS__0__SHARE_GROUP", "true")
    client = load_kafka_config(kafka_toml(tmp_path, SEED)).consumer_clients[0]
    assert client.share_group and client.mode == "concurrent"


def test_freedom_run_refuses_a_share_group_on_the_embedded_broker_with_one_line(tmp_path):
    kafka_toml(
        tmp_path,
        '[consumer]\nopen = true\nproxy_addr = "inprocess"\n[producer]\nopen = true\n'
        '[[producer_clients]]\n[[consumer_clients]]\ngroup_id = "g"\nshare_group = true\n',
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "freedom",
            "run",
            "recording_service:app",
            "--config",
            str(tmp_path),
        ],
        cwd=SERVICES,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("freedom: error: ")]
    assert len(errors) == 1, proc.stderr
    assert "the embedded broker has no share groups" in errors[0]
    assert "consumer_clients[0].share_group" in errors[0]
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("client", "subscription", "key", "problem"),
    [
        (
            'servers = [":9092"]\nshare_group = true',
            'mode = "sequential"',
            "subscriptions[0].mode",
            "a share group delivers records in no order",
        ),
        (
            "share_group = true",
            "",
            "consumer_clients[0].share_group",
            "the embedded broker has no share groups",
        ),
    ],
)
def test_freedom_proxy_refuses_what_a_share_group_cannot_do(
    tmp_path, client, subscription, key, problem
):
    from freedom.kafka.embedded import Located
    from freedom.standalone.proxy import plan

    text = (
        f'[[consumer_clients]]\ngroup_id = "g"\n{client}\n'
        f'[[subscriptions]]\ntopic = "orders"\nurl = "http://127.0.0.1:9/e/{{key}}"\n{subscription}\n'
    )
    kafka = load_kafka_config(kafka_toml(tmp_path, text))
    with pytest.raises(ConfigError) as info:
        plan(kafka, Located("127.0.0.1:9092", "test") if "embedded" in problem else None)
    assert info.value.key == key
    assert problem in str(info.value)
