"""Configuration from the environment (issue 12, point 3): every key of app.toml and kafka.toml can be
set by a FREEDOM_APP__* / FREEDOM_KAFKA__* variable; errors name the variable, on one line, exit 2;
`freedom config` shows each key's source; docs/configuration.md is generated from the models."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from freedom.config.loading import ConfigError, load_app_config, load_kafka_config
from freedom.testing import free_port, wait_until

ROOT = Path(__file__).parent.parent
SERVICES = Path(__file__).parent / "services"
SECRET = "env-Secret-0123456789"

FILE = """
[consumer]
open = true
secret_env = "FREEDOM_TEST_FILE_SECRET"
[producer]
open = true
[[producer_clients]]
servers = ["127.0.0.1:9092"]
name = "north"
settings = { "linger.ms" = 20 }
[[consumer_clients]]
servers = ["127.0.0.1:9092"]
group_id = "orders-service"
"""


def conf(tmp_path: Path, kafka: str = FILE, app: str = "") -> Path:
    (tmp_path / "infra").mkdir(parents=True, exist_ok=True)
    (tmp_path / "infra" / "kafka.toml").write_text(kafka)
    (tmp_path / "app.toml").write_text(app)
    return tmp_path


@pytest.fixture(autouse=True)
def no_freedom_variables(monkeypatch):
    """Each test starts without FREEDOM_APP*/FREEDOM_KAFKA* variables; it sets its own with `setenv`."""
    for name in list(os.environ):
        if name.startswith(("FREEDOM_APP", "FREEDOM_KAFKA")):
            monkeypatch.delenv(name)


@pytest.fixture
def setenv(monkeypatch):
    def set_all(env: dict[str, str]) -> None:
        for k, v in env.items():
            monkeypatch.setenv(k, v)

    return set_all


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any FREEDOM_APP__/FREEDOM_KAFKA__ variable, plus `extra`."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("FREEDOM_APP", "FREEDOM_KAFKA"))
    }
    return {**env, **extra}


# ----------------------------------------------------------------------------- each kind of override


def test_an_app_key_and_a_consumer_key_override_the_files(tmp_path, setenv):
    d = conf(tmp_path, app='listen_addr = "127.0.0.1:8000"\nlog_level = "INFO"\n')
    env = {
        "FREEDOM_APP__LISTEN_ADDR": ":8300",
        "FREEDOM_APP__LOG_LEVEL": "debug",
        "FREEDOM_KAFKA__CONSUMER__PROXY_ADDR": "http://svc.internal:8300/",
        "FREEDOM_TEST_FILE_SECRET": SECRET,
    }
    setenv(env)
    app = load_app_config(d)
    assert (app.listen_addr, app.log_level) == ("0.0.0.0:8300", "DEBUG")
    assert app.listen_from == (
        "environment FREEDOM_APP__LISTEN_ADDR",
        None,
    )  # the bind error names it
    kafka = load_kafka_config(d)
    assert (
        kafka is not None
        and kafka.consumer.proxy_addr == "http://svc.internal:8300"
        and kafka.consumer.proxy_addr_explicit
    )
    # the file's keys the environment leaves alone still apply
    assert kafka.consumer.shared_secret == SECRET


def test_clients_by_index_and_by_name_and_a_settings_entry(tmp_path, setenv):
    env = {
        "FREEDOM_TEST_FILE_SECRET": SECRET,
        "FREEDOM_KAFKA__PRODUCER_CLIENTS__NORTH__SERVERS": "k1:9092, k2:9093",  # the client named north
        "FREEDOM_KAFKA__PRODUCER_CLIENTS__NORTH__SETTINGS__LINGER_MS": "5",  # "linger.ms"
        "FREEDOM_KAFKA__PRODUCER_CLIENTS__NORTH__SETTINGS__LOG__LEVEL": "6",  # "log_level"
        "FREEDOM_KAFKA__PRODUCER_CLIENTS__SOUTH__SERVERS": "s1:9092",  # no such name: a new client
        "FREEDOM_KAFKA__CONSUMER_CLIENTS__ORDERS_SERVICE__RETRY_COUNT": "3",  # by group_id "orders-service"
        "FREEDOM_KAFKA__CONSUMER_CLIENTS__0__RETRY_INTERVAL_SEC": "2.5",  # the same client, by index
        "FREEDOM_KAFKA__CONSUMER_CLIENTS__1__GROUP_ID": "audit",  # one past the last: a new client
        "FREEDOM_KAFKA__CONSUMER_CLIENTS__1__SERVERS": "127.0.0.1:9094",
    }
    setenv(env)
    kafka = load_kafka_config(conf(tmp_path))
    assert kafka is not None
    north, south = kafka.producer_clients
    assert north.name == "north" and north.servers == ("k1:9092", "k2:9093")
    assert north.librdkafka_settings == {
        "linger.ms": "5",
        "log_level": "6",
    }  # librdkafka takes either spelling of a number
    assert south.name == "south" and south.servers == ("s1:9092",)
    orders, audit = kafka.consumer_clients
    assert (orders.group_id, orders.retry_count, orders.retry_interval_sec) == (
        "orders-service",
        3,
        2.5,
    )
    assert (audit.group_id, audit.servers) == ("audit", ("127.0.0.1:9094",))


def test_secrets_from_the_environment_replace_the_files_other_form(tmp_path, setenv, monkeypatch):
    env = {
        "FREEDOM_KAFKA__CONSUMER__SECRET": SECRET,  # replaces the file's secret_env (whose variable is unset)
        "FREEDOM_KAFKA__PRODUCER_CLIENTS__0__SECURITY_PROTOCOL": "SASL_SSL",
        "FREEDOM_KAFKA__PRODUCER_CLIENTS__0__SASL_MECHANISM": "PLAIN",
        "FREEDOM_KAFKA__PRODUCER_CLIENTS__0__SASL_USERNAME": "alice",
        "FREEDOM_KAFKA__PRODUCER_CLIENTS__0__SASL_PASSWORD": "pw-From-The-Env",
    }
    monkeypatch.delenv("FREEDOM_TEST_FILE_SECRET", raising=False)
    setenv(env)
    kafka = load_kafka_config(conf(tmp_path))
    assert kafka is not None and kafka.consumer.shared_secret == SECRET
    assert kafka.producer_clients[0].librdkafka_settings["sasl.password"] == "pw-From-The-Env"
    assert "pw-From-The-Env" not in repr(kafka) and SECRET not in repr(kafka)
    shown = {e.key: e for e in kafka.entries}
    assert (
        shown["consumer.secret"].value == "***"
        and shown["consumer.secret"].source == "FREEDOM_KAFKA__CONSUMER__SECRET"
    )
    assert shown["producer_clients[0].sasl_password"].value == "***"
    assert "consumer.secret_env" not in shown


def test_the_environment_alone_configures_kafka(setenv):
    env = {
        "FREEDOM_KAFKA__PRODUCER__OPEN": "true",
        "FREEDOM_KAFKA__PRODUCER_CLIENTS__0__SERVERS": "127.0.0.1:9092",
        "FREEDOM_KAFKA__CONSUMER__OPEN": "1",
        "FREEDOM_KAFKA__CONSUMER_CLIENTS__0__SERVERS": ":9092",
        "FREEDOM_KAFKA__CONSUMER_CLIENTS__0__SETTINGS": '{"fetch.wait.max.ms": 50}',
    }  # a table as JSON
    assert load_kafka_config(None) is None  # no file, no variable: Kafka is off
    setenv(env)
    kafka = load_kafka_config(None)
    assert (
        kafka is not None
        and kafka.producer.open
        and kafka.consumer.open
        and kafka.file == "the environment"
    )
    assert (
        kafka.producer_clients[0].servers
        == ("127.0.0.1:9092",)
        == kafka.consumer_clients[0].servers
    )
    assert kafka.consumer_clients[0].librdkafka_settings == {"fetch.wait.max.ms": 50}


@pytest.mark.parametrize(
    "env, message",
    [
        (
            {"FREEDOM_KAFKA__CONSUMER_CLIENTS__0__RETRY_COUNT": "x"},
            'environment FREEDOM_KAFKA__CONSUMER_CLIENTS__0__RETRY_COUNT: must be an integer, got "x"',
        ),
        (
            {"FREEDOM_KAFKA__CONSUMER__OPEN": "maybe"},
            'environment FREEDOM_KAFKA__CONSUMER__OPEN: must be true or false, got "maybe"',
        ),
        (
            {"FREEDOM_KAFKA__CONSUMER__PROXY_ADR": "http://h:1"},
            'environment FREEDOM_KAFKA__CONSUMER__PROXY_ADR: unknown variable: [consumer] has no key "proxy_adr" '
            "(did you mean FREEDOM_KAFKA__CONSUMER__PROXY_ADDR?)",
        ),
        (
            {"FREEDOM_KAFKA_PRODUCER__OPEN": "true"},
            "environment FREEDOM_KAFKA_PRODUCER__OPEN: unknown variable (did you mean FREEDOM_KAFKA__PRODUCER__OPEN?)",
        ),
        (
            {"FREEDOM_LISTEN_ADDR": ":8000"},
            "environment FREEDOM_LISTEN_ADDR: unknown variable (did you mean FREEDOM_APP__LISTEN_ADDR?)",
        ),
        (
            {"FREEDOM_KAFKA__CONSUMER_CLIENTS__3__GROUP_ID": "g"},
            "environment FREEDOM_KAFKA__CONSUMER_CLIENTS__3__GROUP_ID: there is no consumer_clients[2]",
        ),
        (
            {
                "FREEDOM_KAFKA__CONSUMER_CLIENTS__0__SERVERS": "h:9092",
                "FREEDOM_KAFKA__CONSUMER_CLIENTS__0__RETRY_INTERVAL_SEC": "inf",
            },
            "environment FREEDOM_KAFKA__CONSUMER_CLIENTS__0__RETRY_INTERVAL_SEC: must be a finite number of seconds, got inf",
        ),
        (
            {
                "FREEDOM_KAFKA__CONSUMER_CLIENTS__0__SERVERS": "h:9092",
                "FREEDOM_KAFKA__CONSUMER_CLIENTS__0__SETTINGS__ENABLE_AUTO_COMMIT": "true",
            },
            "environment FREEDOM_KAFKA__CONSUMER_CLIENTS__0__SETTINGS__ENABLE_AUTO_COMMIT: the proxy commits an offset only once",
        ),
        (
            {"FREEDOM_KAFKA__PRODUCER_CLIENTS__0__SETTINGS__LINGR_MS": "5"},
            'environment FREEDOM_KAFKA__PRODUCER_CLIENTS__0__SETTINGS__LINGR_MS: librdkafka refuses it: No such configuration property: "lingr.ms"',
        ),
        (
            {"FREEDOM_APP__LOG_LEVEL": "loud\nsecond line"},
            'environment FREEDOM_APP__LOG_LEVEL: must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL, got "loud\\nsecond line"',
        ),
        (
            {"FREEDOM_APP__SERVICE_NAME": "caf\udce9"},
            "environment FREEDOM_APP__SERVICE_NAME: is not valid UTF-8 text",
        ),  # b"caf\xe9"
        (
            {"FREEDOM_KAFKA__CONSUMER_CLIENTS": '[{"servers": []}]'},  # a list given whole, as JSON
            "environment FREEDOM_KAFKA__CONSUMER_CLIENTS: consumer_clients[0].servers: is empty",
        ),
    ],
)
def test_an_environment_error_names_the_variable_on_one_line(setenv, env, message):
    setenv(env)
    with pytest.raises(ConfigError) as info:
        load_app_config(None)
        load_kafka_config(None)
    assert str(info.value).startswith(message), str(info.value)
    assert "\n" not in str(info.value)


def test_variables_freedom_reads_or_a_secret_env_names_are_not_flagged(tmp_path, setenv):
    env = {
        "FREEDOM_PROJECT_CONFIG": str(tmp_path),
        "FREEDOM_PROXY_SECRET": SECRET,
        "FREEDOM_TEST_FILE_SECRET": SECRET,
        "FREEDOM_MY_OWN_SETTING": "x",
    }  # the user's own FREEDOM_* name, nothing like freedom's
    setenv(env)
    assert load_kafka_config(conf(tmp_path)) is not None
    setenv(
        {"FREEDOM_KAFKA_FILE_SECRET": SECRET}
    )  # looks like freedom's namespace: fine once a *_env key names it
    with pytest.raises(
        ConfigError, match="environment FREEDOM_KAFKA_FILE_SECRET: unknown variable"
    ):
        load_kafka_config(conf(tmp_path))
    conf(tmp_path, FILE.replace("FREEDOM_TEST_FILE_SECRET", "FREEDOM_KAFKA_FILE_SECRET"))
    assert load_kafka_config(tmp_path) is not None


# ----------------------------------------------------------------------------- the command line


def run_freedom(
    *args: str, cwd: Path = SERVICES, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "freedom", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or clean_env(),
    )


@pytest.mark.parametrize(
    "var, value, line",
    [
        (
            "FREEDOM_KAFKA__CONSUMER_CLIENTS__0__RETRY_COUNT",
            "x",
            'freedom: error: environment FREEDOM_KAFKA__CONSUMER_CLIENTS__0__RETRY_COUNT: must be an integer, got "x"',
        ),
        (
            "FREEDOM_APP__LISTEN_ADRR",
            "127.0.0.1:8000",
            "freedom: error: environment FREEDOM_APP__LISTEN_ADRR: unknown variable: the top level of app.toml has no key "
            '"listen_adrr" (did you mean FREEDOM_APP__LISTEN_ADDR?)',
        ),
    ],
)
def test_freedom_run_with_a_bad_variable_exits_2_with_one_line(tmp_path, var, value, line):
    proc = run_freedom(
        "run",
        "recording_service:app",
        "--config",
        str(conf(tmp_path)),
        env=clean_env(
            **{var: value, "RECORD_FILE": os.devnull, "FREEDOM_TEST_FILE_SECRET": SECRET}
        ),
    )
    assert proc.returncode == 2, proc.stderr
    assert [x for x in proc.stderr.splitlines() if x.strip()] == [line], proc.stderr


def test_freedom_config_shows_each_keys_source_and_masks_secrets(tmp_path):
    d = conf(tmp_path, app='service_name = "shop"\n')
    env = clean_env(
        RECORD_FILE=os.devnull,
        FREEDOM_TEST_FILE_SECRET=SECRET,
        FREEDOM_KAFKA__PRODUCER_CLIENTS__0__SASL_PASSWORD="pw-Not-Shown-1",
        FREEDOM_KAFKA__PRODUCER_CLIENTS__0__SECURITY_PROTOCOL="SASL_SSL",
        FREEDOM_KAFKA__CONSUMER_CLIENTS__0__TOPICS__EVENT_SELL__MODE="concurrent",
        FREEDOM_KAFKA__CONSUMER_CLIENTS__0__MAX_IN_FLIGHT="64",
    )
    proc = run_freedom("config", "recording_service:app", "--config", str(d), "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    shown = json.loads(proc.stdout)
    kafka_file = str(d / "infra" / "kafka.toml")
    assert shown["app"]["service_name"] == {
        "value": "shop",
        "source": str(d / "app.toml"),
        "env": "FREEDOM_APP__SERVICE_NAME",
    }
    assert shown["app"]["listen_addr"]["source"] == "default"
    k = shown["kafka"]
    assert k["consumer.secret_env"] == {
        "value": "FREEDOM_TEST_FILE_SECRET",
        "source": kafka_file,
        "env": "FREEDOM_KAFKA__CONSUMER__SECRET_ENV",
    }
    assert k["producer_clients[0].sasl_password"] == {
        "value": "***",
        "source": "FREEDOM_KAFKA__PRODUCER_CLIENTS__0__SASL_PASSWORD",
        "env": "FREEDOM_KAFKA__PRODUCER_CLIENTS__0__SASL_PASSWORD",
    }
    assert k["producer_clients[0].settings.linger.ms"]["source"] == kafka_file
    assert k["consumer_clients[0].max_in_flight"]["value"] == 64
    # the environment's EVENT_SELL is the listened topic event-sell
    assert (
        k['consumer_clients[0].topics."event-sell".mode']["source"]
        == "FREEDOM_KAFKA__CONSUMER_CLIENTS__0__TOPICS__EVENT_SELL__MODE"
    )
    assert "pw-Not-Shown-1" not in proc.stdout and SECRET not in proc.stdout

    human = run_freedom("config", "recording_service:app", "--config", str(d), env=env)
    assert human.returncode == 0, human.stderr
    row = next(x for x in human.stdout.splitlines() if "consumer_clients[0].max_in_flight" in x)
    assert row.split() == [
        "consumer_clients[0].max_in_flight",
        "=",
        "64",
        "#",
        "FREEDOM_KAFKA__CONSUMER_CLIENTS__0__MAX_IN_FLIGHT",
    ]
    assert "pw-Not-Shown-1" not in human.stdout

    bad = run_freedom(
        "config",
        "recording_service:app",
        "--config",
        str(d),
        env={**env, "FREEDOM_KAFKA__CONSUMER__OPEN": "maybe"},
    )
    assert bad.returncode == 2
    assert (
        bad.stderr.strip()
        == 'freedom: error: environment FREEDOM_KAFKA__CONSUMER__OPEN: must be true or false, got "maybe"'
    )


def test_the_configuration_reference_is_up_to_date():
    from freedom.config.reference import reference

    committed = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert committed == reference(), (
        "run: python -m freedom.config.reference --write docs/configuration.md"
    )


# ----------------------------------------------------------------------------- end to end


def test_a_service_configured_only_through_the_environment_runs(apache_kafka, new_topic, tmp_path):
    """No config directory at all: `freedom run` in an empty directory, every key from a variable;
    GET /shop/7 publishes, and the handler gets the record through the consumer proxy."""
    topic = new_topic(apache_kafka.bootstrap)
    port, record = free_port(), tmp_path / "record.jsonl"
    env = clean_env(
        PYTHONPATH=os.pathsep.join([str(SERVICES), *filter(None, [os.environ.get("PYTHONPATH")])]),
        RECORD_FILE=str(record),
        EVENT_TOPIC=topic,
        FREEDOM_APP__LISTEN_ADDR=f"127.0.0.1:{port}",
        FREEDOM_KAFKA__PRODUCER__OPEN="true",
        FREEDOM_KAFKA__PRODUCER_CLIENTS__0__SERVERS=apache_kafka.bootstrap,
        FREEDOM_KAFKA__CONSUMER__OPEN="true",
        FREEDOM_KAFKA__CONSUMER__PROXY_ADDR=f"http://127.0.0.1:{port}",
        FREEDOM_KAFKA__CONSUMER_CLIENTS__ENV_TEST__SERVERS=apache_kafka.bootstrap,  # a new client, group "env_test"
        FREEDOM_KAFKA__CONSUMER_CLIENTS__ENV_TEST__INITIAL_OFFSET="earliest",
    )
    env.pop("FREEDOM_PROJECT_CONFIG", None)
    log = tmp_path / "service.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "freedom", "run", "env_service:app"],
        cwd=tmp_path,
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:

        def published() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"the service stopped: {log.read_text()}")
            try:
                return httpx.get(f"http://127.0.0.1:{port}/shop/7", timeout=10).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(published, timeout=90, what="the service up and publishing")
        wait_until(
            lambda: record.exists() and record.read_text().strip(), timeout=60, what="the delivery"
        )
        assert json.loads(record.read_text().splitlines()[0]) == {
            "key": "K7",
            "body": '{"id": "7"}',
        }
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
