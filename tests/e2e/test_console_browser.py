"""End to end in a real browser: Debian's headless Chromium, driven by Playwright, against
``sdl serve`` and a simulated campaign (``sdl run``) in two other processes sharing one SQLite store.

An operator logs in, watches the campaign progress, pauses it with a reason, sees it paused, resumes
it and sees it finish; the journal then shows that nothing was measured while it was paused. The
campaign is small (2 rounds of 3 conditions, 6 droplets each) and paced against the wall clock
(SDL_SIM_PACE) so that it runs for about 10 s: long enough to watch, short enough for a test.
Every wait is on the page's state (Playwright's expect), never on a fixed sleep.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from orchestrator.console import db
from orchestrator.console.users import Role, UserDirectory

CHROMIUM = "/usr/bin/chromium"
REPO = Path(__file__).resolve().parents[2]
PASSWORD = "alice's long password"
PACE = os.environ.get("SDL_TEST_SIM_PACE", "0.05")  # wall seconds per virtual second

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium at /usr/bin/chromium"),
]


@dataclass
class Stack:
    base: str
    run: subprocess.Popen[bytes]
    logs: Path

    def log_tail(self) -> str:
        return "\n".join(
            f"--- {name}\n{(self.logs / name).read_text(errors='replace')[-3000:]}"
            for name in ("serve.log", "run.log")
            if (self.logs / name).exists()
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _small_protocol(tmp: Path) -> Path:
    """The reference protocol, cut down to 2 rounds of 3 conditions with 6 droplets each."""
    protocol = yaml.safe_load((REPO / "protocols" / "ag_nanoprism.yaml").read_text())
    protocol["batch_size"] = 3
    protocol["replicates"].update(n=6, min_accepted=3)
    protocol["stop"].update(max_rounds=2, max_conditions=6, loss_threshold=0.0001)
    (tmp / "targets").mkdir()
    shutil.copy(REPO / "protocols" / "targets" / "ag_nanoprism.csv", tmp / "targets")
    path = tmp / "small.yaml"
    path.write_text(yaml.safe_dump(protocol))
    return path


def _spawn(cmd: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=env)


def _stop(child: subprocess.Popen[bytes]) -> None:
    if child.poll() is None:
        child.terminate()
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def _wait_for_server(base: str, server: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    """Poll the health route until the server answers (or has died)."""
    deadline = time.monotonic() + timeout_s
    with httpx.Client(base_url=base, timeout=1.0) as client:
        while time.monotonic() < deadline:
            try:
                if client.get("/api/health").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            try:
                code = server.wait(timeout=0.1)  # the poll interval, cut short if the server dies
            except subprocess.TimeoutExpired:
                continue
            raise RuntimeError(f"sdl serve exited with {code}")
    raise TimeoutError(f"sdl serve did not answer on {base} within {timeout_s:.0f} s")


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    engine = db.engine_for(url)
    db.ensure_console_schema(engine)
    UserDirectory(engine).add_user("alice", Role.OPERATOR, PASSWORD, who="test")
    engine.dispose()
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "SDL_SIM_PACE": PACE}
    sdl = [sys.executable, "-m", "orchestrator.cli.main"]
    serve = _spawn(
        [*sdl, "serve", "--db", url, "--host", "127.0.0.1", "--port", str(port), "--no-background"],
        tmp_path / "serve.log",
        env,
    )
    run = None
    try:
        _wait_for_server(base, serve)
        protocol = _small_protocol(tmp_path)
        rig = REPO / "deploy" / "rigs" / "simulated.yaml"
        run = _spawn(
            [*sdl, "run", str(protocol), "--rig", str(rig), "--db", url, "--seed", "3"],
            tmp_path / "run.log",
            env,
        )
        yield Stack(base, run, tmp_path)
    finally:
        if run is not None:
            _stop(run)
        _stop(serve)


def _queue_others(tmp: Path, n: int) -> list[str]:
    """``n`` more campaigns in the stack's store, queued for a rig no agent serves."""
    from orchestrator import state
    from orchestrator.store import PlannedCondition, open_store

    store = open_store(f"sqlite:///{tmp / 'store.db'}")
    try:
        protocol = (REPO / "protocols" / "ag_nanoprism.yaml").read_text()
        rig = REPO / "deploy" / "rigs" / "simulated.yaml"
        ids = [
            store.create_campaign(
                name=f"queued {i}", protocol_yaml=protocol, protocol_path=str(REPO / "protocols" / "ag_nanoprism.yaml"),
                rig_yaml=rig.read_text(), rig_path=str(rig), rig_name="night-rig", seed=i, options={},
                status=state.QUEUED,
            )
            for i in range(n)
        ]
        # the first ran a round before it was queued again: one condition measured, one failed
        inputs = {"Q_AgNO3": 10.0, "Q_PVA": 20.0, "Q_TSC": 8.0, "Q_seed": 6.0, "Q_total": 500.0}
        bounds = {"Q_AgNO3": (4, 20), "Q_PVA": (10, 40), "Q_TSC": (4, 20), "Q_seed": (4, 20), "Q_total": (200, 1000)}
        store.add_round(ids[0], 0, strategy="lhs", bounds=bounds, notes={},
                        conditions=[PlannedCondition(inputs, "lhs"), PlannedCondition(inputs, "lhs")])
        store.finish_condition(ids[0], 0, 0, median_loss=0.4, mad=0.01, accepted=6, failed=False)
        store.finish_condition(ids[0], 0, 1, median_loss=None, mad=None, accepted=0, failed=True,
                               reason="0 of 6 droplets accepted, fewer than 3; rejected: 6 saturated")
        return ids
    finally:
        store.close()


