"""Reading campaigns: the list with each state in words, one campaign's progress, its events,
the latest droplet spectra, the losses per round and the bounds history."""

from __future__ import annotations

from dataclasses import dataclass, field

from fastapi import APIRouter, HTTPException, Query, Request, status

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


@dataclass(frozen=True)
class EventList:
    events: list[EventOut]


def source_of(request: Request) -> CampaignSource:
    return request.app.state.source


def not_found(exc: UnknownCampaign) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, str(exc))


@router.get("", response_model=CampaignList, summary="every campaign with its state in words")
def list_campaigns(request: Request, who: Observer) -> CampaignList:
    return CampaignList(source_of(request).list_campaigns())


@router.get("/{campaign_id}", response_model=CampaignView, summary="one campaign: state, progress, best")
def campaign(campaign_id: str, request: Request, who: Observer) -> CampaignView:
    try:
        c = source_of(request).campaign(campaign_id)
    except UnknownCampaign as exc:
        raise not_found(exc) from None
    fields = {f: getattr(c, f) for f in c.__dataclass_fields__}
    return CampaignView(
        **fields, actions=allowed_actions(c.state, who.user.role), active=c.state not in ENDED
    )


@router.get("/{campaign_id}/events", response_model=EventList, summary="journal events, oldest first")
def events(
    campaign_id: str,
    request: Request,
    who: Observer,
    after: int | None = Query(None, description="only events with a larger id"),
    limit: int = Query(200, ge=1, le=2000),
) -> EventList:
    source = source_of(request)
    try:
        source.campaign(campaign_id)
        found = (
            source.recent_events(campaign_id, limit)
            if after is None
            else source.events(campaign_id, after, limit)
        )
    except UnknownCampaign as exc:
        raise not_found(exc) from None
    return EventList([EventOut(**e.as_json()) for e in found])


@router.get(
    "/{campaign_id}/spectra", response_model=SpectraView, summary="the latest droplets and the target"
)
def spectra(
    campaign_id: str, request: Request, who: Observer, limit: int = Query(20, ge=1, le=200)
) -> SpectraView:
    try:
        return source_of(request).spectra(campaign_id, limit)
    except UnknownCampaign as exc:
        raise not_found(exc) from None


@router.get("/{campaign_id}/losses", response_model=LossesView, summary="median loss per condition and round")
def losses(campaign_id: str, request: Request, who: Observer) -> LossesView:
    try:
        return source_of(request).losses(campaign_id)
    except UnknownCampaign as exc:
        raise not_found(exc) from None


@router.get(
    "/{campaign_id}/bounds", response_model=BoundsView, summary="search bounds per round, widenings marked"
)
def bounds(campaign_id: str, request: Request, who: Observer) -> BoundsView:
    try:
        return source_of(request).bounds(campaign_id)
    except UnknownCampaign as exc:
        raise not_found(exc) from None
