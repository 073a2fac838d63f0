"""Reading campaigns: the list with each state in words, one campaign's progress, its events,
the latest droplet spectra, the losses per round and the bounds history."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, HTTPException, Query, Request, status
from starlette.concurrency import run_in_threadpool

from orchestrator.console.auth import Observer
from orchestrator.console.source import (
    ENDED,
    BoundsView,
    CampaignDetail,
    CampaignSource,
    CampaignSummary,
    LossesView,
    SpectraView,
    UnknownCampaign,
    allowed_actions,
)

router = APIRouter(prefix="/api/campaigns", tags=["campaigns"])


@dataclass(frozen=True)
class CampaignList:
    campaigns: list[CampaignSummary]


@dataclass(frozen=True)
class CampaignView(CampaignDetail):
    actions: list[str] = field(default_factory=list)  # what the caller may do now
    active: bool = False


@dataclass(frozen=True)
class EventOut:
    id: int
    campaign_id: str
    campaign: str
    at: str
    kind: str
    category: str
    text: str
    who: str | None
    detail: bool  # a per-droplet or per-condition line (the page hides these unless asked)


@dataclass(frozen=True)
class EventList:
    events: list[EventOut]


def source_of(request: Request) -> CampaignSource:
    return request.app.state.source


def not_found(exc: UnknownCampaign) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, str(exc))


async def read(request: Request, method: str, *args: Any) -> Any:
    """``source.method(*args)``: answered on the event loop when the source has it cached (``peek``),
    else in a worker thread, since a source may block on its database."""
    source = source_of(request)
    peek = getattr(source, "peek", None)
    if peek is not None:
        found = peek(method, *args)
        if found is not None:
            return found
    try:
        return await run_in_threadpool(getattr(source, method), *args)
    except UnknownCampaign as exc:
        raise not_found(exc) from None


@router.get("", response_model=CampaignList, summary="every campaign with its state in words")
async def list_campaigns(request: Request, who: Observer) -> CampaignList:
    return CampaignList(await read(request, "list_campaigns"))


@router.get("/{campaign_id}", response_model=CampaignView, summary="one campaign: state, progress, best")
async def campaign(campaign_id: str, request: Request, who: Observer) -> CampaignView:
    c: CampaignDetail = await read(request, "campaign", campaign_id)
    fields = {f: getattr(c, f) for f in c.__dataclass_fields__}
    return CampaignView(
        **fields,
        actions=allowed_actions(c.state, who.user.role, driven=c.driven, lab_latch=c.lab_latch, rig_agent=c.rig_agent),
        active=c.state not in ENDED,
    )


@router.get("/{campaign_id}/events", response_model=EventList, summary="journal events, oldest first")
async def events(
    campaign_id: str,
    request: Request,
    who: Observer,
    after: int | None = Query(None, description="only events with a larger id"),
    limit: int = Query(200, ge=1, le=2000),
    detail: bool = Query(
        True, description="include per-droplet and per-condition lines (droplet measured, rates set, reagent used)"
    ),
) -> EventList:
    if after is None:
        found = await read(request, "recent_events", campaign_id, limit, detail)
    else:
        found = await read(request, "events", campaign_id, after, limit, detail)
    return EventList([EventOut(**e.as_json()) for e in found])


@router.get(
    "/{campaign_id}/spectra", response_model=SpectraView, summary="the latest droplets and the target"
)
async def spectra(
    campaign_id: str, request: Request, who: Observer, limit: int = Query(20, ge=1, le=200)
) -> SpectraView:
    return await read(request, "spectra", campaign_id, limit)


@router.get("/{campaign_id}/losses", response_model=LossesView, summary="median loss per condition and round")
async def losses(campaign_id: str, request: Request, who: Observer) -> LossesView:
    return await read(request, "losses", campaign_id)


@router.get(
    "/{campaign_id}/bounds", response_model=BoundsView, summary="search bounds per round, widenings marked"
)
async def bounds(campaign_id: str, request: Request, who: Observer) -> BoundsView:
    return await read(request, "bounds", campaign_id)