def _failed_start(tmp: Path) -> None:
    """A scheduled start that found its rig busy at 2 a.m., as the scheduler's watcher journals it."""
    from orchestrator.store import open_store

    store = open_store(f"sqlite:///{tmp / 'store.db'}")
    try:
        store.journal(
            None,
            "schedule_failed",
            who="scheduler (alice)",
            reason="scheduled start of night.yaml on night-rig.yaml did not run (exit 1): error: rig night-rig is busy",
        )
    finally:
        store.close()


PROGRESS_JS = "() => ['#p-round', '#p-condition', '#p-replicate'].map(s => document.querySelector(s).innerText).join('/')"


def test_operator_watches_pauses_resumes_and_sees_the_campaign_finish(stack: Stack, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"],
        )
        context = browser.new_context(viewport={"width": 1024, "height": 1366})  # a tablet, upright
        page = context.new_page()
        others = _queue_others(tmp_path, 4)  # a list wider than a phone: it must scroll, not the page
        _failed_start(tmp_path)
        try:
            page.goto(stack.base + "/")
            page.fill("#login-name", "alice")
            page.fill("#login-password", PASSWORD)
            page.click("#login-form button[type=submit]")
            expect(page.locator("#whoami")).to_have_text("alice (operator)")
            expect(page.locator("#live")).to_have_text("live", timeout=10_000)

            # the night's failed start flags the Schedules tab, which lists it
            schedules_tab = page.locator('[data-tab="schedules-tab"]')
            expect(schedules_tab).to_have_class(re.compile(r"\balert\b"))
            schedules_tab.click()
            expect(page.locator("#schedule-failed")).to_contain_text("did not run (exit 1): error: rig night-rig is busy")
            expect(schedules_tab).not_to_have_class(re.compile(r"\balert\b"))
            page.locator('[data-tab="campaigns-tab"]').click()

            # the campaign appears by itself (the page follows the journal) and is running
            page.locator("#campaign-list a", has_text="ag_nanoprism").first.click(timeout=30_000)
            expect(page.locator("#c-state")).to_have_text("running", timeout=30_000)
            expect(page.locator("#c-name")).to_contain_text(" on simulated")  # which rig: several share a store

            # progress moves without reloading the page
            first = page.evaluate(PROGRESS_JS)
            page.wait_for_function(f"(before) => ({PROGRESS_JS})() !== before", arg=first, timeout=30_000)
            # the log leaves out each droplet's line unless asked, so what people did stays in sight
            expect(page.locator("#events")).not_to_contain_text("replicate")
            page.check("#ev-detail")
            expect(page.locator("#events")).to_contain_text("replicate")
            page.uncheck("#ev-detail")
            expect(page.locator("#events")).not_to_contain_text("replicate")

            page.click("#controls button[data-action=pause]")
            expect(page.locator("#confirm")).to_be_visible()
            page.click("#confirm-ok")  # without a reason: the dialog refuses and stays open
            expect(page.locator("#confirm-reason:invalid")).to_be_visible()
            expect(page.locator("#confirm")).to_be_visible()
            page.fill("#confirm-reason", "bubble in line")
            page.click("#confirm-ok")
            expect(page.locator("#confirm")).to_be_hidden()
            expect(page.locator("#c-state")).to_have_text("paused", timeout=30_000)
            expect(page.locator("#c-reason")).to_have_text(
                re.compile(r"^paused by alice at \d\d:\d\d: bubble in line$")
            )
            expect(page.locator("#events")).to_contain_text("pause requested: bubble in line")
            expect(page.locator("#controls button[data-action=resume]")).to_be_visible()
            expect(page.locator("#controls button[data-action=pause]")).to_be_hidden()

            page.click("#controls button[data-action=resume]")
            page.click("#confirm-ok")
            expect(page.locator("#c-state")).to_have_text(re.compile("^(running|finished)$"), timeout=30_000)
            expect(page.locator("#c-state")).to_have_text("finished", timeout=45_000)
            expect(page.locator("#c-reason")).to_contain_text("finished")
            expect(page.locator("#controls button[data-action=pause]")).to_be_hidden()
            expect(page.locator("#p-best")).to_contain_text("best loss")
            # the plots followed the campaign: droplets over the target, a point per condition, bounds
            expect(page.locator("#spectra path.target")).to_have_count(1)
            expect(page.locator("#spectra path.droplet")).to_have_count(6)
            expect(page.locator("#losses circle.pt")).to_have_count(6)
            expect(page.locator("#bounds rect.limits").first).to_be_visible()

            # the journal, read through the API with the page's session: nothing measured while paused
            campaign = page.evaluate("() => new URLSearchParams(location.hash.slice(1)).get('c')")
            events = page.request.get(f"{stack.base}/api/campaigns/{campaign}/events?limit=2000").json()[
                "events"
            ]
            page.screenshot(path=str(tmp_path / "finished.png"), full_page=True)

            # another campaign shows its own events, not the finished one's
            page.locator(f"#campaign-list a[data-id='{others[0]}']").click()
            expect(page.locator("#c-state")).to_have_text("queued")
            expect(page.locator("#events")).to_contain_text("campaign created")
            expect(page.locator("#events")).not_to_contain_text("pause requested")  # the finished campaign's, not this one's
            # its failed condition is a red cross on the loss plot, and says why in the log
            expect(page.locator("#losses circle.pt")).to_have_count(1)
            expect(page.locator("#losses path.failed")).to_have_count(1)
            expect(page.locator("#events")).to_contain_text("failed: 0 of 6 droplets accepted")
            # a phone: the page keeps the screen's width, the E-STOP and the dialog stay on it
            page.set_viewport_size({"width": 390, "height": 844})
            assert page.evaluate("() => document.documentElement.scrollWidth") <= 390
            expect(page.locator("#whoami")).to_be_visible()  # who is signed in, on a phone too
            # the plots are drawn for the phone's width: their text stays readable (it was 6-7 px)
            page.wait_for_function("() => document.querySelector('#losses').getAttribute('viewBox') === '0 0 380 300'")
            text_px = page.evaluate("() => [...document.querySelectorAll('#losses text')].map((t) => t.getBoundingClientRect().height)")
            assert text_px and min(text_px) >= 11, text_px
            page.click("#controls button[data-action=pause]")
            box = page.locator("#confirm-ok").bounding_box()
            assert box is not None and box["x"] + box["width"] <= 390, box
            page.keyboard.press("Escape")
        except Exception:
            page.screenshot(path=str(tmp_path / "failed.png"), full_page=True)
            print(stack.log_tail())
            raise
        finally:
            browser.close()

    kinds = [e["kind"] for e in events]
    paused_at = kinds.index("paused")
    resumed_at = kinds.index("running", paused_at)
    assert "replicate_acquired" not in kinds[paused_at:resumed_at], kinds[paused_at:resumed_at]
    assert events[resumed_at]["who"] == "alice"
    assert kinds[-1] in ("finished", "released")
    assert stack.run.wait(timeout=30) == 0, stack.log_tail()
