"""``sdl run`` and ``sdl resume``: run a campaign in this process, with progress bars on the terminal.

    sdl run PROTOCOL --rig RIG [--db URL] [--seed N] [--summary PATH] [--report DIR] [--max-rounds N] [--check]
            [--chemistry module:Class] [--target CSV] [--dry-run] [--queue]
    sdl resume CAMPAIGN [--db URL] [--summary PATH] [--report DIR] [--reason TEXT] [--queue]

``run`` checks the protocol, the rig and the pair before anything moves, stores the campaign and
runs it; ``--dry-run`` runs a real rig's simulated twin (its syringes and chains on emulated lines,
:func:`orchestrator.rig.dry_run_twin`) without opening a port; ``--queue`` only stores it as queued for its rig (an ``sdl agent`` picks it up). ``resume``
continues a campaign whose process ended (crash, kill -9, Ctrl-C, a fault); if a live process still
drives it, it asks that process to resume instead. Everything the engine logs goes as JSON lines to
the campaign's log file; the terminal shows progress and where the results are.

Exit codes: 0 finished (or queued, or a resume request sent), 1 faulted or e-stopped, 2 bad input,
3 aborted, 130 interrupted (the campaign is then paused; ``sdl resume`` continues it).
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from orchestrator.cli import fail

EXIT_OK = 0
EXIT_STOPPED = 1
EXIT_CONFIG = 2
EXIT_ABORTED = 3
EXIT_INTERRUPTED = 130


def register(subparsers: argparse._SubParsersAction) -> None:
    run = subparsers.add_parser(
        "run",
        help="run a campaign: a protocol on a rig",
        description="Check a protocol and a rig, store the campaign and run it (or queue it for an agent).",
    )
    run.add_argument("protocol", type=Path, metavar="PROTOCOL", help="protocol file (protocols/*.yaml)")
    run.add_argument("--rig", required=True, type=Path, metavar="RIG", help="rig file (deploy/rigs/*.yaml)")
    run.add_argument("--seed", type=int, help="campaign seed (default: the protocol's, else a random one)")
    run.add_argument(
        "--max-rounds", type=int, metavar="N", help="stop after N rounds (tighter than the protocol)"
    )
    run.add_argument(
        "--chemistry",
        metavar="module:Class",
        help="chemistry model of the simulated rig (replaces the rig's)",
    )
    run.add_argument(
        "--target",
        type=Path,
        metavar="CSV",
        help="target spectrum, replaces the protocol's: two columns, wavelength (nm) and absorbance, split by "
             "commas, semicolons, tabs or spaces; header lines are skipped",
    )
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="run on the rig's simulated twin: the rig file's pumps, syringes, daisy chains and dead volume "
             "on emulated lines, a simulated spectrometer, the reference chemistry (or --chemistry); "
             "nothing is opened, stored under rig NAME-dry-run",
    )
    run.add_argument(
        "--queue", action="store_true", help="only store the campaign, queued for its rig's agent"
    )
    run.add_argument(
        "--check", action="store_true",
        help="only check the protocol, rig, target and options as a run would, and say what would run: "
             "nothing is stored, no device is opened",
    )
    _common(run)
    run.set_defaults(func=_quiet(run_command))

    resume = subparsers.add_parser(
        "resume",
        help="continue a campaign (after a crash, a pause, a fault)",
        description="Continue a stored campaign in this process, or ask the process driving it to resume.",
    )
    resume.add_argument("campaign", help="campaign id (see `sdl status`)")
    resume.add_argument("--reason", default="", help="why (journaled with the resume)")
    resume.add_argument(
        "--queue",
        action="store_true",
        help="hand it to its rig's agent instead of running it here (a lab whose rigs sit at other PCs)",
    )
    _common(resume)
    resume.set_defaults(func=_quiet(resume_command))


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", help="store URL (default: $SDL_DB_URL, else $SDL_DB, else sqlite:///runs/sdl.db)")
    parser.add_argument("--summary", type=Path, metavar="PATH", help="write the campaign summary JSON here")
    parser.add_argument("--report", type=Path, metavar="DIR", help="write the HTML report (figures) into DIR")


def _quiet(command: Any) -> Any:
    """Outside the campaign's log file only warnings reach the terminal (on stderr)."""

    def handler(args: argparse.Namespace) -> int:
        from orchestrator.logging import warnings_to_stderr

        with warnings_to_stderr():
            return int(command(args))

    handler.__doc__ = command.__doc__
    return handler


