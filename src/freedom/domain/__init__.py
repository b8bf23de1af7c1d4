"""Domain events (docs/domain-events.md; their records: docs/contract.md, "Domain events on the
wire"): entities raise them, a unit of work saves them with the entity in a transactional
outbox, and a relay publishes them through the installed infrastructure.

    class Goods(freedom.Entity):
        def identity(self) -> str: ...
        def shopping(self) -> None:
            self.domain_event("Goods:Shopping", self.obj)      # published to topic Goods.Shopping

    app.install_domain_event_infra(kafka.get_domain_event_infra())
    app.install_database(freedom.Database("sqlite+aiosqlite:///shop.db"))
"""

from freedom.domain.database import Database
from freedom.domain.entity import Entity
from freedom.domain.event_infra import DomainEventInfra
from freedom.domain.events import DomainEvent, DomainEventError, EventNameError, event_topic
from freedom.domain.unit_of_work import UnitOfWork
from freedom.wire.headers import EVENT_ID_HEADER, EVENT_NAME_HEADER

__all__ = [
    "Database",
    "DomainEvent",
    "DomainEventError",
    "DomainEventInfra",
    "EVENT_ID_HEADER",
    "EVENT_NAME_HEADER",
    "Entity",
    "EventNameError",
    "UnitOfWork",
    "event_topic",
]
