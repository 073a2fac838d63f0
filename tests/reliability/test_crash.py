"""SIGKILL during a small simulated campaign, then `sdl resume`: nothing lost, nothing measured twice,
the store opens and is consistent. Two kills on SQLite (and on PostgreSQL when SDL_TEST_POSTGRES_URL
is set, as in CI); ``python -m benchmarks.crash`` kills 50 times and more (docs/reliability.md).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from orchestrator.campaign import start_campaign
from orchestrator.store import open_store

from . import campaigns as cz
from . import storekill as sk

SEED = 5


def _check(url: str, folder: Path, kills: list[tuple[float, float]]) -> None:
    protocol = cz.small_protocol(folder, rounds=2, batch=2, replicates=3)
    # the reference in this process (start_campaign + run_campaign, what `sdl run` calls): it also
    # checks that the command line and the API give the same campaign
    store = open_store(url("reference"))
    reference = cz.run_with_pause(store, start_campaign(store, protocol, cz.RIG, seed=SEED), None).outcome
    store.engine.dispose()
    total = len(reference.kept)
    assert reference.status == "finished" and total == 2 * 2 * 3
    for i, (where, delay_s) in enumerate(kills):
        r = cz.kill_and_resume(url(f"kill{i}"), protocol, folder, SEED, int(where * total), delay_s)
        assert r.outcome is not None, r
        assert r.alive, "the campaign ended before the kill: the test killed nothing"
        assert r.integrity_ok
        assert r.resume_code == 0, r.resume_err
        assert r.outcome.status == "finished"
        diff = cz.compare(reference, r.outcome)
        assert diff.none, diff


def test_sigkill_then_resume_on_sqlite(tmp_path: Path) -> None:
    _check(lambda name: f"sqlite:///{tmp_path / (name + '.db')}", tmp_path, [(0.5, 0.005)])


@pytest.mark.postgres
def test_sigkill_then_resume_on_postgres(tmp_path: Path) -> None:
    url = os.environ.get("SDL_TEST_POSTGRES_URL")
    if not url:
        pytest.skip("needs SDL_TEST_POSTGRES_URL (a PostgreSQL server; .ci/run starts one)")
    _check(lambda name: url, tmp_path, [(0.4, 0.0)])


def _write_kills(url: str, kills: int) -> None:
    store = open_store(url)
    campaign_id = sk.new_campaign(store)
    store.engine.dispose()
    for i in range(kills):
        r = sk.kill_during_writes(url, campaign_id, 0.05 + 0.03 * i)
        assert r.opened and r.integrity_ok, r
        assert r.rows == r.events, f"a half-written replicate: {r}"
        assert r.contiguous and r.continues, r
    assert r.rows > kills, "the writer wrote (almost) nothing: the kills tested no write"


def test_a_store_killed_while_writing_opens_whole_on_sqlite(tmp_path: Path) -> None:
    _write_kills(f"sqlite:///{tmp_path / 'writes.db'}", 8)


@pytest.mark.postgres
def test_a_store_killed_while_writing_opens_whole_on_postgres() -> None:
    url = os.environ.get("SDL_TEST_POSTGRES_URL")
    if not url:
        pytest.skip("needs SDL_TEST_POSTGRES_URL (a PostgreSQL server; .ci/run starts one)")
    _write_kills(url, 8)
