"""Alembic environment: runs on the connection :func:`orchestrator.migrations.upgrade` hands over,
or, from the ``alembic`` command line, on $SDL_DB_URL (else the ini file's ``sqlalchemy.url``)."""

from __future__ import annotations

import os

from alembic import context

from orchestrator.store import make_engine, metadata, normalise_url

config = context.config
target_metadata = metadata


def _run(connection: object) -> None:
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = os.environ.get("SDL_DB_URL") or config.get_main_option("sqlalchemy.url") or "sqlite:///runs/sdl.db"
    engine = make_engine(normalise_url(url))
    try:
        with engine.connect() as conn:
            conn.execution_options(sdl_write=True)
            _run(conn)
            conn.commit()
    finally:
        engine.dispose()


if context.is_offline_mode():
    context.configure(
        url=normalise_url(config.get_main_option("sqlalchemy.url") or "sqlite:///runs/sdl.db"),
        target_metadata=target_metadata,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()
else:
    run_migrations_online()
