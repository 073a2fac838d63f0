"""User and token administration (admin only); every change lands in the console audit trail."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request, status

from orchestrator.console.auth import Admin
from orchestrator.console.schemas import (
    AuditOut,
    NewTokenOut,
    TokenCreateIn,
    TokenOut,
    UserCreateIn,
    UserOut,
    UserUpdateIn,
)
from orchestrator.console.users import UnknownUser, UserDirectory, UserError

router = APIRouter(prefix="/api", tags=["users"])


def _users(request: Request) -> UserDirectory:
    return request.app.state.auth.users


def _bad(exc: UserError) -> HTTPException:
    code = status.HTTP_404_NOT_FOUND if isinstance(exc, UnknownUser) else status.HTTP_400_BAD_REQUEST
    return HTTPException(code, str(exc))


@router.get("/users", response_model=list[UserOut])
def list_users(request: Request, who: Admin) -> list[UserOut]:
    return [UserOut.of(u) for u in _users(request).list_users()]


@router.post("/users", response_model=UserOut, status_code=201)
def add_user(body: UserCreateIn, request: Request, who: Admin) -> UserOut:
    try:
        return UserOut.of(_users(request).add_user(body.name, body.role, body.password, who=who.name))
    except UserError as exc:
        raise _bad(exc) from None


@router.patch("/users/{name}", response_model=UserOut)
def update_user(name: str, body: UserUpdateIn, request: Request, who: Admin) -> UserOut:
    try:
        user = _users(request).update_user(
            name, who.name, role=body.role, disabled=body.disabled, password=body.password
        )
    except UserError as exc:
        raise _bad(exc) from None
    return UserOut.of(user)


@router.get("/tokens", response_model=list[TokenOut])
def list_tokens(request: Request, who: Admin, user: str | None = None) -> list[TokenOut]:
    return [TokenOut.of(t) for t in _users(request).list_tokens(user)]


@router.post("/users/{name}/tokens", response_model=NewTokenOut, status_code=201)
def issue_token(name: str, body: TokenCreateIn, request: Request, who: Admin) -> NewTokenOut:
    try:
        token, info = _users(request).issue_token(name, body.days, who=who.name, label=body.label)
    except UserError as exc:
        raise _bad(exc) from None
    return NewTokenOut(token=token, **TokenOut.of(info).model_dump())


@router.delete("/tokens/{token_id}", status_code=204)
def revoke_token(token_id: str, request: Request, who: Admin) -> None:
    try:
        _users(request).revoke_token(token_id, who.name)
    except UserError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None


@router.get("/audit", response_model=list[AuditOut], summary="user and token changes, newest first")
def audit(request: Request, who: Admin, limit: int = 200) -> list[AuditOut]:
    rows = _users(request).audit_log(max(1, min(limit, 1000)))
    return [AuditOut(at=r.at, who=r.who, action=r.action, detail=r.detail) for r in rows]
