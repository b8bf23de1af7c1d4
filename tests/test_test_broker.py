"""freedom.testing.TestBroker: an application on an in-memory Kafka, with simulated retry time.

What it shares with Kafka is asserted in tests/semantics/ (the same tests on Apache Kafka); these
are the test broker's own features: the simulated clock, the async API, a typed service end to end,
and the mistakes it reports."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time

import pytest
from pydantic import BaseModel
from starlette.responses import Response

import freedom
from freedom.infra import kafka
from freedom.testing import TestBroker

TOPIC = "order-created"


class Order(BaseModel):
    id: int
    amount: int


def typed_app(
    tmp_path, calls: list, *, status: int = 200, delay: float = 0.0
) -> freedom.Application:
    """The new user's service: a typed route publishes a model, a typed handler gets it back."""

    class ShopController:
        producer: kafka.Producer

        async def get_buy_by(self, id: int) -> str:  # GET /shop/buy/{id}
            delivered = await self.producer.new_msg(TOPIC, Order(id=id, amount=2)).publish()
            return delivered.key

    class StoreController:
        runtime: freedom.Runtime

        async def post_order_by(
            self, event_id: str, order: Order
        ) -> Response:  # POST /store/order/{event_id}
            calls.append((order, dict(self.runtime.request.headers.items()), time.monotonic()))
            await asyncio.sleep(delay)
            return Response(status_code=status)

    def prepare(initiator: freedom.Initiator) -> None:
        initiator.bind_controller("/shop", ShopController)
        initiator.bind_controller("/store", StoreController)
        initiator.listen_event(TOPIC, "StoreController.post_order_by")

    return freedom.Application(
        config_dir=tmp_path, prepare=[prepare]
    )  # no kafka.toml: the broker's defaults


async def test_a_45_second_retry_takes_milliseconds(tmp_path):
    calls: list = []
    app = typed_app(tmp_path, calls, status=503)
    started = time.monotonic()
    async with TestBroker(app, retry_count=2, retry_interval_sec=45) as broker:
        r = await broker.client.get("/shop/buy/7")
        assert r.status_code == 200
        clock_before = broker.time()
        await broker.settle()
        assert broker.time() - clock_before >= 90  # two 45 s intervals, on the broker's clock
        [dead] = broker.dead_letters(TOPIC)
    assert time.monotonic() - started < 1.0
    assert [c[1]["x-retry-count"] for c in calls] == ["0", "1", "2"]
    assert all(c[0] == Order(id=7, amount=2) for c in calls)
    assert dead.key() == r.text.encode() and dead.header("x-freedom-status") == "503"
    assert [rec.header("x-retry-count") for rec in broker.retries(TOPIC)] == ["1", "2"]


async def test_advance_delivers_a_retry_only_once_it_is_due(tmp_path):
    calls: list = []
    async with TestBroker(
        typed_app(tmp_path, calls, status=500), retry_count=1, retry_interval_sec=45
    ) as broker:
        broker.publish(TOPIC, b'{"id": 1, "amount": 1}', key="K")
        await broker.settle(advance=False)
        assert len(calls) == 1 and len(broker.retries(TOPIC)) == 1
        await broker.advance(44)
        assert len(calls) == 1  # due at 45 s
        await broker.advance(2)
        assert [c[1]["x-retry-count"] for c in calls] == ["0", "1"]
        assert len(broker.dead_letters(TOPIC)) == 1
        assert broker.committed(TOPIC) == 1


async def test_a_typed_service_end_to_end_and_a_body_that_fails_validation(tmp_path):
    calls: list = []
    async with TestBroker(typed_app(tmp_path, calls), retry_count=3) as broker:
        r = await broker.client.get("/shop/buy/3")
        await broker.settle()
        [(order, headers, _)] = calls
        assert order == Order(id=3, amount=2) and headers["content-type"] == "application/json"
        assert headers["x-message-key"] == r.text
        [record] = broker.published(TOPIC)
        assert (
            record.json() == {"id": 3, "amount": 2}
            and record.header("content-type") == "application/json"
        )
        # A body the handler's model refuses (422) can never succeed: dead-lettered without retries.
        broker.publish(TOPIC, b'{"id": "x"}', key="POISON")
        await broker.settle()
        assert len(calls) == 1 and broker.retries(TOPIC) == []
        [dead] = broker.dead_letters(TOPIC)
        assert dead.key() == b"POISON" and dead.header("x-freedom-status") == "422"
        assert "amount" in (dead.header("x-freedom-error") or "")  # the validation detail


