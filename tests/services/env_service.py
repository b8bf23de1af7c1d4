"""A service configured only through environment variables (tests/test_config_env.py runs it with
`freedom run env_service:app` and no config directory): `GET /shop/{id}` publishes to $EVENT_TOPIC,
whose records the store handler appends, as JSON lines, to $RECORD_FILE."""

from __future__ import annotations

import json
import os

import freedom
from freedom.infra import kafka

TOPIC = os.environ.get("EVENT_TOPIC", "event-sell")


class ShopController:
    producer: kafka.Producer

    async def get_by(self, id: str) -> str:
        await (
            self.producer.new_msg(TOPIC, json.dumps({"id": id}).encode())
            .set_key(f"K{id}")
            .publish()
        )
        return "published"


class StoreController:
    runtime: freedom.Runtime

    async def post_sell_by(self, event_id: str) -> str:
        line = json.dumps({"key": event_id, "body": (await self.runtime.request.body()).decode()})
        with open(os.environ["RECORD_FILE"], "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
        return "ok"


@freedom.prepare
def _(initiator: freedom.Initiator) -> None:
    initiator.bind_controller("/shop", ShopController)
    initiator.bind_controller("/store", StoreController)
    initiator.listen_event(TOPIC, "StoreController.post_sell_by")


app = freedom.Application()
