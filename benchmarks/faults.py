"""Every fault the simulators inject, at random moments, across 200+ small simulated campaigns.

    python -m benchmarks.faults [--campaigns 200] [--workers 4] [--seed 0] [--rounds 2] [--batch 2]
                                [--replicates 3] [--max-resumes 2] [--show 2]

Each campaign gets one fault (tests/reliability/faulty.py): a random device of
deploy/rigs/simulated.yaml and a fault it can have (pumps: no_reply, garbage, stall, reset,
disconnect; spectrometer: no_reply, disconnect, saturated, dark_lamp), starting at a random virtual
moment of the campaign, lasting a random 0.5-60 s or (one in three, and always for stall and reset)
until cleared; a pump's no_reply or garbage takes the whole line (both: the pump hears nothing
either) or only the pump's way back (reply: it still obeys), half each. Whenever the runner holds
(faulted, paused), the pumps are read in the emulated firmware, 30 virtual seconds pass (the New Era
pumps' Safe-mode watchdog, 5 s by default, stops a pump the host can no longer reach), the pumps are
read again and the operator resumes; after ``--max-resumes`` holds it aborts.

Counted per fault and pump family: campaigns that finished, that held with a reason and were then
aborted (clean), anything else (an exception, a hold without a reason: unclean), campaigns with a
pump running in the firmware when a hold began, still running 30 s into it ("left running"), or
running after the campaign ended. Goal: unclean 0, left running 0, running after the end 0.
"""

from __future__ import annotations

import argparse
import collections
import logging
import multiprocessing
import random
import tempfile
import time
from pathlib import Path

import structlog
from rich.console import Console
from rich.table import Table

from orchestrator.campaign import start_campaign
from orchestrator.rig import load_rig
from orchestrator.store import open_store
from tests.reliability import campaigns as cz
from tests.reliability import faulty as fy


def horizon_s(protocol: Path, folder: Path, seed: int) -> float:
    """Virtual seconds of the fault-free campaign: faults start anywhere in it."""
    store = open_store(f"sqlite:///{folder / 'horizon.db'}")
    run = cz.run_with_pause(store, start_campaign(store, protocol, cz.RIG, seed=seed), None)
    assert run.outcome.status == "finished", run.outcome
    return max(r.clock_s for r in store.replicates(store.campaigns()[0].id))


def worker(job: tuple[int, list[fy.FaultPlan], dict]) -> list[fy.FaultRun]:
    index, plans_list, opts = job
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    folder = Path(tempfile.mkdtemp(prefix=f"sdl-faults-{index}-"))
    protocol = cz.small_protocol(
        folder, rounds=opts["rounds"], batch=opts["batch"], replicates=opts["replicates"]
    )
    store = open_store(f"sqlite:///{folder / 'faults.db'}")
    return [
        fy.run_with_faults(store, protocol, [plan], opts["seed"], max_resumes=opts["max_resumes"])
        for plan in plans_list
    ]


FAMILY = {"newera": "New Era", "harvard": "Harvard", "sila": "SiLA"}


def label(plan: fy.FaultPlan, drivers: dict[str, str]) -> str:
    if plan.device == "spectrometer":
        return f"spectrometer {plan.kind}"
    path = f" ({plan.path})" if plan.path else ""
    return f"{FAMILY.get(drivers[plan.device], drivers[plan.device])} pump {plan.kind}{path}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--campaigns", type=int, default=200)
    parser.add_argument(
        "--workers", type=int, default=4, help="processes (faults that time out wait on the wall clock)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the fault plans")
    parser.add_argument("--campaign-seed", type=int, default=7)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--replicates", type=int, default=3)
    parser.add_argument("--max-resumes", type=int, default=2)
    parser.add_argument(
        "--show", type=int, default=2, help="examples printed per unclean or pumping fault kind"
    )
    args = parser.parse_args(argv)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    out = Console(width=230)
    start = time.perf_counter()
    folder = Path(tempfile.mkdtemp(prefix="sdl-faults-"))
    protocol = cz.small_protocol(folder, rounds=args.rounds, batch=args.batch, replicates=args.replicates)
    horizon = horizon_s(protocol, folder, args.campaign_seed)
    rng = random.Random(args.seed)
    drivers = {p.name: p.driver for p in load_rig(cz.RIG).pumps}
    pumps = list(drivers)
    plans = [fy.random_plans(rng, horizon, pumps, most=1)[0] for _ in range(args.campaigns)]
    opts = {
        "rounds": args.rounds,
        "batch": args.batch,
        "replicates": args.replicates,
        "seed": args.campaign_seed,
        "max_resumes": args.max_resumes,
    }
    jobs = [(i, plans[i :: args.workers], opts) for i in range(args.workers)]
    with multiprocessing.get_context("fork").Pool(args.workers) as pool:
        runs = [r for chunk in pool.map(worker, jobs) for r in chunk]

    rows: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    examples: dict[str, list[str]] = collections.defaultdict(list)
    for run in runs:
        key = label(run.plans[0], drivers)
        family = key.split(" pump ")[0] if " pump " in key else None
        for k in (key, *([f"{family} pumps, all faults"] if family else []), "all"):
            row = rows[k]
            row["campaigns"] += 1
            row["finished"] += run.status == "finished" and not run.error
            row["held, reason, aborted"] += run.clean and run.status == "aborted"
            row["held at least once"] += bool(run.holds)
            row["unclean"] += not run.clean
            row["running when held"] += any(h.running for h in run.holds)
            row["left running (30 s into a hold)"] += any(h.still_running for h in run.holds)
            row["running after the end"] += bool(run.running_after)
        if (not run.clean or run.pumps_left_running) and len(examples[key]) < args.show:
            p = run.plans[0]
            running = sorted({n for h in run.holds for n in h.still_running} | set(run.running_after))
            examples[key].append(
                f"{p.device} {p.kind} {p.path or ''} at {p.at_s:.0f} s for {p.duration_s and round(p.duration_s)} s "
                f"-> {run.status}; holds {[h.reason[:240] for h in run.holds][:1]}; left running {running}; "
                f"{run.error[:200]}"
            )
    cols = [
        "campaigns", "finished", "held, reason, aborted", "held at least once", "unclean",
        "running when held", "left running (30 s into a hold)", "running after the end",
    ]  # fmt: skip
    table = Table(
        title=f"faults at random moments: {args.campaigns} campaigns of {args.rounds} rounds x {args.batch} conditions x "
        f"{args.replicates} replicates (horizon {horizon:.0f} virtual s, plan seed {args.seed}, "
        f"{time.perf_counter() - start:.0f} s)"
    )
    table.add_column("fault")
    for c in cols:
        table.add_column(c, justify="right")
    summaries = sorted(k for k in rows if k.endswith("pumps, all faults"))
    for key in [*sorted(k for k in rows if k != "all" and k not in summaries), *summaries, "all"]:
        table.add_row(key, *(str(rows[key][c]) for c in cols))
    out.print(table)
    for key, lines in sorted(examples.items()):
        for line in lines:
            out.print(f"[yellow]{key}[/yellow]: {line}")
    total = rows["all"]
    return (
        1
        if total["unclean"] or total["left running (30 s into a hold)"] or total["running after the end"]
        else 0
    )


if __name__ == "__main__":
    raise SystemExit(main())
