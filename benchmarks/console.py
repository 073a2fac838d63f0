"""The operator console against 127.0.0.1, with a simulated campaign running in another process.

    python -m benchmarks.console [--clients 50] [--load-seconds 20] [--pauses 5] [--pace 0.05]
                                 [--interval-s 0.5] [--write-docs]

1. Pause clicked in the page: headless Chromium (Playwright, /usr/bin/chromium) logged in as an
   operator clicks Pause, gives a reason and confirms, while the campaign measures. Counted in
   replicates: how many replicates the campaign journaled after the pause request was stored and
   before it journaled itself paused. The goal is at most one, the replicate in flight when the
   click arrived. The page then clicks Resume; ``--pauses`` times.
2. API load: ``--clients`` concurrent clients, each with its own API token, an open
   server-sent-event stream (as every open page holds) and the page's reads (campaign list,
   campaign, spectra, losses, bounds, events) in turn, one every ``--interval-s`` on average
   (jittered, open loop, so a slow answer does not slow the client down). Every request's latency
   is recorded; the goal is p99 <= 100 ms. A second run, the same clients polling back to back with
   no pause at all, shows where the server saturates (no goal).

The console (``sdl serve``) and the campaign (``sdl run``) run as separate processes, as in the lab,
on a fresh SQLite store in a temporary folder. ``--write-docs`` puts the table into docs/console.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import yaml
from rich.console import Console
from rich.table import Table

from orchestrator.console import db
from orchestrator.console.users import Role, UserDirectory

REPO = Path(__file__).resolve().parents[1]
PROTOCOL = REPO / "protocols" / "ag_nanoprism.yaml"
RIG = REPO / "deploy" / "rigs" / "simulated.yaml"
DOCS = REPO / "docs" / "console.md"
CHROMIUM = "/usr/bin/chromium"
MARK = "bench"  # docs/console.md holds the table between <!-- bench:start --> and <!-- bench:end -->
P99_GOAL_MS = 100.0
PAUSE_GOAL_REPLICATES = 1
REPLICATE_KIND = "replicate_acquired"
PASSWORD = "benchmark operator password"
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sdl(*args: str) -> list[str]:
    return [sys.executable, "-m", "orchestrator.cli.main", *args]


@contextmanager
def process(
    cmd: list[str], log: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "wb") as out:
        child = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=env)
    try:
        yield child
    finally:
        if child.poll() is None:
            child.terminate()
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


def wait_until(what: str, check: Callable[[], T], timeout_s: float = 120.0, every_s: float = 0.05) -> T:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value is not None and value is not False:  # 0 is an answer
            return value
        time.sleep(every_s)
    raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")


# ---- 1. pause clicked in the page ---------------------------------------------------------------


@dataclass
class PauseResult:
    replicates_after_request: list[int]
    seconds_click_to_page_paused: list[float]
    replicate_seconds: float  # the median wall time between consecutive replicates at this pace


def _events(client: httpx.Client, campaign: str, after: int) -> list[dict[str, Any]]:
    r = client.get(f"/api/campaigns/{campaign}/events", params={"after": after, "limit": 2000})
    r.raise_for_status()
    return list(r.json()["events"])


def _latest_id(client: httpx.Client, campaign: str) -> int:
    events = client.get(f"/api/campaigns/{campaign}/events", params={"limit": 1}).json()["events"]
    return int(events[-1]["id"]) if events else 0


def replicates_between_request_and_pause(events: list[dict[str, Any]]) -> int | None:
    """Replicates journaled after the pause request and before the paused state; None until paused."""
    requested = False
    count = 0
    for e in events:
        if e["kind"] == "control_requested" and e["text"].startswith("pause"):
            requested = True
        elif requested and e["kind"] == REPLICATE_KIND:
            count += 1
        elif requested and e["kind"] == "paused":
            return count
    return None


def measure_pauses(
    base: str, client: httpx.Client, campaign: str, repeats: int, profile: Path
) -> PauseResult:
    from playwright.sync_api import expect, sync_playwright

    counts: list[int] = []
    seconds: list[float] = []
    with sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"]
        )
        page = browser.new_page()
        try:
            page.goto(f"{base}/#c={campaign}")
            page.fill("#login-name", "bench")
            page.fill("#login-password", PASSWORD)
            page.click("#login-form button[type=submit]")
            expect(page.locator("#live")).to_have_text("live", timeout=20_000)
            for _ in range(repeats):
                expect(page.locator("#c-state")).to_have_text("running", timeout=60_000)
                before = _latest_id(client, campaign)
                # click while a condition is being measured, anywhere within a replicate
                wait_until(
                    "a replicate",
                    lambda after=before: any(
                        e["kind"] == REPLICATE_KIND for e in _events(client, campaign, after)
                    ),
                )
                time.sleep(random.uniform(0, 0.2))
                page.click("#controls button[data-action=pause]")
                page.fill("#confirm-reason", "benchmark")
                clicked = time.monotonic()
                page.click("#confirm-ok")
                expect(page.locator("#c-state")).to_have_text("paused", timeout=60_000)
                seconds.append(time.monotonic() - clicked)
                counted = wait_until(
                    "the paused event",
                    lambda after=before: replicates_between_request_and_pause(
                        _events(client, campaign, after)
                    ),
                )
                counts.append(int(counted))
                page.click("#controls button[data-action=resume]")
                page.click("#confirm-ok")
                expect(page.locator("#c-state")).to_have_text("running", timeout=60_000)
        finally:
            browser.close()
    return PauseResult(counts, seconds, _replicate_seconds(_events(client, campaign, 0)))


def _replicate_seconds(events: list[dict[str, Any]]) -> float:
    from datetime import datetime

    times = [datetime.fromisoformat(e["at"]) for e in events if e["kind"] == REPLICATE_KIND]
    gaps = [(b - a).total_seconds() for a, b in zip(times, times[1:], strict=False)]
    return statistics.median(gaps) if gaps else float("nan")


# ---- 2. API load ----------------------------------------------------------------------------------


@dataclass
class LoadResult:
    label: str
    clients: int
    seconds: float
    latencies_ms: list[float]
    errors: int
    cpu_share: dict[str, float] = field(default_factory=dict)  # process -> CPU seconds per second

    def pct(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


async def _hold_stream(client: httpx.AsyncClient, connected: asyncio.Event) -> None:
    """An open page's event stream, drained."""
    try:
        async with client.stream("GET", "/api/stream", timeout=httpx.Timeout(10, read=None)) as r:
            async for _ in r.aiter_raw():  # not parsed: the client's CPU is not what is measured
                connected.set()
    except (httpx.HTTPError, asyncio.CancelledError):
        pass
    finally:
        connected.set()


