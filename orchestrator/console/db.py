"""The console's database plumbing: one engine per store URL, and its own tables."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url

from orchestrator.console.models import ConsoleBase


def engine_for(url: str) -> Engine:
    from orchestrator.store import normalise_url  # postgresql:// means psycopg 3, as for the store

    url = normalise_url(url)
    engine = create_engine(url, pool_pre_ping=True)
    if engine.dialect.name == "sqlite":
        database = make_url(url).database or ""
        if database and database != ":memory:" and not database.startswith("file:"):
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)

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


def default_url() -> str:
    """The store URL when none is given, the same as every other ``sdl`` command's:
    $SDL_DB_URL, else $SDL_DB, else sqlite:///runs/sdl.db."""
    from orchestrator.store import default_db_url

    return default_db_url()
