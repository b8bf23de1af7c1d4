"""Database fixtures for the domain-event tests: SQLite files, and a PostgreSQL server on loopback.

`postgres_server` runs scripts/postgres.sh, which installs PostgreSQL from Debian's packages when
the machine has no server, makes a new cluster and starts it on a free 127.0.0.1 port; the
session stops and deletes it. `db_url` runs each test on SQLite and on PostgreSQL (a new
database per test). Import both into a test module to use them.
"""

from __future__ import annotations

import atexit
import os
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, select

ROOT = Path(__file__).resolve().parents[2]


SCRIPT = ROOT / "scripts" / "postgres.sh"
_server: tuple[str, str] | None = None  # (URL, data dir): one server per test process


def _stop_server() -> None:
    global _server
    if _server is not None:
        subprocess.run(["bash", str(SCRIPT), "stop", _server[1]], capture_output=True, timeout=120)
        _server = None


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """URL of the `freedom` database of a PostgreSQL server started for this test process.

    Each test module imports this fixture, so it is kept in a module global: one server for all
    of them, stopped when the process exits.
    """
    global _server
    if _server is None:
        done = subprocess.run(
            ["bash", str(SCRIPT), "start", str(os.getpid())],
            capture_output=True,
            text=True,
            timeout=900,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"scripts/postgres.sh start failed ({done.returncode}):\n{done.stderr[-3000:]}"
            )
        url, data_dir = done.stdout.strip().splitlines()[-1].split()
        _server = (url, data_dir)
        atexit.register(_stop_server)
    return _server[0]


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A new empty database: a SQLite file, or a new database on the session's PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'service.db'}"
    server: str = request.getfixturevalue("postgres_server")
    name = f"t_{uuid.uuid4().hex[:12]}"
    engine = create_engine(server, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    engine.dispose()
    return server.rsplit("/", 1)[0] + "/" + name


def sync_url(url: str) -> str:
    """The same database through a synchronous driver, for the tests' own checks."""
    return url.replace("sqlite+aiosqlite://", "sqlite://")


def outbox_rows(url: str) -> list[Any]:
    """Every row of the outbox table, in order (empty when the table does not exist yet)."""
    from freedom.domain.outbox import outbox

    engine = create_engine(sync_url(url))
    try:
        with engine.connect() as conn:
            if not engine.dialect.has_table(conn, "freedom_outbox"):
                return []
            return list(conn.execute(select(outbox).order_by(outbox.c.id)))
    finally:
        engine.dispose()


def unique_event(entity: str = "Goods", method: str = "Shopping") -> tuple[str, str]:
    """A fresh event name like "Goods3f2a...:Shopping" and its topic, so tests never share a topic."""
    name = f"{entity}{uuid.uuid4().hex[:10]}:{method}"
    return name, name.replace(":", ".")
