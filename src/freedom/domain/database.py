"""`Database`: the service's SQLAlchemy (async) database, holding the outbox, and its relay.

    app = freedom.Application()
    app.install_domain_event_infra(kafka.get_domain_event_infra())
    app.install_database(freedom.Database("sqlite+aiosqlite:///shop.db"))

URLs: `sqlite+aiosqlite:///path.db` (the embedded default, no server) and
`postgresql+psycopg://user:password@host/db` (production). Plain `sqlite:///` and
`postgresql://` URLs are given those async drivers. With SQLite, every transaction begins with
`BEGIN IMMEDIATE` (writers queue up instead of failing with "database is locked") and the file
uses write-ahead logging.
"""

from __future__ import annotations

import logging
import socket
from typing import TYPE_CHECKING, Any

from freedom.domain.events import DomainEventError

if TYPE_CHECKING:
    from sqlalchemy import MetaData
    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

    from freedom.domain.relay import OutboxRelay
    from freedom.web.application import Application

log = logging.getLogger("freedom.outbox")

_DRIVERS = {
    "sqlite": "sqlite+aiosqlite",
    "postgresql": "postgresql+psycopg",
    "postgres": "postgresql+psycopg",
}


def async_url(url: str) -> str:
    """`url` with an async driver: sqlite -> sqlite+aiosqlite, postgresql -> postgresql+psycopg."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise DomainEventError(
            f"Database: {url!r} is not a database URL (e.g. sqlite+aiosqlite:///shop.db)"
        )
    return f"{_DRIVERS.get(scheme, scheme)}://{rest}"


class Database:
    """A database for entities and their outbox; relays pending events while the app runs."""

    def __init__(
        self,
        url: str | AsyncEngine,
        *,
        create_tables: bool = True,
        relay_interval_sec: float = 1.0,
        relay_batch: int = 500,
        keep_published_sec: float = 3600.0,
        lease_ttl_sec: float = 30.0,
        **engine_options: Any,
    ) -> None:
        """`url` or an AsyncEngine; `create_tables` creates the outbox tables at start-up;
        the relay looks for pending rows every `relay_interval_sec` and publishes up to
        `relay_batch` per round; published rows are deleted after `keep_published_sec`."""
        try:
            from sqlalchemy import event
            from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
        except ImportError as exc:  # pragma: no cover - depends on the installed extras
            raise DomainEventError(
                f"Database needs SQLAlchemy and a driver: pip install 'freedom-events[db]' (SQLite) "
                f"or 'freedom-events[postgres]' ({exc})"
            ) from None
        if isinstance(url, AsyncEngine):
            self.engine: AsyncEngine = url
        else:
            self.engine = create_async_engine(async_url(url), **engine_options)
        if self.engine.dialect.name == "sqlite":
            database = self.engine.url.database
            if not database or database == ":memory:":
                raise DomainEventError(
                    f"Database: {self.engine.url!r} is an in-memory SQLite database, which the outbox cannot "
                    "outlive; use a file, e.g. sqlite+aiosqlite:///shop.db"
                )
            _sqlite_transactions(self.engine, event)
        self.sessionmaker: async_sessionmaker[AsyncSession] = async_sessionmaker(
            self.engine, expire_on_commit=False
        )
        self.create_tables_at_start = create_tables
        self.relay_interval = relay_interval_sec
        self.relay_batch = relay_batch
        self.keep_published = keep_published_sec
        self.lease_ttl = lease_ttl_sec
        self.relay: OutboxRelay | None = None
        self._metadatas: list[MetaData] = []
        self._app: Application | None = None

    @property
    def dialect(self) -> str:
        return str(self.engine.dialect.name)

    def install(self, app: Application) -> None:
        """Make this the database of `app` (what `app.install_database(db)` does)."""
        if getattr(app, "database", None) is not None:
            raise DomainEventError(
                "install_database: the application already has a database installed"
            )
        if getattr(app, "_started", False):
            raise DomainEventError(
                "install_database: the application has already started; "
                "install the database before it starts (at import time, next to Application())"
            )
        if self._app is not None and self._app is not app:
            raise DomainEventError(
                "install_database: this Database is already installed in another application"
            )
        self._app = app
        app.database = self

    def add_tables(self, metadata: MetaData) -> None:
        """Also create the tables of `metadata` (e.g. your ORM's `Base.metadata`) at start-up."""
        self._metadatas.append(metadata)

    async def create_tables(self) -> None:
        """Create the outbox tables, and those added with `add_tables`, where missing."""
        from freedom.domain.outbox import metadata

        async with self.engine.begin() as conn:
            for md in (metadata, *self._metadatas):
                await conn.run_sync(md.create_all)

    async def pending_count(self) -> int:
        """How many events wait in the outbox to be published."""
        from freedom.domain.outbox import count_pending

        async with self.engine.connect() as conn:
            return await count_pending(conn)

    async def pending_summary(self) -> tuple[int, Any]:
        """How many events wait in the outbox, and when the oldest of them was written (None
        when none waits): what `/metrics` shows as the outbox gauges."""
        from sqlalchemy import func, select

        from freedom.domain.outbox import outbox

        async with self.engine.connect() as conn:
            query = select(func.count(), func.min(outbox.c.created_at))
            row = (await conn.execute(query.where(outbox.c.published_at.is_(None)))).one()
            return int(row[0]), row[1]

    def wake_relay(self) -> None:
        if self.relay is not None:
            self.relay.wake()

    async def start(self, app: Application) -> None:
        """Create the tables and start the relay (when a domain-event infrastructure is installed)."""
        from freedom.domain.relay import OutboxRelay

        if self.create_tables_at_start:
            try:
                await self.create_tables()
            except Exception as exc:
                where = self.engine.url.render_as_string(hide_password=True)
                why = "; ".join(
                    line.strip()
                    for line in str(getattr(exc, "orig", None) or exc).splitlines()
                    if line.strip()
                )
                raise DomainEventError(
                    f"cannot create the outbox tables in {where}: {why}; "
                    "check the Database URL and that the database server is running"
                ) from exc
        infra = getattr(app, "domain_event_infra", None)
        if infra is None:
            log.info(
                "database installed without a domain-event infrastructure: the outbox relay does not run"
            )
            return
        pending = await self.pending_count()
        if pending:
            log.info(
                "outbox: %d event(s) pending from before this start; the relay publishes them now",
                pending,
            )
        owner = f"{socket.gethostname()}:{app.config.listen_addr}:{app.config.service_name}"
        self.relay = OutboxRelay(
            self.engine,
            infra.publish,
            owner=owner,
            interval=self.relay_interval,
            batch=self.relay_batch,
            lease_ttl=self.lease_ttl,
            keep_published=self.keep_published,
        )
        self.relay.start()

    async def stop(self) -> None:
        """Stop the relay (events still pending stay in the outbox) and close the connections."""
        if self.relay is not None:
            await self.relay.stop()
            self.relay = None
        await self.engine.dispose()


def _sqlite_transactions(engine: AsyncEngine, event: Any) -> None:
    """SQLite: our own `BEGIN IMMEDIATE` (one writer at a time, queued by the busy timeout), WAL."""

    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    def _begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    # Registered by call rather than as decorators (`event` is untyped: mypy --strict refuses those).
    event.listens_for(engine.sync_engine, "connect")(_connect)
    event.listens_for(engine.sync_engine, "begin")(_begin)
