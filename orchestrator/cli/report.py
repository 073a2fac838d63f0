"""``sdl report``: what a campaign found, as PNG figures and one HTML page.

    sdl report CAMPAIGN [--db URL] [--out DIR] [--map X,Y ...] [--shap N]

Reads the campaign from the store (any state: a running campaign is reported as far as it got),
refits the spectrum network and a Gaussian process on everything measured, and writes
``DIR/index.html`` (figures embedded, so the page travels alone) next to the PNG files and a
``report.json`` (default DIR: ``reports/CAMPAIGN``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from orchestrator.logging import warnings_to_stderr

EXIT_FAILED = 1
EXIT_USAGE = 2


def register(subparsers: argparse._SubParsersAction) -> None:
    report = subparsers.add_parser(
        "report",
        help="write a campaign's figures and HTML report",
        description="Feature importance (SHAP), predicted-loss maps, best spectra predicted and measured, "
        "loss per round and the bounds history of one campaign, as PNG files and one HTML page.",
    )
    report.add_argument("campaign", help="campaign id (see `sdl status`)")
    report.add_argument("--db", help="store URL (default: $SDL_DB_URL, else $SDL_DB, else sqlite:///runs/sdl.db)")
    report.add_argument("--out", type=Path, help="output folder (default: reports/CAMPAIGN)")
    report.add_argument(
        "--map",
        action="append",
        default=None,
        metavar="X,Y",
        help="a predicted-loss map over inputs X and Y (repeatable; default Q_seed,Q_AgNO3 when present)",
    )
    report.add_argument(
        "--shap", type=int, default=40, metavar="N", help="conditions explained by SHAP (default 40)"
    )
    report.set_defaults(func=run_report)


def _parse_maps(values: list[str] | None) -> list[tuple[str, str]] | None:
    if not values:
        return None
    pairs = []
    for value in values:
        parts = [p.strip() for p in value.split(",")]
        if len(parts) != 2 or not all(parts):
            raise ValueError(
                f"--map takes two input names separated by a comma, e.g. Q_seed,Q_AgNO3; got {value!r}"
            )
        pairs.append((parts[0], parts[1]))
    return pairs


def run_report(args: argparse.Namespace) -> int:
    with warnings_to_stderr():
        return _report(args)


def _report(args: argparse.Namespace) -> int:
    err = Console(stderr=True, soft_wrap=True)
    try:
        maps = _parse_maps(args.map)
    except ValueError as exc:
        err.print(str(exc), style="red", markup=False)
        return EXIT_USAGE
    if args.shap < 2:
        err.print("--shap needs at least 2 conditions to explain", style="red")
        return EXIT_USAGE

    # imported here: matplotlib, torch and shap take seconds to load, and `sdl --help` should not wait
    from orchestrator import report as rep
    from orchestrator.store import StoreError, open_store

    try:
        store = open_store(args.db)
        data = rep.load_report_data(store, args.campaign)
    except (LookupError, StoreError, rep.ReportError) as exc:
        err.print(str(exc), style="red", markup=False)
        return EXIT_FAILED
    out = args.out if args.out is not None else Path("reports") / args.campaign

    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    ) as progress:
        task = progress.add_task("report", total=rep.report_steps(maps))
        started = False

        def on_step(label: str) -> None:
            nonlocal started
            if started:
                progress.advance(task)
            started = True
            progress.update(task, description=label)

        try:
            result = rep.write_report(data, out, maps=maps, shap_explain=args.shap, on_step=on_step)
        except rep.ReportError as exc:
            err.print(str(exc), style="red", markup=False)
            return EXIT_FAILED
        progress.advance(task)
    for note in result.notes:
        err.print(f"note: {note}", markup=False)
    print(result.html)
    return 0
