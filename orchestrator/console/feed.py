"""One poller of the journal shared by every live page: it reads new events from the store a few
times a second and hands them to each subscriber's queue, so fifty open pages cost one query, not fifty."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import structlog
from starlette.concurrency import run_in_threadpool

from orchestrator.console.events import ConsoleEvent
from orchestrator.console.source import CampaignSource

log = structlog.get_logger("orchestrator.console.feed")


class Subscription:
    def __init__(self, campaign_id: str | None, size: int) -> None:
        self.campaign_id = campaign_id
        self.queue: asyncio.Queue[ConsoleEvent | None] = asyncio.Queue(size)
        self.overflowed = False

    def offer(self, event: ConsoleEvent) -> None:
        if self.campaign_id is not None and event.campaign_id != self.campaign_id:
            return
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            # a stalled reader: end its stream; the browser reconnects with Last-Event-ID and catches up
            self.overflowed = True
            with contextlib.suppress(asyncio.QueueEmpty):
                self.queue.get_nowait()
            self.queue.put_nowait(None)


class JournalFeed:
    def __init__(self, source: CampaignSource, interval_s: float = 0.25, queue_size: int = 1000) -> None:
        self.source = source
        self.interval_s = interval_s
        self.queue_size = queue_size
        self._subscribers: set[Subscription] = set()
        self._task: asyncio.Task[None] | None = None
        self._cursor: int | None = None
        self.rendered: dict[int, str] = {}  # event id -> its SSE frame, shared by every stream

    async def _poll(self) -> None:
        while self._subscribers:
            try:
                events = await run_in_threadpool(self.source.events, None, self._cursor or 0, 500)
                for event in events:
                    self._cursor = event.id
                    for sub in list(self._subscribers):
                        sub.offer(event)
                if len(events) == 500:
                    continue  # a backlog: read on without waiting
            except Exception:  # the feed must survive a locked or restarting database
                log.exception("journal poll failed")
            await asyncio.sleep(self.interval_s)
        self._task = None
        self._cursor = None  # nobody listening: start from the newest event next time

    @contextlib.asynccontextmanager
    async def subscribe(self, campaign_id: str | None) -> AsyncIterator[Subscription]:
        if self._cursor is None:
            # set before the subscriber reads its own starting point, so nothing falls between the two
            latest = await run_in_threadpool(self.source.latest_event_id)
            if self._cursor is None:
                self._cursor = latest
        sub = Subscription(campaign_id, self.queue_size)
        self._subscribers.add(sub)
        if self._task is None:
            self._task = asyncio.create_task(self._poll())
        try:
            yield sub
        finally:
            self._subscribers.discard(sub)

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)
