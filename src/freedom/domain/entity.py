"""`freedom.Entity`: the base of entities and aggregates that raise domain events.

    class Goods(freedom.Entity):
        def identity(self) -> str:
            return str(self.id)

        def shopping(self) -> None:
            self.amount -= 1
            self.domain_event("Goods:Shopping", {"ID": self.id, "Amount": self.amount})

An entity gets the request's runtime from the unit of work that hands it out (`uow.add(goods)`,
`await uow.get(Goods, 1)`, or any ORM query inside `async with uow`). Its events wait in
`pending_events` until the unit of work completes: then they are written to the outbox in the
same database transaction (or, without a database, published directly).

The base keeps its state in two private attributes and has no `__init__`, so it mixes into plain
classes, dataclasses and SQLAlchemy mapped classes alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from freedom.domain.events import (
    DomainEvent,
    DomainEventError,
    check_headers,
    event_topic,
    request_context,
    to_json,
)

if TYPE_CHECKING:
    from freedom.domain.unit_of_work import UnitOfWork
    from freedom.web.runtime import Runtime

_PENDING = "_freedom_pending_events"
_UOW = "_freedom_unit_of_work"


class Entity:
    """An entity (or aggregate root) that raises domain events (the seed's `freedom.Entity`)."""

    def identity(self) -> str:
        """The aggregate's id. It is the key of every event it raises, which keeps them in order."""
        raise NotImplementedError(
            f"{type(self).__name__} must define identity() -> str returning its id: "
            "it keys its domain events, so that they keep their order"
        )

    def domain_event(
        self, name: str, obj: Any, headers: Mapping[str, str] | None = None
    ) -> DomainEvent:
        """Raise event `name` (e.g. "Goods:Shopping") carrying `obj` as JSON, with optional headers.

        The event is published when the unit of work that handed out this entity completes.
        Raises EventNameError for a name that cannot be a topic, DomainEventError when the
        entity's application has no domain-event infrastructure installed.
        """
        topic = event_topic(name)
        uow = self.unit_of_work
        if uow is not None:
            uow.check_infra(name)
        key = _identity_of(self)
        runtime = uow.runtime if uow is not None else None
        event = DomainEvent(
            name=name,
            topic=topic,
            key=key,
            payload=to_json(obj),
            headers=check_headers(headers),
            **(request_context(runtime) if runtime is not None else {}),
        )
        self._freedom_pending().append(event)
        return event

    @property
    def pending_events(self) -> list[DomainEvent]:
        """Events raised and not yet handed to a unit of work, oldest first (a copy)."""
        return list(self._freedom_pending())

    @property
    def unit_of_work(self) -> UnitOfWork | None:
        """The unit of work that handed out this entity, if any."""
        return self.__dict__.get(_UOW)

    @property
    def runtime(self) -> Runtime | None:
        """The runtime of the request this entity serves (from its unit of work), if any."""
        uow = self.unit_of_work
        return uow.runtime if uow is not None else None

    # -------------------------------------------------------------- for the unit of work

    def _freedom_pending(self) -> list[DomainEvent]:
        pending = self.__dict__.get(_PENDING)
        if pending is None:
            pending = []
            object.__setattr__(self, _PENDING, pending)
        return pending

    def _freedom_bind(self, uow: UnitOfWork) -> None:
        object.__setattr__(self, _UOW, uow)

    def _freedom_take_events(self) -> list[DomainEvent]:
        pending = self._freedom_pending()
        events = list(pending)
        pending.clear()
        return events


def _identity_of(entity: Entity) -> str:
    ident = entity.identity()
    if isinstance(ident, int) and not isinstance(ident, bool):
        ident = str(ident)
    if not isinstance(ident, str) or not ident:
        raise DomainEventError(
            f"{type(entity).__name__}.identity() returned {ident!r}; it must return a non-empty str (the aggregate's id)"
        )
    return ident
