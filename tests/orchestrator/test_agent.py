"""``sdl agent``: agents claim the campaigns queued for their rig with row locks, never share one,
hand a campaign back on a clean stop, and mark (and resume) campaigns whose agent died. On SQLite
always and on PostgreSQL when SDL_TEST_POSTGRES_URL is set (``.ci/run`` starts one)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator import state
from orchestrator.agent import Agent, HandBack
from orchestrator.campaign import run_campaign, start_campaign
from orchestrator.cli.main import main
from orchestrator.store import Store, open_store
from simulators.world import get_world
from tests.orchestrator.campaign_support import SIM_RIG, fingerprint, statuses, tiny_protocol

ROOT = Path(__file__).resolve().parents[2]
PG_URL = os.environ.get("SDL_TEST_POSTGRES_URL")


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    s = open_store(store_url)
    yield s
    s.close()


def rig_file(folder: Path, name: str) -> Path:
    """The simulated rig under another name, on buses of its own (two rigs in one process)."""
    data = yaml.safe_load(SIM_RIG.read_text())
    data["name"] = name
    for pump in data["pumps"]:
        driver, bus = pump["port"][len("sim://") :].split("/")
        pump["port"] = f"sim://{driver}/{name}-{bus}"
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture
def rigs(tmp_path: Path) -> dict[str, Path]:
    return {name: rig_file(tmp_path, name) for name in ("rig-a", "rig-b")}


@pytest.fixture
def protocol(tmp_path: Path) -> Path:
    return tiny_protocol(tmp_path)


def queue(store: Store, protocol: Path, rig: Path, seed: int, rounds: int = 1) -> str:
    return start_campaign(
        store, protocol, rig, seed=seed, options={"max_rounds": rounds}, status=state.QUEUED
    )


def claims(store: Store, campaign_id: str) -> list[str]:
    """Who claimed the campaign, in order (the runner re-claims what its agent claimed: counted once)."""
    who: list[str] = []
    for e in store.events(campaign_id, limit=1000):
        if e.kind == "claimed" and (not who or who[-1] != e.who):
            who.append(e.who)
    return who


def serve_in_threads(*agents: Agent) -> None:
    errors: list[BaseException] = []

    def go(agent: Agent) -> None:
        try:
            agent.serve(exit_when_idle=True)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=go, args=(a,)) for a in agents]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "an agent did not finish"
    assert not errors, errors


_REFERENCES: dict[tuple[int, int], dict[str, Any]] = {}


def uninterrupted(tmp_path: Path, protocol: Path, rig: Path, seed: int, rounds: int = 1) -> dict[str, Any]:
    """The fingerprint of the same campaign run in one go, in a store of its own (once per seed)."""
    if (seed, rounds) not in _REFERENCES:
        other = open_store(f"sqlite:///{tmp_path / 'reference.db'}")
        try:
            campaign_id = start_campaign(other, protocol, rig, seed=seed, options={"max_rounds": rounds})
            assert run_campaign(other, campaign_id, owner="reference") == state.FINISHED
            _REFERENCES[seed, rounds] = fingerprint(other, campaign_id)
        finally:
            other.close()
    return _REFERENCES[seed, rounds]


def assert_same_campaign(store: Store, campaign_id: str, reference: dict[str, Any], kept: int) -> None:
    """Every number as in an uninterrupted run with the seed: nothing lost, nothing measured twice."""
    assert fingerprint(store, campaign_id) == reference
    assert len(store.replicates(campaign_id)) == len(reference["replicates"]) > kept


def test_two_agents_two_rigs_one_store(store: Store, rigs: dict[str, Path], protocol: Path) -> None:
    ids = {name: [queue(store, protocol, path, seed) for seed in (1, 2)] for name, path in rigs.items()}
    a = Agent(store, "rig-a", owner="agent-a@host-a:1")
    b = Agent(store, "rig-b", owner="agent-b@host-b:1")
    serve_in_threads(a, b)
    assert sorted(cid for cid, _ in a.stats.ran) == sorted(ids["rig-a"])
    assert sorted(cid for cid, _ in b.stats.ran) == sorted(ids["rig-b"])
    for name, owner in (("rig-a", a.owner), ("rig-b", b.owner)):
        for campaign_id in ids[name]:
            row = store.campaign(campaign_id)
            assert row.status == state.FINISHED and row.owner is None
            assert claims(store, campaign_id) == [owner]
    # both agents were seen serving their rigs, and said so when they stopped
    assert sorted((g.rig, g.owner, g.stopped_at is not None) for g in store.agents()) == [
        ("rig-a", a.owner, True), ("rig-b", b.owner, True)]


def test_agents_of_one_rig_never_share_a_campaign(
    store: Store, rigs: dict[str, Path], protocol: Path
) -> None:
    """Two agents of one rig (two hosts wired to the same instruments, say) draining its queue at once:
    each campaign runs exactly once, and never two at the same time, for both would command the same
    pumps. The runs are stand-ins (one simulated rig cannot be driven twice in one process); the
    claims are real."""
    ids = [queue(store, protocol, rigs["rig-a"], seed) for seed in range(1, 7)]
    lock = threading.Lock()
    running: list[str] = []
    most = [0]

    def fake_run(store: Store, campaign_id: str, *, owner: str, **_: Any) -> str:
        store.claim(campaign_id, owner)
        with lock:
            running.append(campaign_id)
            most[0] = max(most[0], len(running))
        time.sleep(0.05)  # the other agent looks for work meanwhile
        store.set_status(campaign_id, state.RUNNING, who=owner)
        store.set_status(campaign_id, state.FINISHED, who=owner)
        with lock:
            running.remove(campaign_id)
        return state.FINISHED

    first = Agent(store, "rig-a", owner="agent-1@host-1:1", run=fake_run)
    second = Agent(store, "rig-a", owner="agent-2@host-2:1", run=fake_run)

    def drain(agent: Agent) -> None:
        # as serve() does, but without the idle wait: a look that finds the rig busy or every queued
        # row locked by the other agent's claim comes back empty and is simply repeated
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if agent.step() is None and all(store.campaign(c).status == state.FINISHED for c in ids):
                return

    threads = [threading.Thread(target=drain, args=(a,)) for a in (first, second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert most[0] == 1, "two campaigns of one rig ran at the same time"
    ran = [cid for cid, _ in first.stats.ran + second.stats.ran]
    assert Counter(ran) == Counter(ids)  # each exactly once
    for campaign_id in ids:
        assert len(claims(store, campaign_id)) == 1
        assert store.campaign(campaign_id).status == state.FINISHED


def test_clean_stop_hands_the_campaign_back_and_another_agent_finishes_it(
    store: Store, rigs: dict[str, Path], protocol: Path, tmp_path: Path
) -> None:
    campaign_id = queue(store, protocol, rigs["rig-a"], seed=7)
    seen = Counter[str]()
    agent = Agent(store, "rig-a", owner="agent-1@host-1:1")

    def progress(event: str, **info: Any) -> None:
        seen[event] += 1
        if event == "replicate" and seen[event] == 4:
            agent.request_stop()  # as SIGTERM does

    agent._progress = progress
    agent.serve()
    row = store.campaign(campaign_id)
    assert row.status == state.QUEUED and row.owner is None
    assert agent.stats.handed_back == [campaign_id]
    moves = statuses(store, campaign_id)
    assert moves[-2:] == [(state.RUNNING, state.PAUSED), (state.PAUSED, state.QUEUED)]
    assert store.pending_controls(campaign_id) == []
    measured = len(store.replicates(campaign_id))
    assert 4 <= measured < 3 * 3  # stopped mid-campaign, at a replicate boundary

    successor = Agent(store, "rig-a", owner="agent-2@host-2:1")
    successor.serve(exit_when_idle=True)
    assert store.campaign(campaign_id).status == state.FINISHED
    assert_same_campaign(
        store, campaign_id, uninterrupted(tmp_path, protocol, rigs["rig-a"], seed=7), measured
    )


class _Died(BaseException):  # noqa: N818 - not an Exception: the runner's progress guard must not catch it
    """The agent's process dies (the runner shields itself from progress callbacks' Exceptions)."""


def test_campaign_of_a_dead_agent_is_orphaned_and_resumed_by_another(
    store_url: str, store: Store, rigs: dict[str, Path], protocol: Path, tmp_path: Path
) -> None:
    campaign_id = queue(store, protocol, rigs["rig-a"], seed=3)
    count = Counter[str]()

    def dies(event: str, **info: Any) -> None:
        count[event] += 1
        if event == "replicate" and count[event] == 5:
            raise _Died()

    doomed = Agent(store, "rig-a", owner="agent-1@gone-host:1", progress=dies)
    with pytest.raises(_Died):
        doomed.serve(exit_when_idle=True)
    store.claim(campaign_id, doomed.owner)  # as a kill -9 leaves it: owner set, heartbeat ageing
    assert store.campaign(campaign_id).status == state.RUNNING

    # a live agent of another rig leaves it alone; a fresh one of the same rig, a minute later, takes it
    later = open_store(store_url, clock=lambda: datetime.now(UTC) + timedelta(seconds=120))
    try:
        assert Agent(later, "rig-b", owner="agent-b@host-b:1").mark_orphans() == []
        watcher = Agent(later, "rig-a", owner="agent-2@host-2:1", resume_orphans=False)
        assert watcher.mark_orphans() == [campaign_id]
        row = later.campaign(campaign_id)
        assert row.status == state.ORPHANED and row.owner is None
        assert "agent-1@gone-host:1 stopped heartbeating" in row.reason
        assert watcher.mark_orphans() == []  # marked once
        with contextlib.redirect_stdout(io.StringIO()) as out:
            assert main(["status", campaign_id, "--json", "--db", store_url]) == 0
        shown = json.loads(out.getvalue())
        shown = shown[0] if isinstance(shown, list) else shown
        assert shown["status"] == state.ORPHANED and "stopped heartbeating" in shown["status_text"]

        rescuer = Agent(later, "rig-a", owner="agent-3@host-3:1")
        rescuer.serve(exit_when_idle=True)
    finally:
        later.close()
    assert store.campaign(campaign_id).status == state.FINISHED
    moves = statuses(store, campaign_id)
    assert (state.RUNNING, state.ORPHANED) in moves and (state.ORPHANED, state.RUNNING) in moves
    assert_same_campaign(store, campaign_id, uninterrupted(tmp_path, protocol, rigs["rig-a"], seed=3), 5)


def test_an_agent_restarted_on_the_same_host_resumes_its_killed_campaign_before_the_queue(
    store: Store, rigs: dict[str, Path], protocol: Path
) -> None:
    """systemd restarts an agent 10 s after a kill -9: the killed agent's campaign still had a fresh
    heartbeat, so the new agent ran the next queued campaign first (2.5 min here, hours in a lab) and
    the interrupted one waited, past pause_restart_after_s, its condition thrown away."""
    import socket
    import subprocess
    import sys

    interrupted = queue(store, protocol, rigs["rig-a"], seed=3)
    waiting = queue(store, protocol, rigs["rig-a"], seed=4)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    dead = f"sdl-agent@{socket.gethostname()}:{gone.pid}"
    store.claim(interrupted, dead)  # as the kill left it: running, heartbeat seconds old
    store.set_status(interrupted, state.RUNNING, who=dead)
    order: list[str] = []
    agent = Agent(store, "rig-a", owner="agent-2@host-2:1",
                  progress=lambda event, **info: order.append(info["campaign"]) if event == "start" else None)
    assert agent.mark_orphans() == [interrupted]
    assert "is no longer running on this host" in store.campaign(interrupted).reason
    agent.serve(exit_when_idle=True)
    assert order == [interrupted, waiting]
    assert {store.campaign(c).status for c in (interrupted, waiting)} == {state.FINISHED}


def test_an_agent_waits_out_a_database_outage_and_takes_its_campaign_up_first(
    store: Store, rigs: dict[str, Path], protocol: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL restarted for 20 s: every agent, idle or running, died with a traceback, and hand-started
    ones never came back. Now the agent says so once, waits, and runs the interrupted campaign first."""
    from sqlalchemy.exc import OperationalError
    from structlog.testing import capture_logs

    from orchestrator.campaign import run_campaign

    interrupted = queue(store, protocol, rigs["rig-a"], seed=3)
    waiting = queue(store, protocol, rigs["rig-a"], seed=4)
    down = OperationalError("SELECT 1", {}, Exception("connection refused"))
    outage = {"run": 1, "seen": 2}  # the run dies once, then the next two sign-of-life writes fail
    order: list[str] = []

    def run(store_: Store, campaign_id: str, **kwargs: Any) -> str:
        order.append(campaign_id)
        if outage["run"]:
            outage["run"] -= 1
            raise down
        return run_campaign(store_, campaign_id, **kwargs)

    seen = store.agent_seen

    def agent_seen(*args: Any, **kwargs: Any) -> None:
        if order and outage["seen"]:
            outage["seen"] -= 1
            raise down
        seen(*args, **kwargs)

    monkeypatch.setattr(store, "agent_seen", agent_seen)
    monkeypatch.setattr("orchestrator.agent.OUTAGE_RETRY_MAX_S", 0.01)
    agent = Agent(store, "rig-a", owner="agent-1@host-1:1", run=run, idle_poll_s=0.01)
    with capture_logs() as logs:
        agent.serve(exit_when_idle=True)
    assert order == [interrupted, interrupted, waiting]
    assert {store.campaign(c).status for c in (interrupted, waiting)} == {state.FINISHED}
    said = [e["event"] for e in logs]
    assert said.count("database unreachable: the agent waits for it and tries again (pumps are safe)") == 1
    assert "database reachable again" in said
    assert not any(e.kind == state.FAULTED for e in store.events(interrupted, limit=2000))


