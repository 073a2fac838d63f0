"""Request and response bodies of the console API (pydantic at the boundary)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from orchestrator.console.users import MAX_TOKEN_DAYS, Role, TokenInfo, UserInfo


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoginIn(_In):
    name: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024)


class UserOut(BaseModel):
    name: str
    role: Role
    disabled: bool
    created_at: datetime
    has_password: bool

    @classmethod
    def of(cls, u: UserInfo) -> UserOut:
        return cls(
            name=u.name,
            role=u.role,
            disabled=u.disabled,
            created_at=u.created_at,
            has_password=u.has_password,
        )


class SessionOut(BaseModel):
    user: UserOut
    csrf: str | None = Field(None, description="echo in the X-CSRF-Token header of every change")


class UserCreateIn(_In):
    name: str = Field(min_length=1, max_length=64)
    role: Role
    password: str | None = Field(None, max_length=1024, description="None: a token-only user (scripts)")


class UserUpdateIn(_In):
    role: Role | None = None
    disabled: bool | None = None
    password: str | None = Field(None, max_length=1024)


class TokenCreateIn(_In):
    days: float = Field(30, gt=0, le=MAX_TOKEN_DAYS)
    label: str = Field("", max_length=128)


class TokenOut(BaseModel):
    id: str
    user: str
    label: str
    created_at: datetime
    expires_at: datetime
    revoked: bool
    expired: bool

    @classmethod
    def of(cls, t: TokenInfo) -> TokenOut:
        return cls(
            id=t.id,
            user=t.user,
            label=t.label,
            created_at=t.created_at,
            expires_at=t.expires_at,
            revoked=t.revoked,
            expired=t.expired,
        )


class NewTokenOut(TokenOut):
    token: str = Field(description="shown once: store it now, it cannot be read again")


class AuditOut(BaseModel):
    at: datetime
    who: str
    action: str
    detail: str
