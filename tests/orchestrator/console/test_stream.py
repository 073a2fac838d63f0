"""The live stream over a real socket: new events arrive, a reconnect replays what was missed, and a
stream ends when its credentials stop being valid."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn

from orchestrator.console.routes import stream as stream_module

from .conftest import Console


@pytest.fixture
def live(console: Console) -> Iterator[tuple[str, Console]]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(console.app, host="127.0.0.1", port=port, log_level="warning"))  # type: ignore[arg-type]
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.01)
    yield f"http://127.0.0.1:{port}", console
    server.should_exit = True
    thread.join(timeout=10)


class SSE:
    """Reads an event stream: ``opened()`` waits for the server's first line, ``read(n)`` parses the
    next n events, ``frames()`` every frame until the server ends the stream."""

    def __init__(self, response: httpx.Response) -> None:
        self.lines = response.iter_lines()

    def opened(self) -> str:
        return next(self.lines)

    def frames(self) -> Iterator[dict[str, str]]:
        frame: dict[str, str] = {}
        for line in self.lines:
            if line == "":
                if frame:
                    yield frame
                frame = {}
            elif not line.startswith(":"):
                key, _, value = line.partition(": ")
                frame[key] = value

    def read(self, n: int) -> list[dict[str, str]]:
        out: list[dict[str, str]] = []
        for frame in self.frames():
            if "event" in frame:
                out.append(frame)
                if len(out) == n:
                    break
        return out


def test_new_events_arrive_live(live: tuple[str, Console]) -> None:
    url, console = live
    with httpx.Client(base_url=url, timeout=10) as client:
        with client.stream("GET", "/api/stream", headers=console.bearer("observer")) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            sse = SSE(r)
            assert sse.opened() == "retry: 2000"  # the stream is open: events added now are new
            console.source.add_event("1", "replicate_measured", "progress", "replicate 13: loss 0.25")
            console.source.request_control("1", "pause", "otto", "bubble")
            frames = sse.read(3)
    data = [json.loads(f["data"]) for f in frames]
    assert [d["text"] for d in data][:2] == ["replicate 13: loss 0.25", "pause requested: bubble"]
    assert [int(f["id"]) for f in frames] == [6, 7, 8]
    assert all(f["event"] == "journal" for f in frames)


def test_reconnect_replays_what_was_missed(live: tuple[str, Console]) -> None:
    url, console = live
    headers = {**console.bearer("observer"), "Last-Event-ID": "2"}
    with httpx.Client(base_url=url, timeout=10) as client:
        with client.stream("GET", "/api/stream", headers=headers) as r:
            ids = [int(f["id"]) for f in SSE(r).read(3)]
    assert ids == [3, 4, 5]


def test_campaign_filter_and_unknown_campaign(live: tuple[str, Console]) -> None:
    url, console = live
    with httpx.Client(base_url=url, timeout=10) as client:
        assert client.get("/api/stream?campaign=99", headers=console.bearer("observer")).status_code == 404
        with client.stream("GET", "/api/stream?campaign=2&after=0", headers=console.bearer("observer")) as r:
            sse = SSE(r)
            sse.opened()
            console.source.add_event("1", "x", "info", "not for campaign 2")
            console.source.add_event("2", "x", "info", "for campaign 2")
            frames = sse.read(1)
    assert json.loads(frames[0]["data"])["text"] == "for campaign 2"


def test_stream_ends_when_the_token_is_revoked(
    live: tuple[str, Console], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, console = live
    monkeypatch.setattr(stream_module, "RECHECK_S", 0.05)
    monkeypatch.setattr(stream_module, "KEEPALIVE_S", 0.05)
    token_id = console.tokens["observer"].removeprefix("sdl_").split(".")[0]
    with httpx.Client(base_url=url, timeout=10) as client:
        with client.stream("GET", "/api/stream", headers=console.bearer("observer")) as r:
            sse = SSE(r)
            sse.opened()
            console.users.revoke_token(token_id, "test")
            events = [f.get("event") for f in sse.frames()]  # ends by itself
    assert events[-1] == "logout"


def test_one_poller_serves_many_streams(live: tuple[str, Console]) -> None:
    url, console = live
    feed = console.app.state.feed  # type: ignore[attr-defined]
    with httpx.Client(base_url=url, timeout=10) as client:
        streams = [client.stream("GET", "/api/stream", headers=console.bearer("observer")) for _ in range(3)]
        readers = [SSE(s.__enter__()) for s in streams]
        for sse in readers:
            sse.opened()
        assert feed.subscribers == 3
        console.source.add_event("1", "x", "info", "to all")
        assert all(json.loads(sse.read(1)[0]["data"])["text"] == "to all" for sse in readers)
        for s in streams:
            s.__exit__(None, None, None)