async def _timed_get(client: httpx.AsyncClient, path: str, out: list[float], errors: list[int]) -> None:
    started = time.perf_counter()
    try:
        ok = (await client.get(path)).status_code == 200
    except httpx.HTTPError:
        ok = False
    out.append((time.perf_counter() - started) * 1000)
    if not ok:
        errors.append(1)


async def _client(
    base: str,
    token: str,
    campaign: str,
    start: asyncio.Barrier,
    seconds: float,
    interval_s: float,
    out: list[float],
    errors: list[int],
) -> None:
    """One API client: an open event stream (as every open page holds) and the page's reads in turn,
    one every ``interval_s`` on average (jittered +-50 %, open loop: a slow answer does not slow the
    client down); ``interval_s=0``: back to back, one request at a time, no stream. Measuring starts
    when every client has connected and warmed up, so the start-up burst is not counted."""
    reads = ["/api/campaigns"] + [
        f"/api/campaigns/{campaign}{p}" for p in ("", "/spectra", "/losses", "/bounds", "/events?limit=50")
    ]
    async with httpx.AsyncClient(
        base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=10
    ) as client:
        for path in reads:  # warm-up: the connection and the server's caches, not counted
            await client.get(path)
        stream = None
        if interval_s > 0:
            connected = asyncio.Event()
            stream = asyncio.create_task(_hold_stream(client, connected))
            await connected.wait()
        await start.wait()
        until = time.monotonic() + seconds
        i = random.randrange(len(reads))
        next_at = time.monotonic() + random.uniform(0, interval_s)  # clients started at different times
        while time.monotonic() < until:
            if interval_s > 0:
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
                next_at += random.uniform(0.5, 1.5) * interval_s
            await _timed_get(client, reads[i % len(reads)], out, errors)
            i += 1
        if stream is not None:
            stream.cancel()


async def _load(
    label: str, base: str, tokens: list[str], campaign: str, seconds: float, interval_s: float
) -> LoadResult:
    latencies: list[float] = []
    errors: list[int] = []
    start = asyncio.Barrier(len(tokens))
    await asyncio.gather(
        *(_client(base, t, campaign, start, seconds, interval_s, latencies, errors) for t in tokens)
    )
    return LoadResult(label, len(tokens), seconds, latencies, len(errors))


# ---- report -----------------------------------------------------------------------------------------


