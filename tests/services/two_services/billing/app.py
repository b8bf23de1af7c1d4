"""The billing service: it listens to the orders service's topic too, with a module-level
`@freedom.prepare` hook; its conf/ next to this file (group "billing", no retries)."""

from __future__ import annotations

import freedom

TOPIC = "order-placed"


class BillingController:
    async def post_bill_by(self, event_id: str) -> None:  # POST /billing/bill/{event_id}
        billed.append(event_id)


billed: list[str] = []


@freedom.prepare
def _(initiator: freedom.Initiator) -> None:
    initiator.bind_controller("/billing", BillingController)
    initiator.listen_event(TOPIC, "BillingController.post_bill_by")


def make_app() -> freedom.Application:
    return freedom.Application()
