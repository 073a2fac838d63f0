"""Small simulated campaigns and how to compare two of them, for the crash, pause and fault checks.

A small campaign is the reference protocol cut down (``rounds`` x ``batch`` conditions x
``replicates`` droplets) on deploy/rigs/simulated.yaml. Two runs of the same seed are compared
replicate by replicate, keyed (round, condition, attempt, replicate):

- lost: a replicate the uninterrupted run kept that the other did not;
- duplicated: every droplet the other run measured beyond those it shares with the reference
  (a replicate measured twice, set aside and measured again, or one the reference never took);
- medians differ: conditions whose inputs or median loss differ;
- values differ: shared replicates whose loss or verdict differ.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import yaml

from orchestrator.store import Store, replicates_t

REPO = Path(__file__).resolve().parents[2]
PROTOCOL = REPO / "protocols" / "ag_nanoprism.yaml"
RIG = REPO / "deploy" / "rigs" / "simulated.yaml"


def small_protocol(
    folder: Path, *, rounds: int = 2, batch: int = 3, replicates: int = 4, strategy: str = "default"
) -> Path:
    """The reference protocol cut down to a campaign of a few seconds."""
    data = yaml.safe_load(PROTOCOL.read_text(encoding="utf-8"))
    data["target"]["file"] = str(PROTOCOL.parent / data["target"]["file"])
    data["batch_size"] = batch
    data["replicates"]["n"] = replicates
    data["replicates"]["min_accepted"] = max(1, replicates // 2)
    data["optimizer"]["strategy"] = strategy
    data["stop"]["max_rounds"] = rounds
    data["stop"]["loss_threshold"] = None  # the whole budget, so every run has the same length
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"small_{rounds}x{batch}x{replicates}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def faulty_rig(
    folder: Path, pump_faults: dict[str, list[dict[str, Any]]], spectrometer_faults: list[dict[str, Any]]
) -> Path:
    """deploy/rigs/simulated.yaml with faults injected into the named pumps and the spectrometer."""
    data = yaml.safe_load(RIG.read_text(encoding="utf-8"))
    for pump in data["pumps"]:
        if pump["name"] in pump_faults:
            pump["faults"] = pump_faults[pump["name"]]
    if spectrometer_faults:
        data["spectrometer"]["faults"] = spectrometer_faults
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "rig_faults.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


# -- what a campaign left in the store -------------------------------------------------------------

Key = tuple[int, int, int, int]


@dataclass(frozen=True)
class Outcome:
    """What one campaign left in the store."""

    status: str
    reason: str
    kept: dict[Key, tuple[float | None, bool]]  # replicates not set aside -> (loss, accepted)
    measured: int  # every replicate row, set aside or not
    conditions: dict[tuple[int, int], tuple[tuple[tuple[str, float], ...], float | None]]


def outcome(store: Store, campaign_id: str) -> Outcome:
    row = store.campaign(campaign_id)
    reps = store.replicates(campaign_id, include_set_aside=True)
    kept = {(r.round, r.condition, r.attempt, r.index): (r.loss, r.accepted) for r in reps if not r.set_aside}
    conditions = {
        (c.round, c.index): (tuple(sorted(c.inputs.items())), c.median_loss)
        for c in store.conditions(campaign_id)
    }
    return Outcome(row.status, row.reason, kept, len(reps), conditions)


@dataclass(frozen=True)
class Difference:
    lost: int
    duplicated: int
    medians_differ: int
    values_differ: int
    status_differs: bool
    max_median_delta: float = 0.0  # the largest |median loss difference| of a condition

    @property
    def none(self) -> bool:
        return not (
            self.lost or self.duplicated or self.medians_differ or self.values_differ or self.status_differs
        )


def _same(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return a == b or (math.isnan(a) and math.isnan(b)) or abs(a - b) <= 1e-12 * max(1.0, abs(a))


def compare(reference: Outcome, other: Outcome) -> Difference:
    shared = reference.kept.keys() & other.kept.keys()
    values = sum(
        1
        for k in shared
        if not (_same(reference.kept[k][0], other.kept[k][0]) and reference.kept[k][1] == other.kept[k][1])
    )
    medians, delta = 0, 0.0
    for key in reference.conditions.keys() | other.conditions.keys():
        a, b = reference.conditions.get(key), other.conditions.get(key)
        if a is None or b is None or a[0] != b[0] or not _same(a[1], b[1]):
            medians += 1
            if a is not None and b is not None and a[1] is not None and b[1] is not None:
                delta = max(delta, abs(a[1] - b[1]))
            else:
                delta = math.inf
    return Difference(
        lost=len(reference.kept.keys() - other.kept.keys()),
        duplicated=other.measured - len(shared),
        medians_differ=medians,
        values_differ=values,
        status_differs=reference.status != other.status,
        max_median_delta=delta,
    )


def replicate_count(store: Store, campaign_id: str) -> int:
    """Replicate rows of a campaign: one cheap query, for polling while it runs."""
    query = (
        sa.select(sa.func.count()).select_from(replicates_t).where(replicates_t.c.campaign_id == campaign_id)
    )
    with store.engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def campaign_ids(store: Store) -> set[str]:
    return {c.id for c in store.campaigns()}


# -- the sdl command in a child process --------------------------------------------------------------


def sdl(args: Sequence[str], cwd: Path, **popen: Any) -> subprocess.Popen[bytes]:
    """``sdl ARGS`` as its own process (as an operator or systemd starts it)."""
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("SDL_SIM_PACE", None)
    return subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli.main", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        **popen,
    )


# -- in this process: pausing at a chosen checkpoint ------------------------------------------------


@dataclass
class PauseRun:
    outcome: Outcome
    events: int  # progress events seen
    paused: bool  # the campaign was seen paused
    resumed: bool


def run_with_pause(store: Store, campaign_id: str, pause_at_event: int | None) -> PauseRun:
    """Run the stored campaign here; after progress event number ``pause_at_event`` request a pause,
    and when the runner waits while paused, request the resume. No wall time passes: the runner's
    ``sleep`` is where the operator acts, its ``wall`` clock stands still."""
    from orchestrator.campaign import run_campaign

    seen = {"events": 0, "paused": False, "resumed": False}

    def progress(event: str, **info: Any) -> None:
        if seen["events"] == pause_at_event:
            store.request_control(
                campaign_id, "pause", who="bench", reason=f"pause at event {pause_at_event}"
            )
        seen["events"] += 1

    def sleep(_s: float) -> None:
        if store.campaign(campaign_id).status == "paused" and not seen["resumed"]:
            seen["paused"] = True
            seen["resumed"] = True
            store.request_control(campaign_id, "resume", who="bench", reason="resume")

    run_campaign(
        store, campaign_id, owner="bench", progress=progress, poll_s=0.0, wall=lambda: 0.0, sleep=sleep
    )
    return PauseRun(outcome(store, campaign_id), seen["events"], seen["paused"], seen["resumed"])


# -- in a child process: SIGKILL, then sdl resume ---------------------------------------------------


@dataclass(frozen=True)
class KillResult:
    campaign_id: str | None
    alive: bool  # the process was still running when it was killed
    at_kill: int  # replicates stored when it died
    integrity_ok: bool  # SQLite's integrity_check after the kill (PostgreSQL: it answered)
    resume_code: int
    resume_err: str
    outcome: Outcome | None


def _new_campaign(url: str, before: set[str]) -> str | None:
    from orchestrator.store import open_store

    store = open_store(url, upgrade=False)
    try:
        ids = campaign_ids(store) - before
    finally:
        store.engine.dispose()
    return next(iter(ids)) if ids else None


def _run_args(protocol: Path, url: str, seed: int) -> list[str]:
    return ["run", str(protocol), "--rig", str(RIG), "--db", url, "--seed", str(seed)]


def reference_run(url: str, protocol: Path, cwd: Path, seed: int) -> Outcome:
    """``sdl run`` to the end, uninterrupted."""
    from orchestrator.store import open_store

    store = open_store(url)
    before = campaign_ids(store)
    p = sdl(_run_args(protocol, url, seed), cwd)
    _, err = p.communicate(timeout=600)
    if p.returncode != 0:
        raise RuntimeError(f"the reference run failed ({p.returncode}): {err.decode()[-2000:]}")
    cid = _new_campaign(url, before)
    assert cid is not None
    try:
        return outcome(store, cid)
    finally:
        store.engine.dispose()


def kill_and_resume(url: str, protocol: Path, cwd: Path, seed: int, k: int, delay_s: float) -> KillResult:
    """``sdl run``; SIGKILL ``delay_s`` after the campaign holds ``k`` replicates (or at once, if it
    ended); open the store again; ``sdl resume`` to the end."""
    import signal
    import sqlite3
    import time

    from orchestrator.store import open_store

    store = open_store(url)
    before = campaign_ids(store)
    store.engine.dispose()
    p = sdl(_run_args(protocol, url, seed), cwd)
    cid: str | None = None
    watch = open_store(url, upgrade=False)
    deadline = time.monotonic() + 300
    while p.poll() is None and time.monotonic() < deadline:
        cid = cid or _new_campaign(url, before)
        if cid is not None and replicate_count(watch, cid) >= k:
            break
        time.sleep(0.003)
    watch.engine.dispose()
    time.sleep(delay_s)
    alive = p.poll() is None
    if alive:
        p.send_signal(signal.SIGKILL)
    _, err = p.communicate()
    cid = cid or _new_campaign(url, before)
    if cid is None:
        return KillResult(None, alive, 0, False, p.returncode, err.decode()[-500:], None)
    store = open_store(url)  # after the crash: the schema check and upgrade run again
    try:
        at_kill = replicate_count(store, cid)
        ok = True
        if url.startswith("sqlite:///"):
            with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
                ok = conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        q = sdl(["resume", cid, "--db", url], cwd)
        _, rerr = q.communicate(timeout=600)
        return KillResult(cid, alive, at_kill, ok, q.returncode, rerr.decode()[-800:], outcome(store, cid))
    finally:
        store.engine.dispose()
