"""`UnitOfWork`: one database transaction of a request, and the entities (and events) it saves.

Controllers get one injected per request (`uow: freedom.UnitOfWork`), bound to the request's
runtime, so the entities it hands out raise events that carry the request's bus and trace:

    class ShopController:
        uow: freedom.UnitOfWork

        async def get_shopping_by(self, id: int) -> str:
            async with self.uow as uow:            # BEGIN
                goods = await uow.get(Goods, id)    # bound to this request
                goods.shopping()                    # raises "Goods:Shopping"
            return "ok"                             # COMMIT wrote the event to the outbox

On a clean exit the pending events of every entity the unit of work handed out are written to
the outbox in the same transaction, which then commits; the relay publishes them. On an
exception the transaction rolls back and the events are discarded. Without a database installed
there is no transaction: the events are published directly when the block exits cleanly.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any, TypeVar

from freedom.domain.entity import Entity
from freedom.domain.event_infra import DomainEventInfra, installed
from freedom.domain.events import DomainEvent, DomainEventError, request_context
from freedom.wire.headers import EVENT_ID_HEADER, MESSAGE_KEY_HEADER

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from freedom.domain.database import Database
    from freedom.web.application import Application
    from freedom.web.runtime import Runtime

E = TypeVar("E", bound=Entity)


class UnitOfWork:
    """A transaction plus the entities it tracks; use it as `async with uow:` (once at a time)."""

    def __init__(self, app: Application, runtime: Runtime | None = None) -> None:
        """`runtime` None (a script, a background task): events carry an empty bus and no trace."""
        self.app = app
        self.runtime = runtime
        self._session: AsyncSession | None = None
        self._entities: list[Entity] = []
        self._active = False

    # ------------------------------------------------------------------ the transaction

    @property
    def database(self) -> Database | None:
        return getattr(self.app, "database", None)

    @property
    def session(self) -> AsyncSession:
        """The SQLAlchemy AsyncSession of the transaction (inside `async with uow:` only)."""
        if self._session is None:
            if not self._active:
                raise DomainEventError(
                    "UnitOfWork.session is only available inside `async with uow:`"
                )
            raise DomainEventError(
                "UnitOfWork.session: no database is installed; call app.install_database(freedom.Database(url))"
            )
        return self._session

    async def __aenter__(self) -> UnitOfWork:
        if self._active:
            raise DomainEventError(
                "this unit of work is already in progress (nested `async with uow:`)"
            )
        self._active = True
        self._entities = []
        db = self.database
        if db is not None:
            from sqlalchemy import event

            self._session = db.sessionmaker()
            sync = self._session.sync_session
            event.listen(sync, "loaded_as_persistent", self._on_orm_object)
            event.listen(sync, "transient_to_pending", self._on_orm_object)
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        session = self._session
        try:
            if exc_type is not None:
                self._discard()
                if session is not None:
                    await session.rollback()
                return
            await self._complete(session)
        finally:
            if session is not None:
                await session.close()
            self._session = None
            self._entities = []
            self._active = False

    async def _complete(self, session: AsyncSession | None) -> None:
        events = self._take_events()
        if session is None:
            if events:
                infra = installed(self.app, events[0].name)
                for event in events:
                    await infra.publish(event)
            return
        from freedom.domain.outbox import add_events

        try:
            await add_events(session, events)
            await session.commit()
        except BaseException:
            await session.rollback()
            raise
        # Nothing may be awaited between the commit and here: a crash right after the commit
        # must leave the events to the relay, never half-published.
        db = self.database
        if events and db is not None:
            db.wake_relay()

    def _take_events(self) -> list[DomainEvent]:
        events: list[DomainEvent] = []
        for entity in self._entities:
            events.extend(entity._freedom_take_events())
        if events:
            installed(self.app, events[0].name)
        events.sort(key=lambda e: e.seq)
        return [self._with_context(e) for e in events]

    def _with_context(self, event: DomainEvent) -> DomainEvent:
        """Events raised before their entity was bound get this unit of work's runtime."""
        if event.bus is not None or self.runtime is None:
            return event
        return replace(event, **request_context(self.runtime))

    def _discard(self) -> None:
        for entity in self._entities:
            entity._freedom_take_events()

    # ------------------------------------------------------------------ entities

    def add(self, entity: E) -> E:
        """Track `entity` (and add it to the session when it is an ORM-mapped object); returns it."""
        self.track(entity)
        if self._session is not None and _is_mapped(entity):
            self._session.add(entity)
        return entity

    def track(self, entity: E) -> E:
        """Bind `entity` to this unit of work: its events are saved with the transaction; returns it."""
        if not isinstance(entity, Entity):
            raise TypeError(f"UnitOfWork: {type(entity).__name__} is not a freedom.Entity")
        if not self._active:
            raise DomainEventError(
                "UnitOfWork: hand out entities inside `async with uow:`, so that their events are saved"
            )
        if entity.pending_events:
            installed(self.app, entity.pending_events[0].name)
        entity._freedom_bind(self)
        if not any(e is entity for e in self._entities):
            self._entities.append(entity)
        return entity

    async def get(self, cls: type[E], ident: Any) -> E | None:
        """Load the ORM entity `cls` with primary key `ident` (None if there is none), bound to this unit of work."""
        found = await self.session.get(cls, ident)
        if found is not None:
            self.track(found)
        return found

    def check_infra(self, event_name: str) -> DomainEventInfra:
        """The installed infrastructure, or DomainEventError (called when an entity raises an event)."""
        return installed(self.app, event_name)

    def _on_orm_object(self, _session: Any, obj: Any) -> None:
        if isinstance(obj, Entity):
            self.track(obj)

    # ------------------------------------------------------------------ idempotent handling

    async def already_processed(
        self, message_id: str | None = None, *, consumer: str | None = None
    ) -> bool:
        """Record, in this transaction, that this handler processed the message; True if it already had.

        `message_id` defaults to the delivered event's `x-freedom-event-id` header, else its
        `x-message-key`; `consumer` (who processed it) defaults to the route's path. The record
        commits or rolls back with the handler's own changes, so a redelivered message that
        returns True here was fully handled before: skip it.
        """
        from freedom.domain.outbox import record_processed

        request = self.runtime.request if self.runtime is not None else None
        if message_id is None:
            if request is not None:
                message_id = request.headers.get(EVENT_ID_HEADER) or request.headers.get(
                    MESSAGE_KEY_HEADER
                )
            if not message_id:
                raise DomainEventError(
                    "already_processed(): this request carries no x-freedom-event-id or x-message-key header "
                    "(it is not an event delivery); pass message_id="
                )
        if consumer is None:
            route = request.scope.get("route") if request is not None else None
            consumer = getattr(route, "path", None) or (
                request.url.path if request is not None else "default"
            )
        return not await record_processed(self.session, consumer, message_id)


def _is_mapped(entity: Any) -> bool:
    from sqlalchemy import inspect

    return inspect(entity, raiseerr=False) is not None
