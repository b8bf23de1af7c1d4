"""The orders service: a module-level `@freedom.prepare` hook (the seed's way), its conf/ next to
this file (group "orders", two retries)."""

from __future__ import annotations

import freedom
from freedom.infra import kafka

TOPIC = "order-placed"


class OrderController:
    producer: kafka.Producer

    async def get_place_by(self, id: int) -> str:  # GET /orders/place/{id}
        await self.producer.new_msg(TOPIC, f"order {id}".encode()).publish()
        return "ok"

    async def post_placed_by(self, event_id: str) -> None:  # POST /orders/placed/{event_id}
        handled.append(event_id)


handled: list[str] = []


@freedom.prepare
def _(initiator: freedom.Initiator) -> None:
    initiator.bind_controller("/orders", OrderController)
    initiator.listen_event(TOPIC, "OrderController.post_placed_by")


def make_app() -> freedom.Application:
    return freedom.Application()


app = make_app()
