"""The seed's shop/store example as a real subprocess (`freedom run h2_shop_service:app`), for the
HTTP/2 cleartext test: the store handler appends what it got, and over which HTTP version, to
$RECORD_FILE as one JSON line."""

from __future__ import annotations

import json
import os

import freedom
from freedom.infra import kafka

TOPIC = os.environ.get("EVENT_TOPIC", "event-sell")


class ShopController:
    runtime: freedom.Runtime
    producer: kafka.Producer

    async def get_by(self, id: int) -> str:
        self.runtime.bus["tenant"] = "acme"
        data = json.dumps({"ID": id, "Amount": 10}).encode()
        await (
            self.producer.new_msg(TOPIC, data)
            .set_headers({"x-action": "购买"})
            .set_runtime(self.runtime)
            .publish()
        )
        return "ok"


class StoreController:
    runtime: freedom.Runtime

    async def post_sell_goods_by(self, event_id: str) -> str:
        request = self.runtime.request
        line = json.dumps(
            {
                "event_id": event_id,
                "body": (await request.json()),
                "action": request.headers.get("x-action"),
                "retry": request.headers.get("x-retry-count"),
                "bus": dict(self.runtime.bus),
                "http_version": request.scope.get("http_version"),
            }
        )
        fd = os.open(os.environ["RECORD_FILE"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)
        return "ok"


@freedom.prepare
def _(initiator: freedom.Initiator) -> None:
    initiator.bind_controller("/shop", ShopController)
    initiator.bind_controller("/store", StoreController)
    initiator.listen_event(TOPIC, "StoreController.post_sell_goods_by")


app = freedom.Application()
