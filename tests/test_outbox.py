"""Domain events through the transactional outbox, on Apache Kafka, on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
import time
import uuid
from collections import defaultdict
from collections.abc import Callable

import httpx
import pytest

import freedom
from freedom.testing import ServiceThread, free_port, kafka_config, wait_until, write_config
from tests.apps import Recorder
from tests.outbox.apps import Goods, get_or_add, shop_app, stock_moves
from tests.outbox.db import outbox_rows, unique_event
from tests.services.kafka_tools import create_topic, read_partition, topic_size

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def _config(tmp_path, bootstrap: str, **producer_settings):
    port = free_port()
    kafka = kafka_config(
        bootstrap,
        port,
        group_id=f"g-{uuid.uuid4().hex[:8]}",
        initial_offset="earliest",
        settings={"session.timeout.ms": 6000},
    )
    if producer_settings:
        kafka["producer_clients"][0]["settings"] = producer_settings
    return write_config(tmp_path / "conf", app={"listen_addr": f"127.0.0.1:{port}"}, kafka=kafka)


def test_goods_shopping_reaches_the_listener_with_bus_and_trace(apache_kafka, db_url, tmp_path):
    recorder = Recorder()
    app = shop_app(_config(tmp_path, apache_kafka.bootstrap), db_url, recorder, "Goods:Shopping")
    with ServiceThread(app) as svc:
        r = httpx.get(
            f"{svc.base_url}/shop/shopping/7",
            params={"tenant": "acme"},
            headers={"traceparent": TRACEPARENT},
            timeout=30,
        )
        assert r.status_code == 200 and r.text == "ok"
        rows = outbox_rows(db_url)
        assert len(rows) == 1 and rows[0].topic == "Goods.Shopping"
        # Topic Goods.Shopping is shared by the tests of this session: pick this test's event.
        calls = wait_until(
            lambda: [
                c
                for c in recorder.snapshot()
                if c.headers.get("x-freedom-event-id") == rows[0].event_id
            ],
            30,
            what="the Goods:Shopping listener to be called",
        )
        wait_until(
            lambda: all(row.published_at is not None for row in outbox_rows(db_url)),
            20,
            what="the outbox row to be marked published",
        )
    assert len(calls) == 1
    call = calls[0]
    assert call.body == {"ID": 7, "Amount": 9}
    assert call.bus == {"tenant": "acme"}
    assert call.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert call.event_id == "7"  # the message key is the aggregate's identity
    assert call.headers["x-freedom-event"] == "Goods:Shopping"
    assert call.headers["x-action"] == "购买"


def test_rolled_back_transaction_publishes_nothing(apache_kafka, db_url, tmp_path):
    name, topic = unique_event()
    create_topic(apache_kafka.bootstrap, topic)
    recorder = Recorder()
    app = shop_app(_config(tmp_path, apache_kafka.bootstrap), db_url, recorder, name)
    with ServiceThread(app) as svc:
        r = httpx.get(f"{svc.base_url}/shop/shopping/1", params={"fail": "true"}, timeout=30)
        assert r.status_code == 409
        assert outbox_rows(db_url) == []
        # A later, committed event is delivered; the rolled-back one never is.
        httpx.get(f"{svc.base_url}/shop/shopping/2", timeout=30).raise_for_status()
        wait_until(lambda: recorder.snapshot(), 30, what="the committed event to arrive")
        wait_until(
            lambda: all(row.published_at is not None for row in outbox_rows(db_url)),
            20,
            what="the outbox row to be marked published",
        )
    assert [c.body["ID"] for c in recorder.snapshot()] == [2]
    assert topic_size(apache_kafka.bootstrap, topic) == 1


def test_thousand_events_of_ten_aggregates_arrive_in_per_aggregate_order(
    apache_kafka, db_url, tmp_path
):
    name, topic = unique_event()
    create_topic(apache_kafka.bootstrap, topic, partitions=4)
    recorder = Recorder()
    app = shop_app(_config(tmp_path, apache_kafka.bootstrap), db_url, recorder, name)

    async def save_all() -> None:
        # 50 transactions, each raising 2 events on each of the 10 aggregates: 1,000 events.
        n = 0
        for _ in range(50):
            async with freedom.UnitOfWork(app) as uow:
                for goods_id in range(10):
                    goods = await get_or_add(uow, goods_id)
                    goods.numbered(n)
                    goods.numbered(n + 1)
            n += 2

    with ServiceThread(app) as svc:
        svc.run(save_all(), timeout=120)
        wait_until(lambda: len(recorder.snapshot()) >= 1000, 120, what="1,000 events to arrive")
        wait_until(
            lambda: all(row.published_at is not None for row in outbox_rows(db_url)),
            30,
            what="every outbox row to be marked published",
        )
    calls = recorder.snapshot()
    assert len(calls) == 1000
    seen: dict[str, list[int]] = defaultdict(list)
    for call in calls:
        assert call.event_id == str(call.body["ID"])
        seen[call.event_id].append(call.body["N"])
    assert sorted(seen) == [str(i) for i in range(10)]
    for goods_id, numbers in seen.items():
        assert numbers == list(range(100)), f"aggregate {goods_id} out of order: {numbers[:20]}..."


def test_redelivered_event_changes_the_idempotent_handlers_table_once(
    apache_kafka, db_url, tmp_path
):
    name, topic = unique_event()
    create_topic(apache_kafka.bootstrap, topic)
    recorder = Recorder()
    # The handler commits its change, then answers 500: the proxy delivers the event again.
    app = shop_app(
        _config(tmp_path, apache_kafka.bootstrap),
        db_url,
        recorder,
        name,
        idempotent=True,
        fail_after_commit=1,
    )
    with ServiceThread(app) as svc:
        httpx.get(f"{svc.base_url}/shop/shopping/5", timeout=30).raise_for_status()
        calls = wait_until(
            lambda: len(recorder.snapshot()) >= 2 and recorder.snapshot(),
            60,
            what="the event to be delivered twice",
        )
        moves = svc.run(stock_moves(app))
    assert calls[0].headers["x-freedom-event-id"] == calls[1].headers["x-freedom-event-id"]
    assert len(moves) == 1
    assert moves[0].goods_id == 5 and moves[0].event_id == calls[0].headers["x-freedom-event-id"]


def test_broker_down_saving_succeeds_and_events_follow_in_order_when_it_returns(db_url, tmp_path):
    from tests.kafka.broker import ApacheKafka

    name, topic = unique_event()
    kafka = ApacheKafka()
    kafka.start()
    try:
        create_topic(kafka.bootstrap, topic)
        recorder = Recorder()
        config = _config(tmp_path, kafka.bootstrap, **{"reconnect.backoff.max.ms": 500})
        app = shop_app(config, db_url, recorder, name)
        with ServiceThread(app) as svc:
            httpx.get(f"{svc.base_url}/shop/shopping/1", timeout=30).raise_for_status()
            wait_until(lambda: recorder.snapshot(), 30, what="the first event, with the broker up")
            kafka.stop()
            for _ in range(20):
                r = httpx.get(f"{svc.base_url}/shop/shopping/1", timeout=30)
                assert r.status_code == 200, r.text
            rows = outbox_rows(db_url)
            assert len(rows) == 21 and sum(row.published_at is None for row in rows) == 20
            kafka.start()
            back = time.monotonic()
            wait_until(
                lambda: len(recorder.snapshot()) >= 21,
                90,
                what="the 20 events after the broker returned",
            )
            took = time.monotonic() - back
            wait_until(
                lambda: all(row.published_at is not None for row in outbox_rows(db_url)),
                30,
                what="every outbox row to be marked published",
            )
            on_topic = [
                json.loads(r.value())["Amount"] for r in read_partition(kafka.bootstrap, topic)
            ]
    finally:
        kafka.close()
    # The outbox published each event exactly once (nothing crashed), in the order they were saved.
    assert on_topic == list(range(9, -12, -1)), on_topic
    # The listener got them all, in order. (The consumer may get the record from before the outage
    # again: its offset commit may not have reached the broker before it stopped.)
    amounts = [c.body["Amount"] for c in recorder.snapshot()]
    redelivered_first = amounts[:2] == [9, 9]
    assert amounts[int(redelivered_first) :] == list(range(9, -12, -1)), amounts
    assert took < 45, f"the outbox took {took:.1f} s to drain after the broker returned"


# ---------------------------------------------------------------------- without Kafka: the database side


class _Recording:
    """A domain-event infrastructure that records what it is asked to publish."""

    def __init__(self) -> None:
        self.events: list = []

    def attach(self, app) -> None: ...

    async def publish(self, event) -> None:
        self.events.append(event)


def _db_app(tmp_path, db_url, **options):
    from tests.outbox.apps import Base

    app = freedom.Application(config_dir=tmp_path, prepare=[])
    infra = _Recording()
    app.install_domain_event_infra(infra)
    db = freedom.Database(db_url, **options)
    db.add_tables(Base.metadata)
    app.install_database(db)
    return app, db, infra


async def test_entities_loaded_by_any_orm_query_are_bound_and_their_events_saved(db_url, tmp_path):
    from sqlalchemy import select

    app, db, _ = _db_app(tmp_path, db_url)
    await db.create_tables()
    try:
        async with freedom.UnitOfWork(app) as uow:
            uow.add(Goods(id=1, amount=10))
        async with freedom.UnitOfWork(app) as uow:
            goods = (await uow.session.execute(select(Goods).where(Goods.id == 1))).scalar_one()
            assert goods.unit_of_work is uow
            goods.shopping()
        assert await db.pending_count() == 1
        with pytest.raises(freedom.DomainEventError, match="nested"):
            async with freedom.UnitOfWork(app) as uow:
                async with uow:
                    pass
        async with freedom.UnitOfWork(app) as uow:
            with pytest.raises(freedom.DomainEventError, match="not an event delivery"):
                await uow.already_processed()
            assert await uow.already_processed("m-1", consumer="c") is False
            assert await uow.already_processed("m-1", consumer="c") is True
            assert await uow.already_processed("m-1", consumer="other") is False
    finally:
        await db.engine.dispose()


async def test_only_the_relay_holding_the_lease_publishes(db_url, tmp_path):
    from freedom.domain.relay import OutboxRelay

    app, db, _ = _db_app(tmp_path, db_url)
    await db.create_tables()
    try:
        async with freedom.UnitOfWork(app) as uow:
            for i in range(3):
                uow.add(Goods(id=i, amount=10)).shopping()
        sent: dict[str, list] = {"a": [], "b": []}

        def relay(owner: str) -> OutboxRelay:
            async def publish(event) -> None:
                sent[owner].append(event.key)

            return OutboxRelay(db.engine, publish, owner=owner, lease_ttl=30)

        a, b = relay("a"), relay("b")
        assert await b.run_once() == (3, 0, False) and sorted(sent["b"]) == ["0", "1", "2"]
        async with freedom.UnitOfWork(app) as uow:
            (await uow.get(Goods, 0)).shopping()
        assert await a.run_once() == (0, 0, False)  # b holds the lease
        await b.stop()  # hands the lease back
        assert await a.run_once() == (1, 0, False) and sent["a"] == ["0"]
        assert await db.pending_count() == 0
    finally:
        await db.engine.dispose()


async def test_a_later_event_of_an_aggregate_never_commits_before_an_earlier_one(db_url, tmp_path):
    """Two transactions raise events of aggregate 1 (entities not stored in a table, so no row lock
    orders them): the second cannot commit its outbox row while the first is still committing."""
    import asyncio

    from sqlalchemy import event, text

    from tests.outbox.apps import PlainGoods

    app, db, _ = _db_app(tmp_path, db_url)
    await db.create_tables()
    order: list[str] = []
    committing = asyncio.Event()
    begun: list[str] = []  # connections taken since the first started committing

    def taking(what: str) -> Callable[..., None]:
        def note(*_: object) -> None:
            if committing.is_set():
                begun.append(what)

        return note

    # Before freedom's own listeners, which on SQLite set the journal mode on a new connection and
    # run BEGIN IMMEDIATE: where a second writer waits for the first's write lock.
    sync_engine = db.engine.sync_engine
    event.listen(sync_engine, "connect", taking("connect"), insert=True)
    event.listen(sync_engine, "checkout", taking("checkout"), insert=True)
    event.listen(sync_engine, "begin", taking("begin"), insert=True)

    async def second_waits() -> bool:
        """The second transaction is behind the first: on PostgreSQL waiting for the aggregate's
        advisory lock; on SQLite taking a connection (the first holds the write lock since its
        BEGIN IMMEDIATE: the second cannot write before the first commits)."""
        if db.engine.dialect.name != "postgresql":
            return bool(begun)
        async with db.engine.connect() as conn:
            waiting = await conn.execute(
                text(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
                    "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
                )
            )
            return bool(waiting.scalar_one())

    try:
        first = freedom.UnitOfWork(app)
        await first.__aenter__()
        first.track(PlainGoods(1)).shopping()
        commit = first.session.commit

        async def slow_commit() -> None:
            committing.set()
            # Hold the commit until the second transaction is seen waiting for it (or, wrongly,
            # has committed already): its chance to overtake, proven taken.
            deadline = time.monotonic() + 30
            while "second committed" not in order and not await second_waits():
                assert time.monotonic() < deadline, "the second transaction never came"
                await asyncio.sleep(0.01)
            order.append("first committed")
            await commit()

        first.session.commit = slow_commit  # type: ignore[method-assign]
        finishing = asyncio.create_task(first.__aexit__(None, None, None))
        # The first has written its row and is committing.
        await asyncio.wait_for(committing.wait(), 30)

        async def second() -> None:
            async with freedom.UnitOfWork(app) as uow:
                uow.track(PlainGoods(1)).shopping()
            order.append("second committed")

        await asyncio.wait_for(asyncio.gather(finishing, second()), 30)
        assert order == ["first committed", "second committed"]
        from freedom.domain import outbox

        async with db.engine.connect() as conn:
            rows = await outbox.pending(conn, 10)
        assert [json.loads(e.payload)["Amount"] for _, e in rows] == [9, 9]
    finally:
        await db.engine.dispose()
