"""Schedules: start a campaign at a time, recalibrate at an interval, watch device health."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from fastapi import APIRouter, HTTPException, Request, status
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from orchestrator.console.auth import Observer, Operator
from orchestrator.console.routes.campaigns import EventOut, read
from orchestrator.console.scheduler import ConsoleScheduler, ScheduleError, ScheduleInfo

router = APIRouter(prefix="/api/schedules", tags=["schedules"])
MAX_INTERVAL_MIN = 366 * 24 * 60  # the scheduler's timer overflows on absurd intervals (1e37 min)


class ScheduleIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["start", "recalibrate", "health"]
    at: datetime | None = Field(None, description="start: when (ISO 8601 with time zone); None: now")
    protocol: str | None = Field(None, description="start: protocol file on the server")
    rig: str | None = Field(None, description="start: rig file on the server")
    resume_campaign_id: str | None = Field(None, description="start: resume this campaign instead")
    campaign_id: str | None = Field(None, description="recalibrate, health: which campaign")
    every_minutes: float | None = Field(
        None,
        gt=0,
        le=MAX_INTERVAL_MIN,
        allow_inf_nan=False,
        description="recalibrate, health: interval (at most a year)",
    )
    stale_after_s: float = Field(
        900.0, gt=0, allow_inf_nan=False, description="health: pause after this long without progress"
    )


@dataclass(frozen=True)
class ScheduleList:
    schedules: list[ScheduleInfo]
    failed: list[EventOut]  # the newest scheduled starts that never ran (rig busy, a file gone), oldest first


FAILED_SHOWN = 10


def _scheduler(request: Request) -> ConsoleScheduler:
    return request.app.state.scheduler


@router.get("", response_model=ScheduleList)
async def list_schedules(request: Request, who: Observer) -> ScheduleList:
    failed = await read(request, "failed_schedules", FAILED_SHOWN)
    schedules = await run_in_threadpool(_scheduler(request).list)
    return ScheduleList(schedules, [EventOut(**e.as_json()) for e in failed])


@router.post("", response_model=ScheduleInfo, status_code=201)
def add_schedule(body: ScheduleIn, request: Request, who: Operator) -> ScheduleInfo:
    scheduler = _scheduler(request)
    try:
        if body.kind == "start":
            if body.resume_campaign_id:
                request.app.state.source.campaign(body.resume_campaign_id)  # 404 for an unknown campaign
            info = scheduler.add_start(who.name, body.at, body.protocol, body.rig, body.resume_campaign_id)
        else:
            if not body.campaign_id or body.every_minutes is None:
                raise ScheduleError(f"a {body.kind} schedule needs campaign_id and every_minutes")
            request.app.state.source.campaign(body.campaign_id)  # 404 for an unknown campaign
            if body.kind == "recalibrate":
                info = scheduler.add_recalibration(who.name, body.campaign_id, body.every_minutes)
            else:
                info = scheduler.add_health_watch(
                    who.name, body.campaign_id, body.every_minutes, body.stale_after_s
                )
    except ScheduleError as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from None
    except LookupError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
    request.app.state.auth.users.audit(who.name, "schedule.add", f"{info.id}: {info.description}")
    return info


@router.delete("/{schedule_id}", status_code=204)
def remove_schedule(schedule_id: str, request: Request, who: Operator) -> None:
    try:
        info = _scheduler(request).remove(schedule_id)
    except ScheduleError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
    request.app.state.auth.users.audit(who.name, "schedule.remove", f"{info.id}: {info.description}")