def _owner() -> str:
    from orchestrator.campaign import process_owner

    return process_owner()


def _who() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name in some containers
        return "cli"


class RichProgress:
    """Progress bars for rounds, conditions and replicates, fed by the runner's progress events."""

    def __init__(self, console: Console, campaign_id: str = "CAMPAIGN") -> None:
        self.console, self.campaign_id = console, campaign_id
        self.bars = Progress(
            TextColumn("{task.description:<11}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[note]}"),
            TimeElapsedColumn(),
            console=console,
        )
        self.rounds = self.bars.add_task("rounds", total=None, note="")
        self.conditions = self.bars.add_task("conditions", total=None, note="")
        self.replicates = self.bars.add_task("replicates", total=None, note="")
        self.best: float | None = None
        self.rounds_run = 0

    def __enter__(self) -> RichProgress:
        self.bars.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bars.stop()

    def __call__(self, event: str, **info: Any) -> None:
        bars = self.bars
        if event == "start":
            bars.update(self.rounds, total=info.get("rounds_max"), note=str(info.get("campaign", "")))
        elif event == "round":
            self.rounds_run = info["index"] + 1
            bars.update(self.rounds, completed=info["index"], note=f"round {info['index'] + 1}")
            bars.update(self.conditions, total=info["conditions"], completed=0, note="")
        elif event == "condition":
            note = f"condition {info['index'] + 1}" + (
                f", attempt {info['attempt']}" if info.get("attempt") else ""
            )
            bars.update(self.replicates, total=info["replicates"], completed=info.get("done", 0), note=note)
        elif event == "replicate":
            loss = info.get("loss")
            note = (
                "rejected" if not info.get("accepted") else (f"loss {loss:.3f}" if loss is not None else "")
            )
            bars.update(self.replicates, completed=info["index"] + 1, note=note)
        elif event == "condition_done":
            median = info.get("median")
            if median is not None and (self.best is None or median < self.best):
                self.best = median
            bars.update(
                self.conditions,
                completed=info["index"] + 1,
                note=f"best median loss {self.best:.4f}" if self.best is not None else "",
            )
        elif event == "status":
            reason = f": {escape(info['reason'])}" if info.get("reason") else ""
            self.console.print(f"[bold]{info['status']}[/]{reason}")
            if info["status"] in ("paused", "faulted", "estopped") and not info.get("final"):  # held here
                cid = self.campaign_id
                first = ("an admin clears the e-stop (`sdl estop --clear --reason TEXT`, or the console), then "
                         if info["status"] == "estopped" else "")
                self.console.print(
                    f"  waiting for an operator: {first}`sdl resume {cid}` (another terminal, or the console) "
                    f"continues, `sdl abort {cid}` ends it; Ctrl-C here leaves it {info['status']}"
                )
            if info["status"] == "finished":  # the rounds run, whichever stop rule ended it
                bars.update(self.rounds, completed=self.rounds_run, total=self.rounds_run)


