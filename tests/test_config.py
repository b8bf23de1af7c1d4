"""Bad configuration stops start-up with one clear line naming the file, the key and the problem."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from freedom.config.loading import ConfigError, find_config_dir, load_app_config, load_kafka_config

SERVICES = Path(__file__).parent / "services"


def kafka_toml(tmp_path: Path, text: str) -> Path:
    (tmp_path / "infra").mkdir(parents=True, exist_ok=True)
    (tmp_path / "infra" / "kafka.toml").write_text(text)
    return tmp_path


SEED = """
[consumer]
open = true
proxy_addr = "http://127.0.0.1:8000"
proxy_http2 = false
[producer]
open = true
[[producer_clients]]
servers = [":9092"]
[[consumer_clients]]
servers = [":9092"]
group_id = "freedom"
retry_count = 3
retry_group_id = "retry_freedom"
retry_prefix = "retry-"
retry_interval_sec = 45
retry_fail_prefix = "fail-"
"""


def test_the_seeds_kafka_toml_loads(tmp_path):
    cfg = load_kafka_config(kafka_toml(tmp_path, SEED))
    assert cfg is not None and cfg.consumer.open and cfg.producer.open
    assert cfg.producer_clients[0].servers == ("127.0.0.1:9092",)
    c = cfg.consumer_clients[0]
    assert (
        c.group_id,
        c.retry_count,
        c.retry_group_id,
        c.retry_prefix,
        c.retry_interval_sec,
        c.retry_fail_prefix,
    ) == ("freedom", 3, "retry_freedom", "retry-", 45.0, "fail-")
    assert not cfg.needs_embedded_broker


def test_no_servers_anywhere_means_the_embedded_broker(tmp_path):
    cfg = load_kafka_config(
        kafka_toml(tmp_path, "[producer]\nopen = true\n[consumer]\nopen = true\n")
    )
    assert cfg is not None and cfg.needs_embedded_broker


@pytest.mark.parametrize(
    "text, key, problem",
    [
        (
            SEED.replace("proxy_http2 = false", "proxy_http2 = false\nproxy_htpp2 = true"),
            "consumer.proxy_htpp2",
            "unknown key",
        ),
        (
            SEED.replace('group_id = "freedom"', "group_id = 7"),
            "consumer_clients[0].group_id",
            "must be a string, got an integer",
        ),
        (
            SEED.replace("retry_count = 3", 'retry_count = "3"'),
            "consumer_clients[0].retry_count",
            "must be an integer, got a string",
        ),
        (
            SEED.replace("retry_count = 3", "retry_count = true"),
            "consumer_clients[0].retry_count",
            "must be an integer, got a boolean",
        ),
        (
            SEED.replace('servers = [":9092"]\n[[consumer', "servers = []\n[[consumer"),
            "producer_clients[0].servers",
            "is empty",
        ),
        (
            SEED.replace("http://127.0.0.1:8000", "ftp://127.0.0.1:8000"),
            "consumer.proxy_addr",
            'must start with "http://"',
        ),
        (
            SEED.replace(
                "[[consumer_clients]]",
                '[[producer_clients]]\nservers = [":9093"]\n[[consumer_clients]]',
            ),
            "producer_clients[1].name",
            "names must be unique",
        ),
        ("[consumer\nopen = true", None, "not valid TOML"),
    ],
)
def test_bad_kafka_toml_names_file_key_and_problem(tmp_path, text, key, problem):
    with pytest.raises(ConfigError) as info:
        load_kafka_config(kafka_toml(tmp_path, text))
    err = info.value
    assert err.key == key
    assert problem in str(err)
    assert str(tmp_path / "infra" / "kafka.toml") in str(err)
    assert "\n" not in str(err)


def test_bad_listen_addr(tmp_path):
    (tmp_path / "app.toml").write_text('listen_addr = "localhost"\n')
    with pytest.raises(ConfigError, match=r"app.toml: listen_addr: must look like"):
        load_app_config(tmp_path)


def test_config_dir_lookup_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FREEDOM_PROJECT_CONFIG", raising=False)
    assert find_config_dir() is None
    (tmp_path / "server" / "conf").mkdir(parents=True)
    assert find_config_dir() == Path("server/conf")
    (tmp_path / "conf").mkdir()
    assert find_config_dir() == Path("conf")
    monkeypatch.setenv("FREEDOM_PROJECT_CONFIG", str(tmp_path / "elsewhere"))
    with pytest.raises(ConfigError, match="does not exist"):
        find_config_dir()


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            SEED.replace("proxy_http2 = false", "proxy_http2 = false\nunknown_key = 1"),
            "consumer.unknown_key: unknown key",
        ),
        (
            SEED.replace("retry_count = 3", 'retry_count = "three"'),
            "retry_count: must be an integer",
        ),
        (
            SEED.replace('servers = [":9092"]\n[[consumer', "servers = []\n[[consumer"),
            "servers: is empty",
        ),
        (
            SEED.replace("http://127.0.0.1:8000", "tcp://127.0.0.1:8000"),
            'proxy_addr: must start with "http://"',
        ),
    ],
)
def test_freedom_run_with_bad_config_exits_with_one_line(tmp_path, text, expected):
    kafka_toml(tmp_path, text)
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
        timeout=60,
    )
    assert proc.returncode == 2
    err_lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(err_lines) == 1, proc.stderr
    assert err_lines[0].startswith("freedom: error: ") and expected in err_lines[0]
    assert "Traceback" not in proc.stderr


def test_unreachable_cluster_stops_start_up_with_one_line(tmp_path):
    from freedom.testing import free_port, kafka_config, write_config

    dead = f"127.0.0.1:{free_port()}"
    cfg = kafka_config(dead, free_port())
    write_config(tmp_path, kafka=cfg)
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
        timeout=90,
        env={**__import__("os").environ, "RECORD_FILE": "/dev/null"},
    )
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("freedom: error:")]
    assert len(errors) == 1 and "cannot reach Kafka at " + dead in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_listen_override_is_checked_like_the_file(tmp_path):
    (tmp_path / "app.toml").write_text('listen_addr = "127.0.0.1:8000"\n')
    assert load_app_config(tmp_path, listen_addr="0.0.0.0:9001").listen_addr == "0.0.0.0:9001"
    assert load_app_config(tmp_path, listen_addr=":9002").listen_addr == "0.0.0.0:9002"
    with pytest.raises(ConfigError, match=r"freedom run: --listen: must look like"):
        load_app_config(tmp_path, listen_addr="nohost")


def test_freedom_run_with_a_bad_listen_flag_exits_with_one_line(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "freedom",
            "run",
            "recording_service:app",
            "--config",
            str(tmp_path),
            "--listen",
            "127.0.0.1:notaport",
        ],
        cwd=SERVICES,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert (
        proc.stderr.strip()
        == 'freedom: error: freedom run: --listen: must look like "127.0.0.1:8000", got "127.0.0.1:notaport"'
    )


# ----------------------------------------------------------------------------- issue 10, finding 10
# Each bad value below stops `freedom run` with exit code 2 and exactly one line on stderr naming
# the file, the key and the problem, before any Kafka client starts: the cluster in these configs
# does not exist, so a client that started would end in "cannot reach Kafka" (after 15 s) instead.


def _service_config(
    tmp_path: Path,
    *,
    app: str = "",
    consumer: str = "",
    producer: str = "",
    client: str = "",
    proxy_addr: str | None = None,
) -> tuple[Path, int]:
    """A config dir for recording_service (topic event-sell) on a cluster nobody runs; returns (dir, port)."""
    from freedom.testing import free_port

    port, dead = free_port(), free_port()
    (tmp_path / "infra").mkdir(parents=True, exist_ok=True)
    (tmp_path / "app.toml").write_text(f'listen_addr = "127.0.0.1:{port}"\n{app}')
    (tmp_path / "infra" / "kafka.toml").write_text(f"""