def test_two_agents_racing_for_one_orphan(
    store_url: str, store: Store, rigs: dict[str, Path], protocol: Path
) -> None:
    campaign_id = queue(store, protocol, rigs["rig-a"], seed=4)
    store.claim(campaign_id, "agent-0@gone:1")
    store.set_status(campaign_id, state.RUNNING, who="agent-0@gone:1")
    later = open_store(store_url, clock=lambda: datetime.now(UTC) + timedelta(seconds=120))
    try:
        agents = [Agent(later, "rig-a", owner=f"agent-{i}@h{i}:1", resume_orphans=False) for i in (1, 2)]
        found: list[list[str]] = []
        barrier = threading.Barrier(2)

        def look(agent: Agent) -> None:
            barrier.wait(5)
            found.append(agent.mark_orphans())

        threads = [threading.Thread(target=look, args=(a,)) for a in agents]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    finally:
        later.close()
    assert sorted(found, key=len) == [[], [campaign_id]]
    assert [m for m in statuses(store, campaign_id) if m[1] == state.ORPHANED] == [
        (state.RUNNING, state.ORPHANED)
    ]


def test_an_agent_dying_while_aborting_ends_the_campaign_aborted(
    store_url: str, store: Store, rigs: dict[str, Path], protocol: Path
) -> None:
    campaign_id = queue(store, protocol, rigs["rig-a"], seed=5)
    store.claim(campaign_id, "agent-0@gone:1")
    store.set_status(campaign_id, state.RUNNING, who="agent-0@gone:1")
    store.set_status(campaign_id, state.ABORTING, who="alice", reason="wrong syringe")
    later = open_store(store_url, clock=lambda: datetime.now(UTC) + timedelta(seconds=120))
    try:
        assert Agent(later, "rig-a", owner="agent-1@h:1").step() is None
    finally:
        later.close()
    row = store.campaign(campaign_id)
    assert row.status == state.ABORTED and "abort completed" in row.reason