def run_command(args: argparse.Namespace) -> int:
    from orchestrator import state
    from orchestrator.campaign import check_campaign, start_campaign
    from orchestrator.config_errors import ConfigError
    from orchestrator.spectra import TargetFileError
    from orchestrator.store import RigBusy, open_store

    options: dict[str, Any] = {}
    if args.chemistry:
        options["chemistry"] = args.chemistry
    if args.dry_run:
        options["dry_run"] = True
    if args.target is not None:
        options["target"] = str(args.target)
    if args.max_rounds is not None:
        options["max_rounds"] = args.max_rounds
    try:  # checked before the store is opened: a refused run leaves no new database behind
        checked = check_campaign(args.protocol, args.rig, seed=args.seed, options=options)
    except (ConfigError, TargetFileError, ValueError) as exc:
        return fail(str(exc), EXIT_CONFIG)
    if args.check:
        return _say_what_would_run(args, checked)
    store = open_store(args.db)
    try:
        campaign_id = start_campaign(
            store,
            args.protocol,
            args.rig,
            status=state.QUEUED if args.queue else state.CREATED,
            who=_who(),
            checked=checked,
        )
    except (ConfigError, TargetFileError, ValueError) as exc:
        return fail(str(exc), EXIT_CONFIG)
    except RigBusy as exc:
        return fail(str(exc), EXIT_STOPPED)
    console = Console(highlight=False, soft_wrap=True)
    if args.queue:
        row = store.campaign(campaign_id)
        console.print(
            f"queued {campaign_id} for rig {row.rig_name!r} (an `sdl agent --rig {row.rig_name}` runs it)"
        )
        latch = store.estop_latched(row.rig_name)
        if latch is not None:  # the agent would take it straight into e-stopped and hold the rig there
            console.print(f"[yellow]note:[/] rig {row.rig_name} is e-stopped ({escape(latch.reason)}, by {latch.who}): "
                          "it waits until an admin clears the e-stop (`sdl estop --clear --reason TEXT`)")
        print(campaign_id)
        return EXIT_OK
    twin = ""
    if args.dry_run:
        from orchestrator.rig import DRY_RUN_SUFFIX

        name = store.campaign(campaign_id).rig_name
        twin = (f" (dry run: simulated twin, {escape(name)})" if name.endswith(DRY_RUN_SUFFIX)
                else " (dry run: the rig is simulated already)")
    console.print(f"campaign [bold]{campaign_id}[/] ({escape(str(args.protocol))} on {escape(str(args.rig))}{twin})")
    return _drive(store, campaign_id, args, console)


def _say_what_would_run(args: argparse.Namespace, checked: Any) -> int:
    """``sdl run --check``: the campaign passed every check of a run; say what would run (nothing is
    stored, no device opened)."""
    from orchestrator.rig import acquisition_s

    p, rig = checked.protocol, checked.rig
    console = Console(highlight=False, soft_wrap=True)
    console.print(f"[green]ok[/]: protocol {p.name!r} ({escape(str(args.protocol))}) can run on rig {rig.name!r} "
                  f"({escape(str(args.rig))}); nothing stored, no device opened")
    for name, v in p.variables.items():
        console.print(f"  {name}: bounds {v.bounds[0]:g}-{v.bounds[1]:g} {v.unit}, hard limits "
                      f"{v.hard_limits[0]:g}-{v.hard_limits[1]:g}")
    from orchestrator.optimize.registry import DEFAULT_STRATEGY

    grid, strategy = p.grid, p.optimizer.strategy
    strategy += f" ({DEFAULT_STRATEGY})" if strategy == "default" else ""
    seed = checked.seed if args.seed is not None or p.seed is not None else "drawn when it runs (--seed N fixes it)"
    console.print(f"  target {escape(checked.options['target_file'])}, scored on {grid.start_nm:g}-{grid.stop_nm:g} nm; "
                  f"{p.replicates.n} replicates per condition; strategy {strategy}; seed {seed}")
    if rig.spectrometer is not None and rig.dead_volume_ul is not None:
        most = p.largest_condition_ul(rig.dead_volume_ul, acquisition_s(rig.spectrometer.integration_time_us,
                                                                        rig.spectrometer.scans_to_average))
        syringes = {q.stream_name: q.syringe_volume_ul for q in rig.pumps}
        console.print("  most one condition draws within the bounds (uL): " + ", ".join(
            f"{s} {ul:.0f}" + (f" of {syringes[s]:g}" if syringes.get(s) else "") for s, ul in most.items()))
    if rig.spectrometer is not None and rig.spectrometer.driver != "simulated":
        console.print(f"  not checked here: whether the spectrometer reads {grid.start_nm:g}-{grid.stop_nm:g} nm "
                      "(checked when it connects: `sdl hw --rig RIG spectrum --out FILE` shows its range)")
    return EXIT_OK


