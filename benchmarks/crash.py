"""Kill -9 at random moments of a small simulated campaign, `sdl resume`, compare with an uninterrupted run.

    python -m benchmarks.crash [--kills 50] [--write-kills 200] [--seed 0] [--store sqlite,postgres]
                               [--rounds 2] [--batch 3] [--replicates 4] [--verbose]

For each store (SQLite in WAL mode, a fresh file per kill; PostgreSQL at $SDL_TEST_POSTGRES_URL):

1. ``sdl run`` the small campaign (tests/reliability/campaigns.py) once, uninterrupted: the reference.
2. ``--kills`` times: ``sdl run`` the same protocol and seed in a child process; once the campaign is
   stored, wait until it has ``k`` replicates (k uniform over the campaign, 0 included) plus a random
   0-50 ms, and SIGKILL it, wherever it is: planning, moving pumps, inside a store transaction.
   Then open the store again (SQLite: ``PRAGMA integrity_check``), ``sdl resume`` the campaign in a new
   process, and compare what it holds with the reference: replicates lost, duplicated (measured
   beyond the reference's), medians and values that differ. Goal: 0, 0, 0, 0 and every one finished.

3. ``--write-kills`` times: a child process that does nothing but write replicates (one transaction
   each: the row and its event) is SIGKILLed after a random 50-400 ms, mostly inside a transaction
   (tests/reliability/storekill.py). The store must open, pass its integrity check, hold every
   replicate with its event (nothing half-written), indices 0..n-1, and take the next replicate.

A SIGKILL is a process losing power; the operating system still flushes what the process handed it.
A machine losing power is the storage's own promise (SQLite WAL with synchronous=NORMAL may lose the
last transactions, never its consistency; PostgreSQL with fsync on loses nothing it acknowledged).
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from orchestrator.store import open_store
from tests.reliability import campaigns as cz
from tests.reliability import storekill as sk


@dataclass
class Tally:
    store: str
    kills: int = 0
    killed_running: int = 0  # the process was still running when the signal was sent
    opened: int = 0
    integrity_ok: int = 0
    resumed_finished: int = 0
    lost: int = 0
    duplicated: int = 0
    medians_differ: int = 0
    values_differ: int = 0
    max_median_delta: float = 0.0
    kill_points: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def kill_once(
    url: str, protocol: Path, cwd: Path, seed: int, k: int, delay_s: float, tally: Tally, ref: cz.Outcome
) -> str:
    r = cz.kill_and_resume(url, protocol, cwd, seed, k, delay_s)
    tally.kills += 1
    tally.killed_running += r.alive
    if r.outcome is None:
        tally.notes.append(f"k={k}: no campaign stored (exit {r.resume_code}): {r.resume_err}")
        return "no campaign stored"
    tally.opened += 1
    tally.integrity_ok += r.integrity_ok
    tally.kill_points.append(r.at_kill)
    diff = cz.compare(ref, r.outcome)
    tally.resumed_finished += r.outcome.status == "finished" and r.resume_code == 0
    tally.lost += diff.lost
    tally.duplicated += diff.duplicated
    tally.medians_differ += diff.medians_differ
    tally.values_differ += diff.values_differ
    tally.max_median_delta = max(tally.max_median_delta, diff.max_median_delta)
    line = (
        f"k={k:>3} +{delay_s * 1000:4.0f} ms: {'killed' if r.alive else 'had ended'} with {r.at_kill} replicates; "
        f"resume exit {r.resume_code}, {r.outcome.status}; lost {diff.lost}, duplicated {diff.duplicated}, "
        f"medians {diff.medians_differ} (max {diff.max_median_delta:.2g}), values {diff.values_differ}"
    )
    if r.resume_code != 0 or diff.lost or diff.duplicated or diff.status_differs:
        tally.notes.append(line + f"\n    {r.resume_err.strip()}")
    return line


def run_store(kind: str, args: argparse.Namespace, folder: Path, protocol: Path, out: Console) -> Tally:
    rng = random.Random(args.seed)
    if kind == "sqlite":
        url_of = lambda name: f"sqlite:///{folder / (name + '.db')}"  # noqa: E731
    else:
        base = os.environ.get("SDL_TEST_POSTGRES_URL")
        if not base:
            raise SystemExit(
                "--store postgres needs SDL_TEST_POSTGRES_URL (see .ci/run for a private cluster)"
            )
        url_of = lambda name: base  # noqa: E731 - one database, campaigns told apart by id
    ref = cz.reference_run(url_of("reference"), protocol, folder, args.campaign_seed)
    total = len(ref.kept)
    tally = Tally(kind)
    for i in range(args.kills):
        k = rng.randint(0, total)
        delay = rng.uniform(0, 0.05)
        line = kill_once(url_of(f"kill-{i}"), protocol, folder, args.campaign_seed, k, delay, tally, ref)
        if args.verbose:
            out.print(f"{kind} {i:>3}: {line}")
    return tally


@dataclass
class WriteTally:
    store: str
    kills: int = 0
    opened: int = 0
    integrity_ok: int = 0
    atomic: int = 0  # replicate rows == replicate_acquired events
    contiguous: int = 0
    continues: int = 0
    rows: int = 0


def write_kills(kind: str, url: str, kills: int, seed: int) -> WriteTally:
    store = open_store(url)
    cid = sk.new_campaign(store)
    store.engine.dispose()
    rng = random.Random(seed)
    t = WriteTally(kind)
    for _ in range(kills):
        r = sk.kill_during_writes(url, cid, rng.uniform(0.05, 0.4))
        t.kills += 1
        t.opened += r.opened
        t.integrity_ok += r.integrity_ok
        t.atomic += r.rows == r.events
        t.contiguous += r.contiguous
        t.continues += r.continues
        t.rows = r.rows
    return t


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--write-kills", type=int, default=200, help="kills of a process that only writes")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    parser.add_argument("--campaign-seed", type=int, default=7, help="seed of the campaign")
    parser.add_argument("--store", default="sqlite", help="comma-separated: sqlite, postgres")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch", type=int, default=3)
    parser.add_argument("--replicates", type=int, default=4)
    parser.add_argument("--verbose", action="store_true", help="one line per kill")
    args = parser.parse_args(argv)
    out = Console(width=150)
    tallies = []
    writes = []
    with tempfile.TemporaryDirectory(prefix="sdl-crash-") as tmp:
        folder = Path(tmp)
        protocol = cz.small_protocol(folder, rounds=args.rounds, batch=args.batch, replicates=args.replicates)
        for kind in [s.strip() for s in args.store.split(",") if s.strip()]:
            url = (
                f"sqlite:///{folder / 'writes.db'}"
                if kind == "sqlite"
                else os.environ.get("SDL_TEST_POSTGRES_URL", "")
            )
            if args.write_kills and url:
                writes.append(write_kills(kind, url, args.write_kills, args.seed))
            if not args.kills:
                continue
            start = time.perf_counter()
            tally = run_store(kind, args, folder, protocol, out)
            tally.notes.append(f"{time.perf_counter() - start:.0f} s")
            tallies.append(tally)
    table = Table(
        title=f"SIGKILL at random moments, then sdl resume ({args.rounds} rounds x {args.batch} conditions x "
        f"{args.replicates} replicates, kill seed {args.seed})"
    )
    for col in (
        "store", "kills", "mid-run", "store opens", "integrity ok", "resumed to finished",
        "lost", "duplicated", "medians differ", "max |Δ median|", "values differ", "kill points (replicates stored)",
    ):  # fmt: skip
        table.add_column(col, justify="right")
    for t in tallies:
        points = sorted(t.kill_points)
        spread = f"{points[0]}-{points[-1]}, median {points[len(points) // 2]}" if points else "-"
        table.add_row(
            t.store, str(t.kills), str(t.killed_running), f"{t.opened}/{t.kills}", f"{t.integrity_ok}/{t.kills}",
            f"{t.resumed_finished}/{t.kills}", str(t.lost), str(t.duplicated), str(t.medians_differ),
            f"{t.max_median_delta:.2g}", str(t.values_differ), spread,
        )  # fmt: skip
    if tallies:
        out.print(table)
    if writes:
        wt = Table(title="SIGKILL of a process writing replicates (one transaction each), then reopen")
        for col in (
            "store",
            "kills",
            "store opens",
            "integrity ok",
            "row = event",
            "indices 0..n-1",
            "next write ok",
            "replicates",
        ):
            wt.add_column(col, justify="right")
        for w in writes:
            wt.add_row(
                w.store, str(w.kills), f"{w.opened}/{w.kills}", f"{w.integrity_ok}/{w.kills}", f"{w.atomic}/{w.kills}",
                f"{w.contiguous}/{w.kills}", f"{w.continues}/{w.kills}", str(w.rows),
            )  # fmt: skip
        out.print(wt)
    for t in tallies:
        for note in t.notes:
            out.print(f"{t.store}: {note}")
    bad = any(
        t.lost or t.duplicated or t.medians_differ or t.values_differ or t.resumed_finished != t.kills
        for t in tallies
    ) or any(min(w.opened, w.integrity_ok, w.atomic, w.contiguous, w.continues) != w.kills for w in writes)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
