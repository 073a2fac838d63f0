"""Users, roles, passwords, API tokens and browser sessions, over the console's tables.

Passwords are hashed with argon2id (argon2-cffi). API tokens and session ids are 256-bit random
secrets kept only as SHA-256 digests. Nothing here logs a password, token or session id.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

import structlog
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import Engine, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from orchestrator.console.models import (
    ApiToken,
    AuditEntry,
    BrowserSession,
    ConsoleSetting,
    User,
    utcnow,
)

log = structlog.get_logger("orchestrator.console.users")

TOKEN_PREFIX = "sdl_"
MIN_PASSWORD_LENGTH = 10
MAX_TOKEN_DAYS = 3650
NAME_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")


class Role(StrEnum):
    """What a user may do; each role may do everything the roles before it may."""

    OBSERVER = "observer"  # read everything
    OPERATOR = "operator"  # pause, resume, abort, e-stop, recalibrate, schedule
    ADMIN = "admin"  # users, tokens, clearing an e-stop

    @property
    def rank(self) -> int:
        return list(Role).index(self)

    def allows(self, needed: Role) -> bool:
        return self.rank >= needed.rank

    @classmethod
    def parse(cls, text: str) -> Role:
        try:
            return cls(text.strip().lower())
        except ValueError:
            raise UserError(f"unknown role {text!r}: use one of {', '.join(r.value for r in cls)}") from None


class UserError(ValueError):
    """A user-administration request that cannot be carried out; the message says what to change."""


class UnknownUser(UserError):
    pass


@dataclass(frozen=True)
class UserInfo:
    id: int
    name: str
    role: Role
    disabled: bool
    created_at: datetime
    has_password: bool

    @classmethod
    def of(cls, u: User) -> UserInfo:
        return cls(u.id, u.name, Role(u.role), u.disabled, u.created_at, u.password_hash is not None)


@dataclass(frozen=True)
class TokenInfo:
    id: str
    user: str
    label: str
    created_at: datetime
    expires_at: datetime
    revoked: bool

    @property
    def expired(self) -> bool:
        return self.expires_at <= utcnow()


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise UserError(f"password too short: use at least {MIN_PASSWORD_LENGTH} characters")
    if password.strip() != password:
        raise UserError("password starts or ends with white space: remove it (a pasted newline?)")


class UserDirectory:
    """Everything about who may log in and what they may do. Thread-safe: one DB session per call."""

    def __init__(self, engine: Engine, hasher: PasswordHasher | None = None) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._hasher = hasher or PasswordHasher()
        # verified against when the user does not exist, so a wrong name costs as long as a wrong password
        self._dummy_hash = self._hasher.hash(secrets.token_urlsafe(16))
        # bumped by every change that can take rights away, so callers caching answers know to drop them
        self.generation = 0

    def _db(self) -> Session:
        return self._sessions()

    # ---- users -------------------------------------------------------------------------------------

    def add_user(self, name: str, role: Role | str, password: str | None, who: str) -> UserInfo:
        if not NAME_PATTERN.fullmatch(name):  # fullmatch: "$" alone lets "alice\n" pass as another alice
            raise UserError(
                f"user name {name!r} not allowed: start with a letter, then letters, digits, '_', '.', '-' (max 64)"
            )
        role = Role.parse(role) if isinstance(role, str) else role
        if password is not None:
            _check_password(password)
        hashed = self._hasher.hash(password) if password is not None else None
        with self._db() as db:
            # "Olga" and "olga" would read as one person in the journal: one of them only
            same = db.scalars(select(User.name).where(func.lower(User.name) == name.lower())).first()
            if same is not None:
                raise UserError(f"user {same!r} exists already: pick another name or change that user")
            user = User(name=name, role=role.value, password_hash=hashed, disabled=False, created_at=utcnow())
            db.add(user)
            try:
                db.flush()
            except IntegrityError:
                raise UserError(
                    f"user {name!r} exists already: pick another name or change that user"
                ) from None
            self._audit(db, who, "user.add", f"{name} as {role.value}")
            db.commit()
            log.info("user added", user=name, role=role.value, by=who)
            return UserInfo.of(user)

    def list_users(self) -> list[UserInfo]:
        with self._db() as db:
            return [UserInfo.of(u) for u in db.scalars(select(User).order_by(User.name))]

    def get_user(self, name: str) -> UserInfo:
        with self._db() as db:
            return UserInfo.of(self._user(db, name))

    def count_users(self) -> int:
        return len(self.list_users())

    def update_user(
        self,
        name: str,
        who: str,
        *,
        role: Role | str | None = None,
        disabled: bool | None = None,
        password: str | None = None,
    ) -> UserInfo:
        with self._db() as db:
            user = self._user(db, name)
            changes = []
            if role is not None:
                role = Role.parse(role) if isinstance(role, str) else role
                if user.role == Role.ADMIN and role != Role.ADMIN:
                    self._keep_an_admin(db, user)
                user.role = role.value
                changes.append(f"role={role.value}")
            if disabled is not None:
                if disabled and user.role == Role.ADMIN:
                    self._keep_an_admin(db, user)
                user.disabled = disabled
                changes.append(f"disabled={disabled}")
                if disabled:
                    self._end_sessions(db, user.id)
            if password is not None:
                _check_password(password)
                user.password_hash = self._hasher.hash(password)
                changes.append("password changed")
                self._end_sessions(db, user.id)
            if not changes:
                raise UserError("nothing to change: give a role, disabled or password")
            self._audit(db, who, "user.update", f"{name}: {', '.join(changes)}")
            db.commit()
            self.generation += 1
            log.info("user changed", user=name, changes=[c for c in changes if "password" not in c], by=who)
            return UserInfo.of(user)

    def _keep_an_admin(self, db: Session, leaving: User) -> None:
        admins = db.scalars(select(User).where(User.role == Role.ADMIN.value, User.disabled.is_(False))).all()
        if [a.id for a in admins] == [leaving.id]:
            raise UserError(
                f"{leaving.name} is the last active admin: make another user admin first, "
                "or nobody could manage users or clear an e-stop"
            )

    @staticmethod
    def _user(db: Session, name: str) -> User:
        user = db.scalars(select(User).where(User.name == name)).first()
        if user is None:
            raise UnknownUser(f"no user {name!r}: list them with `sdl users list`")
        return user

    def verify_password(self, name: str, password: str) -> UserInfo | None:
        """The user if the name and password match an enabled user with a password, else None."""
        with self._db() as db:
            user = db.scalars(select(User).where(User.name == name)).first()
            stored = user.password_hash if user is not None and user.password_hash else self._dummy_hash
            try:
                self._hasher.verify(stored, password)
                ok = user is not None and user.password_hash is not None
            except (VerificationError, InvalidHashError):
                ok = False
            if not ok or user is None or user.disabled:
                return None
            if self._hasher.check_needs_rehash(stored):
                user.password_hash = self._hasher.hash(password)
                db.commit()
            return UserInfo.of(user)

    # ---- API tokens ---------------------------------------------------------------------------------

    def issue_token(self, name: str, days: float, who: str, label: str = "") -> tuple[str, TokenInfo]:
        """A new token for ``name``; the returned string is shown once and never stored."""
        if not 0 < days <= MAX_TOKEN_DAYS:
            raise UserError(f"token lifetime {days:g} days not allowed: give 0 < days <= {MAX_TOKEN_DAYS}")
        token_id = secrets.token_hex(8)
        secret = secrets.token_urlsafe(32)
        now = utcnow()
        with self._db() as db:
            user = self._user(db, name)
            row = ApiToken(
                id=token_id,
                user_id=user.id,
                secret_sha256=_sha256(secret),
                label=label[:128],
                created_at=now,
                expires_at=now + timedelta(days=days),
                revoked=False,
            )
            db.add(row)
            self._audit(db, who, "token.issue", f"{token_id} for {name}, {days:g} days")
            db.commit()
            log.info("token issued", user=name, token_id=token_id, days=days, by=who)
            return f"{TOKEN_PREFIX}{token_id}.{secret}", self._token_info(row, name)

    @staticmethod
    def _token_info(row: ApiToken, user: str) -> TokenInfo:
        return TokenInfo(row.id, user, row.label, row.created_at, row.expires_at, row.revoked)

    def list_tokens(self, name: str | None = None) -> list[TokenInfo]:
        with self._db() as db:
            query = select(ApiToken, User.name).join(User, User.id == ApiToken.user_id)
            if name is not None:
                query = query.where(User.name == name)
            rows = db.execute(query.order_by(ApiToken.created_at)).all()
            return [self._token_info(t, n) for t, n in rows]

    def revoke_token(self, token_id: str, who: str) -> None:
        with self._db() as db:
            row = db.get(ApiToken, token_id)
            if row is None:
                raise UserError(f"no token {token_id!r}: list them with `sdl users list` or GET /api/tokens")
            row.revoked = True
            self._audit(db, who, "token.revoke", token_id)
            db.commit()
            self.generation += 1

    def authenticate_token(self, token: str) -> UserInfo | None:
        """The user behind a valid, unexpired, unrevoked token of an enabled user, else None."""
        if not token.startswith(TOKEN_PREFIX) or "." not in token:
            return None
        token_id, _, secret = token[len(TOKEN_PREFIX) :].partition(".")
        with self._db() as db:
            row = db.get(ApiToken, token_id)
            if row is None or not hmac.compare_digest(row.secret_sha256, _sha256(secret)):
                return None
            if row.revoked or row.expires_at <= utcnow():
                return None
            user = db.get(User, row.user_id)
            if user is None or user.disabled:
                return None
            return UserInfo.of(user)

    # ---- browser sessions ---------------------------------------------------------------------------

    def open_session(self, user: UserInfo, hours: float) -> str:
        session_id = secrets.token_urlsafe(32)
        now = utcnow()
        with self._db() as db:
            db.add(
                BrowserSession(
                    id_sha256=_sha256(session_id),
                    user_id=user.id,
                    created_at=now,
                    expires_at=now + timedelta(hours=hours),
                    revoked=False,
                )
            )
            db.commit()
        log.info("logged in", user=user.name)
        return session_id

    def session_user(self, session_id: str) -> UserInfo | None:
        with self._db() as db:
            row = db.get(BrowserSession, _sha256(session_id))
            if row is None or row.revoked or row.expires_at <= utcnow():
                return None
            user = db.get(User, row.user_id)
            if user is None or user.disabled:
                return None
            return UserInfo.of(user)

    def close_session(self, session_id: str) -> None:
        with self._db() as db:
            db.execute(
                update(BrowserSession)
                .where(BrowserSession.id_sha256 == _sha256(session_id))
                .values(revoked=True)
            )
            db.commit()
            self.generation += 1

    @staticmethod
    def _end_sessions(db: Session, user_id: int) -> None:
        db.execute(update(BrowserSession).where(BrowserSession.user_id == user_id).values(revoked=True))

    # ---- settings and audit -------------------------------------------------------------------------

    def setting(self, key: str, default_factory: Callable[[], str] | None = None) -> str | None:
        """A console setting; with ``default_factory`` (a callable) the value is created on first use.
        Two processes starting at once both try to insert; the loser reads the winner's value."""
        with self._db() as db:
            row = db.get(ConsoleSetting, key)
            if row is not None:
                return row.value
            if default_factory is None:
                return None
            db.add(ConsoleSetting(key=key, value=default_factory()))
            try:
                db.commit()
            except IntegrityError:
                db.rollback()
            row = db.get(ConsoleSetting, key)
            return row.value if row is not None else None

    def set_setting(self, key: str, value: str) -> None:
        with self._db() as db:
            db.merge(ConsoleSetting(key=key, value=value))
            db.commit()

    def signing_secret(self) -> str:
        return self.setting("signing_secret", lambda: secrets.token_urlsafe(48)) or ""

    def audit_log(self, limit: int = 200) -> list[AuditEntry]:
        with self._db() as db:
            return list(db.scalars(select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)))

    def audit(self, who: str, action: str, detail: str) -> None:
        """Record a console change that is not a campaign control action (those go to the journal)."""
        with self._db() as db:
            self._audit(db, who, action, detail)
            db.commit()

    @staticmethod
    def _audit(db: Session, who: str, action: str, detail: str) -> None:
        db.add(AuditEntry(at=utcnow(), who=who, action=action, detail=detail))
