"""Who is calling and what they may do: bearer API tokens for scripts, signed session cookies with a
double-submit CSRF token for the page, and the FastAPI dependencies that enforce roles.

A request without credentials gets 401; with credentials but too low a role, or a cookie-authenticated
change without the matching CSRF header, 403. Either way the handler never runs, so nothing changes.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Literal

from fastapi import Depends, HTTPException, Request, Response, status
from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.concurrency import run_in_threadpool

from orchestrator.console.users import Role, UserDirectory, UserInfo

SESSION_COOKIE = "sdl_session"
CSRF_COOKIE = "sdl_csrf"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True)
class Principal:
    user: UserInfo
    via: Literal["token", "session"]
    session_id: str | None = None

    @property
    def name(self) -> str:
        return self.user.name


class LoginThrottle:
    """Refuses logins for a name after ``limit`` failures within ``window_s`` (argon2 already makes
    each guess slow; this stops a script from guessing all night on the lab network)."""

    def __init__(self, limit: int = 5, window_s: float = 300.0, clock: Callable[[], float] = time.monotonic):
        self.limit, self.window_s, self._clock = limit, window_s, clock
        self._failures: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, name: str) -> list[float]:
        now = self._clock()
        kept = [t for t in self._failures.get(name, []) if now - t < self.window_s]
        self._failures[name] = kept
        return kept

    def attempt(self, name: str) -> float:
        """Before a password is checked: 0 and the attempt counted as a failure (a success forgets it),
        or the seconds to wait. Counting first, under the lock, keeps requests sent at once from all
        passing the check before any of them fails (40 parallel guesses used to be 40 checks)."""
        with self._lock:
            recent = self._recent(name)
            if len(recent) >= self.limit:
                return max(0.0, self.window_s - (self._clock() - recent[0]))
            recent.append(self._clock())
            return 0.0

    def succeeded(self, name: str) -> None:
        with self._lock:
            self._failures.pop(name, None)


class CredentialCache:
    """Recently verified credentials, so a page polling every second costs no database round trip.

    Only successes are kept (a flood of forged tokens cannot fill it), keyed by a digest of the
    credential. Entries die after ``ttl_s`` and all at once when this process changes users, tokens
    or sessions; a change made by another process (``sdl users`` in a shell) takes effect within
    ``ttl_s``."""

    def __init__(
        self,
        users: UserDirectory,
        ttl_s: float = 2.0,
        size: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.users, self.ttl_s, self.size, self.clock = users, ttl_s, size, clock
        self._entries: dict[str, tuple[float, int, Principal]] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> Principal | None:
        with self._lock:
            entry = self._entries.get(key)
        if entry is None:
            return None
        expires, generation, principal = entry
        if expires < self.clock() or generation != self.users.generation:
            with self._lock:
                self._entries.pop(key, None)
            return None
        return principal

    def put(self, key: str, principal: Principal) -> None:
        if self.ttl_s <= 0:
            return
        with self._lock:
            if len(self._entries) >= self.size:
                self._entries.clear()
            self._entries[key] = (self.clock() + self.ttl_s, self.users.generation, principal)


class Authenticator:
    def __init__(
        self,
        users: UserDirectory,
        secret: str,
        session_hours: float = 12.0,
        secure_cookies: bool = False,
        cache_ttl_s: float = 2.0,
    ) -> None:
        if len(secret) < 32:
            raise ValueError("the console signing secret must be at least 32 characters")
        self.users = users
        self.session_hours = session_hours
        self.secure_cookies = secure_cookies
        self._secret = secret.encode()
        self._serializer = URLSafeTimedSerializer(secret, salt="sdl-console-session")
        self.throttle = LoginThrottle()
        self.cache = CredentialCache(users, cache_ttl_s)

    # ---- cookies ------------------------------------------------------------------------------------

    def csrf_token(self, session_id: str) -> str:
        """Bound to the session (an HMAC of its id), so a cookie planted by another site cannot match."""
        return hmac.new(self._secret, b"csrf:" + session_id.encode(), hashlib.sha256).hexdigest()

    def set_session_cookies(self, response: Response, session_id: str) -> str:
        max_age = int(self.session_hours * 3600)
        csrf = self.csrf_token(session_id)
        response.set_cookie(
            SESSION_COOKIE,
            self._serializer.dumps(session_id),
            max_age=max_age,
            httponly=True,
            samesite="strict",
            secure=self.secure_cookies,
            path="/",
        )
        # readable by the page's script, which echoes it in the X-CSRF-Token header
        response.set_cookie(
            CSRF_COOKIE,
            csrf,
            max_age=max_age,
            httponly=False,
            samesite="strict",
            secure=self.secure_cookies,
            path="/",
        )
        return csrf

    @staticmethod
    def clear_session_cookies(response: Response) -> None:
        response.delete_cookie(SESSION_COOKIE, path="/")
        response.delete_cookie(CSRF_COOKIE, path="/")

    def _session_id(self, cookie: str) -> str | None:
        try:
            value = self._serializer.loads(cookie, max_age=int(self.session_hours * 3600))
        except BadSignature:  # also covers SignatureExpired
            return None
        return value if isinstance(value, str) else None

    # ---- requests -----------------------------------------------------------------------------------

    @staticmethod
    def credential_key(request: Request) -> str | None:
        """A digest naming the credential the request carries (None: it carries none)."""
        header = request.headers.get("authorization")
        if header is not None:
            return "t:" + hashlib.sha256(header.encode()).hexdigest()
        cookie = request.cookies.get(SESSION_COOKIE)
        if cookie:
            return "s:" + hashlib.sha256(cookie.encode()).hexdigest()
        return None

    def cached(self, request: Request) -> Principal | None:
        key = self.credential_key(request)
        return self.cache.get(key) if key is not None else None

    def authenticate(self, request: Request) -> Principal | None:
        """Who sent the request (bearer token first, else the session cookie), or None. Reads the
        database unless the same credential was verified moments ago."""
        key = self.credential_key(request)
        if key is None:
            return None
        principal = self.cache.get(key) or self._verify(request)
        if principal is not None:
            self.cache.put(key, principal)
        return principal

    def _verify(self, request: Request) -> Principal | None:
        header = request.headers.get("authorization")
        if header is not None:
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token:
                return None
            user = self.users.authenticate_token(token.strip())
            return Principal(user, "token") if user is not None else None
        cookie = request.cookies.get(SESSION_COOKIE)
        if cookie:
            session_id = self._session_id(cookie)
            if session_id is not None:
                user = self.users.session_user(session_id)
                if user is not None:
                    return Principal(user, "session", session_id)
        return None

    def csrf_ok(self, request: Request, principal: Principal) -> bool:
        if principal.via != "session" or request.method in SAFE_METHODS:
            return True
        assert principal.session_id is not None
        sent = request.headers.get(CSRF_HEADER, "")
        cookie = request.cookies.get(CSRF_COOKIE, "")
        expected = self.csrf_token(principal.session_id)
        return bool(sent) and hmac.compare_digest(sent, cookie) and hmac.compare_digest(sent, expected)


def require(role: Role) -> Callable[[Request], Awaitable[Principal]]:
    """A FastAPI dependency admitting callers with at least ``role``."""

    async def dependency(request: Request) -> Principal:
        auth: Authenticator = request.app.state.auth
        # a cached credential is answered on the event loop; a database check goes to a worker thread
        principal = auth.cached(request) or await run_in_threadpool(auth.authenticate, request)
        if principal is None:
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                "log in, or send a valid API token as 'Authorization: Bearer sdl_...'",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if not auth.csrf_ok(request, principal):
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                f"missing or wrong {CSRF_HEADER} header: reload the page and try again",
            )
        if not principal.user.role.allows(role):
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                f"{principal.name} is {principal.user.role.value}; this needs {role.value}: ask an admin",
            )
        return principal

    dependency.__name__ = f"require_{role.value}"
    return dependency


# handler parameter types: ``who: Operator`` admits operators and admins
Observer = Annotated[Principal, Depends(require(Role.OBSERVER))]
Operator = Annotated[Principal, Depends(require(Role.OPERATOR))]
Admin = Annotated[Principal, Depends(require(Role.ADMIN))]