[consumer]
open = true
proxy_addr = "{proxy_addr or f"http://127.0.0.1:{port}"}"
{consumer}
[producer]
open = true
[[producer_clients]]
servers = ["127.0.0.1:{dead}"]
{producer}
[[consumer_clients]]
servers = ["127.0.0.1:{dead}"]
group_id = "g"
retry_count = 1
{client}
""")
    return tmp_path, port


def _run_freedom(config_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "freedom",
            "run",
            "recording_service:app",
            "--config",
            str(config_dir),
            *args,
        ],
        cwd=SERVICES,
        capture_output=True,
        text=True,
        timeout=60,
        env={**__import__("os").environ, "RECORD_FILE": "/dev/null"},
    )


def _the_one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The single stderr line of a run stopped by bad config (exit code 2, nothing else printed)."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("freedom: error: "), proc.stderr
    assert "cannot reach Kafka" not in lines[0]  # it is the config error, not a client that started
    return lines[0]


KAFKA_TOML = "infra/kafka.toml"


@pytest.mark.parametrize(
    "where, text, key, problem",
    [
        (
            "producer",
            "delivery_timeout_sec = inf",
            "producer_clients[0].delivery_timeout_sec",
            "must be a finite number of seconds, got inf",
        ),
        (
            "producer",
            "delivery_timeout_sec = 1e12",
            "producer_clients[0].delivery_timeout_sec",
            "must be at most 2147483 seconds",
        ),  # message.timeout.ms is a 32-bit number of milliseconds
        (
            "producer",
            "delivery_timeout_sec = 0.0001",
            "producer_clients[0].delivery_timeout_sec",
            "must be at least 0.001",
        ),  # 0 ms would mean "wait forever" to librdkafka
        (
            "client",
            "retry_interval_sec = nan",
            "consumer_clients[0].retry_interval_sec",
            "must be a finite number of seconds, got nan",
        ),
        (
            "client",
            "retry_interval_sec = inf",
            "consumer_clients[0].retry_interval_sec",
            "must be a finite number of seconds, got inf",
        ),
        (
            "client",
            "retry_interval_sec = 99999999999",
            "consumer_clients[0].retry_interval_sec",
            "must be at most 2147483 seconds",
        ),
        (
            "client",
            "drain_timeout_sec = inf",
            "consumer_clients[0].drain_timeout_sec",
            "must be a finite number of seconds, got inf",
        ),
    ],
)
def test_non_finite_or_huge_durations_are_refused(tmp_path, where, text, key, problem):
    config, _ = _service_config(tmp_path, **{where: text})
    line = _the_one_error_line(_run_freedom(config))
    assert line.startswith(f"freedom: error: {config / KAFKA_TOML}: {key}: {problem}"), line


@pytest.mark.parametrize(
    "where, text, key, problem",
    [
        (
            "client",
            'settings = { "foo.bar" = 1 }',
            "consumer_clients[0].settings.foo.bar",
            'librdkafka refuses it: No such configuration property: "foo.bar"',
        ),
        (
            "client",
            'settings = { "session.timeout.ms" = 6000, "fetch.wait.max.ms" = "soon" }',
            "consumer_clients[0].settings.fetch.wait.max.ms",
            'librdkafka refuses it: Invalid value for configuration property "fetch.wait.max.ms"',
        ),
        (
            "producer",
            'settings = { "lingr.ms" = 5 }',
            "producer_clients[0].settings.lingr.ms",
            'librdkafka refuses it: No such configuration property: "lingr.ms"',
        ),
        (
            "client",
            "settings = { linger.ms = 5 }",
            "consumer_clients[0].settings.linger",
            'must be a string, number or boolean, got a table (quote a dotted property name: "linger.ms" = ...)',
        ),
    ],
)
def test_librdkafka_settings_it_refuses_are_found_at_load(tmp_path, where, text, key, problem):
    config, _ = _service_config(tmp_path, **{where: text})
    line = _the_one_error_line(_run_freedom(config))
    assert line == f"freedom: error: {config / KAFKA_TOML}: {key}: {problem}", line


def test_an_invalid_setting_error_never_shows_a_secret(tmp_path):
    secret = "hunter2-very-secret"
    # librdkafka quotes a value it refuses: here the password, pasted into the wrong property.
    cfg = kafka_toml(
        tmp_path,
        SEED.replace(
            'group_id = "freedom"',
            'group_id = "freedom"\nsettings = { '
            f'"sasl.password" = "{secret}", "compression.type" = "{secret}" }}',
        ),
    )
    with pytest.raises(ConfigError) as info:
        load_kafka_config(cfg)
    assert info.value.key == "consumer_clients[0].settings.compression.type"
    assert 'librdkafka refuses it: Invalid value "***" for configuration property' in str(
        info.value
    )
    assert secret not in str(info.value)


def test_settings_a_hook_completes_are_left_to_librdkafka_at_start(tmp_path):
    """SASL without a password is refused by librdkafka, but a setting_config hook may add it: not a load error."""
    text = SEED.replace(
        'group_id = "freedom"',
        'group_id = "freedom"\n'
        'settings = { "security.protocol" = "SASL_SSL", "sasl.mechanism" = "PLAIN" }',
    )
    cfg = load_kafka_config(kafka_toml(tmp_path, text))
    assert (
        cfg is not None and cfg.consumer_clients[0].librdkafka_settings["sasl.mechanism"] == "PLAIN"
    )


@pytest.mark.parametrize(
    "where, text, key, problem",
    [
        (
            "client",
            'settings = { "enable.auto.commit" = true }',
            "consumer_clients[0].settings.enable.auto.commit",
            "the proxy commits an offset only once its record is settled",
        ),
        (
            "client",
            'settings = { "enable.auto.offset.store" = true }',
            "consumer_clients[0].settings.enable.auto.offset.store",
            "the proxy stores an offset only once its record is settled",
        ),
        (
            "client",
            'settings = { "group.id" = "other" }',
            "consumer_clients[0].settings.group.id",
            "use group_id",
        ),
        (
            "client",
            'settings = { "auto.offset.reset" = "earliest" }',
            "consumer_clients[0].settings.auto.offset.reset",
            "use initial_offset",
        ),
        (
            "client",
            'settings = { "bootstrap.servers" = "h:9092" }',
            "consumer_clients[0].settings.bootstrap.servers",
            "list the brokers in servers",
        ),
        (
            "client",
            'settings = { "error_cb" = "print" }',
            "consumer_clients[0].settings.error_cb",
            "is a callback",
        ),
        (
            "producer",
            'settings = { "acks" = 1 }',
            "producer_clients[0].settings.acks",
            'must be "all" (got 1)',
        ),
        (
            "producer",
            'settings = { "message.timeout.ms" = 5000 }',
            "producer_clients[0].settings.message.timeout.ms",
            "use that key",
        ),
        (
            "producer",
            'settings = { "transactional.id" = "t" }',
            "producer_clients[0].settings.transactional.id",
            "does not use transactions",
        ),
    ],
)
def test_settings_the_guarantees_depend_on_are_refused_with_the_reason(
    tmp_path, where, text, key, problem
):
    config, _ = _service_config(tmp_path, **{where: text})
    line = _the_one_error_line(_run_freedom(config))
    assert line.startswith(f"freedom: error: {config / KAFKA_TOML}: {key}: ") and problem in line, (
        line
    )


def test_settings_that_keep_the_guarantees_are_accepted(tmp_path):
    text = SEED.replace(
        'group_id = "freedom"',
        'group_id = "freedom"\n'
        'settings = { "isolation.level" = "read_uncommitted", "enable.partition.eof" = true }',
    )
    text = text.replace(
        'servers = [":9092"]\n[[consumer',
        'servers = [":9092"]\n'
        'settings = { "acks" = "all", "enable.idempotence" = false, "linger.ms" = 5 }\n[[consumer',
    )
    cfg = load_kafka_config(kafka_toml(tmp_path, text))
    assert (
        cfg is not None
        and cfg.producer_clients[0].librdkafka_settings["enable.idempotence"] is False
    )
    assert cfg.consumer_clients[0].librdkafka_settings["isolation.level"] == "read_uncommitted"


@pytest.mark.parametrize(
    "addr, problem",
    [
        (
            "http://127.0.0.1:99999",
            'is not a valid URL (Port out of range 0-65535): "http://127.0.0.1:99999"',
        ),
        (
            "http://h:abc",
            "is not a valid URL (Port could not be cast to integer value as 'abc'): \"http://h:abc\"",
        ),
        ("http://[::1:8000", 'is not a valid URL (Invalid IPv6 URL): "http://[::1:8000"'),
    ],
)
def test_a_proxy_addr_with_a_bad_port_or_bracket(tmp_path, addr, problem):
    config, _ = _service_config(tmp_path, proxy_addr=addr)
    line = _the_one_error_line(_run_freedom(config))
    assert line == f"freedom: error: {config / KAFKA_TOML}: consumer.proxy_addr: {problem}", line


@pytest.mark.parametrize("file", ["app.toml", KAFKA_TOML])
def test_a_toml_file_that_is_not_utf8(tmp_path, file):
    config, _ = _service_config(tmp_path)
    path = config / file
    path.write_bytes(path.read_bytes() + b"\n# caf\xe9 in Latin-1\n")
    line = _the_one_error_line(_run_freedom(config))
    lines = path.read_bytes().count(b"\n")
    assert line == (
        f"freedom: error: {path}: not valid TOML: not UTF-8 (byte 0xe9 on line {lines}); "
        "save the file as UTF-8"
    ), line


def test_an_unknown_log_level(tmp_path):
    config, _ = _service_config(tmp_path, app='log_level = "VERBOSE"\n')
    line = _the_one_error_line(_run_freedom(config))
    assert line == (
        f"freedom: error: {config / 'app.toml'}: log_level: must be one of DEBUG, INFO, WARNING, "
        'ERROR, CRITICAL, got "VERBOSE"'
    ), line


@pytest.mark.parametrize("http2", [False, True], ids=["uvicorn", "granian-h2c"])
def test_a_listen_addr_in_use_stops_start_up_before_kafka(tmp_path, http2):
    import socket

    config, port = _service_config(tmp_path, consumer=f"proxy_http2 = {str(http2).lower()}")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        line = _the_one_error_line(_run_freedom(config))
    assert line == (
        f"freedom: error: {config / 'app.toml'}: listen_addr: cannot listen on 127.0.0.1:{port}: "
        "Address already in use (another process listens on this port)"
    ), line


def test_a_listen_flag_for_an_address_not_on_this_machine(tmp_path):
    # A secret: else the (right) warning that event routes are open beyond loopback comes first.
    config, _ = _service_config(tmp_path, consumer='secret = "0123456789abcdef-0123"')
    line = _the_one_error_line(_run_freedom(config, "--listen", "192.0.2.1:8000"))  # TEST-NET-1
    assert line == (
        "freedom: error: freedom run: --listen: cannot listen on 192.0.2.1:8000: "
        "Cannot assign requested address (not an address of this machine)"
    ), line


def test_a_topic_table_for_a_topic_nobody_listens_to(tmp_path):
    config, _ = _service_config(
        tmp_path, client='[consumer_clients.topics."event-sel"]\nmode = "concurrent"\n'
    )
    line = _the_one_error_line(_run_freedom(config))
    assert line == (
        f'freedom: error: {config / KAFKA_TOML}: consumer_clients[0].topics."event-sel": '
        'no event listens to this topic (the listened topics: "event-sell")'
    ), line


@pytest.mark.parametrize(
    "text, key, problem",
    [
        (
            SEED.replace('servers = [":9092"]\n[[consumer', 'servers = [":99999"]\n[[consumer'),
            "producer_clients[0].servers",
            '":99999": the port must be 1 to 65535',
        ),
        (
            SEED.replace('servers = [":9092"]\n[[consumer', 'servers = ["a,b:9092"]\n[[consumer'),
            "producer_clients[0].servers",
            '"a,b:9092" is not a "host:port" address',
        ),
        (
            SEED.replace('retry_group_id = "retry_freedom"', 'retry_group_id = ""'),
            "consumer_clients[0].retry_group_id",
            "must not be empty when retry_count > 0",
        ),
        (
            SEED.replace("http://127.0.0.1:8000", "http://127.0.0.1:0"),
            "consumer.proxy_addr",
            "the port must be 1 to 65535",
        ),
        (
            SEED.replace("http://127.0.0.1:8000", "http://127.0.0.1:8000/?x=1"),
            "consumer.proxy_addr",
            'without "?" or "#"',
        ),
    ],
)
def test_more_bad_values_of_the_same_kind(tmp_path, text, key, problem):
    with pytest.raises(ConfigError) as info:
        load_kafka_config(kafka_toml(tmp_path, text))
    assert info.value.key == key and problem in str(info.value), str(info.value)


@pytest.mark.parametrize(
    "role, key, value, problem",
    [
        (
            "consumer",
            "enable.auto.commit",
            True,
            "the proxy commits an offset only once its record is settled",
        ),
        (
            "consumer",
            "enable.auto.offset.store",
            "true",
            "the proxy stores an offset only once its record is settled",
        ),
        (
            "producer",
            "acks",
            1,
            "publish() reports success only once every in-sync replica has the record",
        ),
    ],
)
def test_a_setting_hook_that_breaks_the_guarantees_is_refused_before_any_client(
    role, key, value, problem
):
    """kafka.toml's settings are checked at load; what a setting_config hook leaves is checked before the client is made."""
    from freedom.kafka.settings import clear_setting_hooks, client_settings, setting_config

    @setting_config
    def hook(settings, hook_role, name):
        if hook_role == role:
            settings[key] = value

    try:
        with pytest.raises(ConfigError) as info:
            client_settings(("127.0.0.1:1",), role, "north", {}, {})
        assert str(info.value).startswith(
            f"kafka.setting_config: {role} client 'north': a hook set {key} = {value!r}: "
        )
        assert problem in str(info.value)
        # A hook that keeps them is fine.
        settings = client_settings(("127.0.0.1:1",), "admin", "north", {}, {})
        assert settings["bootstrap.servers"] == "127.0.0.1:1"
    finally:
        clear_setting_hooks()
