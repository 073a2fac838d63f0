"""Steering a campaign: pause, resume, abort, e-stop, clearing an e-stop, recalibrating.

Each is a request written to the store's journal with the caller's name, the time and the reason;
the campaign's own process honours it at its next checkpoint (an e-stop at once). The console never
touches the instruments itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import structlog
from fastapi import APIRouter, HTTPException, Request, status
from pydantic import BaseModel, ConfigDict, Field

from orchestrator.console.auth import Admin, Operator, Principal
from orchestrator.console.routes.campaigns import not_found, source_of
from orchestrator.console.source import (
    ACTIONS,
    ENDED,
    REASON_REQUIRED,
    ControlReceipt,
    ControlRefused,
    UnknownCampaign,
)
from orchestrator.console.users import Role

log = structlog.get_logger("orchestrator.console.control")

router = APIRouter(prefix="/api", tags=["control"])


class ControlIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field("", max_length=500, description="why: it goes into the journal with your name")


@dataclass(frozen=True)
class ReceiptOut:
    campaign_id: str
    action: str
    who: str
    reason: str
    at: datetime
    request_id: int | str | None


@dataclass(frozen=True)
class EstopAllOut:
    stopped: list[ReceiptOut]


def _request(request: Request, campaign_id: str, action: str, who: Principal, reason: str) -> ReceiptOut:
    reason = reason.strip()
    if action in REASON_REQUIRED and not reason:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT, f"say why you {action}: the reason goes into the journal"
        )
    source = source_of(request)
    try:
        campaign = source.campaign(campaign_id)
        if campaign.state not in ACTIONS[action][1]:
            raise ControlRefused(f"campaign #{campaign_id} is {campaign.state}: it cannot {action} now")
        receipt = source.request_control(campaign_id, action, who.name, reason or _default_reason(action))
    except UnknownCampaign as exc:
        raise not_found(exc) from None
    except ControlRefused as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    log.info("control requested", campaign=campaign_id, action=action, by=who.name, via=who.via)
    return _out(receipt)


def _default_reason(action: str) -> str:
    return {"estop": "e-stop pressed", "resume": "resumed", "recalibrate": "recalibration requested"}.get(
        action, action
    )


def _out(r: ControlReceipt) -> ReceiptOut:
    return ReceiptOut(r.campaign_id, r.action, r.who, r.reason, r.at, r.request_id)


def _route(action: str, needs: Role) -> Callable[..., ReceiptOut]:
    if needs is Role.ADMIN:

        def handler_admin(
            campaign_id: str, request: Request, who: Admin, body: ControlIn | None = None
        ) -> ReceiptOut:
            return _request(request, campaign_id, action, who, (body or ControlIn()).reason)

        return handler_admin

    # no body at all is a body without a reason: `curl -X POST .../estop` must work
    def handler(campaign_id: str, request: Request, who: Operator, body: ControlIn | None = None) -> ReceiptOut:
        return _request(request, campaign_id, action, who, (body or ControlIn()).reason)

    return handler


_SUMMARIES = {
    "pause": "pause at the end of the current replicate (operator)",
    "resume": "go on from where it stopped (operator)",
    "abort": "end the campaign after the current replicate; it cannot be resumed (operator)",
    "estop": "stop the pumps now (operator: an e-stop must never be hard to reach)",
    "estop-clear": "the rig is safe again; the campaign stays paused until resumed (admin)",
    "recalibrate": "take the dark spectrum again at the next replicate boundary; the reference is taken at start and resume (operator)",
}

for _action, (_needs, _states) in ACTIONS.items():
    router.add_api_route(
        f"/campaigns/{{campaign_id}}/{_action}",
        _route(_action, _needs),
        methods=["POST"],
        response_model=ReceiptOut,
        status_code=status.HTTP_202_ACCEPTED,
        summary=_SUMMARIES[_action],
        name=f"control_{_action.replace('-', '_')}",
    )


@router.post(
    "/estop",
    response_model=EstopAllOut,
    status_code=status.HTTP_202_ACCEPTED,
    summary="e-stop every campaign that is not over (operator)",
)
def estop_all(request: Request, who: Operator, body: ControlIn | None = None) -> EstopAllOut:
    body = body or ControlIn()
    source = source_of(request)
    stopped = []
    for c in source.list_campaigns():
        if c.state in ENDED or c.state not in ACTIONS["estop"][1]:
            continue
        try:
            receipt = source.request_control(
                c.id, "estop", who.name, body.reason.strip() or "e-stop all pressed"
            )
        except (UnknownCampaign, ControlRefused):
            continue  # ended between the listing and the request
        stopped.append(_out(receipt))
    log.warning("e-stop all", by=who.name, campaigns=[r.campaign_id for r in stopped])
    return EstopAllOut(stopped)
