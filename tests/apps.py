"""Small services the integration tests run: the seed's shop/store pair, with a recording store."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.responses import Response

import freedom
from freedom.infra import kafka

EVENT_SELL = "event-sell"


@dataclass
class Call:
    """One call of the store handler, as the handler saw it."""

    event_id: str
    body: Any
    headers: dict[str, str]
    bus: dict[str, Any]
    trace_id: str


@dataclass
class Recorder:
    """Thread-safe list of handler calls, with a scripted answer per call (default 200)."""

    statuses: list[int] = field(default_factory=list)  # answers of the first calls, then 200
    calls: list[Call] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, call: Call) -> int:
        with self.lock:
            self.calls.append(call)
            n = len(self.calls)
        return self.statuses[n - 1] if n <= len(self.statuses) else 200

    def snapshot(self) -> list[Call]:
        with self.lock:
            return list(self.calls)


def shop_app(config_dir: Path, recorder: Recorder, topic: str = EVENT_SELL) -> freedom.Application:
    """The seed's example: GET /shop/{id} publishes to `topic`, the store handler records the delivery."""

    class ShopController:
        runtime: freedom.Runtime
        producer: kafka.Producer

        async def get_by(self, id: int) -> str:
            self.runtime.bus["tenant"] = self.runtime.request.query_params.get("tenant", "none")
            data = json.dumps({"ID": id, "Amount": 10}).encode()
            msg = self.producer.new_msg(topic, data)
            await msg.set_headers({"x-action": "购买"}).set_runtime(self.runtime).publish()
            return "ok"

    class StoreController:
        runtime: freedom.Runtime

        async def post_sell_goods_by(self, event_id: str) -> Response:
            request = self.runtime.request
            status = recorder.record(
                Call(
                    event_id=event_id,
                    body=await request.json(),
                    headers=dict(request.headers.items()),
                    bus=dict(self.runtime.bus),
                    trace_id=self.runtime.trace_id,
                )
            )
            return Response(status_code=status)

    def prepare(initiator: freedom.Initiator) -> None:
        initiator.bind_controller("/shop", ShopController)
        initiator.bind_controller("/store", StoreController)
        initiator.listen_event(topic, "StoreController.post_sell_goods_by")

    return freedom.Application(config_dir=config_dir, prepare=[prepare])
