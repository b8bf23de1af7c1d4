"""The outbox tables, and reading and writing them with SQLAlchemy Core.

`freedom_outbox`: one row per domain event, written in the transaction that saved the entity.
A row is pending while `published_at` is NULL; the relay sets it once the broker acknowledged
the event. `id` orders the rows: the order the events were raised in.

`freedom_processed`: the message ids an idempotent handler has processed (one row per handler
and message), written in the handler's own transaction.

`freedom_outbox_lease`: which service instance runs the relay, so that two instances sharing a
database do not publish the same rows, or one aggregate's events out of order.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    delete,
    select,
    text,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from freedom.domain.events import DomainEvent
from freedom.wire.context import Bus

metadata = MetaData()

_ID = BigInteger().with_variant(
    Integer(), "sqlite"
)  # SQLite autoincrements INTEGER PRIMARY KEY only

outbox = Table(
    "freedom_outbox",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("event_id", String(64), nullable=False, unique=True),
    Column("name", String(255), nullable=False),
    Column("topic", String(255), nullable=False),
    Column("key", String(255), nullable=False),
    Column("payload", LargeBinary, nullable=False),
    Column("headers", Text, nullable=False),  # JSON object
    Column("bus", Text, nullable=True),  # JSON object
    Column("trace_id", String(64), nullable=True),
    Column("trace_headers", Text, nullable=True),  # JSON object: traceparent and the like
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("published_at", DateTime(timezone=True), nullable=True),
    Column("attempts", Integer, nullable=False, default=0),
    Column("last_error", Text, nullable=True),
    Index("ix_freedom_outbox_published_at", "published_at", "id"),
)

processed = Table(
    "freedom_processed",
    metadata,
    Column("consumer", String(255), primary_key=True),
    Column("message_id", String(255), primary_key=True),
    Column("processed_at", DateTime(timezone=True), nullable=False),
)

lease = Table(
    "freedom_outbox_lease",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("owner", String(255), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
)


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _aware(value: dt.datetime) -> dt.datetime:
    """SQLite gives naive datetimes back: they were stored as UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


def event_row(event: DomainEvent, created_at: dt.datetime) -> dict[str, Any]:
    return {
        "event_id": event.event_id,
        "name": event.name,
        "topic": event.topic,
        "key": event.key,
        "payload": event.payload,
        "headers": json.dumps(event.headers, ensure_ascii=False),
        "bus": json.dumps(event.bus, ensure_ascii=False) if event.bus is not None else None,
        "trace_id": event.trace_id,
        "trace_headers": json.dumps(event.trace_headers) if event.trace_headers else None,
        "created_at": created_at,
        "attempts": 0,
    }


def row_event(row: Any) -> DomainEvent:
    return DomainEvent(
        name=row.name,
        topic=row.topic,
        key=row.key,
        payload=bytes(row.payload),
        headers=json.loads(row.headers),
        bus=Bus(json.loads(row.bus)) if row.bus is not None else None,
        trace_id=row.trace_id,
        trace_headers=json.loads(row.trace_headers) if row.trace_headers else {},
        event_id=row.event_id,
        seq=row.id,
    )


# pg_advisory_xact_lock(int, int) namespace of the per-aggregate outbox locks ("frdm").
_PG_LOCK_SPACE = 0x6672646D


async def add_events(session: AsyncSession, events: Sequence[DomainEvent]) -> None:
    """Write `events` to the outbox, in order, in the session's transaction.

    On PostgreSQL the transaction first locks each of its aggregates (a transaction-scoped
    advisory lock per key, taken in key order), so two transactions raising events of one
    aggregate write and commit their rows one after the other: the relay can never see a later
    row of an aggregate while an earlier one is still uncommitted. (SQLite transactions never
    interleave: they begin with BEGIN IMMEDIATE.)
    """
    if not events:
        return
    if session.get_bind().dialect.name == "postgresql":
        for key in sorted({e.key for e in events}):
            await session.execute(
                text("SELECT pg_advisory_xact_lock(:space, hashtext(:key))"),
                {"space": _PG_LOCK_SPACE, "key": key},
            )
    created = now()
    await session.execute(outbox.insert(), [event_row(e, created) for e in events])


