"""Pause and resume at every checkpoint of a small simulated campaign; each must equal the uninterrupted run.

    python -m benchmarks.pause [--rounds 2] [--batch 3] [--replicates 4] [--seed 7] [--db URL]

The campaign runs in this process (tests/reliability/campaigns.py ``run_with_pause``): after progress
event j (every replicate, condition, round and status event the runner reports) a pause is requested
through the store, as the console and ``sdl pause`` do; the runner honours it at its next checkpoint
(pumps stopped, status paused), and the resume is requested while it waits. No wall time passes. Each
run is compared with the uninterrupted run of the same seed: replicates lost, duplicated, medians and
values that differ. Goal: all 0, every run finished.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import structlog
from rich.console import Console
from rich.table import Table

from orchestrator.campaign import start_campaign
from orchestrator.store import open_store
from tests.reliability import campaigns as cz


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch", type=int, default=3)
    parser.add_argument("--replicates", type=int, default=4)
    parser.add_argument("--seed", type=int, default=7, help="campaign seed")
    parser.add_argument("--db", help="store URL (default: a fresh SQLite file)")
    parser.add_argument(
        "--unit-change-tolerance",
        type=float,
        help="set drivers.newera.UNIT_CHANGE_TOLERANCE (0: a running pump is stopped to change rate units; "
        "shows the cause of finding #8 in RELIABILITY_FINDINGS)",
    )
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    if args.unit_change_tolerance is not None:
        import drivers.newera

        drivers.newera.UNIT_CHANGE_TOLERANCE = args.unit_change_tolerance
    out = Console(width=150)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sdl-pause-") as tmp:
        folder = Path(tmp)
        protocol = cz.small_protocol(folder, rounds=args.rounds, batch=args.batch, replicates=args.replicates)
        store = open_store(args.db or f"sqlite:///{folder / 'pause.db'}")
        ref = cz.run_with_pause(store, start_campaign(store, protocol, cz.RIG, seed=args.seed), None)
        runs = paused = finished = lost = duplicated = medians = values = 0
        delta = 0.0
        for j in range(ref.events):
            run = cz.run_with_pause(store, start_campaign(store, protocol, cz.RIG, seed=args.seed), j)
            diff = cz.compare(ref.outcome, run.outcome)
            runs += 1
            paused += run.paused
            finished += run.outcome.status == "finished"
            lost, duplicated = lost + diff.lost, duplicated + diff.duplicated
            medians, values = medians + diff.medians_differ, values + diff.values_differ
            delta = max(delta, diff.max_median_delta)
            if args.verbose or not diff.none:
                out.print(f"pause after event {j:>3}: paused {run.paused}, {run.outcome.status}, {diff}")
    table = Table(
        title=f"pause + resume at every checkpoint ({args.rounds} rounds x {args.batch} conditions x "
        f"{args.replicates} replicates, seed {args.seed}, {time.perf_counter() - start:.0f} s"
        + (
            f", New Era unit-change tolerance {args.unit_change_tolerance:g}"
            if args.unit_change_tolerance is not None
            else ""
        )
        + ")"
    )
    for col in (
        "pause points",
        "paused",
        "finished",
        "lost",
        "duplicated",
        "medians differ",
        "max |Δ median|",
        "values differ",
    ):
        table.add_column(col, justify="right")
    table.add_row(
        str(runs),
        str(paused),
        f"{finished}/{runs}",
        str(lost),
        str(duplicated),
        str(medians),
        f"{delta:.2g}",
        str(values),
    )
    out.print(table)
    out.print(
        f"{ref.events} progress events in the uninterrupted run; a pause requested after the last one "
        "finds the campaign finished (not paused), as it should."
    )
    return 1 if (lost or duplicated or medians or values or finished != runs) else 0


if __name__ == "__main__":
    raise SystemExit(main())
