"""Entities and domain events: the name rule, and the clear errors for bad names and missing or
double infrastructure; without a database, a unit of work publishes straight to Apache Kafka."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass

import pytest
from confluent_kafka import Consumer, TopicPartition

import freedom
from freedom.domain import DomainEvent, DomainEventError, EventNameError, event_topic
from freedom.infra import kafka
from freedom.testing import free_port, wait_until, write_config
from tests.outbox.db import unique_event
from tests.services.kafka_tools import create_topic


@dataclass
class GoodsObj:
    ID: int
    Amount: int


class Goods(freedom.Entity):
    """The seed's entity: a goods value object inside, `Shopping()` raises `Goods:Shopping`."""

    def __init__(self, goods_id: int, name: str = "Goods:Shopping") -> None:
        self.obj = GoodsObj(goods_id, 10)
        self.name = name

    def identity(self) -> str:
        return str(self.obj.ID)

    def shopping(self) -> None:
        self.obj.Amount -= 1
        self.domain_event(self.name, self.obj, headers={"x-action": "购买"})


class Nameless(freedom.Entity):
    pass


def _app(tmp_path, infra: bool = True) -> freedom.Application:
    app = freedom.Application(config_dir=tmp_path, prepare=[])
    if infra:
        app.install_domain_event_infra(kafka.get_domain_event_infra())
    return app


# ---------------------------------------------------------------------- the name rule


@pytest.mark.parametrize(
    "name, topic",
    [
        ("Goods:Shopping", "Goods.Shopping"),
        ("Order:Item:Added", "Order.Item.Added"),
        ("event-sell", "event-sell"),
        ("shop_v2.Goods-Sold", "shop_v2.Goods-Sold"),
    ],
)
def test_event_names_map_to_topics_by_one_rule(name, topic):
    assert event_topic(name) == topic


@pytest.mark.parametrize(
    "name, why",
    [
        ("Goods Shopping", "' '"),
        ("Goods/Shopping", "'/'"),
        ("商品:购买", "characters Kafka does not allow"),
        ("", "empty"),
        (":", "not allowed"),
        ("G" * 250, "at most 249"),
        (42, "must be a string"),
    ],
)
def test_names_that_cannot_be_mapped_are_rejected(name, why):
    with pytest.raises(EventNameError) as info:
        event_topic(name)
    assert why in str(info.value)


async def test_raising_a_bad_name_is_rejected_and_leaves_nothing_pending(tmp_path):
    app = _app(tmp_path)
    async with freedom.UnitOfWork(app) as uow:
        goods = uow.track(Goods(1, name="Goods Shopping"))
        with pytest.raises(
            EventNameError, match="'Goods Shopping' cannot be mapped to a Kafka topic"
        ):
            goods.shopping()
        assert goods.pending_events == []


def test_listen_event_applies_the_same_rule(tmp_path):
    class StoreController:
        async def post_goods_shopping_by(self, event_id: str) -> None: ...

    def prepare(initiator: freedom.Initiator) -> None:
        initiator.bind_controller("/store", StoreController)
        initiator.listen_event("Goods:Shopping", "StoreController.post_goods_shopping_by")

    app = freedom.Application(config_dir=tmp_path, prepare=[prepare]).setup()
    assert list(app.event_routes) == ["Goods.Shopping"]
    assert app.event_routes["Goods.Shopping"].path == "/store/goods/shopping/{event_id}"


@pytest.mark.parametrize(
    "names, message",
    [
        (
            ["Goods Shopping"],
            "listen_event: event name 'Goods Shopping' cannot be mapped to a Kafka topic",
        ),
        (["Goods:Shopping", "Goods.Shopping"], "topic 'Goods.Shopping' already has a listener"),
    ],
)
def test_listen_event_rejects_bad_and_colliding_names(tmp_path, names, message):
    class StoreController:
        async def post_goods_shopping_by(self, event_id: str) -> None: ...

    def prepare(initiator: freedom.Initiator) -> None:
        initiator.bind_controller("/store", StoreController)
        for name in names:
            initiator.listen_event(name, "StoreController.post_goods_shopping_by")

    with pytest.raises(freedom.RouteError) as info:
        freedom.Application(config_dir=tmp_path, prepare=[prepare]).setup()
    assert message in str(info.value)


# ---------------------------------------------------------------------- infrastructure errors


async def test_raising_with_no_infrastructure_installed_is_a_clear_error(tmp_path):
    app = _app(tmp_path, infra=False)
    async with freedom.UnitOfWork(app) as uow:
        goods = uow.track(Goods(1))
        with pytest.raises(DomainEventError) as info:
            goods.shopping()
    assert str(info.value) == (
        "cannot raise domain event 'Goods:Shopping': no domain-event infrastructure is installed; "
        "call app.install_domain_event_infra(kafka.get_domain_event_infra()) before the application starts"
    )


async def test_an_event_raised_before_binding_meets_the_same_error_when_handed_to_a_unit_of_work(
    tmp_path,
):
    app = _app(tmp_path, infra=False)
    goods = Goods(1)
    goods.shopping()  # no unit of work yet: nothing can tell which application it belongs to
    async with freedom.UnitOfWork(app) as uow:
        with pytest.raises(DomainEventError, match="no domain-event infrastructure is installed"):
            uow.track(goods)


def test_installing_a_second_infrastructure_is_a_clear_error(tmp_path):
    app = _app(tmp_path)
    with pytest.raises(DomainEventError) as info:
        app.install_domain_event_infra(kafka.get_domain_event_infra())
    assert str(info.value) == (
        "install_domain_event_infra: KafkaDomainEventInfra is already installed; "
        "an application publishes its domain events through one infrastructure only"
    )


