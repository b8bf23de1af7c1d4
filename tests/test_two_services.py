"""Two services in one pytest session (issue 20, points 4 and 9a).

Each service is a module with a module-level `@freedom.prepare` hook and a `make_app()`, its conf/
next to it (tests/services/two_services/): an Application runs the hooks of the module it was made
in, not the other service's, and the test broker finds each service's conf/ next to its module
whatever the working directory. Also: `@app.prepare`, `prepare=[module]`, and the mistakes."""

from __future__ import annotations

import logging
import types
from pathlib import Path

import pytest

import freedom
from freedom.errors import FreedomError, RouteError
from freedom.testing import TestBroker
from tests.services.two_services.billing import app as billing
from tests.services.two_services.orders import app as orders

SERVICES = Path(__file__).parent / "services" / "two_services"


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """A working directory that is neither service's, with a conf/ of its own that neither must use."""
    (tmp_path / "conf" / "infra").mkdir(parents=True)
    (tmp_path / "conf" / "infra" / "kafka.toml").write_text(
        "[consumer]\nopen = true\n[producer]\nopen = true\n[[producer_clients]]\n"
        '[[consumer_clients]]\ngroup_id = "the-working-directory"\n'
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FREEDOM_PROJECT_CONFIG", raising=False)
    return tmp_path


async def test_two_services_in_one_session_each_run_their_own_hook_and_config(elsewhere):
    orders.handled.clear()
    billing.billed.clear()
    async with TestBroker(orders.make_app()) as broker:
        assert broker.config_dir == SERVICES / "orders" / "conf"
        app = broker.app
        assert app is not None and app.kafka_config is not None
        assert [c.group_id for c in app.kafka_config.consumer_clients] == ["orders"]
        paths = {getattr(r, "path", "") for r in app.fastapi.routes}
        assert "/orders/placed/{event_id}" in paths
        assert not any(p.startswith("/billing") for p in paths)  # not the other service's hook
        assert (await broker.client.get("/orders/place/7")).status_code == 200
        await broker.settle()
        assert len(orders.handled) == 1 and billing.billed == []
        assert broker.committed(orders.TOPIC) == 1  # group "orders", from orders/conf

    async with TestBroker(billing.make_app()) as broker:
        assert broker.config_dir == SERVICES / "billing" / "conf"
        app = broker.app
        assert app is not None and app.kafka_config is not None
        assert [c.group_id for c in app.kafka_config.consumer_clients] == ["billing"]
        assert app.event_routes[billing.TOPIC].path == "/billing/bill/{event_id}"
        broker.publish(billing.TOPIC, b"order 8", key=b"k8")
        await broker.settle()
        assert billing.billed == ["k8"] and len(orders.handled) == 1
        assert broker.committed(billing.TOPIC, group="billing") == 1

    # The module-level app made at import (orders.app) is a third one, and sees the same hook.
    assert orders.app.prepare_hooks() == orders.make_app().prepare_hooks()
    assert len(orders.app.prepare_hooks()) == 1


def test_app_prepare_and_prepare_modules(tmp_path):
    seen: list[str] = []
    app = freedom.Application(config_dir=tmp_path, prepare=[orders])  # orders' hooks, by module

    @app.prepare
    def _(initiator: freedom.Initiator) -> None:
        seen.append("app.prepare")
        assert {"/orders/placed/{event_id}"} <= {
            getattr(r, "path", "") for r in initiator.fastapi.routes
        }

    app.setup()
    assert seen == ["app.prepare"]
    assert set(app.event_routes) == {orders.TOPIC}
    with pytest.raises(RouteError, match=r"app\.prepare\(.*\): the application is set up already"):
        app.prepare(lambda initiator: None)


def test_an_application_made_in_a_module_without_hooks_runs_none_and_says_whose_there_are(
    tmp_path, caplog
):
    app = freedom.Application(config_dir=tmp_path)  # made here: this module registered no hook
    with caplog.at_level(logging.WARNING, logger="freedom"):
        app.setup()
    assert app.event_routes == {}
    [warning] = [
        r.getMessage() for r in caplog.records if "runs no start-up hook" in r.getMessage()
    ]
    assert f"the Application made in {__name__} runs no start-up hook" in warning
    assert orders.__name__ in warning and billing.__name__ in warning
    assert "freedom.Application(prepare=[" in warning


def test_prepare_mistakes_are_one_line(tmp_path):
    with pytest.raises(
        RouteError, match=r"42 is neither a function taking the Initiator nor a module"
    ):
        freedom.Application(config_dir=tmp_path, prepare=[42])  # type: ignore[list-item]
    empty = types.ModuleType("no_hooks_here")
    with pytest.raises(
        RouteError, match=r"module no_hooks_here registered no @freedom.prepare hook"
    ):
        freedom.Application(config_dir=tmp_path, prepare=[empty]).setup()


def test_the_test_broker_refuses_a_config_dir_that_is_not_there(tmp_path):
    app = freedom.Application(config_dir=tmp_path / "missing", prepare=[])
    with pytest.raises(FreedomError, match=r"config_dir .*missing is not a directory"):
        TestBroker(app)


def test_the_test_broker_says_which_configuration_it_used(elsewhere, caplog):
    with caplog.at_level(logging.INFO, logger="freedom.testing"):
        broker = TestBroker(billing.make_app())
    assert broker.config_dir == SERVICES / "billing" / "conf"
    [line] = [r.getMessage() for r in caplog.records if r.name == "freedom.testing"]
    assert line == (
        f"TestBroker: the configuration of the Application made in {billing.__name__}: "
        f"{SERVICES / 'billing' / 'conf'} (next to module {billing.__name__})"
    )
    # An application made where no conf/ is near: the working directory's, as freedom run would.
    broker = TestBroker(freedom.Application(prepare=[]))
    assert broker.config_dir == elsewhere / "conf"
