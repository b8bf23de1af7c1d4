"""The seed's shop/store example: buying goods publishes an event the store handles.

    cd examples/shop && freedom run example:app
    curl http://127.0.0.1:8000/shop/1      # the store logs: goods 1 x10, action 购买, key ...
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

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
        self.runtime.logger.info("消耗商品ID:%d, %d件, 行为:%s, 消息key:%s", goods.ID, goods.Amount, action, event_id)
        # Raising, or answering other than 2xx, has the record delivered again.


@freedom.prepare
def _(initiator: freedom.Initiator) -> None:
    initiator.bind_controller("/shop", ShopController)
    initiator.bind_controller("/store", StoreController)
    initiator.listen_event(EVENT_SELL, "StoreController.post_sell_goods_by")


app = freedom.Application()