def resume_command(args: argparse.Namespace) -> int:
    from orchestrator import state
    from orchestrator.state import InvalidTransition
    from orchestrator.store import StoreError, open_store

    store = open_store(args.db)
    console = Console(highlight=False, soft_wrap=True)
    try:
        row = store.campaign(args.campaign)
    except LookupError as exc:
        return fail(str(exc), EXIT_CONFIG)
    if row.ended:
        console.print(f"{row.id} is {row.description}: nothing to resume")
        return EXIT_OK if row.status == state.FINISHED else EXIT_ABORTED
    latch = store.estop_latched(row.rig_name)
    if latch is not None:
        only = f" --rig {latch.rig}" if latch.rig else ""
        return fail(
            f"{row.id} is {row.description}; rig {row.rig_name} is e-stopped ({latch.reason}): clear the "
            f"e-stop first (`sdl estop --clear{only} --reason TEXT`)",
            EXIT_STOPPED,
        )
    owner = store.live_owner(row.id)
    if owner is not None and owner != _owner():  # live_owner: a process gone from this host is None
        if row.status in (state.PAUSED, state.PAUSING, state.FAULTED, state.ESTOPPED):
            store.request_control(row.id, "resume", who=_who(), reason=args.reason or "sdl resume")
            console.print(f"asked {owner}, which drives {row.id}, to resume it ({row.description})")
            return EXIT_OK
        return fail(f"{row.id} is {row.description}, driven by {owner}: nothing to resume", EXIT_STOPPED)
    if args.queue:  # the rig's agent runs it, on the rig's PC
        try:
            store.set_status(row.id, state.QUEUED, reason=f"resume: {args.reason or 'sdl resume --queue'}", who=_who())
        except InvalidTransition as exc:
            return fail(str(exc), EXIT_CONFIG)
        console.print(f"queued {row.id} for rig {row.rig_name!r}: {store.queue_note(row.rig_name) or 'its agent resumes it'}")
        return EXIT_OK
    console.print(f"resuming [bold]{row.id}[/] ({row.description})")
    try:
        return _drive(store, row.id, args, console)
    except StoreError as exc:
        return fail(str(exc), EXIT_STOPPED)


def _drive(store: Any, campaign_id: str, args: argparse.Namespace, console: Console) -> int:
    """Run the campaign here with progress bars and its log file; then summary, report, where to look."""
    from sqlalchemy.exc import SQLAlchemyError

    from orchestrator import state
    from orchestrator.campaign import CampaignError, run_campaign
    from orchestrator.logging import campaign_logging, log_path_for
    from orchestrator.store import CampaignClaimed, database_error_text, redacted

    log_path = log_path_for(store.url, campaign_id)
    status: str | None = None
    refused = False
    with campaign_logging(log_path), RichProgress(console, campaign_id) as progress, _sigterm_as_ctrl_c():
        try:
            # a person started it here (`sdl resume ID --reason TEXT`: the reason is journaled with the user)
            status = run_campaign(store, campaign_id, owner=_owner(), progress=progress,
                                  started_by=(_who(), getattr(args, "reason", None) or ""))
        except KeyboardInterrupt:
            # the runner has stopped the pumps on its way out; leave the campaign resumable
            # (a campaign already held, faulted or e-stopped, keeps that status and its reason)
            current = store.campaign(campaign_id).status
            if current in state.ACTIVE and state.PAUSED in state.allowed(current):
                store.set_status(
                    campaign_id, state.PAUSED, reason="interrupted at the terminal (Ctrl-C)", who=_who()
                )
                current = state.PAUSED
            console.print(f"interrupted: {campaign_id} is {current}; `sdl resume {campaign_id}` continues it")
        except (CampaignError, CampaignClaimed) as exc:  # CampaignClaimed: another process has it, or its rig
            console.print(f"[bold red]error:[/] {escape(str(exc))}")
            refused = isinstance(exc, CampaignClaimed)
        except SQLAlchemyError as exc:  # the store stayed away past the runner's patience: nothing more to ask it
            return fail(
                f"the store is unreachable ({database_error_text(exc)}): campaign {campaign_id} stopped with its "
                f"pumps safe; `sdl resume {campaign_id}` continues it once the database is back",
                EXIT_STOPPED,
            )
    row = store.campaign(campaign_id)
    console.print(f"{campaign_id}: {escape(row.description)}")
    where = [("store", redacted(store.url)), ("log", str(log_path))]  # a PostgreSQL password is not printed
    if args.summary is not None:
        where.append(("summary", _write_summary(store, campaign_id, args.summary, console)))
    if args.report is not None:
        where.append(("report", _write_report(store, campaign_id, args.report, console)))
    for label, value in where:
        console.print(f"  {label:<8} {value}")
    if refused:  # nothing ran here: the campaign stays as it was
        return EXIT_STOPPED
    _print_reagent_use(store, campaign_id, console)
    if status is None:
        return EXIT_INTERRUPTED if row.status == state.PAUSED else EXIT_STOPPED
    return {state.FINISHED: EXIT_OK, state.ABORTED: EXIT_ABORTED}.get(status, EXIT_STOPPED)