def sdl(*args: str, env: dict[str, str] | None = None, **kwargs: Any) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli.main", *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def test_sdl_agent_sigterm_hands_the_campaign_back(
    tmp_path: Path, rigs: dict[str, Path], protocol: Path
) -> None:
    # SQLite only: the real-signal path is the same on PostgreSQL, whose locking the tests above cover
    store_url = f"sqlite:///{tmp_path / 'agents.db'}"
    store = open_store(store_url)
    campaign_id = queue(store, protocol, rigs["rig-a"], seed=6, rounds=2)
    # paced simulation: the dry run takes wall time, so the signal lands mid-campaign
    proc = sdl(
        "agent", "--rig", str(rigs["rig-a"]), "--db", store_url, "--poll", "0.2", env={"SDL_SIM_PACE": "0.02"}
    )
    try:
        deadline = time.monotonic() + 60
        while not store.replicates(campaign_id) and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.1)  # waits for the other process to measure, polling the shared store
        assert store.replicates(campaign_id), "the agent measured nothing within 60 s"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    row = store.campaign(campaign_id)
    assert row.status == state.QUEUED and row.owner is None, err
    assert "handed back 1" in err
    # a second agent, batch style, finishes it
    assert main(["agent", "--rig", "rig-a", "--db", store_url, "--exit-when-idle", "--name", "batch"]) == 0
    assert store.campaign(campaign_id).status == state.FINISHED
    assert claims(store, campaign_id)[-1].startswith("batch@")
    store.close()


