"""``sdl agent --rig RIG``: run the campaigns queued for a rig, one after another, until stopped.

    sdl agent --rig RIG [--db URL] [--name NAME] [--exit-when-idle] [--no-resume-orphans] [--poll S]

RIG is the rig file (``/etc/sdl/rigs/rig-a.yaml``, checked) or just the rig's name: a queued campaign
carries its own copy of the rig file, the agent only picks campaigns by rig name. Queue work with
``sdl run PROTOCOL --rig RIG --queue``. SIGTERM (``systemctl stop``) hands the running campaign back
to the queue at its next replicate boundary; a second SIGTERM leaves at once. The agent logs JSON
lines on stderr, each campaign's engine log goes to its log file as with ``sdl run``.

Exit codes: 0 stopped cleanly, 2 bad input.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from pathlib import Path
from typing import Any

import structlog
from rich.console import Console

EXIT_OK = 0
EXIT_CONFIG = 2


def register(subparsers: argparse._SubParsersAction) -> None:
    agent = subparsers.add_parser(
        "agent",
        help="run the campaigns queued for a rig (one agent per rig host)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    agent.add_argument(
        "--rig", required=True,
        help="rig file, or the rig's name (campaigns queued with `sdl run --dry-run --queue` are the twin's: NAME-dry-run)",
    )
    agent.add_argument(
        "--db", help="store URL (default: $SDL_DB_URL, else $SDL_DB, else sqlite:///runs/sdl.db)"
    )
    agent.add_argument(
        "--name", help="this agent's name in the journal (default sdl-agent); host and pid are added"
    )
    agent.add_argument(
        "--exit-when-idle", action="store_true", help="stop once nothing is queued or orphaned (batch use)"
    )
    agent.add_argument(
        "--no-resume-orphans",
        dest="resume_orphans",
        action="store_false",
        help="only mark campaigns whose process died as orphaned; leave resuming them to people",
    )
    agent.add_argument(
        "--poll", type=float, default=None, metavar="S", help="seconds between looks for work (5)"
    )
    agent.set_defaults(func=agent_command)


def rig_of(rig: str) -> tuple[str, Any]:
    """The rig's name and its validated file (a ``RigConfig``), or ``rig`` itself and None if it
    names no file."""
    from pydantic import TypeAdapter, ValidationError

    from orchestrator.config_errors import ConfigError, Problem
    from orchestrator.rig import Identifier, load_rig

    path = Path(rig)
    if path.suffix in (".yaml", ".yml") or path.exists():
        cfg = load_rig(path)
        return cfg.name, cfg
    try:
        TypeAdapter(Identifier).validate_python(rig)  # the rule of RigConfig.name
    except ValidationError:
        raise ConfigError(None, [Problem("--rig", (
            f"{rig!r} is neither a rig file nor a rig name (a letter or _, then letters, digits, _ or -, "
            "at most 64): give the rig file, or the name `sdl status` shows in its rig column"))]) from None
    return rig, None


def json_logs_to_stderr() -> None:
    """A service logs JSON lines to stderr (journald reads them); stdout stays for the command's answer."""
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )


def _run_with_log_file(store: Any, campaign_id: str, **kwargs: Any) -> str:
    """:func:`run_campaign` with the campaign's log file, as ``sdl run`` has it."""
    from orchestrator.campaign import run_campaign
    from orchestrator.logging import campaign_logging, log_path_for

    with campaign_logging(log_path_for(store.url, campaign_id)):
        return run_campaign(store, campaign_id, **kwargs)


def agent_command(args: argparse.Namespace) -> int:
    from orchestrator.agent import IDLE_POLL_S, Agent
    from orchestrator.config_errors import ConfigError
    from orchestrator.store import open_store

    err = Console(stderr=True, highlight=False, soft_wrap=True)
    try:
        rig_name, rig_config = rig_of(args.rig)
    except ConfigError as exc:
        err.print(f"[bold red]error:[/] {exc}")
        return EXIT_CONFIG
    if args.poll is not None and args.poll <= 0:
        err.print("[bold red]error:[/] --poll takes a positive number of seconds")
        return EXIT_CONFIG
    previous_logging = structlog.get_config()
    json_logs_to_stderr()
    try:
        store = open_store(args.db)
    except Exception as exc:  # noqa: BLE001 - any failure to open is the operator's to fix
        structlog.configure(**previous_logging)
        err.print(f"[bold red]error:[/] cannot open the store {args.db or '(default)'}: {exc}")
        return EXIT_CONFIG
    owner = f"{args.name or 'sdl-agent'}@{socket.gethostname()}:{os.getpid()}"
    agent = Agent(
        store,
        rig_name,
        owner=owner,
        resume_orphans=args.resume_orphans,
        idle_poll_s=args.poll or IDLE_POLL_S,
        run=_run_with_log_file,
        rig_config=rig_config,
        rig_source=args.rig,
    )
    restore_signals = agent.install_signal_handlers()
    try:
        stats = agent.serve(exit_when_idle=args.exit_when_idle)
    finally:
        restore_signals()
        store.close()
        structlog.configure(**previous_logging)
    err.print(
        f"agent {owner}: ran {len(stats.ran)}, handed back {len(stats.handed_back)}, "
        f"marked orphaned {len(stats.orphaned)}"
    )
    return EXIT_OK
