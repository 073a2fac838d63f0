"""Pause and resume at checkpoints of a small simulated campaign equal the uninterrupted run.

A sample of the checkpoints (the first event, one inside each round, the last); every checkpoint is
``python -m benchmarks.pause`` (table in docs/reliability.md).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.campaign import start_campaign
from orchestrator.store import Store, open_store

from . import campaigns as cz


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Store, Path, cz.PauseRun]:
    folder = tmp_path_factory.mktemp("pause")
    protocol = cz.small_protocol(folder, rounds=2, batch=2, replicates=3)
    store = open_store(f"sqlite:///{folder / 'pause.db'}")
    reference = cz.run_with_pause(store, start_campaign(store, protocol, cz.RIG, seed=11), None)
    assert reference.outcome.status == "finished" and not reference.paused
    return store, protocol, reference


@pytest.mark.parametrize("where", [0.0, 0.3, 0.7])
def test_pause_and_resume_equal_the_uninterrupted_run(
    setup: tuple[Store, Path, cz.PauseRun], where: float
) -> None:
    store, protocol, reference = setup
    at = int(where * reference.events)
    run = cz.run_with_pause(store, start_campaign(store, protocol, cz.RIG, seed=11), at)
    assert run.paused and run.resumed, "the pause was never honoured"
    assert run.outcome.status == "finished"
    assert cz.compare(reference.outcome, run.outcome).none, cz.compare(reference.outcome, run.outcome)


def test_a_pause_after_the_end_finds_it_finished(setup: tuple[Store, Path, cz.PauseRun]) -> None:
    store, protocol, reference = setup
    run = cz.run_with_pause(store, start_campaign(store, protocol, cz.RIG, seed=11), reference.events - 1)
    assert not run.paused and run.outcome.status == "finished"


def test_the_comparison_sees_a_different_campaign(setup: tuple[Store, Path, cz.PauseRun]) -> None:
    store, protocol, reference = setup
    other = cz.run_with_pause(store, start_campaign(store, protocol, cz.RIG, seed=12), None)
    diff = cz.compare(reference.outcome, other.outcome)
    assert diff.medians_differ and diff.values_differ and not diff.none