def test_sdl_agent_refuses_a_bad_rig_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\npumps: [{name: a, driver: kds, port: /dev/null, syringe_diameter_mm: 1}]\n")
    assert (
        main(["agent", "--rig", str(bad), "--db", f"sqlite:///{tmp_path / 'x.db'}", "--exit-when-idle"]) == 2
    )
    assert "pumps[0].driver" in capsys.readouterr().err
    # a name that no rig can have (a typo, shell quoting) is refused, not served forever
    assert main(["agent", "--rig", "rig a", "--db", f"sqlite:///{tmp_path / 'x.db'}", "--exit-when-idle"]) == 2
    assert "'rig a' is neither a rig file nor a rig name" in capsys.readouterr().err


def test_a_campaign_the_runner_cannot_run_is_taken_off_the_queue(
    store: Store, rigs: dict[str, Path], protocol: Path
) -> None:
    broken, fine = (queue(store, protocol, rigs["rig-a"], seed) for seed in (1, 2))

    def run(store: Store, campaign_id: str, *, owner: str, **kwargs: Any) -> str:
        if campaign_id == broken:
            raise RuntimeError("the rig's USB hub is gone")
        return run_campaign(store, campaign_id, owner=owner, **kwargs)

    agent = Agent(store, "rig-a", owner="agent-1@h:1", run=run)
    agent.serve(exit_when_idle=True)  # neither stuck on it nor stopped by it
    row = store.campaign(broken)
    assert row.status == state.CREATED and "USB hub is gone" in row.reason and row.owner is None
    assert store.campaign(fine).status == state.FINISHED


