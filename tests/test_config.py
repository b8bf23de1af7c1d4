"""Bad configuration stops start-up with one clear line naming the file, the key and the problem."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from freedom.config import ConfigError, find_config_dir, load_app_config, load_kafka_config

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
    assert cfg is not None and cfg.consumer_open and cfg.producer_open
    assert cfg.producer_clients[0].servers == ("127.0.0.1:9092",)
    c = cfg.consumer_clients[0]
    assert (c.group_id, c.retry_count, c.retry_group_id, c.retry_prefix, c.retry_interval_sec, c.retry_fail_prefix) == \
        ("freedom", 3, "retry_freedom", "retry-", 45.0, "fail-")
    assert not cfg.needs_embedded_broker


def test_no_servers_anywhere_means_the_embedded_broker(tmp_path):
    cfg = load_kafka_config(kafka_toml(tmp_path, "[producer]\nopen = true\n[consumer]\nopen = true\n"))
    assert cfg is not None and cfg.needs_embedded_broker


@pytest.mark.parametrize("text, key, problem", [
    (SEED.replace("proxy_http2 = false", "proxy_http2 = false\nproxy_htpp2 = true"),
     "consumer.proxy_htpp2", "unknown key"),
    (SEED.replace('group_id = "freedom"', "group_id = 7"), "consumer_clients[0].group_id", "must be a string, got an integer"),
    (SEED.replace("retry_count = 3", 'retry_count = "3"'), "consumer_clients[0].retry_count", "must be an integer, got a string"),
    (SEED.replace("retry_count = 3", "retry_count = true"), "consumer_clients[0].retry_count", "must be an integer, got a boolean"),
    (SEED.replace('servers = [":9092"]\n[[consumer', 'servers = []\n[[consumer'), "producer_clients[0].servers", "is empty"),
    (SEED.replace("http://127.0.0.1:8000", "ftp://127.0.0.1:8000"), "consumer.proxy_addr", 'must start with "http://"'),
    (SEED.replace("[[consumer_clients]]", '[[producer_clients]]\nservers = [":9093"]\n[[consumer_clients]]'),
     "producer_clients[1].name", "names must be unique"),
    ("[consumer\nopen = true", None, "not valid TOML"),
])
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


@pytest.mark.parametrize("text, expected", [
    (SEED.replace("proxy_http2 = false", "proxy_http2 = false\nunknown_key = 1"), "consumer.unknown_key: unknown key"),
    (SEED.replace("retry_count = 3", 'retry_count = "three"'), "retry_count: must be an integer"),
    (SEED.replace('servers = [":9092"]\n[[consumer', 'servers = []\n[[consumer'), "servers: is empty"),
    (SEED.replace("http://127.0.0.1:8000", "tcp://127.0.0.1:8000"), 'proxy_addr: must start with "http://"'),
])
def test_freedom_run_with_bad_config_exits_with_one_line(tmp_path, text, expected):
    kafka_toml(tmp_path, text)
    proc = subprocess.run(
        [sys.executable, "-m", "freedom.cli", "run", "recording_service:app", "--config", str(tmp_path)],
        cwd=SERVICES, capture_output=True, text=True, timeout=60,
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
        [sys.executable, "-m", "freedom.cli", "run", "recording_service:app", "--config", str(tmp_path)],
        cwd=SERVICES, capture_output=True, text=True, timeout=90, env={**__import__("os").environ, "RECORD_FILE": "/dev/null"},
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
        [sys.executable, "-m", "freedom.cli", "run", "recording_service:app", "--config", str(tmp_path),
         "--listen", "127.0.0.1:notaport"],
        cwd=SERVICES, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == 'freedom: error: freedom run: --listen: must look like "127.0.0.1:8000", got "127.0.0.1:notaport"'
