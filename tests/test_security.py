"""Secure delivery (docs/contract.md, "The delivery secret"): with a shared secret, event routes accept only the consumer proxy's calls."""

from __future__ import annotations

import logging
import secrets
import uuid

import httpx
import pytest

import freedom
from freedom.config.loading import load_kafka_config
from freedom.errors import ConfigError
from freedom.testing import ServiceThread, free_port, kafka_config, wait_until, write_config
from tests.apps import Recorder, shop_app

SECRET_ENV = "FREEDOM_TEST_PROXY_SECRET"


def test_forged_post_gets_401_and_the_proxy_deliveries_pass(
    apache_kafka, new_topic, tmp_path, monkeypatch, caplog, delivery
):
    secret = secrets.token_urlsafe(32)
    monkeypatch.setenv(SECRET_ENV, secret)
    caplog.set_level(logging.DEBUG)
    topic = new_topic(apache_kafka.bootstrap)
    port = free_port()
    kafka = kafka_config(
        apache_kafka.bootstrap, port, group_id=f"g-{uuid.uuid4().hex[:8]}", delivery=delivery
    )
    kafka["consumer"]["secret_env"] = SECRET_ENV
    write_config(tmp_path, app={"listen_addr": f"127.0.0.1:{port}"}, kafka=kafka)
    recorder = Recorder()
    with ServiceThread(shop_app(tmp_path, recorder, topic)) as svc:
        store = f"{svc.base_url}/store/sell/goods/FORGED"
        no_secret = httpx.post(store, json={"ID": 666, "Amount": 1}, timeout=10)
        wrong = httpx.post(
            store,
            json={"ID": 666, "Amount": 1},
            timeout=10,
            headers={"x-freedom-secret": secrets.token_urlsafe(32)},
        )
        assert no_secret.status_code == 401, no_secret.text
        assert wrong.status_code == 401, wrong.text
        assert "x-freedom-secret" in no_secret.json()["detail"]
        # Also where the key has a '/' in it (served by the event route's any-key copy).
        slash = httpx.post(
            f"{svc.base_url}/store/sell/goods/a%2Fb", json={"ID": 667, "Amount": 1}, timeout=10
        )
        assert slash.status_code == 401, slash.text
        # A non-event route is not guarded, and the proxy's own delivery passes.
        assert httpx.get(f"{svc.base_url}/shop/1", timeout=30).text == "ok"
        wait_until(recorder.snapshot, 30, what="the proxy's delivery to reach the store handler")
        svc.stop()
    calls = recorder.snapshot()
    assert [c.body["ID"] for c in calls] == [1], "a forged call reached the handler"
    assert "x-freedom-secret" not in calls[0].headers  # the handler never sees the secret
    assert "refused a POST to event route /store/sell/goods/FORGED" in caplog.text
    assert secret not in caplog.text


def _prepare(initiator: freedom.Initiator) -> None:
    class StoreController:
        async def post_sell_goods_by(self, event_id: str) -> str:
            return event_id

    initiator.bind_controller("/store", StoreController)
    initiator.listen_event("event-sell", "StoreController.post_sell_goods_by")


@pytest.mark.parametrize("listen_addr, warned", [("0.0.0.0:8123", True), ("127.0.0.1:8123", False)])
def test_start_up_warns_when_event_routes_are_open_beyond_loopback(
    tmp_path, caplog, listen_addr, warned
):
    write_config(tmp_path, app={"listen_addr": listen_addr})
    with caplog.at_level(logging.WARNING, logger="freedom.web.guard"):
        freedom.Application(config_dir=tmp_path, prepare=[_prepare]).setup()
    found = [r.getMessage() for r in caplog.records if "are open" in r.getMessage()]
    assert bool(found) is warned, found
    if warned:
        assert "/store/sell/goods/{event_id}" in found[0] and "secret_env" in found[0]


def test_no_warning_with_a_secret(tmp_path, caplog, monkeypatch):
    monkeypatch.setenv(SECRET_ENV, secrets.token_urlsafe(32))
    write_config(
        tmp_path,
        app={"listen_addr": "0.0.0.0:8123"},
        kafka={"consumer": {"secret_env": SECRET_ENV}},
    )
    with caplog.at_level(logging.WARNING, logger="freedom.web.guard"):
        freedom.Application(config_dir=tmp_path, prepare=[_prepare]).setup()
    assert not [r for r in caplog.records if "are open" in r.getMessage()]


@pytest.mark.parametrize(
    "consumer, env, problem",
    [
        (
            {"secret_env": "FREEDOM_TEST_UNSET_SECRET"},
            None,
            "consumer.secret_env: the environment variable FREEDOM_TEST_UNSET_SECRET is not set",
        ),
        ({"secret": "short-Secret-1"}, None, "consumer.secret: the secret must be at least 16"),
        (
            {"secret_env": SECRET_ENV},
            "tiny-Value-x",
            "consumer.secret_env: the secret must be at least 16",
        ),
        (
            {"secret": "a" * 20, "secret_env": SECRET_ENV},
            "b" * 20,
            "consumer.secret: is given twice",
        ),
        ({"secret": 12345}, None, "consumer.secret: must be a string"),
    ],
)
def test_secret_config_errors_name_the_key_not_the_value(
    tmp_path, monkeypatch, consumer, env, problem
):
    monkeypatch.delenv("FREEDOM_TEST_UNSET_SECRET", raising=False)
    if env is not None:
        monkeypatch.setenv(SECRET_ENV, env)
    write_config(tmp_path, kafka={"consumer": consumer})
    with pytest.raises(ConfigError) as info:
        load_kafka_config(tmp_path)
    message = str(info.value)
    assert problem in message and "kafka.toml" in message
    for value in (consumer.get("secret"), env):
        if isinstance(value, str):
            assert value not in message


def test_the_secret_is_not_in_the_config_repr(tmp_path, monkeypatch):
    secret = secrets.token_urlsafe(32)
    write_config(tmp_path, kafka={"consumer": {"secret": secret}})
    cfg = load_kafka_config(tmp_path)
    assert cfg is not None and cfg.consumer.shared_secret == secret
    assert secret not in repr(cfg)
