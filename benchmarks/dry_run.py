"""The reference dry run: how long the reference campaign takes on the simulated rig.

    python -m benchmarks.dry_run [--rounds 9] [--replicates 20] [--seed 1] [--db URL] [--profile]

protocols/ag_nanoprism.yaml (15 conditions a round) with ``replicates.n`` and the round budget set
as asked and the Latin hypercube strategy (so the figure does not depend on the ML optimisers),
against deploy/rigs/simulated.yaml on the virtual clock, stored in a fresh SQLite file (WAL, as
``sdl run`` uses it). Prints wall time, replicates, virtual campaign time and reagent volume.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import tempfile
import time
from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table

from orchestrator.campaign import run_campaign, start_campaign
from orchestrator.logging import campaign_logging
from orchestrator.store import open_store

ROOT = Path(__file__).resolve().parents[1]
PROTOCOL = ROOT / "protocols" / "ag_nanoprism.yaml"
RIG = ROOT / "deploy" / "rigs" / "simulated.yaml"


def reference_protocol(folder: Path, rounds: int, replicates: int) -> Path:
    """The reference protocol with the benchmark's round budget, replicates and strategy."""
    data = yaml.safe_load(PROTOCOL.read_text(encoding="utf-8"))
    data["target"]["file"] = str(PROTOCOL.parent / data["target"]["file"])
    data["replicates"]["n"] = replicates
    data["replicates"]["min_accepted"] = max(1, replicates // 2)
    data["optimizer"]["strategy"] = "lhs"
    data["stop"]["max_rounds"] = rounds
    data["stop"]["loss_threshold"] = None  # run the whole budget: the figure is about the engine
    path = folder / "ag_nanoprism_dry_run.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--replicates", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--db", help="store URL (default: a fresh SQLite file in a temporary folder)")
    parser.add_argument("--profile", action="store_true", help="print the 25 most expensive functions")
    args = parser.parse_args(argv)
    console = Console()
    with tempfile.TemporaryDirectory(prefix="sdl-dry-run-") as tmp:
        folder = Path(tmp)
        store = open_store(args.db or f"sqlite:///{folder / 'dry_run.db'}")
        protocol = reference_protocol(folder, args.rounds, args.replicates)
        campaign_id = start_campaign(store, protocol, RIG, seed=args.seed)
        profiler = cProfile.Profile() if args.profile else None
        with campaign_logging(folder / "dry_run.log"):
            start, cpu_start = time.perf_counter(), time.process_time()
            if profiler is not None:
                profiler.enable()
            status = run_campaign(store, campaign_id, owner="benchmarks.dry_run")
            if profiler is not None:
                profiler.disable()
            wall_s, cpu_s = time.perf_counter() - start, time.process_time() - cpu_start
        replicates = store.replicates(campaign_id, include_set_aside=True)
        conditions = store.conditions(campaign_id)
        virtual_s = max((r.clock_s for r in replicates), default=0.0)
        reagent_ul = sum(
            float(e.data["ul"]) for e in _all_events(store, campaign_id) if e.kind == "reagent_used"
        )
        best = min((c.median_loss for c in conditions if c.median_loss is not None), default=float("nan"))
        table = Table(
            title=f"reference dry run: {args.rounds} rounds x 15 conditions x {args.replicates} replicates (lhs)"
        )
        table.add_column("measure")
        table.add_column("value", justify="right")
        rows = [
            ("status", status),
            ("wall time", f"{wall_s:.1f} s"),
            ("CPU time (all threads)", f"{cpu_s:.1f} s"),
            ("rounds", str(len(store.rounds(campaign_id)))),
            ("conditions", str(len(conditions))),
            ("replicates (accepted)", f"{len(replicates)} ({sum(r.accepted for r in replicates)})"),
            ("replicates per wall second", f"{len(replicates) / wall_s:.0f}"),
            ("virtual campaign time", f"{virtual_s / 3600:.2f} h"),
            ("reagent volume", f"{reagent_ul / 1000:.1f} mL"),
            ("best median loss", f"{best:.4f}"),
        ]
        for row in rows:
            table.add_row(*row)
        console.print(table)
        if profiler is not None:
            pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)
        store.close()
    return 0 if status == "finished" else 1


def _all_events(store, campaign_id: str):  # noqa: ANN001, ANN202
    after = 0
    while True:
        events = store.events(campaign_id, after_id=after, limit=1000)
        if not events:
            return
        yield from events
        after = events[-1].id


if __name__ == "__main__":
    sys.exit(main())