async def pending(conn: AsyncConnection, limit: int) -> list[tuple[int, DomainEvent]]:
    """The oldest `limit` unpublished events, with their row ids, in outbox order."""
    result = await conn.execute(
        select(outbox).where(outbox.c.published_at.is_(None)).order_by(outbox.c.id).limit(limit)
    )
    return [(row.id, row_event(row)) for row in result]


async def count_pending(conn: AsyncConnection) -> int:
    from sqlalchemy import func

    return int(
        (
            await conn.execute(
                select(func.count()).select_from(outbox).where(outbox.c.published_at.is_(None))
            )
        ).scalar_one()
    )


async def mark_published(conn: AsyncConnection, ids: Sequence[int]) -> None:
    stamp = now()
    for i in range(0, len(ids), 500):
        chunk = list(ids[i : i + 500])
        await conn.execute(update(outbox).where(outbox.c.id.in_(chunk)).values(published_at=stamp))


async def mark_failed(conn: AsyncConnection, failures: dict[int, str]) -> None:
    for row_id, error in failures.items():
        await conn.execute(
            update(outbox)
            .where(outbox.c.id == row_id)
            .values(attempts=outbox.c.attempts + 1, last_error=error[:2000])
        )


async def purge_published(conn: AsyncConnection, older_than: dt.datetime) -> int:
    result = await conn.execute(
        delete(outbox).where(outbox.c.published_at.is_not(None), outbox.c.published_at < older_than)
    )
    return int(result.rowcount or 0)


async def take_lease(conn: AsyncConnection, name: str, owner: str, ttl: float) -> bool:
    """Take or renew the relay lease `name` for `owner`; False while another owner holds it."""
    stamp = now()
    expires = stamp + dt.timedelta(seconds=ttl)
    row = (await conn.execute(select(lease).where(lease.c.name == name))).first()
    if row is None:
        await _insert_ignore(conn, lease, {"name": name, "owner": owner, "expires_at": expires})
        row = (await conn.execute(select(lease).where(lease.c.name == name))).first()
        return row is not None and row.owner == owner
    if row.owner != owner and _aware(row.expires_at) > stamp:
        return False
    result = await conn.execute(
        update(lease)
        .where(
            lease.c.name == name, lease.c.owner == row.owner, lease.c.expires_at == row.expires_at
        )
        .values(owner=owner, expires_at=expires)
        .returning(lease.c.name)
    )
    return result.first() is not None


async def release_lease(conn: AsyncConnection, name: str, owner: str) -> None:
    await conn.execute(delete(lease).where(lease.c.name == name, lease.c.owner == owner))


async def _insert_ignore(
    conn: AsyncConnection | AsyncSession, table: Table, values: dict[str, Any]
) -> int:
    """INSERT that does nothing on a key conflict (SQLite and PostgreSQL); returns rows inserted.

    RETURNING tells, since some async drivers report no rowcount (-1) for INSERT ... ON CONFLICT.
    """
    from sqlalchemy import insert
    from sqlalchemy.dialects import postgresql, sqlite

    dialect = conn.get_bind().dialect.name if isinstance(conn, AsyncSession) else conn.dialect.name
    first = table.primary_key.columns.values()[0]
    if dialect == "postgresql":
        stmt: Any = postgresql.insert(table).values(**values).on_conflict_do_nothing()
    elif dialect == "sqlite":
        stmt = sqlite.insert(table).values(**values).on_conflict_do_nothing()
    else:  # pragma: no cover - other databases: a plain insert, a conflict raises
        stmt = insert(table).values(**values)
    result = await conn.execute(stmt.returning(first))
    return len(result.all())


async def record_processed(session: AsyncSession, consumer: str, message_id: str) -> bool:
    """Record that `consumer` processed `message_id` in the session's transaction; False if it had already."""
    return (
        await _insert_ignore(
            session,
            processed,
            {"consumer": consumer, "message_id": message_id, "processed_at": now()},
        )
        == 1
    )
