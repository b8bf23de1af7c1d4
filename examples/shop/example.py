"""The seed's shop/store example: buying goods publishes an event the store handles.

    cd examples/shop && freedom run example:app
    curl http://127.0.0.1:8000/shop/1      # the store logs: goods 1 x10, action 购买, key ...

Domain events (the seed's `Goods.Shopping()`): GET /shop/shopping/{id} buys through the `Goods`
entity (entity.py), saved with its `Goods:Shopping` event in one SQLite transaction (shop.db, or
$SHOP_DATABASE_URL); the outbox relay publishes it and the store logs it.

    curl http://127.0.0.1:8000/shop/shopping/1   # the store logs: Goods:Shopping 商品ID:1, 剩余9件, ...
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import entity

import freedom
from freedom.infra import kafka

EVENT_SELL = "event-sell"


@dataclass
class Goods:
    """The goods value object (the seed's objects.Goods)."""

    ID: int
    Amount: int


class ShopController:
    """Buying: GET /shop/{id} publishes an `event-sell` message."""

    runtime: freedom.Runtime
    producer: kafka.Producer
    uow: freedom.UnitOfWork

    async def get_shopping_by(self, id: int) -> str:
        """GET /shop/shopping/{id}: buy through the entity; its event is saved with it, then published."""
        async with self.uow as uow:
            goods = await uow.get(entity.Goods, id) or uow.add(entity.Goods(id=id, amount=10))
            goods.shopping()
        return "ok"

    async def get_by(self, id: int) -> str:
        data = json.dumps(asdict(Goods(ID=id, Amount=10))).encode()
        msg = self.producer.new_msg(EVENT_SELL, data)
        delivered = await msg.set_headers({"x-action": "购买"}).set_runtime(self.runtime).publish()
        self.runtime.logger.info("sold goods %d, message key %s", id, delivered.key)
        return "ok"


class StoreController:
    """Stock: the consumer proxy posts every `event-sell` record to POST /store/sell/goods/{event_id}."""

    runtime: freedom.Runtime

    async def post_sell_goods_by(self, event_id: str) -> None:
        goods = Goods(**await self.runtime.request.json())
        action = self.runtime.request.headers.get("x-action")
        self.runtime.logger.info(
            "消耗商品ID:%d, %d件, 行为:%s, 消息key:%s", goods.ID, goods.Amount, action, event_id
        )
        # Raising, or answering other than 2xx, has the record delivered again.

    async def post_goods_shopping_by(self, goods_id: str) -> None:
        """The `Goods:Shopping` domain event; the message key is the goods' identity()."""
        goods = Goods(**await self.runtime.request.json())
        self.runtime.logger.info(
            "Goods:Shopping 商品ID:%d, 剩余%d件, 消息key:%s", goods.ID, goods.Amount, goods_id
        )


@freedom.prepare
def _(initiator: freedom.Initiator) -> None:
    initiator.bind_controller("/shop", ShopController)
    initiator.bind_controller("/store", StoreController)
    initiator.listen_event(EVENT_SELL, "StoreController.post_sell_goods_by")
    initiator.listen_event(entity.EVENT_SHOPPING, "StoreController.post_goods_shopping_by")
    # What GET /shop/{id} publishes, for the AsyncAPI document (`freedom asyncapi example:app`).
    initiator.publishes(EVENT_SELL, Goods, description="goods sold: published by GET /shop/{id}")


app = freedom.Application()
# Domain events: published through Kafka, kept in the SQLite outbox until the broker has them.
app.install_domain_event_infra(kafka.get_domain_event_infra())
_database = freedom.Database(
    os.environ.get(
        "SHOP_DATABASE_URL", f"sqlite+aiosqlite:///{Path(__file__).with_name('shop.db')}"
    )
)
_database.add_tables(entity.Base.metadata)
app.install_database(_database)
