"""``sdl serve`` stops on SIGTERM (``systemctl stop``) even while a page holds a live stream open."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from orchestrator.console import db
from orchestrator.console.users import Role, UserDirectory

from .conftest import Console


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_sigterm_stops_the_server_while_a_stream_is_open(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    engine = db.engine_for(url)
    db.ensure_console_schema(engine)
    directory = UserDirectory(engine)
    directory.add_user("otto", Role.OPERATOR, None, who="test")
    token, _ = directory.issue_token("otto", days=1, who="test")
    engine.dispose()
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    log = (tmp_path / "serve.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli.main", "serve", "--db", url, "--host", "127.0.0.1",
         "--port", str(port), "--no-background"],
        stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy(),
    )
    connected = threading.Event()

    def watch() -> None:  # a page's live stream: open until the server closes it
        with httpx.Client(base_url=base, timeout=httpx.Timeout(5.0, read=None)) as client:
            try:
                with client.stream("GET", "/api/stream", headers={"Authorization": f"Bearer {token}"}) as r:
                    for _ in r.iter_lines():
                        connected.set()
            except httpx.HTTPError:
                pass

    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and server.poll() is None:
            try:
                if httpx.get(f"{base}/api/health", timeout=1.0).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        reader = threading.Thread(target=watch, daemon=True)
        reader.start()
        assert connected.wait(15), (tmp_path / "serve.log").read_text()
        started = time.monotonic()
        server.send_signal(signal.SIGTERM)
        # uvicorn re-raises the signal once it has shut down: -SIGTERM is a clean stop
        assert server.wait(timeout=20) in (0, -signal.SIGTERM)  # it used to wait for the stream for minutes
        assert time.monotonic() - started < 15
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
        log.close()


def test_a_plain_sqlite_path_serves_like_its_url(tmp_path: Path) -> None:
    """`sdl serve --db lab.db` used to create the store, then crash in the scheduler's job store."""
    from fastapi.testclient import TestClient

    from orchestrator.console import create_app

    app = create_app(str(tmp_path / "lab.db"), secret="s" * 48, background=False)
    with TestClient(app) as client:
        assert client.get("/api/health").status_code == 200
    assert (tmp_path / "lab.db").exists()


def test_sdl_serve_says_in_one_line_when_it_cannot_open_the_store(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli.main", "serve", "--db", "postgresql://lab@127.0.0.1:1/sdl",
         "--port", str(_free_port())],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 2 and "cannot serve the store postgresql+psycopg://lab@127.0.0.1:1/sdl" in out.stderr
    assert "Traceback" not in out.stderr


def test_sdl_serve_says_when_it_created_the_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A mistyped --db path served an empty lab without a word: the operator saw no campaigns."""
    from orchestrator.cli import serve
    from orchestrator.cli.main import main

    monkeypatch.setattr(serve.uvicorn, "run", lambda *a, **k: None)  # the start-up, not the serving
    monkeypatch.setattr(serve, "_json_logs", lambda level: None)  # leave this process's logging alone
    mistyped = tmp_path / "runs" / "sdl.bd"
    assert main(["serve", "--db", str(mistyped), "--no-background"]) == 0
    said = " ".join(capsys.readouterr().err.split())
    assert f"new store: {mistyped} did not exist" in said and "give that file with --db" in said
    assert main(["serve", "--db", f"sqlite:///{mistyped}", "--no-background"]) == 0
    assert "new store" not in capsys.readouterr().err  # it exists now
    assert main(["serve", "--db", str(mistyped), "--no-background", "--files", str(tmp_path / "protocols")]) == 0
    said = " ".join(capsys.readouterr().err.split())
    assert f"--files {tmp_path / 'protocols'}: no such folder" in said


def test_a_database_outage_is_a_503_in_words_and_health_says_so(
    console: Console, monkeypatch: pytest.MonkeyPatch
) -> None:
    """During a PostgreSQL restart /api/health said "ok" and every page request was a bare 500 with a
    traceback in the log."""
    from sqlalchemy.exc import OperationalError

    down = OperationalError("SELECT 1", {}, Exception("connection to server at \"db\", port 5432 failed: Connection refused"))

    def fail(*args: object, **kwargs: object) -> None:
        raise down

    client = console.client()
    assert client.get("/api/health").json() == {"status": "ok"}
    monkeypatch.setattr(console.app.state.engine, "connect", fail)  # type: ignore[attr-defined]
    r = client.get("/api/health")
    assert r.status_code == 503 and r.json()["status"] == "database unreachable"
    assert "Connection refused" in r.json()["detail"] and "SELECT" not in r.json()["detail"]
    monkeypatch.setattr(console.source, "list_campaigns", fail)
    from structlog.testing import capture_logs

    with capture_logs() as logs:  # fifty tablets polling: one warning a minute, not fifty a second
        for _ in range(5):
            r = client.get("/api/campaigns", headers=console.bearer("observer"))
    assert r.status_code == 503 and r.json()["detail"].startswith("the database is unreachable (connection to")
    assert "reload in a minute" in r.json()["detail"]
    warned = [e for e in logs if e["event"] == "database error"]
    assert len(warned) == 1 and warned[0]["more_requests_failed"] == 0
    from orchestrator.console import app as console_app

    monkeypatch.setattr(console_app, "DB_WARNING_EVERY_S", 0.0)
    with capture_logs() as logs:
        client.get("/api/campaigns", headers=console.bearer("observer"))
    (warned,) = [e for e in logs if e["event"] == "database error"]
    assert warned["more_requests_failed"] == 4  # the ones not logged are counted