def test_installing_something_that_is_not_an_infrastructure_is_a_clear_error(tmp_path):
    app = _app(tmp_path, infra=False)
    with pytest.raises(DomainEventError, match="str is not a domain-event infrastructure"):
        app.install_domain_event_infra("kafka")  # type: ignore[arg-type]
    assert app.domain_event_infra is None


async def test_entity_mistakes_are_clear_errors(tmp_path):
    app = _app(tmp_path)
    async with freedom.UnitOfWork(app) as uow:
        with pytest.raises(NotImplementedError, match=r"Nameless must define identity\(\) -> str"):
            uow.track(Nameless()).domain_event("Goods:Shopping", {})
        goods = uow.track(Goods(1))
        with pytest.raises(TypeError, match="cannot serialise the event object"):
            goods.domain_event("Goods:Shopping", object())
        with pytest.raises(ValueError, match="not a valid HTTP header name"):
            goods.domain_event("Goods:Shopping", {}, headers={"bad header": "x"})
        with pytest.raises(TypeError, match="is not a freedom.Entity"):
            uow.track(object())  # type: ignore[type-var]
        with pytest.raises(DomainEventError, match="no database is installed"):
            _ = uow.session
    with pytest.raises(DomainEventError, match="only available inside `async with uow:`"):
        _ = uow.session


def test_database_mistakes_are_clear_errors(tmp_path):
    with pytest.raises(DomainEventError, match="in-memory SQLite database"):
        freedom.Database("sqlite+aiosqlite://")
    db = freedom.Database(f"sqlite:///{tmp_path / 'a.db'}")  # given the async driver
    assert db.engine.url.drivername == "sqlite+aiosqlite"
    app = _app(tmp_path)
    app.install_database(db)
    with pytest.raises(DomainEventError, match="already has a database installed"):
        app.install_database(freedom.Database(f"sqlite:///{tmp_path / 'b.db'}"))


# ---------------------------------------------------------------------- without a database


async def test_rolled_back_unit_of_work_discards_events(tmp_path):
    published: list[DomainEvent] = []

    class Recording:
        def attach(self, app: freedom.Application) -> None: ...

        async def publish(self, event: DomainEvent) -> None:
            published.append(event)

    app = freedom.Application(config_dir=tmp_path, prepare=[])
    app.install_domain_event_infra(Recording())
    with pytest.raises(RuntimeError):
        async with freedom.UnitOfWork(app) as uow:
            goods = uow.track(Goods(3))
            goods.shopping()
            raise RuntimeError("no stock")
    assert published == [] and goods.pending_events == []
    async with freedom.UnitOfWork(app) as uow:
        uow.track(goods).shopping()
    assert [(e.name, e.topic, e.key, json.loads(e.payload)) for e in published] == [
        ("Goods:Shopping", "Goods.Shopping", "3", {"ID": 3, "Amount": 8})
    ]


def test_without_a_database_the_unit_of_work_publishes_to_kafka_directly(apache_kafka, tmp_path):
    from freedom.testing import ServiceThread

    name, topic = unique_event()
    create_topic(apache_kafka.bootstrap, topic)
    port = free_port()
    write_config(
        tmp_path,
        app={"listen_addr": f"127.0.0.1:{port}"},
        kafka={
            "producer": {"open": True},
            "producer_clients": [{"servers": [apache_kafka.bootstrap]}],
        },
    )
    app = _app(tmp_path)

    async def buy() -> None:
        async with freedom.UnitOfWork(app) as uow:
            uow.track(Goods(9, name=name)).shopping()

    with ServiceThread(app) as svc:
        svc.run(buy())
    c = Consumer(
        {"bootstrap.servers": apache_kafka.bootstrap, "group.id": f"check-{uuid.uuid4().hex[:6]}"}
    )
    c.assign([TopicPartition(topic, 0, 0)])
    record = wait_until(lambda: c.poll(0.5), 20, what="the event on its topic")
    c.close()
    headers = {k: v.decode() for k, v in record.headers()}
    assert record.key() == b"9"
    assert json.loads(record.value()) == {"ID": 9, "Amount": 9}
    assert headers["x-freedom-event"] == name and headers["x-action"] == "购买"
    assert len(headers["x-freedom-event-id"]) == 32


def test_an_unreachable_database_stops_start_up_with_a_clear_error_without_the_password(tmp_path):
    import asyncio

    app = _app(tmp_path)
    app.install_database(freedom.Database(f"postgresql://shop:s3cret@127.0.0.1:{free_port()}/shop"))
    with pytest.raises(DomainEventError) as info:
        asyncio.run(app.start())
    message = str(info.value)
    assert message.startswith(
        "cannot create the outbox tables in postgresql+psycopg://shop:***@127.0.0.1:"
    )
    assert "Connection refused" in message and "s3cret" not in message


def test_installing_after_the_application_started_is_a_clear_error(tmp_path):
    import asyncio

    app = _app(tmp_path, infra=False)

    async def late() -> None:
        await app.start()
        try:
            with pytest.raises(
                DomainEventError,
                match="install_domain_event_infra: the application has already started",
            ):
                app.install_domain_event_infra(kafka.get_domain_event_infra())
            with pytest.raises(
                DomainEventError, match="install_database: the application has already started"
            ):
                app.install_database(freedom.Database(f"sqlite:///{tmp_path / 'late.db'}"))
        finally:
            await app.stop()

    asyncio.run(late())
