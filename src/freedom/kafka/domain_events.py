"""Domain events on Kafka: `kafka.get_domain_event_infra()` (the seed's `kafka.GetDomainEventInfra()`).

Each event is published through the application's producer (the default `[[producer_clients]]`
entry, or the one named by `client=`) to topic `event_topic(name)` ("Goods:Shopping" ->
"Goods.Shopping"), with key = the entity's identity() (one aggregate, one partition: in order),
value = the object as JSON, the event's headers plus `x-freedom-event` (its name) and
`x-freedom-event-id` (unique per event), and the raising request's bus and trace.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from freedom.errors import FreedomError
from freedom.wire.context import BUS_HEADER, Bus

if TYPE_CHECKING:
    from freedom.domain.events import DomainEvent
    from freedom.web.application import Application


class KafkaDomainEventInfra:
    """Publishes domain events through the application's Kafka producer."""

    def __init__(self, client: str | None = None) -> None:
        self.client = client
        self._app: Application | None = None

    def attach(self, app: Application) -> None:
        self._app = app

    async def publish(self, event: DomainEvent) -> None:
        """Send `event`; returns after the broker's acknowledgement, raises PublishError otherwise."""
        if self._app is None:
            raise FreedomError(
                "this Kafka domain-event infrastructure is not installed: "
                "call app.install_domain_event_infra(kafka.get_domain_event_infra())"
            )
        msg = self._app.producer.new_msg(event.topic, event.payload, client=self.client)
        headers = {**event.wire_headers(), **event.trace_headers}
        if event.bus is not None:
            # What Msg.set_runtime adds, from the request context the outbox kept.
            headers[BUS_HEADER] = Bus(event.bus).to_header().decode()
        await msg.set_key(event.key).set_headers(headers).publish()


def get_domain_event_infra(client: str | None = None) -> KafkaDomainEventInfra:
    """The Kafka domain-event infrastructure, to pass to `app.install_domain_event_infra`."""
    return KafkaDomainEventInfra(client)
