"""Campaign control from the shell: pause, abort, e-stop, status, export, and the store's schema.

    sdl pause CAMPAIGN [--reason TEXT] [--db URL]
    sdl abort CAMPAIGN [--reason TEXT] [--db URL]
    sdl estop [--rig NAME] [--reason TEXT] [--db URL]          latch an e-stop (every rig by default)
    sdl estop --clear --reason TEXT [--rig NAME] [--db URL]    clear it (a reason is required)
    sdl status [CAMPAIGN] [--json] [--db URL]
    sdl export CAMPAIGN [--format json|csv] [--out PATH] [--db URL]
    sdl db upgrade [--db URL] | sdl db current [--db URL]

Pause and abort go to the process running the campaign as control requests, honoured at its next
replicate boundary; a campaign that no process drives (no heartbeat within
:data:`orchestrator.store.STALE_AFTER_S`) changes status at once. Every change is journaled under the
shell user's login. Exit codes: 0 done, 2 refused (unknown campaign, a state that does not allow it,
a bad option), with a message that says what to do.
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from sqlalchemy.exc import SQLAlchemyError

from orchestrator import migrations, state
from orchestrator.cli import fail
from orchestrator.logging import warnings_to_stderr
from orchestrator.state import InvalidTransition
from orchestrator.store import (
    CampaignRow,
    Store,
    StoreError,
    default_db_url,
    jsonable,
    make_engine,
    normalise_url,
    open_store,
    owner_is_dead,
    redacted,
    sqlite_file,
)
from orchestrator.summary import build_summary, csv_text, summary_json

EXIT_REFUSED = 2


class CommandError(Exception):
    """A refusal to print as ``error: ...`` with exit code 2."""


def register(subparsers: argparse._SubParsersAction) -> None:
    pause = subparsers.add_parser(
        "pause",
        help="pause a campaign at its next replicate boundary",
        description="Pause a campaign: pumps go to their safe state at the next replicate boundary; "
        "`sdl resume CAMPAIGN` goes on.",
    )
    pause.add_argument("campaign")
    pause.add_argument("--reason", default="", help="why, for the journal and the console")
    pause.set_defaults(func=_pause)

    abort = subparsers.add_parser(
        "abort",
        help="end a campaign for good (data kept)",
        description="Abort a campaign: pumps to their safe state, everything measured is kept, the "
        "campaign is final.",
    )
    abort.add_argument("campaign")
    abort.add_argument("--reason", default="", help="why, for the journal and the console")
    abort.set_defaults(func=_abort)

    estop = subparsers.add_parser(
        "estop",
        help="latch (or --clear) an emergency stop",
        description="Latch an e-stop: running campaigns stop their pumps at once and nothing runs on "
        "the rig until it is cleared with --clear --reason TEXT.",
    )
    estop.add_argument("--rig", default=None, help="only this rig (default: every rig)")
    estop.add_argument("--reason", default="", help="why (required with --clear: what was checked)")
    estop.add_argument("--clear", action="store_true", help="clear the latch instead of setting it")
    estop.set_defaults(func=_estop)

    status = subparsers.add_parser(
        "status", help="campaigns and their state", description="Show one campaign or every campaign."
    )
    status.add_argument("campaign", nargs="?", default=None)
    status.add_argument(
        "--json", action="store_true", help="a JSON list of {campaign_id, status, reason, ...} on stdout"
    )
    status.set_defaults(func=_status)

    export = subparsers.add_parser(
        "export",
        help="write a campaign's summary (JSON) or replicates (CSV)",
        description="Export a campaign: the summary JSON (the same document as `sdl run --summary`) or "
        "one CSV row per replicate.",
    )
    export.add_argument("campaign")
    export.add_argument("--format", choices=["json", "csv"], default="json", help="default: json")
    export.add_argument("--out", type=Path, default=None, metavar="PATH", help="default: standard output")
    export.set_defaults(func=_export)

    db = subparsers.add_parser(
        "db",
        help="the store's schema (Alembic migrations)",
        description="Create, upgrade or inspect the store.",
    )
    db_sub = db.add_subparsers(dest="db_command", metavar="ACTION")
    db_sub.required = True
    upgrade = db_sub.add_parser("upgrade", help="create or upgrade the schema to the newest revision")
    upgrade.set_defaults(func=_db_upgrade)
    current = db_sub.add_parser("current", help="the schema revision the store is at")
    current.set_defaults(func=_db_current)

    for p in (pause, abort, estop, status, export, upgrade, current):
        p.add_argument(
            "--db",
            default=None,
            metavar="URL",
            help="store URL (default: $SDL_DB_URL, else $SDL_DB, else sqlite:///runs/sdl.db)",
        )


# ------------------------------------------------------------------------------------ plumbing


def _who() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "cli"


def _url(args: argparse.Namespace) -> str:
    return normalise_url(args.db or default_db_url())


def _open(args: argparse.Namespace, *, must_exist: bool = True) -> Store:
    url = _url(args)
    path = sqlite_file(url)
    if must_exist and path is not None and not path.exists():
        raise CommandError(
            f"no store at {path} (from {'--db' if args.db else '$SDL_DB_URL, $SDL_DB or the default'}): "
            "start a campaign with `sdl run`, or point --db at the store"
        )
    try:
        return open_store(url)
    except SQLAlchemyError as exc:
        raise CommandError(
            f"cannot open the store {redacted(url)}: {exc.__class__.__name__}: {exc}"
        ) from exc




def _run(action: Callable[[], int | None]) -> int:
    with warnings_to_stderr(logging.ERROR):
        try:
            return int(action() or 0)
        except (CommandError, InvalidTransition, StoreError) as exc:
            return fail(str(exc), EXIT_REFUSED)
        except SQLAlchemyError as exc:
            return fail(f"the store failed: {exc.__class__.__name__}: {exc}", EXIT_REFUSED)


def _note(text: str) -> None:
    Console(stderr=True).print(text, highlight=False, soft_wrap=True)


# ------------------------------------------------------------------------------------ pause / abort


def _control(args: argparse.Namespace, action: str, targets: tuple[str, str]) -> int:
    """``action`` as a request to a live process, else ``targets[1]`` applied at once.
    ``targets``: (the state a live process passes through, the final one)."""
    store = _open(args)
    try:
        row = store.campaign(args.campaign)
        passing, final = targets
        if row.ended:
            raise InvalidTransition(row.status, final, campaign_id=row.id)
        if passing not in state.allowed(row.status) and final not in state.allowed(row.status):
            raise InvalidTransition(row.status, final, campaign_id=row.id)
        from orchestrator.console.source import ACTIONS  # the states the console offers it in: the same here

        if row.status not in ACTIONS[action][1]:
            # a faulted or e-stopped campaign is held already: a pause would hide why (and, with no
            # process, overwrite the fault's reason)
            raise InvalidTransition(row.status, final, campaign_id=row.id)
        who, reason = _who(), args.reason
        owner = store.live_owner(row.id)
        if owner is not None:
            request_id = store.request_control(row.id, action, who=who, reason=reason)
            _note(
                f"{action} requested (request {request_id}); {owner} drives {row.id} and will "
                f"{action} it at the next replicate boundary. `sdl status {row.id}` shows when it has."
            )
            return 0
        store.set_status(
            row.id, final, reason=reason, who=who, data={"applied_by": "cli", "no_live_process": True}
        )
        store.close_pending_controls(
            row.id,
            f"{final} directly: no process was running the campaign",
            action=None if final == state.ABORTED else action,
        )
        hint = (
            "`sdl resume CAMPAIGN` continues it"
            if final == state.PAUSED
            else "it is final; its data are kept"
        )
        _note(f"{row.id} is now {final} (no process was running it); {hint.replace('CAMPAIGN', row.id)}")
        return 0
    finally:
        store.close()


def _pause(args: argparse.Namespace) -> int:
    return _run(lambda: _control(args, "pause", (state.PAUSING, state.PAUSED)))


def _abort(args: argparse.Namespace) -> int:
    return _run(lambda: _control(args, "abort", (state.ABORTING, state.ABORTED)))


# ------------------------------------------------------------------------------------ e-stop


def _estop(args: argparse.Namespace) -> int:
    def action() -> int:
        if args.clear and not args.reason.strip():
            raise CommandError("clearing an e-stop needs --reason TEXT: say what was checked")
        store = _open(args, must_exist=False)
        try:
            scope = f"rig {args.rig}" if args.rig else "every rig"
            if args.clear:
                count = store.clear_estop(who=_who(), reason=args.reason, rig=args.rig)
                if not count:
                    _note(f"no e-stop was latched on {scope}; nothing to clear")
                    return 0
                still = store.estop_latched(args.rig) if args.rig else None
                _note(f"cleared {count} e-stop latch(es) on {scope}.")
                if still is not None:
                    _note(
                        "[yellow]an every-rig e-stop still holds it[/yellow] "
                        f"({state.describe('latched', still.reason, still.who, still.at)}): "
                        "`sdl estop --clear --reason TEXT` without --rig clears that one"
                    )
                _note("e-stopped campaigns stay stopped until `sdl resume CAMPAIGN`.")
                return 0
            reason = args.reason or "e-stop from the command line"
            latch_id = store.latch_estop(who=_who(), reason=reason, rig=args.rig)
            now = store.now()
            live = [
                c.id
                for c in store.campaigns()
                if not c.ended and c.is_live(now) and (args.rig is None or c.rig_name == args.rig)
            ]
            _note(f"[red]e-stop {latch_id} latched on {scope}[/red]: {reason}")
            if live:
                _note(f"running campaigns stopping their pumps now: {', '.join(live)}")
            only = f" --rig {args.rig}" if args.rig else ""
            _note(f"clear it with `sdl estop --clear{only} --reason TEXT` once the rig is safe.")
            return 0
        finally:
            store.close()

    return _run(action)


# ------------------------------------------------------------------------------------ status


def _status_record(store: Store, row: CampaignRow) -> dict[str, Any]:
    tally = store.tally(row.id)
    latch = store.estop_latched(row.rig_name)
    now = store.now()
    return jsonable(
        {
            "campaign_id": row.id,
            "name": row.name,
            "status": row.status,
            "reason": row.reason,
            "status_text": row.description,
            "status_by": row.status_by,
            "status_at": row.status_at,
            "rig": row.rig_name,
            "seed": row.seed,
            "created_at": row.created_at,
            "updated_at": row.updated_at,
            "owner": row.owner,
            # its heartbeat is recent and, on this host, its process still runs (a kill -9 leaves the first)
            "live": row.is_live(now),
            "heartbeat_at": row.heartbeat_at,
            "queued_for_rig": row.queued_for_rig,
            # a queued campaign with no live agent for its rig, a running one whose process died: they
            # wait for nothing; say so, and what to do
            "note": store.waiting_note(row),
            "estop": None
            if latch is None
            else {"rig": latch.rig, "who": latch.who, "reason": latch.reason, "at": latch.at},
            "rounds": tally.rounds,
            "conditions": tally.conditions,
            "conditions_done": tally.conditions_done,
            "conditions_failed": tally.conditions_failed,
            # as the summary's totals count them: every droplet stored, set-aside ones included
            "replicates": tally.replicates + tally.set_aside,
            "replicates_accepted": tally.accepted,
            "replicates_set_aside": tally.set_aside,  # kept in the store and the export, not counted
            "best": None
            if tally.best_loss is None
            else {
                "round": tally.best_round,
                "condition": tally.best_condition,
                "median_loss": tally.best_loss,
            },
        }
    )


_STATUS_STYLE = {
    "running": "green",
    "pausing": "yellow",
    "paused": "yellow",
    "faulted": "red",
    "estopped": "bold red",
    "aborting": "red",
    "aborted": "dim",
    "finished": "cyan",
    "orphaned": "magenta",
}


def _status(args: argparse.Namespace) -> int:
    def action() -> int:
        store = _open(args)
        try:
            rows = [store.campaign(args.campaign)] if args.campaign else store.campaigns()
            records = [_status_record(store, r) for r in rows]
            if args.json:
                sys.stdout.write(json.dumps(records, indent=2) + "\n")
                return 0
            # piped or redirected, rich would wrap the table at 80 columns: the reasons became unreadable
            out = Console(soft_wrap=False, width=None if sys.stdout.isatty() else 1000)
            for latch in store.active_estops():
                scope = "every rig" if latch.rig is None else f"rig {latch.rig}"
                out.print(
                    f"[bold red]E-STOP latched on {scope}[/bold red]: "
                    f"{state.describe('latched', latch.reason, latch.who, latch.at)}",
                    highlight=False,
                )
            if not records:
                out.print(
                    f"no campaigns in {redacted(store.url)}; start one with `sdl run`", highlight=False
                )
                return 0
            if args.campaign:
                _print_one(out, store, records[0])
            else:
                _print_table(out, records)
                _print_agents(out, store)
            return 0
        finally:
            store.close()

    return _run(action)


def _best_text(rec: dict[str, Any]) -> str:
    best = rec["best"]
    if best is None:
        return "-"
    loss = best["median_loss"]
    return f"{loss:.4f} (r{best['round'] + 1} c{best['condition'] + 1})" if loss is not None else "-"


STATUS_CELL_CHARS = 120  # a reason longer than this (a device's whole hint) is cut in the table


def _short(text: str) -> str:
    """A status for the table: its first line, cut at STATUS_CELL_CHARS (``sdl status ID`` prints it
    whole), so one long device hint does not stretch every row of the table."""
    first = text.splitlines()[0] if text else ""
    cut = len(first) > STATUS_CELL_CHARS or first != text.strip()
    return (first[: STATUS_CELL_CHARS - 1].rstrip() + "…") if cut else first


def _print_table(out: Console, records: list[dict[str, Any]]) -> None:
    table = Table("campaign", "name", "status", "rig", "rounds", "conditions", "best loss", "updated (UTC)")
    table.columns[0].no_wrap = True
    for rec in records:
        style = _STATUS_STYLE.get(rec["status"], "")
        text = _short(rec["status_text"]) + (" (see below)" if rec["note"] else "")
        table.add_row(
            rec["campaign_id"],
            rec["name"],
            f"[{style}]{escape(text)}[/{style}]" if style else escape(text),
            rec["rig"],
            str(rec["rounds"]),
            f"{rec['conditions_done']}/{rec['conditions']}",
            _best_text(rec),
            rec["updated_at"][:16].replace("T", " "),
        )
    out.print(table)
    for rec in records:
        if rec["note"]:
            out.print(f"[yellow]{escape(rec['campaign_id'])}: {escape(rec['note'])}[/]", highlight=False)


def _print_agents(out: Console, store: Store) -> None:
    """The rig agents the store has seen: live (idle or driving a campaign), stopped, or silent."""
    now = store.now()
    # every live agent; of the others only each rig's latest (the table would grow with every restart)
    agents, latest_gone = [], set()
    for g in store.agents():  # most recently seen first
        if g.is_live(now) or g.rig not in latest_gone:
            agents.append(g)
            if not g.is_live(now):
                latest_gone.add(g.rig)
    if not agents:
        return
    table = Table("rig", "agent", "state", "last seen (UTC)", title="rig agents", title_justify="left")
    for g in agents:
        if g.is_live(now):
            what = f"[green]running {g.campaign_id}[/]" if g.campaign_id else "[green]idle, waiting for work[/]"
        elif g.stopped_at is not None:
            what = "[dim]stopped[/]"
        else:
            what = "[red]silent: its process died or lost the database[/]"
        table.add_row(escape(g.rig), escape(g.owner), what, f"{g.seen_at:%Y-%m-%d %H:%M:%S}")
    out.print(table)


def _print_one(out: Console, store: Store, rec: dict[str, Any]) -> None:
    cid = rec["campaign_id"]
    style = _STATUS_STYLE.get(rec["status"], "")
    out.print(f"[bold]{cid}[/bold] {rec['name']} on rig {rec['rig']} (seed {rec['seed']})", highlight=False)
    out.print(f"  status: [{style or 'default'}]{rec['status_text']}[/]", highlight=False)
    if rec["owner"]:
        liveness = "live" if rec["live"] else "not running" if owner_is_dead(rec["owner"]) else "no recent heartbeat"
        out.print(
            f"  driven by: {rec['owner']} ({liveness}, heartbeat {rec['heartbeat_at']})", highlight=False
        )
    elif rec["status"] in state.ACTIVE:
        out.print(f"  no process drives it: `sdl resume {cid}` continues it", highlight=False)
    if rec["note"]:
        out.print(f"  [yellow]{escape(rec['note'])}[/]", highlight=False)
    out.print(
        f"  progress: {rec['rounds']} round(s), {rec['conditions_done']}/{rec['conditions']} conditions done "
        f"({rec['conditions_failed']} failed), {rec['replicates']} replicates ({rec['replicates_accepted']} accepted"
        + (f", {rec['replicates_set_aside']} set aside" if rec["replicates_set_aside"] else "") + ")",
        highlight=False,
    )
    out.print(f"  best: {_best_text(rec)}", highlight=False)
    if rec["estop"]:
        e = rec["estop"]
        out.print(f"  [bold red]e-stop latched[/bold red] by {e['who']}: {e['reason']}", highlight=False)
    for pending in store.pending_controls(cid):
        out.print(
            f"  pending request {pending.id}: {pending.action} by {pending.who}"
            + (f" ({pending.reason})" if pending.reason else ""),
            highlight=False,
        )
    events = store.recent_events(cid, limit=8)
    if events:
        out.print("  recent events:")
        for e in events:
            line = f"    {e.at:%H:%M:%S} {e.kind}"
            if e.who != "system":
                line += f" by {e.who}"
            if e.reason:
                line += f": {e.reason}"
            out.print(line, highlight=False)


# ------------------------------------------------------------------------------------ export


def _export(args: argparse.Namespace) -> int:
    def action() -> int:
        store = _open(args)
        try:
            summary = build_summary(store, args.campaign)
        finally:
            store.close()
        text = summary_json(summary) if args.format == "json" else csv_text(summary)
        if args.out is None:
            sys.stdout.write(text)
            return 0
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_name(args.out.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(args.out)
        _note(f"wrote {args.out} ({args.format}, campaign {summary['campaign_id']})")
        return 0

    return _run(action)


# ------------------------------------------------------------------------------------ db


def _db_upgrade(args: argparse.Namespace) -> int:
    def action() -> int:
        url = _url(args)
        engine = make_engine(url)
        try:
            before = migrations.current(engine)
            migrations.upgrade(engine)
            after = migrations.current(engine)
        except SQLAlchemyError as exc:
            raise CommandError(f"cannot upgrade {redacted(url)}: {exc.__class__.__name__}: {exc}") from exc
        finally:
            engine.dispose()
        if before == after:
            _note(f"{redacted(url)} is up to date (revision {after})")
        else:
            _note(f"{redacted(url)} upgraded from {before or 'an empty database'} to revision {after}")
        return 0

    return _run(action)


def _db_current(args: argparse.Namespace) -> int:
    def action() -> int:
        url = _url(args)
        path = sqlite_file(url)
        if path is not None and not path.exists():
            raise CommandError(f"no store at {path}: `sdl db upgrade --db {url}` creates one")
        engine = make_engine(url)
        try:
            rev = migrations.current(engine)
        except SQLAlchemyError as exc:
            raise CommandError(f"cannot read {redacted(url)}: {exc.__class__.__name__}: {exc}") from exc
        finally:
            engine.dispose()
        head = migrations.head()
        sys.stdout.write(f"{rev or 'none'}\n")
        if rev == head:
            _note(f"up to date (head {head})")
            return 0
        _note(f"the code's newest revision is {head}: run `sdl db upgrade` (it also runs on every open)")
        return 0

    return _run(action)


__all__ = ["register"]