def table(
    pause: PauseResult, loads: list[LoadResult], goal_load: LoadResult
) -> list[tuple[str, str, str, str]]:
    worst = max(pause.replicates_after_request)
    rows = [
        (
            "pause clicked in the page: replicates measured after the request",
            f"worst {worst} of {len(pause.replicates_after_request)} pauses "
            f"(each: {', '.join(map(str, pause.replicates_after_request))}); "
            f"replicates of a condition {pause.replicate_seconds * 1000:.0f} ms apart (median) at this pace",
            f"<= {PAUSE_GOAL_REPLICATES}",
            "met" if worst <= PAUSE_GOAL_REPLICATES else "MISSED",
        ),
        (
            "pause: click to 'paused' shown in the page",
            f"median {statistics.median(pause.seconds_click_to_page_paused) * 1000:.0f} ms, "
            f"max {max(pause.seconds_click_to_page_paused) * 1000:.0f} ms",
            "",
            "",
        ),
    ]
    for load in loads:
        p99 = load.pct(99)
        goal = load is goal_load
        rows.append(
            (
                f"API: {load.label}, {load.seconds:.0f} s, campaign running",
                f"p50 {load.pct(50):.1f} ms, p95 {load.pct(95):.1f} ms, p99 {p99:.1f} ms, "
                f"max {max(load.latencies_ms):.0f} ms; {len(load.latencies_ms) / load.seconds:.0f} requests/s, "
                f"{load.errors} errors; CPU used: "
                + ", ".join(f"{k} {v * 100:.0f} %" for k, v in load.cpu_share.items())
                + f" ({load.cpu_share.get('console', 0) / (len(load.latencies_ms) / load.seconds) * 1000:.1f} ms "
                "of console CPU per request)",
                f"p99 <= {P99_GOAL_MS:.0f} ms, no errors" if goal else "(no goal)",
                ("met" if p99 <= P99_GOAL_MS and load.errors == 0 else "MISSED") if goal else "",
            )
        )
    return rows


def write_docs(
    rows: list[tuple[str, str, str, str]], command: str, pace: float, context: str, mark: str = MARK
) -> None:
    start, end = f"<!-- {mark}:start -->", f"<!-- {mark}:end -->"
    lines = [
        start,
        f"Measured with `{command}` on {platform.machine()}, {os.cpu_count()} CPUs shared with other "
        f"work, Python {platform.python_version()}, SQLite store; console, campaign, browser and "
        f"clients in separate processes on 127.0.0.1 (simulated rig, SDL_SIM_PACE={pace:g}); {context}.",
        "",
        "| measure | result | goal | |",
        "| --- | --- | --- | --- |",
        *(f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows),
        end,
    ]
    text = DOCS.read_text()
    if start not in text:
        raise SystemExit(f"{DOCS} has no {start} ... {end} block to fill in")
    head, _, rest = text.partition(start)
    _, _, tail = rest.partition(end)
    DOCS.write_text(head + "\n".join(lines) + tail)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--load-seconds", type=float, default=20.0)
    parser.add_argument("--interval-s", type=float, default=0.5, help="mean time between a client's reads")
    parser.add_argument("--pauses", type=int, default=5)
    parser.add_argument("--pace", type=float, default=0.05, help="SDL_SIM_PACE for the campaign")
    parser.add_argument(
        "--nice",
        type=int,
        default=0,
        help="run the benchmark, console, campaign and browser at this niceness (negative: ahead of "
        "other work on a shared machine, as on a dedicated lab PC; needs root)",
    )
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args(argv)
    if args.nice:
        with _priority(args.nice):
            return _main(args)
    return _main(args)


@contextmanager
def _priority(niceness: int) -> Iterator[None]:
    """This process and its children at ``niceness``. With the kernel's autogroup scheduling, a
    niceness counts only inside its session's group, so the group's niceness is set too (and put
    back afterwards)."""
    os.nice(niceness)  # the children inherit it
    group = Path("/proc/self/autogroup")
    before = None
    try:
        before = group.read_text().split("nice")[-1].strip()
        group.write_text(str(niceness))
    except (OSError, ValueError):
        before = None
    try:
        yield
    finally:
        if before is not None:
            try:
                group.write_text(before)
            except OSError:
                pass


