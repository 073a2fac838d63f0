"""Logging the page in and out."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request, Response, status

from orchestrator.console.auth import Authenticator, Observer
from orchestrator.console.schemas import LoginIn, SessionOut, UserOut

router = APIRouter(prefix="/api/session", tags=["session"])


@router.post("", response_model=SessionOut, summary="log in with name and password (sets the session cookie)")
def login(body: LoginIn, request: Request, response: Response) -> SessionOut:
    auth: Authenticator = request.app.state.auth
    wait_s = auth.throttle.attempt(body.name)
    if wait_s > 0:
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            f"too many failed logins for {body.name}: try again in {wait_s:.0f} s",
            headers={"Retry-After": str(int(wait_s) + 1)},
        )
    user = auth.users.verify_password(body.name, body.password)
    if user is None:  # already counted by attempt()
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "wrong name or password")
    auth.throttle.succeeded(body.name)
    session_id = auth.users.open_session(user, auth.session_hours)
    csrf = auth.set_session_cookies(response, session_id)
    return SessionOut(user=UserOut.of(user), csrf=csrf)


@router.get("", response_model=SessionOut, summary="who am I")
def whoami(request: Request, who: Observer) -> SessionOut:
    auth: Authenticator = request.app.state.auth
    csrf = auth.csrf_token(who.session_id) if who.session_id else None
    return SessionOut(user=UserOut.of(who.user), csrf=csrf)


@router.delete("", status_code=204, summary="log out (ends the session everywhere it is used)")
def logout(request: Request, response: Response, who: Observer) -> Response:
    auth: Authenticator = request.app.state.auth
    if who.session_id is not None:
        auth.users.close_session(who.session_id)
    response.status_code = 204
    auth.clear_session_cookies(response)
    return response
