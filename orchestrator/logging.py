"""Campaign log files: structlog JSON lines, one file per campaign, with the campaign context bound.

The console stays rich (progress bars, the final lines); everything structlog says while a campaign
runs (the engine, the rig, the drivers) goes as one JSON object per line to the campaign's log file,
with ``campaign``, ``round``, ``condition`` and ``replicate`` bound through contextvars.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import structlog
from sqlalchemy.engine import make_url

__all__ = ["bind", "campaign_logging", "log_path_for", "unbind", "warnings_to_stderr"]

DEFAULT_LOG_DIR = Path("runs") / "logs"


def log_path_for(db_url: str, campaign_id: str) -> Path:
    """Where a campaign's log goes: ``logs/`` next to a SQLite database file, else ``runs/logs/``."""
    folder = DEFAULT_LOG_DIR
    try:
        url = make_url(db_url)
    except Exception:  # noqa: BLE001 - an odd URL only changes where the log goes
        url = None
    if url is not None and url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        folder = Path(url.database).parent / "logs"
    return folder / f"{campaign_id}.log"


def _processors() -> list[Any]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
        structlog.processors.JSONRenderer(),
    ]


@contextlib.contextmanager
def campaign_logging(path: str | Path, *, level: int = logging.INFO) -> Iterator[Path]:
    """Send structlog output to ``path`` (appended, JSON lines) for the duration; the previous
    structlog configuration comes back afterwards, so tests and the console are left as they were."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    previous = structlog.get_config()
    handle: TextIO = path.open("a", encoding="utf-8", buffering=1)
    structlog.configure(
        processors=_processors(),
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.WriteLoggerFactory(file=handle),
        cache_logger_on_first_use=False,
    )
    try:
        yield path
    finally:
        structlog.configure(**previous)
        handle.close()


@contextlib.contextmanager
def warnings_to_stderr(level: int = logging.WARNING) -> Iterator[None]:
    """Warnings and errors only (or ``level`` and up), plain text on stderr (commands whose stdout is their answer)."""
    previous = structlog.get_config()
    structlog.configure(
        processors=[structlog.processors.add_log_level, structlog.dev.ConsoleRenderer(colors=False)],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )
    try:
        yield
    finally:
        structlog.configure(**previous)


def bind(**values: Any) -> None:
    """Bind context (campaign, round, condition, attempt, replicate) to every following log line."""
    structlog.contextvars.bind_contextvars(**values)


def unbind(*keys: str) -> None:
    structlog.contextvars.unbind_contextvars(*keys)
