"""The console's database plumbing: one engine per store URL, and its own tables."""

from __future__ import annotations

import os

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url

from orchestrator.console.models import ConsoleBase


def engine_for(url: str) -> Engine:
    engine = create_engine(url, pool_pre_ping=True)
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: object, _record: object) -> None:
            cur = dbapi_conn.cursor()  # type: ignore[attr-defined]
            # WAL: the console reads while a campaign writes; busy_timeout: wait for a writer, never fail
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=10000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

    return engine


def ensure_console_schema(engine: Engine) -> None:
    ConsoleBase.metadata.create_all(engine)


def redacted(url: str) -> str:
    """The URL without its password, for logs."""
    return make_url(url).render_as_string(hide_password=True)


DB_ENV = "SDL_DB"


def default_url() -> str:
    """The store URL when none is given: $SDL_DB, else ./sdl.db (SQLite)."""
    return os.environ.get(DB_ENV, "sqlite:///sdl.db")