def test_a_second_signal_leaves_at_once_and_the_campaign_is_queued_as_it_stands(
    store: Store, rigs: dict[str, Path], protocol: Path, tmp_path: Path
) -> None:
    campaign_id = queue(store, protocol, rigs["rig-a"], seed=8)
    agent = Agent(store, "rig-a", owner="agent-1@host-1:1")
    count = Counter[str]()

    def progress(event: str, **info: Any) -> None:
        count[event] += 1
        if event == "replicate" and count[event] == 2:
            agent.request_stop()  # the first signal: a pause is asked for
            raise HandBack("signal SIGTERM again: leaving at once")  # the second lands mid-campaign

    agent._progress = progress
    agent.serve()
    row = store.campaign(campaign_id)
    assert row.status == state.QUEUED and row.owner is None
    assert store.pending_controls(campaign_id) == []  # the pause that never took effect is withdrawn
    assert all(rate == 0.0 for rate in get_world("rig-a")._rates.values())  # pumps stopped on the way out
    Agent(store, "rig-a", owner="agent-2@host-2:1").serve(exit_when_idle=True)
    assert_same_campaign(store, campaign_id, uninterrupted(tmp_path, protocol, rigs["rig-a"], seed=8), 2)


def test_an_agent_whose_rig_file_changed_since_the_campaign_was_queued_journals_where(
    store: Store, rigs: dict[str, Path], protocol: Path
) -> None:
    same = queue(store, protocol, rigs["rig-a"], 1)
    data = yaml.safe_load(rigs["rig-a"].read_text())
    data["dead_volume_ul"] = 90
    data["pumps"][1]["syringe_volume_ul"] = 5000
    data["description"] = "edited after queueing"  # words only: not a difference
    edited = rigs["rig-a"].with_name("rig-a-edited.yaml")
    edited.write_text(yaml.safe_dump(data, sort_keys=False))
    from orchestrator.cli.agent import rig_of

    name, cfg = rig_of(str(edited))
    assert name == "rig-a"
    agent = Agent(store, name, owner="agent-a@host-a:1", rig_config=cfg, rig_source=str(edited))
    other = queue(store, protocol, edited, 2)  # queued with the edited file: nothing to say
    serve_in_threads(agent)
    (warning,) = [e for e in store.events(same, limit=1000) if e.kind == "rig_file_differs"]
    assert warning.data["fields"] == ["dead_volume_ul", "pumps[1].syringe_volume_ul"]
    assert f"the agent's {edited} differs in dead_volume_ul, pumps[1].syringe_volume_ul" in warning.reason
    assert not [e for e in store.events(other, limit=1000) if e.kind == "rig_file_differs"]
    assert store.campaign(same).status == state.FINISHED  # it ran, with the file it was queued with
