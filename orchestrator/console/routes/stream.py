"""Live updates as server-sent events: every new journal event, as ``event: journal``.

The browser's EventSource reconnects by itself and sends ``Last-Event-ID``; the stream then first
replays what was missed from the store, so a dropped connection loses nothing. A stream ends when its
session or token stops being valid (logout, disabled user), checked every ``recheck_s``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

from fastapi import APIRouter, HTTPException, Query, Request, status
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from orchestrator.console.auth import Observer
from orchestrator.console.events import ConsoleEvent
from orchestrator.console.feed import JournalFeed
from orchestrator.console.source import CampaignSource, UnknownCampaign

router = APIRouter(prefix="/api", tags=["live"])

KEEPALIVE_S = 15.0
RECHECK_S = 30.0


def _frame(event: ConsoleEvent, rendered: dict[int, str]) -> str:
    """The event as an SSE frame; ``rendered`` (one per app) keeps it, since every open page sends it."""
    frame = rendered.get(event.id)
    if frame is None:
        frame = f"id: {event.id}\nevent: journal\ndata: {json.dumps(event.as_json())}\n\n"
        if len(rendered) >= 4096:
            rendered.clear()
        rendered[event.id] = frame
    return frame


@router.get(
    "/stream",
    summary="server-sent events: every new journal event (text/event-stream)",
    response_class=StreamingResponse,
)
async def stream(
    request: Request,
    who: Observer,
    campaign: str | None = Query(None, description="only this campaign's events"),
    after: int | None = Query(None, description="replay events after this id first"),
) -> StreamingResponse:
    source: CampaignSource = request.app.state.source
    feed: JournalFeed = request.app.state.feed
    if campaign is not None:
        try:
            await run_in_threadpool(source.campaign, campaign)
        except UnknownCampaign as exc:
            raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
    last_id = request.headers.get("last-event-id")
    if last_id is not None and last_id.isdigit():
        after = int(last_id)
    auth = request.app.state.auth

    async def frames() -> AsyncIterator[str]:
        async with feed.subscribe(campaign) as sub:
            sent = after if after is not None else await run_in_threadpool(source.latest_event_id)
            yield "retry: 2000\n: connected\n\n"
            # replay what was missed; events that also reach the queue are skipped by id below
            while True:
                backlog = await run_in_threadpool(source.events, campaign, sent, 500)
                for event in backlog:
                    yield _frame(event, feed.rendered)
                    sent = event.id
                if len(backlog) < 500:
                    break
            checked = time.monotonic()
            while True:
                try:
                    event = await asyncio.wait_for(sub.queue.get(), timeout=KEEPALIVE_S)
                except TimeoutError:
                    if await request.is_disconnected():
                        return
                    yield ": keepalive\n\n"
                    event = None
                    if sub.overflowed:
                        return
                else:
                    # a burst (one event per replicate) goes out as one write, not one per event
                    burst = [event]
                    while not sub.queue.empty():
                        burst.append(sub.queue.get_nowait())
                    frames_out = []
                    for item in burst:
                        if item is None:  # overflowed: end, the browser reconnects and replays
                            break
                        if item.id > sent:
                            frames_out.append(_frame(item, feed.rendered))
                            sent = item.id
                    if frames_out:
                        yield "".join(frames_out)
                    if None in burst:
                        return
                if time.monotonic() - checked > RECHECK_S:
                    checked = time.monotonic()
                    if await run_in_threadpool(auth.authenticate, request) is None:
                        yield "event: logout\ndata: {}\n\n"
                        return

    return StreamingResponse(
        frames(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