@contextlib.contextmanager
def _sigterm_as_ctrl_c() -> Iterator[None]:
    """``kill`` (SIGTERM) stops a foreground run as Ctrl-C does: pumps safe, the campaign paused and
    let go, so `sdl resume` continues it at once instead of after the claim goes stale."""

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield
        return
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _print_reagent_use(store: Any, campaign_id: str, console: Console) -> None:
    """What the pumps used against their syringes, and how long they ran: on a dry run, what the rig
    will need (a stream that takes more than one syringe is refilled mid-run: the pump stalls at the
    end of its syringe, the campaign holds, the operator refills and resumes)."""
    from orchestrator.summary import reagent_rows, reagent_use

    use = reagent_use(store, campaign_id)
    if not use["volume_ul"]:
        return
    rows = reagent_rows(use)
    parts = []
    for stream, used, syringe, fills in rows:
        # 0.05 mL, not 0.0 mL: a stream used sparingly still shows what it took
        text = f"{escape(stream)} {used / 1000:.1f} mL" if used >= 100 else f"{escape(stream)} {used / 1000:.2g} mL"
        if syringe:
            refill = f": refill {fills - 1}x" if fills and fills > 1 else ""
            text += f" ({syringe / 1000:g} mL syringe{refill})"
            text = f"[yellow]{text}[/]" if refill else text
        elif use["refills"].get(stream):
            text += f" (refilled {use['refills'][stream]}x: the emulator's default syringe)"
        parts.append(text)
    hint = ("" if all(syringe for _, _, syringe, _ in rows)
            else " (syringe_volume_ul for every pump in the rig file gives the refills too)")
    console.print(f"  {'used':<8} {', '.join(parts)}; pumps ran {use['pumping_s'] / 3600:.2f} h{hint}")


def _write_summary(store: Any, campaign_id: str, path: Path, console: Console) -> str:
    from orchestrator.summary import write_summary

    return str(write_summary(store, campaign_id, path))


def _write_report(store: Any, campaign_id: str, out: Path, console: Console) -> str:
    # the campaign's data is safe whatever happens here: the report is an extra
    rep: Any = None
    try:
        from orchestrator import report as rep

        result = rep.write_report(rep.load_report_data(store, campaign_id), out)
    except Exception as exc:  # noqa: BLE001
        nothing = rep is not None and isinstance(exc, rep.NothingToReport)  # (rep: None if it did not import)
        later = "" if nothing else f" (try `sdl report {campaign_id}`)"
        console.print(f"[yellow]no report written: {escape(str(exc))}{later}[/]")
        return "(not written)"
    return str(result.html)
