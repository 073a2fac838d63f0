"""kill -9 of a campaign process at random moments, then resume: nothing lost, nothing measured twice,
and on the simulated rig with the same seed the same result as an uninterrupted run.

A subprocess runs the tiny campaign; the test watches the journal grow and SIGKILLs the process once
it passes a randomly drawn event (so kills land between any two journaled steps, and anywhere in
between, since the process keeps going until the signal arrives). After a few kills the campaign is
resumed in this process and compared with an uninterrupted run."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from campaign_support import ROOT, SIM_RIG, event_kinds, fingerprint, new_store, tiny_protocol

from orchestrator import state
from orchestrator.campaign import run_campaign, start_campaign
from orchestrator.logging import campaign_logging

SEED = 23
KILLS = 4

CHILD = """
import sys
from orchestrator.campaign import process_owner, run_campaign
from orchestrator.logging import campaign_logging
from orchestrator.store import open_store

store = open_store(sys.argv[1])
with campaign_logging(sys.argv[3]):
    print(run_campaign(store, sys.argv[2], owner=process_owner("crash-test")), flush=True)
"""


def _child(db_url: str, campaign_id: str, log: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, db_url, campaign_id, str(log)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _kill_after_event(proc: subprocess.Popen, store, target_event: int, deadline_s: float = 60.0) -> bool:
    """SIGKILL ``proc`` once the journal holds event ``target_event``; False if it ended first."""
    start = time.monotonic()
    while proc.poll() is None:
        if store.latest_event_id() >= target_event:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            return True
        if time.monotonic() - start > deadline_s:
            proc.kill()
            pytest.fail("the campaign subprocess made no progress for a minute")
        time.sleep(0.002)  # polling another process's progress, not waiting on a clock for the result
    return False


def test_kill_minus_9_at_random_moments_then_resume_equals_uninterrupted(tmp_path: Path) -> None:
    protocol = tiny_protocol(tmp_path)

    reference_dir = tmp_path / "reference"
    reference_dir.mkdir()
    reference = new_store(reference_dir)
    ref_id = start_campaign(reference, protocol, SIM_RIG, seed=SEED)
    with campaign_logging(reference_dir / "run.log"):
        assert run_campaign(reference, ref_id, owner="reference") == state.FINISHED
    expected = fingerprint(reference, ref_id)
    events_per_run = reference.latest_event_id()

    store = new_store(tmp_path)
    campaign_id = start_campaign(store, protocol, SIM_RIG, seed=SEED)
    rng = random.Random(20261129)
    kills = 0
    stored_at_kills: list[int] = []
    for attempt in range(KILLS):
        now = store.latest_event_id()
        # anywhere from "before the process got going" to well into the campaign
        target = now + rng.randint(0, max(1, events_per_run // 3))
        proc = _child(store.url, campaign_id, tmp_path / f"child{attempt}.log")
        if _kill_after_event(proc, store, target):
            kills += 1
            stored_at_kills.append(len(store.replicates(campaign_id)))
            assert proc.returncode == -signal.SIGKILL
        else:
            assert proc.returncode == 0, proc.stderr.read().decode()
            break
    assert kills >= 2, "the campaign should have been killed at least twice"
    assert any(0 < n < 18 for n in stored_at_kills), stored_at_kills  # killed mid-campaign
    row = store.campaign(campaign_id)
    assert row.status != state.FINISHED and row.owner is not None  # left as the dead process had it

    with campaign_logging(tmp_path / "resume.log"):
        assert run_campaign(store, campaign_id, owner="resumer") == state.FINISHED

    assert fingerprint(store, campaign_id) == expected
    kinds = event_kinds(store, campaign_id)
    # nothing measured twice: one journaled acquisition per stored replicate, none set aside
    assert kinds.count("replicate_acquired") == len(store.replicates(campaign_id)) == 18
    assert not any(r.set_aside for r in store.replicates(campaign_id, include_set_aside=True))
    assert kinds.count("batch_planned") == 2
    assert kinds.count("taken_over") >= 1  # a dead owner on this host is taken over at once
