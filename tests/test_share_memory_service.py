"""A freedom service with `share_group = true` on the TestBroker, end to end: replicas share the
records of its share group, a failure takes the retry path or (without retries) is released, then
dead-lettered at the delivery count limit, and a crashed replica's record comes back after its
lock on the simulated clock. The source itself: test_share_memory.py."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from starlette.responses import Response

import freedom
from freedom.testing import TestBroker, free_port, kafka_config, write_config
from tests.test_share_memory import TOPIC, until

Behave = Callable[[str, str, dict[str, str]], Awaitable[int]]


def share_service(config_dir: Path, name: str, calls: list, behave: Behave) -> freedom.Application:
    """A service whose POST /orders/{event_id} listens on TOPIC; `name` tells replicas apart."""

    async def on_order(event_id: str, runtime: freedom.RuntimeDep) -> Response:
        headers = dict(runtime.request.headers.items())
        calls.append((name, event_id, headers))
        return Response(status_code=await behave(name, event_id, headers))

    def prepare(initiator: freedom.Initiator) -> None:
        initiator.fastapi.post("/orders/{event_id}")(on_order)
        initiator.listen_event(TOPIC, on_order)

    return freedom.Application(config_dir=config_dir, prepare=[prepare])


def share_config(tmp_path: Path, **consumer: Any) -> Path:
    kafka = kafka_config(None, free_port(), group_id="shop", delivery="inprocess", **consumer)
    kafka["consumer_clients"][0]["share_group"] = True
    return write_config(tmp_path, app={"listen_addr": f"127.0.0.1:{free_port()}"}, kafka=kafka)


async def ok(name: str, event_id: str, headers: dict[str, str]) -> int:
    return 200


async def test_replicas_of_a_service_share_its_share_groups_records(tmp_path):
    config = share_config(tmp_path, max_in_flight=2)
    calls: list = []
    both = asyncio.Event()

    async def behave(name: str, event_id: str, headers: dict[str, str]) -> int:
        if len({c[0] for c in calls}) == 2:
            both.set()
        await both.wait()  # each replica's first records wait until the other has some
        return 200

    first = share_service(config, "first", calls, behave)
    async with TestBroker(first, partitions=2) as broker:
        async with broker.replica(share_service(config, "second", calls, behave)):
            for i in range(10):
                broker.publish(TOPIC, b"{}", key=f"order-{i}")
            await broker.settle()
            members = broker.share_group("shop").members
            assert len(members) == 2 and all(m.terms.max_records == 4 for m in members)
        assert sorted(c[1] for c in calls) == sorted(f"order-{i}" for i in range(10))
        assert {c[0] for c in calls} == {"first", "second"}
        assert all(c[2]["x-delivery-count"] == "1" for c in calls)
        assert broker.committed(TOPIC, group="shop") is None  # acknowledged, not committed
        assert all(
            broker.share_group("shop").record_state(r.topic(), r.partition(), r.offset())
            == ("acknowledged", 1)
            for r in broker.records(TOPIC)
        )


async def test_a_failed_record_takes_the_retry_path(tmp_path):
    config = share_config(tmp_path, retry_count=1, retry_interval_sec=45)
    calls: list = []

    async def behave(name: str, event_id: str, headers: dict[str, str]) -> int:
        return 500 if headers["x-retry-count"] == "0" else 200

    async with TestBroker(share_service(config, "svc", calls, behave)) as broker:
        broker.publish(TOPIC, b"{}", key="K")
        await broker.settle()
        assert [c[2]["x-retry-count"] for c in calls] == ["0", "1"]
        assert calls[0][2]["x-delivery-count"] == "1"
        assert "x-delivery-count" not in calls[1][2]  # the retry group is a classic group
        [retry] = broker.retries(TOPIC)
        assert retry.header("x-freedom-status") == "500" and broker.dead_letters(TOPIC) == []
        share = broker.share_group("shop")
        assert share.record_state(TOPIC, 0, 0) == ("acknowledged", 1)
        [main] = share.members
        assert main.acknowledgements == {(TOPIC, "accept"): 1}
        assert broker.committed(retry.topic(), group="retry_freedom") == 1


async def test_without_retries_a_failure_is_released_then_dead_lettered_at_the_limit(tmp_path):
    config = share_config(tmp_path)  # retry_count = 0
    calls: list = []

    async def behave(name: str, event_id: str, headers: dict[str, str]) -> int:
        return 500

    app = share_service(config, "svc", calls, behave)
    broker = TestBroker(app)
    broker.share_group("shop").delivery_count_limit = 2
    async with broker:
        broker.publish(TOPIC, b"{}", key="K")
        await broker.settle()
        assert [c[2]["x-delivery-count"] for c in calls] == ["1", "2"]
        [dead] = broker.dead_letters(TOPIC)
        assert dead.key() == b"K" and "share group's limit" in (
            dead.header("x-freedom-error") or ""
        )
        [main] = broker.share_group("shop").members
        assert main.acknowledgements == {(TOPIC, "release"): 1, (TOPIC, "accept"): 1}
        assert main.delivery_counts == {(TOPIC, 1): 1, (TOPIC, 2): 1}
        metrics = (await broker.client.get("/metrics")).text
        labels = f'messaging_consumer_group_name="shop",messaging_destination_name="{TOPIC}"'
        for kind in ("accept", "release"):
            assert f'freedom_share_acknowledgements_total{{{labels},type="{kind}"}} 1.0' in metrics
        assert 'freedom_share_lock_seconds{messaging_consumer_group_name="shop"} 35.0' in metrics


async def test_a_crashed_replicas_record_goes_to_another_after_the_lock(tmp_path):
    config = share_config(tmp_path)
    calls: list = []
    gate = asyncio.Event()

    async def behave(name: str, event_id: str, headers: dict[str, str]) -> int:
        if len(calls) == 1:
            await gate.wait()  # the first delivery hangs, in whichever replica got it
        return 200

    async with TestBroker(share_service(config, "first", calls, behave)) as broker:
        async with broker.replica(share_service(config, "second", calls, behave)):
            broker.publish(TOPIC, b"{}", key="K")
            await until(lambda: calls, "the first delivery")
            share = broker.share_group("shop")
            holder = share.holder(TOPIC, 0, 0)
            assert holder is not None and holder.lock_sec == 35.0  # delivery_timeout_sec + 5 s
            holder.crash()
            before = broker.time()
            await broker.settle()  # brings the lock's end forward
            assert broker.time() - before >= 35
            [(crashed, _, h1), (other, _, h2)] = calls
            assert crashed != other and (h1["x-delivery-count"], h2["x-delivery-count"]) == (
                "1",
                "2",
            )
            assert share.record_state(TOPIC, 0, 0) == ("acknowledged", 2)
            gate.set()


async def test_a_share_group_asked_of_the_test_broker_is_checked_as_kafka_toml_is(tmp_path):
    kafka = kafka_config(None, free_port(), group_id="shop", delivery="inprocess")
    config = write_config(tmp_path, app={"listen_addr": f"127.0.0.1:{free_port()}"}, kafka=kafka)
    calls: list = []
    async with TestBroker(share_service(config, "one", calls, ok), share_group=True) as broker:
        client = broker.app.kafka_config.consumer_clients[0]
        assert (client.mode, client.initial_offset) == ("concurrent", "earliest")
        broker.publish(TOPIC, b"{}", key="order-1")
        await broker.settle()
        assert [c[1] for c in calls] == ["order-1"]
        assert calls[0][2]["x-delivery-count"] == "1"
    app = share_service(config, "two", [], ok)
    try:
        async with TestBroker(app, share_group=True, mode="key-ordered"):
            raise AssertionError("an ordered share group was accepted")
    except freedom.FreedomError as exc:
        assert "share group delivers records in no order" in str(exc)


async def test_a_record_whose_lock_ran_out_in_the_backlog_is_released_not_started(tmp_path):
    # One record at a time (max_in_flight 1), a 5 s deadline: the lock is 10 s. The first
    # delivery hangs 8 s of the simulated clock, so the second record's lock would end 2 s into
    # its deadline: it is released, and delivered with a fresh lock (delivery count 2), once.
    config = share_config(tmp_path, max_in_flight=1, delivery_timeout_sec=5)
    calls: list = []
    gate = asyncio.Event()

    async def behave(name: str, event_id: str, headers: dict[str, str]) -> int:
        if event_id == "first":
            await gate.wait()
        return 200

    broker = TestBroker(share_service(config, "svc", calls, behave))
    broker.share_group("shop").lock_sec = 1.0  # an operator's short lock: the service raises it
    async with broker:
        broker.publish(TOPIC, b"{}", key="first")
        broker.publish(TOPIC, b"{}", key="second")
        await until(lambda: calls, "the first delivery")
        [member] = broker.share_group("shop").members
        assert member.lock_sec == 10.0
        began = member.now()
        moving = asyncio.create_task(broker.advance(8))  # settles only once "first" finishes
        await until(lambda: member.now() >= began + 8, "the clock moved 8 s")
        gate.set()
        await moving
        await broker.settle()
        assert [(c[1], c[2]["x-delivery-count"]) for c in calls] == [
            ("first", "1"),
            ("second", "2"),
        ]
        assert member.acknowledgements == {(TOPIC, "accept"): 2, (TOPIC, "release"): 1}


async def test_a_record_at_its_last_delivery_starts_even_with_a_short_lock(tmp_path):
    # As above, but the group allows one delivery only: a release would have the broker archive the
    # record unhandled, so it starts with what is left of its lock.
    config = share_config(tmp_path, max_in_flight=1, delivery_timeout_sec=5)
    calls: list = []
    gate = asyncio.Event()

    async def behave(name: str, event_id: str, headers: dict[str, str]) -> int:
        if event_id == "first":
            await gate.wait()
        return 200

    broker = TestBroker(share_service(config, "svc", calls, behave))
    broker.share_group("shop").lock_sec = 1.0
    broker.share_group("shop").delivery_count_limit = 1
    async with broker:
        broker.publish(TOPIC, b"{}", key="first")
        broker.publish(TOPIC, b"{}", key="second")
        await until(lambda: calls, "the first delivery")
        [member] = broker.share_group("shop").members
        began = member.now()
        moving = asyncio.create_task(broker.advance(8))
        await until(lambda: member.now() >= began + 8, "the clock moved 8 s")
        gate.set()
        await moving
        await broker.settle()
        assert [(c[1], c[2]["x-delivery-count"]) for c in calls] == [
            ("first", "1"),
            ("second", "1"),
        ]
        assert member.acknowledgements == {(TOPIC, "accept"): 2}