def _main(args: argparse.Namespace) -> int:
    command = "python -m benchmarks.console " + " ".join(
        f"--{k.replace('_', '-')} {v:g}" if isinstance(v, float) else f"--{k.replace('_', '-')} {v}"
        for k, v in vars(args).items()
        if k != "write_docs" and not (k == "nice" and v == 0)
    )
    console = Console()
    load_before = os.getloadavg()[0]

    with tempfile.TemporaryDirectory(prefix="sdl-bench-console-") as tmp:
        tmpdir = Path(tmp)
        url = f"sqlite:///{tmpdir / 'store.db'}"
        engine = db.engine_for(url)
        db.ensure_console_schema(engine)
        directory = UserDirectory(engine)
        directory.add_user("bench", Role.OPERATOR, PASSWORD, who="benchmark")
        tokens = [directory.issue_token("bench", 1, who="benchmark")[0] for _ in range(args.clients)]
        engine.dispose()
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        env = {**os.environ, "SDL_SIM_PACE": str(args.pace)}
        serve = sdl("serve", "--db", url, "--port", str(port), "--no-background")
        run = sdl("run", str(_endless_protocol(tmpdir)), "--rig", str(RIG), "--db", url, "--seed", "1")
        with (
            process(serve, tmpdir / "serve.log") as server_proc,
            process(run, tmpdir / "run.log", env=env) as campaign_proc,
            httpx.Client(
                base_url=base, headers={"Authorization": f"Bearer {tokens[0]}"}, timeout=10
            ) as client,
        ):
            wait_until("the console", lambda: _get_ok(client, "/api/health"))
            campaign = wait_until("the campaign", lambda: _first_campaign(client))
            console.print(f"campaign {campaign} running; clicking pause in the page {args.pauses} times")
            pause = measure_pauses(base, client, campaign, args.pauses, tmpdir / "profile")
            pids = {"console": server_proc.pid, "campaign": campaign_proc.pid}
            loads = []
            for label, interval in (
                (
                    f"{args.clients} clients, each with an open event stream and a read every {args.interval_s:g} s",
                    args.interval_s,
                ),
                (f"{args.clients} clients polling back to back", 0.0),
            ):
                console.print(f"API: {label}, {args.load_seconds:g} s")
                cpu_before = {k: cpu_seconds(pid) for k, pid in pids.items()}
                clients_before = time.process_time()
                result = asyncio.run(_load(label, base, tokens, campaign, args.load_seconds, interval))
                result.cpu_share = {
                    k: (cpu_seconds(pid) - cpu_before[k]) / result.seconds for k, pid in pids.items()
                }
                result.cpu_share["clients"] = (time.process_time() - clients_before) / result.seconds
                loads.append(result)
            if campaign_proc.poll() is not None or _state(client, campaign) != "running":
                raise RuntimeError(
                    f"the campaign was not running to the end of the benchmark (see {tmpdir / 'run.log'}): "
                    "lower --pace or the durations"
                )

    context = (
        f"1-minute load average {load_before:.1f} before the run and {os.getloadavg()[0]:.1f} after it "
        f"on {os.cpu_count()} CPUs (other work included)"
        + (f"; benchmark processes and their scheduling group at niceness {os.nice(0)}" if args.nice else "")
    )
    rows = table(pause, loads, loads[0])
    out = Table("measure", "result", "goal", "", title="operator console on 127.0.0.1")
    for row in rows:
        out.add_row(*row)
    console.print(out)
    console.print(command)
    console.print(context)
    if args.write_docs:
        write_docs(rows, command, args.pace, context, MARK if not args.nice else f"{MARK}-nice")
        console.print(f"written to {DOCS.relative_to(REPO)}")
    return 0 if all(r[3] in ("met", "") for r in rows) else 1


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process has used so far, from /proc (Linux)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _endless_protocol(tmp: Path) -> Path:
    """The reference protocol without its loss threshold, so the campaign keeps running throughout."""
    protocol = yaml.safe_load(PROTOCOL.read_text())
    protocol["stop"]["loss_threshold"] = 0.0001
    (tmp / "targets").mkdir()
    shutil.copy(PROTOCOL.parent / protocol["target"]["file"], tmp / "targets")
    path = tmp / "protocol.yaml"
    path.write_text(yaml.safe_dump(protocol))
    return path


def _state(client: httpx.Client, campaign: str) -> str:
    return str(client.get(f"/api/campaigns/{campaign}").json()["state"])


def _get_ok(client: httpx.Client, path: str) -> bool:
    try:
        return client.get(path).status_code == 200
    except httpx.HTTPError:
        return False


def _first_campaign(client: httpx.Client) -> str | None:
    try:
        campaigns = client.get("/api/campaigns").json()["campaigns"]
    except (httpx.HTTPError, KeyError, ValueError):
        return None
    running = [c for c in campaigns if c["state"] == "running"]
    return str(running[0]["id"]) if running else None  # None: not yet


if __name__ == "__main__":
    sys.exit(main())
