"""The store's schema migrations (Alembic), shipped inside the package so an installed ``sdl`` can
create and upgrade its database: :func:`upgrade` runs ``alembic upgrade head`` on an engine.

From a checkout the usual Alembic commands work too (``alembic upgrade head`` with the repository's
``alembic.ini``; the URL comes from $SDL_DB_URL). ``sdl db upgrade`` and ``sdl db current`` wrap these.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

MIGRATIONS_DIR = Path(__file__).resolve().parent
_PG_MIGRATION_LOCK = 0x5D1_0002


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def head() -> str:
    """The newest revision this code knows."""
    revision = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert revision is not None
    return revision


def current(engine: Engine) -> str | None:
    """The revision the database is at (None: an empty database)."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to ``revision`` in one transaction; concurrent callers wait for each other
    (SQLite: the write lock of ``BEGIN IMMEDIATE``; PostgreSQL: an advisory lock)."""
    config = alembic_config()
    with engine.connect() as conn:
        conn.execution_options(sdl_write=True)
        with conn.begin():
            if conn.dialect.name == "postgresql":
                conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_MIGRATION_LOCK})")
            if revision == "head" and MigrationContext.configure(conn).get_current_revision() == head():
                return
            config.attributes["connection"] = conn
            command.upgrade(config, revision)
