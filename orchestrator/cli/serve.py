"""``sdl serve``: the operator console (web page and API) over a campaign store.

    sdl serve [--db URL] [--host 127.0.0.1] [--port 8000] [--secure-cookies] [--no-background]

It binds 127.0.0.1 unless told otherwise: the console can pause, abort and e-stop a rig, so exposing it
on the lab network is a decision (put TLS in front of it and pass --secure-cookies).
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import sys
from pathlib import Path

import structlog
import uvicorn
from rich.console import Console
from sqlalchemy.exc import SQLAlchemyError

from orchestrator.console import create_app, db

SHUTDOWN_GRACE_S = 3.0  # on SIGTERM, how long open live streams may run before they are closed


def register(subparsers: argparse._SubParsersAction) -> None:
    serve = subparsers.add_parser(
        "serve",
        help="run the operator console (web page and API)",
        description="Serve the console: campaigns, live view, pause/resume/abort/e-stop, schedules, users. "
        "OpenAPI at /docs.",
    )
    serve.add_argument("--db", default=db.default_url(), help="store URL (default: $SDL_DB_URL, else $SDL_DB, else sqlite:///runs/sdl.db)")
    serve.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this PC only)"
    )
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument(
        "--secure-cookies", action="store_true", help="mark cookies Secure (when served behind TLS)"
    )
    serve.add_argument(
        "--no-background",
        action="store_true",
        help="no scheduler and no notifier (a read-mostly second server)",
    )
    serve.add_argument(
        "--files",
        action="append",
        type=Path,
        metavar="FOLDER",
        help="a folder scheduled starts may read protocol and rig files from (repeat for more; default: "
        "$SDL_FILES, else the working directory); nothing outside is opened",
    )
    serve.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    serve.set_defaults(func=_serve)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _json_logs(level: str) -> None:
    """A service logs JSON lines to stderr, one event each (journald and log shippers read them)."""
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )


def _serve(args: argparse.Namespace) -> int:
    err = Console(stderr=True)
    _json_logs("info" if args.log_level in ("debug", "info") else args.log_level)
    from orchestrator.store import normalise_url, sqlite_file

    try:
        file = sqlite_file(normalise_url(args.db))
    except ValueError:  # not a URL at all: create_app below says so
        file = None
    existed = file is not None and file.exists()
    try:
        app = create_app(
            args.db, secure_cookies=args.secure_cookies, background=not args.no_background, file_roots=args.files
        )
    except (SQLAlchemyError, OSError, ValueError) as exc:  # a store it cannot open, a bad setting: one line
        from orchestrator.store import redacted

        err.print(f"[bold red]error:[/] cannot serve the store {redacted(args.db)}: {type(exc).__name__}: {exc}")
        return 2
    if file is not None and not existed:  # a mistyped path serves an empty lab: say so at once
        err.print(
            f"[yellow]new store:[/yellow] {file} did not exist, so this console starts empty; if your "
            "campaigns are elsewhere, stop it and give that file with --db"
        )
    for root in app.state.scheduler.file_roots:  # a typo, or a folder the install never made
        if not root.is_dir():
            err.print(f"[yellow]--files {root}:[/yellow] no such folder; scheduled starts cannot read from it")
    if not app.state.auth.users.list_users():
        err.print("[yellow]no users yet:[/yellow] add the first admin with `sdl users add NAME --role admin`")
    if not _is_loopback(args.host):
        err.print(
            f"[yellow]serving on {args.host}:[/yellow] other machines can reach the console; "
            "put TLS in front of it and use --secure-cookies"
        )
    err.print(f"console on http://{args.host}:{args.port}/  (API docs: /docs)")
    # open pages hold live streams that never end by themselves: on SIGTERM (systemctl stop) wait for
    # them at most this long, then close them (the pages reconnect to the next server by themselves)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False,
                timeout_graceful_shutdown=SHUTDOWN_GRACE_S)
    return 0
