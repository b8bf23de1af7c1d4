"""Issue 21: `delivery_timeout_sec` (per client, per topic, from the environment), the upper bounds
of `retry_count` and `max_in_flight`, and a `--config` that names no directory: each mistake is
one line on stderr and exit code 2, naming what is wrong and where."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from freedom.config.loading import ConfigError, load_kafka_config
from tests.test_config import KAFKA_TOML, _run_freedom, _service_config, _the_one_error_line

SERVICES = Path(__file__).parent / "services"


def _config(tmp_path: Path, client: str = "") -> Path:
    """test_config's service config (a cluster nobody runs) with `client`'s keys, which may set
    `retry_count` in place of its own."""
    config, _ = _service_config(tmp_path, client=client)
    if "retry_count" in client:
        toml = config / KAFKA_TOML
        toml.write_text(toml.read_text().replace("retry_count = 1\n", "", 1))
    return config


def _freedom(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "freedom", *args],
        cwd=SERVICES,
        capture_output=True,
        text=True,
        timeout=60,
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("FREEDOM_")},
            "RECORD_FILE": os.devnull,
            **(env or {}),
        },
    )


@pytest.mark.parametrize(
    "text, key, problem",
    [
        (
            "retry_count = 101",
            "consumer_clients[0].retry_count",
            "must be at most 100 (each retry waits retry_interval_sec), got 101",
        ),
        (
            "max_in_flight = 9223372036854775807",
            "consumer_clients[0].max_in_flight",
            "must be at most 100000 (each record in flight holds a connection to the service), "
            "got 9223372036854775807",
        ),
        (
            '[consumer_clients.topics."event-sell"]\nmax_in_flight = 100001',
            'consumer_clients[0].topics."event-sell".max_in_flight',
            "must be at most 100000",
        ),
        (
            "delivery_timeout_sec = 7200",
            "consumer_clients[0].delivery_timeout_sec",
            "must be at most 3600 seconds (one hour; ",
        ),
        (
            '[consumer_clients.topics."event-sell"]\ndelivery_timeout_sec = 0',
            'consumer_clients[0].topics."event-sell".delivery_timeout_sec',
            "must be greater than 0",
        ),
        (
            "delivery_timeout_sec = inf",
            "consumer_clients[0].delivery_timeout_sec",
            "must be a finite number of seconds, got inf",
        ),
    ],
)
def test_counts_and_delivery_timeouts_out_of_bounds_are_one_line(tmp_path, text, key, problem):
    config = _config(tmp_path, text)
    line = _the_one_error_line(_run_freedom(config))
    assert line.startswith(f"freedom: error: {config / KAFKA_TOML}: {key}: {problem}"), line


def test_the_bounds_themselves_are_accepted(tmp_path):
    config = _config(
        tmp_path,
        "retry_count = 100\nmax_in_flight = 100000\ndelivery_timeout_sec = 3600\n"
        '[consumer_clients.topics."event-sell"]\ndelivery_timeout_sec = 0.5',
    )
    client = load_kafka_config(config).consumer_clients[0]
    assert (client.retry_count, client.max_in_flight, client.delivery_timeout_sec) == (
        100,
        100000,
        3600.0,
    )
    assert client.consume_config("event-sell").delivery_timeout_sec == 0.5
    assert client.consume_config("another").delivery_timeout_sec == 3600.0  # the client's
    default = load_kafka_config(_config(tmp_path)).consumer_clients[0]
    assert default.delivery_timeout_sec == 30.0  # as before


def test_a_subscription_is_bounded_too_and_its_timeout_defaults_to_the_clients(tmp_path):
    from freedom.standalone.proxy import plan

    base = """
[[consumer_clients]]
servers = ["127.0.0.1:9092"]
delivery_timeout_sec = 75
[[subscriptions]]
topic = "orders"
url = "http://orders:8080/events/{key}"
"""
    (tmp_path / "infra").mkdir()
    (tmp_path / "infra" / "kafka.toml").write_text(base)
    kafka = load_kafka_config(tmp_path)
    assert plan(kafka)[0].config.consume_config("orders").delivery_timeout_sec == 75.0
    (tmp_path / "infra" / "kafka.toml").write_text(base + "timeout_sec = 5\n")
    kafka = load_kafka_config(tmp_path)
    assert plan(kafka)[0].config.consume_config("orders").delivery_timeout_sec == 5.0
    for text, key, problem in [
        ("retry_count = 1000", "subscriptions[0].retry_count", "must be at most 100"),
        ("max_in_flight = 200000", "subscriptions[0].max_in_flight", "must be at most 100000"),
        ("timeout_sec = 3601", "subscriptions[0].timeout_sec", "must be at most 3600 seconds"),
    ]:
        (tmp_path / "infra" / "kafka.toml").write_text(base + text + "\n")
        with pytest.raises(ConfigError) as info:
            load_kafka_config(tmp_path)
        assert info.value.key == key and problem in str(info.value), str(info.value)


def test_delivery_timeout_sec_from_the_environment_per_client_and_per_topic(tmp_path):
    config = _config(tmp_path)
    proc = _freedom(
        "config",
        "recording_service:app",
        "--config",
        str(config),
        "--json",
        env={
            "FREEDOM_KAFKA__CONSUMER_CLIENTS__0__DELIVERY_TIMEOUT_SEC": "45",
            "FREEDOM_KAFKA__CONSUMER_CLIENTS__G__TOPICS__EVENT_SELL__DELIVERY_TIMEOUT_SEC": "90.5",
        },
    )
    assert proc.returncode == 0, proc.stderr
    shown = json.loads(proc.stdout)["kafka"]
    assert shown["consumer_clients[0].delivery_timeout_sec"] == {
        "value": 45.0,
        "source": "FREEDOM_KAFKA__CONSUMER_CLIENTS__0__DELIVERY_TIMEOUT_SEC",
        "env": "FREEDOM_KAFKA__CONSUMER_CLIENTS__0__DELIVERY_TIMEOUT_SEC",
    }
    topic = shown['consumer_clients[0].topics."event-sell".delivery_timeout_sec']
    assert (topic["value"], topic["source"]) == (
        90.5,
        "FREEDOM_KAFKA__CONSUMER_CLIENTS__G__TOPICS__EVENT_SELL__DELIVERY_TIMEOUT_SEC",
    )


@pytest.mark.parametrize("command", ["run", "config"])
def test_a_config_flag_naming_no_directory_blames_the_flag(tmp_path, command):
    """It blamed $FREEDOM_PROJECT_CONFIG, which nobody had set."""
    missing = tmp_path / "no-such-conf"
    proc = _freedom(command, "recording_service:app", "--config", str(missing))
    assert proc.returncode == 2, proc.stderr
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert lines == [
        f"freedom: error: --config {missing} is not a directory (nothing there): give the config "
        "directory, the one holding app.toml and infra/kafka.toml"
    ], proc.stderr
