"""Bad input at scale: hypothesis-generated protocol files, rig files and console API payloads.

    python -m benchmarks.fuzz [--examples 1000] [--seed 0] [--only protocol,rig,api] [--show 3]

Each generated input is judged by tests/reliability/badinput.py (the CI test runs the same judges on
a few dozen examples): rejected with an error naming the field, or accepted and valid (every rate the
file can produce, sent through the real drivers to emulated pumps, within the hard limits); anything
else is counted as a traceback, a hardware command, an unclear rejection or an invalid acceptance, and
the first few of each are printed. Goal: the last four columns all 0.
"""

from __future__ import annotations

import argparse
import collections
import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from rich.console import Console
from rich.table import Table

from tests.reliability import badinput as b

COLUMNS = [
    b.Outcome.REJECTED_CLEAR,
    b.Outcome.ACCEPTED_VALID,
    b.Outcome.REJECTED_UNCLEAR,
    b.Outcome.ACCEPTED_INVALID,
    b.Outcome.TRACEBACK,
    b.Outcome.HARDWARE,
]


def run_kind(
    strategy: st.SearchStrategy[Any], judge: Callable[[Any], b.Verdict], examples: int, at_seed: int
) -> tuple[collections.Counter[b.Outcome], list[b.Verdict], float]:
    counts: collections.Counter[b.Outcome] = collections.Counter()
    bad: list[b.Verdict] = []

    @seed(at_seed)
    @settings(
        max_examples=examples,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def one(item: Any) -> None:
        verdict = judge(item)
        counts[verdict.outcome] += 1
        if not verdict.outcome.good:
            bad.append(verdict)

    start = time.perf_counter()
    one()
    return counts, bad, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--examples", type=int, default=1000, help="generated inputs of each kind")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", default="protocol,rig,api", help="comma-separated: protocol, rig, api")
    parser.add_argument("--show", type=int, default=3, help="bad examples printed per kind")
    args = parser.parse_args(argv)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    out = Console(width=150)
    root = Path(tempfile.mkdtemp(prefix="sdl-fuzz-"))
    workdir = b.protocol_workdir(root / "files")
    protocol = b.load_protocol(b.PROTOCOL_FILE)
    rows = []
    for kind in [k.strip() for k in args.only.split(",") if k.strip()]:
        if kind == "protocol":
            probe = b.Probe()
            try:
                result = run_kind(
                    b.protocol_files(),
                    lambda g, p=probe: b.judge_protocol(g, workdir, p),
                    args.examples,
                    args.seed,
                )
            finally:
                probe.close()
        elif kind == "rig":
            result = run_kind(
                b.rig_files(), lambda g: b.judge_rig(g, protocol, workdir), args.examples, args.seed
            )
        elif kind == "api":
            api = b.ApiHarness(root / "api")
            try:
                result = run_kind(b.api_calls(), api.judge, args.examples, args.seed)
            finally:
                api.close()
        else:
            parser.error(f"unknown kind {kind!r}: protocol, rig or api")
        counts, bad, seconds = result
        rows.append((kind, counts, seconds))
        for verdict in bad[: args.show]:
            out.print(f"[red]{kind}: {verdict.outcome}[/red] {verdict.detail[:600]}")

    table = Table(title=f"generated bad input (seed {args.seed})")
    table.add_column("input")
    table.add_column("generated", justify="right")
    for outcome in COLUMNS:
        table.add_column(str(outcome), justify="right")
    table.add_column("s", justify="right")
    for kind, counts, seconds in rows:
        table.add_row(
            kind,
            str(sum(counts.values())),
            *(str(counts[o]) for o in COLUMNS),
            f"{seconds:.0f}",
        )
    out.print(table)
    failed = any(counts[o] for _, counts, _ in rows for o in COLUMNS[2:])
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