@pytest.mark.parametrize("mode", ["sequential", "concurrent", "key-ordered"])
async def test_every_delivery_mode_over_three_partitions(tmp_path, mode):
    calls: list = []
    async with TestBroker(typed_app(tmp_path, calls), partitions=3, mode=mode) as broker:
        for i in range(12):
            assert (await broker.client.get(f"/shop/buy/{i}")).status_code == 200
        await broker.settle()
        assert sorted(c[0].id for c in calls) == list(range(12))
        counts = [len(broker.records(TOPIC, p)) for p in range(3)]
        assert sum(counts) == 12 and [broker.committed(TOPIC, p) for p in range(3)] == counts


def test_sync_mode_and_a_publish_the_broker_refuses(tmp_path):
    calls: list = []
    app = typed_app(tmp_path, calls)
    with TestBroker(app) as broker:
        assert broker.client.get("/shop/buy/1").status_code == 200
        broker.settle()
        assert len(calls) == 1
        msg = app.producer.new_msg(TOPIC, b"x" * 1_100_000)
        with pytest.raises(freedom.PublishError, match="over the limit|too large"):
            broker.run(msg.publish())
    assert broker.published(TOPIC)[0].json() == {"id": 1, "amount": 2}


async def test_mistakes_are_one_clear_error(tmp_path):
    app = typed_app(tmp_path, [])
    app.setup()  # set up without kafka.toml: Kafka is off, nothing to put the broker under
    with pytest.raises(freedom.FreedomError, match="make the TestBroker before"):
        TestBroker(app)
    with pytest.raises(freedom.FreedomError, match="inside `async with TestBroker"):
        _ = TestBroker(typed_app(tmp_path, [])).client
    running = typed_app(tmp_path, [], delay=1.0)
    async with TestBroker(running) as broker:
        with pytest.raises(freedom.FreedomError, match="started already"):
            TestBroker(running)
        broker.publish(TOPIC, b'{"id": 1, "amount": 1}')
        with pytest.raises(
            AssertionError, match="not settled within 0.2 s: group 'freedom': 1 deliveries running"
        ):
            await broker.settle(timeout=0.2)


async def test_without_httpx_only_the_client_fails_and_names_the_extra(tmp_path, monkeypatch):
    """httpx is the `testing` extra: `import freedom` and `freedom.testing` work without it, so does
    a TestBroker used without its client; `broker.client` is one error naming the fix."""
    blocked = (
        "import sys; sys.modules['httpx'] = None; import freedom, freedom.testing; print('ok')"
    )
    done = subprocess.run([sys.executable, "-c", blocked], capture_output=True, text=True)
    assert (done.returncode, done.stdout.strip()) == (0, "ok"), done.stderr
    monkeypatch.setitem(sys.modules, "httpx", None)  # `import httpx` fails, as when not installed
    monkeypatch.delitem(sys.modules, "freedom.testing.asgi_client", raising=False)
    calls: list = []
    async with TestBroker(typed_app(tmp_path, calls)) as broker:
        broker.publish(TOPIC, b'{"id": 1, "amount": 1}')
        await broker.settle()
        assert len(calls) == 1
        with pytest.raises(
            freedom.FreedomError, match=re.escape("pip install 'freedom-events[testing]'")
        ):
            _ = broker.client


SEED_ON_TEST_BROKER = """
import json, logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
import example
from freedom.testing import TestBroker
with TestBroker(example.app) as broker:
    sell = broker.client.get("/shop/1").text
    shopping = broker.client.get("/shop/shopping/1").text
    broker.settle()
    print("RESULT " + json.dumps({
        "answers": [sell, shopping],
        "event-sell": [r.json() for r in broker.published("event-sell")],
        "Goods.Shopping": [[r.key().decode(), r.json(), r.header("x-freedom-event")] for r in broker.published("Goods.Shopping")],
        "committed": [broker.committed("event-sell"), broker.committed("Goods.Shopping")],
    }, ensure_ascii=False))
"""


def test_the_seed_example_runs_on_the_test_broker(tmp_path):
    """The example as it is (its kafka.toml, its SQLite outbox): a purchase and a domain event, both
    handled by the store; settle() waits for the outbox relay too."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    example = Path(__file__).resolve().parents[1] / "examples" / "shop"
    done = subprocess.run(
        [sys.executable, "-c", SEED_ON_TEST_BROKER],
        cwd=example,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SHOP_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/shop.db"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    [line] = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
    result = json.loads(line[len("RESULT ") :])
    assert result["answers"] == ["ok", "ok"]
    assert result["event-sell"] == [{"ID": 1, "Amount": 10}]
    assert result["Goods.Shopping"] == [["1", {"ID": 1, "Amount": 9}, "Goods:Shopping"]]
    assert result["committed"] == [1, 1]
    assert (
        "消耗商品ID:1, 10件, 行为:购买" in done.stdout
        and "Goods:Shopping 商品ID:1, 剩余9件" in done.stdout
    )
