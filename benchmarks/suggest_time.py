"""How long one suggestion of 15 conditions takes, and how much memory it needs, as history grows.

For each strategy and history size (135, 500, 2,000 measured conditions by default) a fresh process
builds a history on the simulated rig (``simulators.chemistry:AgNanoprism``: conditions spread over
the paper's bounds, 10 replicate droplets each, median loss and accepted spectra as the engine
stores them), then times ``suggest(history, space, 15)``. Memory is the rise of the process's peak
resident set (``resource.getrusage``) during the suggestion, so torch's allocations count too (they
bypass ``tracemalloc``). Goal (issue 4, 2-core machine): <= 2 s / 5 s / 20 s.

    python -m benchmarks.suggest_time                                   # composite, gp_ei_lp(_paper)
    python -m benchmarks.suggest_time --strategies composite --sizes 135,500,2000 --repeats 3
    python -m benchmarks.suggest_time --write                           # table into the docs
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
GOALS_S = {135: 2.0, 500: 5.0, 2000: 20.0}


def build_history(n: int, seed: int = 0):
    """``n`` measured conditions of the paper's problem; better conditions grow denser as they would
    in a campaign (half the rows are concentrated around the best region found so far)."""
    from benchmarks.optimizer import BATCH, measure, paper_space, paper_target
    from benchmarks.optimizer import Problem as _Problem
    from orchestrator.optimize.base import History
    from orchestrator.optimize.constraints import make_feasible, sample_feasible
    from orchestrator.optimize.transforms import UnitScaler
    from orchestrator.spectra import wavelength_grid
    from simulators.chemistry import AgNanoprism

    rng = np.random.default_rng(seed)
    wl = wavelength_grid()
    space = paper_space()
    loss = paper_target(wl)
    problem = _Problem(AgNanoprism(), seed, "timing", loss, wl, space, np.zeros(5), 0.0, 0.0)
    x = sample_feasible(space, n, rng)
    f = loss(AgNanoprism().spectra(x, wl))
    scaler = UnitScaler.for_space(space)
    half = n // 2
    top = x[np.argsort(f)[:5]]
    local = scaler.from_unit(scaler.to_unit(top)[rng.integers(0, 5, half)] + 0.05 * rng.standard_normal((half, 5)))
    x[:half] = make_feasible(space, local)
    history = History([], wl, loss, round_index=1)
    for r, start in enumerate(range(0, n, BATCH), start=1):
        rows = space.to_dicts(x[start : start + BATCH])
        history.observations += measure(problem, rows, r, "lhs")
    history.round_index = len(history.observations) // BATCH + 1
    return history, space


def measure_one(strategy: str, n: int, seed: int, threads: int) -> dict[str, float]:
    """Run in a fresh process: build the history, then time one suggestion and its peak memory."""
    import torch
    from threadpoolctl import threadpool_limits

    from orchestrator.optimize.registry import make_optimizer

    torch.set_num_threads(threads)
    threadpool_limits(threads)
    history, space = build_history(n, seed)
    from benchmarks.optimizer import protocol_widening

    optimizer = make_optimizer(strategy, {}, protocol_widening(), seed)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    suggestion = optimizer.suggest(history, space, 15)
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert len(suggestion.batch) == 15
    return {"strategy": strategy, "n": n, "wall_s": wall, "cpu_s": cpu,
            "peak_rise_mb": (after - before) / 1024.0, "peak_rss_mb": after / 1024.0,
            "observations": len(history.observations)}


def run_child(strategy: str, n: int, seed: int, threads: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.suggest_time", "--child", f"{strategy}:{n}:{seed}:{threads}"],
        cwd=REPO, capture_output=True, text=True, check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"timing {strategy} at {n} observations failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(rows: list[dict[str, float]], strategies: Sequence[str], sizes: Sequence[int]) -> str:
    load = os.getloadavg()[0]
    lines = [
        f"Suggestion of 15 conditions: wall time and CPU time of the process (s, median over repeats) and the "
        f"rise of peak resident memory during the suggestion (MB); "
        f"{platform.machine()}, {os.cpu_count()} cores, torch/BLAS threads per process as given, "
        f"load average {load:.1f} at the end (other work on the machine inflates wall time).",
        "",
        "| strategy | " + " | ".join(f"{n} obs: wall s (goal {GOALS_S.get(n, float('nan')):g}) | cpu s | MB"
                                      for n in sizes) + " |",
        "|---|" + "---|---|---|" * len(sizes),
    ]
    for s in strategies:
        cells = []
        for n in sizes:
            mine = [r for r in rows if r["strategy"] == s and r["n"] == n]
            if not mine:
                cells += ["-", "-", "-"]
                continue
            cells += [f"{np.median([r['wall_s'] for r in mine]):.2f}", f"{np.median([r['cpu_s'] for r in mine]):.2f}",
                      f"{max(r['peak_rise_mb'] for r in mine):.0f}"]
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--strategies", default="composite,gp_ei_lp,gp_ei_lp_paper")
    parser.add_argument("--sizes", default="135,500,2000")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--write", action="store_true", help="write the table into docs/optimizer_benchmark.md")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        strategy, n, seed, threads = args.child.split(":")
        print(json.dumps(measure_one(strategy, int(n), int(seed), int(threads))))
        return 0
    strategies = [s for s in args.strategies.split(",") if s]
    sizes = [int(n) for n in args.sizes.split(",") if n]
    rows = []
    for s in strategies:
        for n in sizes:
            for rep in range(args.repeats):
                row = run_child(s, n, rep, args.threads)
                rows.append(row)
                print(f"{s:16s} {n:5d} obs  {row['wall_s']:7.2f} s wall  {row['cpu_s']:7.2f} s cpu  "
                      f"+{row['peak_rise_mb']:.0f} MB", file=sys.stderr)
    text = table(rows, strategies, sizes)
    print(text)
    if args.write:
        from benchmarks.optimizer import DOC, write_section

        command = " ".join(["python -m benchmarks.suggest_time", *(argv if argv is not None else sys.argv[1:])])
        write_section(DOC, "suggest-time", text, command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
