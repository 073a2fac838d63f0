"""The console lets no one in: every control route against every kind of bad credential, secrets kept
out of every log line, and ``sdl serve`` on 127.0.0.1 unless told otherwise.

tests/orchestrator/console/test_roles.py walks every route without credentials and with too low a
role; this file adds the other attackers (forged, expired, revoked and mis-scoped tokens, forged or
stolen cookies without the CSRF header) on every route that changes something, and checks the whole
store and the control requests are unchanged afterwards.
"""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import structlog
from fastapi.testclient import TestClient
from itsdangerous import URLSafeTimedSerializer
from sqlalchemy import MetaData, select, update
from sqlalchemy.orm import Session

from orchestrator.cli import serve as serve_cli
from orchestrator.cli.main import build_parser
from orchestrator.console import create_app
from orchestrator.console.auth import CSRF_HEADER, SESSION_COOKIE
from orchestrator.console.models import ApiToken, BrowserSession, utcnow
from orchestrator.console.users import Role
from tests.orchestrator.console.fakes import FakeSource

from .badinput import API_PASSWORD, API_ROUTES

SECRET = "s" * 48
HASHER_KW = {"time_cost": 1, "memory_cost": 64, "parallelism": 1}
NAMES = {"observer": "olga", "operator": "otto", "admin": "ada"}
CHANGES = sorted({(m, r) for m, r, _ in API_ROUTES if m != "GET" and r != "/api/session"})


def _needed(method: str, route: str) -> Role:
    if route.startswith("/api/users") or route.startswith("/api/tokens") or route.endswith("estop-clear"):
        return Role.ADMIN
    return Role.OPERATOR


def _concrete(route: str) -> str:
    return route.format(campaign_id="1", name="olga", schedule_id="nope", token_id="nope")


def _body(method: str, route: str) -> Any:
    return next((body for m, r, body in API_ROUTES if (m, r) == (method, route)), None)


class Rig:
    """A console with one user per role, their tokens, and a logged-in session per role."""

    def __init__(self, root: Path) -> None:
        from argon2 import PasswordHasher

        self.source = FakeSource()
        self.app = create_app(
            f"sqlite:///{root / 'console.db'}",
            secret=SECRET,
            background=False,
            password_hasher=PasswordHasher(**HASHER_KW),
            source=self.source,
        )
        self.users = self.app.state.auth.users
        self.tokens: dict[str, str] = {}
        for role, name in NAMES.items():
            self.users.add_user(name, Role(role), API_PASSWORD, who="test")
            self.tokens[role], _ = self.users.issue_token(name, days=1, who="test")

    def client(self) -> TestClient:
        return TestClient(self.app)

    def session(self, role: str) -> tuple[TestClient, str]:
        client = self.client()
        r = client.post("/api/session", json={"name": NAMES[role], "password": API_PASSWORD})
        assert r.status_code == 200, r.text
        return client, r.json()["csrf"]

    def snapshot(self) -> dict[str, Any]:
        meta = MetaData()
        meta.reflect(self.users.engine)
        with self.users.engine.connect() as conn:
            tables = {
                name: sorted(map(repr, conn.execute(select(t)).all()))
                for name, t in meta.tables.items()
                if name != "console_sessions"  # logins made by this test open sessions
            }
        tables["control requests"] = list(self.source.requests)
        tables["campaigns"] = {k: c.state for k, c in self.source.campaigns.items()}
        tables["schedules"] = [s.id for s in self.app.state.scheduler.list()]
        return tables


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path)
    with TestClient(r.app):
        yield r


def _expire(rig: Rig, role: str) -> str:
    """A token of that role, expired in the store before it was ever used (so never cached)."""
    token, _ = rig.users.issue_token(NAMES[role], days=1, who="test")
    token_id = token.removeprefix("sdl_").split(".")[0]
    with Session(rig.users.engine) as db:
        db.execute(
            update(ApiToken).where(ApiToken.id == token_id).values(expires_at=utcnow() - timedelta(seconds=1))
        )
        db.commit()
    return token


def _attackers(rig: Rig, needed: Role) -> list[tuple[str, dict[str, str], dict[str, str], int]]:
    """(label, headers, cookies, expected status) for everyone who must be refused."""
    admin = rig.tokens["admin"]
    token_id, secret = admin.removeprefix("sdl_").split(".")
    low_id = rig.tokens["observer"].removeprefix("sdl_").split(".")[0]
    bearer = lambda t: {"Authorization": f"Bearer {t}"}  # noqa: E731
    out: list[tuple[str, dict[str, str], dict[str, str], int]] = [("no credentials", {}, {}, 401)]
    out += [(f"{r.value} token", bearer(rig.tokens[r.value]), {}, 403) for r in Role if not r.allows(needed)]
    forged = {
        "secret changed": admin[:-1] + ("A" if admin[-1] != "A" else "B"),
        "admin secret, observer id": f"sdl_{low_id}.{secret}",
        "unknown id": f"sdl_{'0' * 16}.{secret}",
        "no secret": f"sdl_{token_id}.",
        "no prefix": admin.removeprefix("sdl_"),
        "empty": "",
        "huge": "sdl_" + "x" * 10_000,
        "expired admin token": _expire(rig, "admin"),
    }
    out += [(f"forged token: {k}", bearer(v), {}, 401) for k, v in forged.items()]
    out.append(("basic auth with the admin token", {"Authorization": f"Basic {admin}"}, {}, 401))
    wrong_key = URLSafeTimedSerializer("k" * 48, salt="sdl-console-session").dumps("made-up")
    unknown = URLSafeTimedSerializer(SECRET, salt="sdl-console-session").dumps("made-up")
    out += [
        ("cookie signed with another key", {}, {SESSION_COOKIE: wrong_key}, 401),
        ("cookie naming no session", {}, {SESSION_COOKIE: unknown}, 401),
    ]
    return out


@pytest.mark.parametrize("method, route", CHANGES, ids=[f"{m} {r}" for m, r in CHANGES])
def test_every_change_refuses_every_attacker_and_nothing_changes(rig: Rig, method: str, route: str) -> None:
    needed = _needed(method, route)
    path, body = _concrete(route), _body(method, route)
    attackers = _attackers(rig, needed)
    before = rig.snapshot()
    for label, headers, cookies, expected in attackers:
        client = rig.client()
        for k, v in cookies.items():
            client.cookies.set(k, v)
        r = client.request(method, path, json=body, headers=headers)
        assert r.status_code == expected, (label, r.status_code, r.text)
    assert rig.snapshot() == before
    # a real admin session, stolen or ridden by another site: no CSRF header, or another session's
    victim, _ = rig.session("admin")
    _, other_csrf = rig.session("admin")
    after_logins = rig.snapshot()
    for headers in ({}, {CSRF_HEADER: other_csrf}, {CSRF_HEADER: ""}):
        r = victim.request(method, path, json=body, headers=headers)
        assert r.status_code == 403, (headers, r.status_code, r.text)
    assert rig.snapshot() == after_logins


def test_an_expired_session_cookie_is_refused_everywhere(rig: Rig) -> None:
    client, csrf = rig.session("admin")
    with Session(rig.users.engine) as db:
        db.execute(update(BrowserSession).values(expires_at=utcnow() - timedelta(seconds=1)))
        db.commit()
    cache = rig.app.state.auth.cache
    now = cache.clock()
    cache.clock = lambda: now + cache.ttl_s + 1
    before = rig.snapshot()
    for method, route in CHANGES:
        r = client.request(method, _concrete(route), json=_body(method, route), headers={CSRF_HEADER: csrf})
        assert r.status_code == 401, (method, route, r.status_code)
    assert rig.snapshot() == before


def test_the_matrix_can_tell_a_let_through(rig: Rig) -> None:
    """The same requests with the right credentials do change things: the refusals above are real."""
    before = rig.snapshot()
    r = rig.client().post(
        "/api/campaigns/1/pause",
        json={"reason": "matrix"},
        headers={"Authorization": f"Bearer {rig.tokens['operator']}"},
    )
    assert r.status_code == 202
    client, csrf = rig.session("admin")
    assert (
        client.post("/api/users", json=_body("POST", "/api/users"), headers={CSRF_HEADER: csrf}).status_code
        == 201
    )
    assert rig.snapshot() != before


# -- secrets and logs -------------------------------------------------------------------------------


@pytest.fixture
def all_logs(caplog: pytest.LogCaptureFixture) -> Iterator[io.StringIO]:
    """Everything the service would write: structlog rendered as JSON lines (as `sdl serve` does) and
    every stdlib logger (uvicorn, httpx, sqlalchemy, apscheduler) at DEBUG."""
    previous = structlog.get_config()
    out = io.StringIO()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    caplog.set_level(logging.DEBUG)
    try:
        yield out
    finally:
        structlog.configure(**previous)
        out.write("\n".join(r.getMessage() + repr(r.__dict__) for r in caplog.records))


def test_secrets_never_reach_any_log(tmp_path: Path, all_logs: io.StringIO) -> None:
    db_password = "pg-secret-pw-1234"
    password, new_password = "lou-password-xyz-1", "lou-password-xyz-2"
    r = Rig(tmp_path)
    # the store URL's password: a console on PostgreSQL logs where it is, never how it logs in
    from orchestrator.store import redacted

    line = json.dumps({"store": redacted(f"postgresql+psycopg://sdl:{db_password}@127.0.0.1/sdl")})
    structlog.get_logger("test").info("console up", store=json.loads(line)["store"])
    secrets_seen: list[str] = [db_password, password, new_password]
    with TestClient(r.app) as c:
        admin = {"Authorization": f"Bearer {r.tokens['admin']}"}
        c.post("/api/users", json={"name": "lou", "role": "operator", "password": password}, headers=admin)
        token = c.post("/api/users/lou/tokens", json={"days": 1}, headers=admin).json()["token"]
        c.get("/api/session", headers={"Authorization": f"Bearer {token}"})
        c.post(
            "/api/campaigns/1/pause",
            json={"reason": "log check"},
            headers={"Authorization": f"Bearer {token}"},
        )
        c.post("/api/session", json={"name": "lou", "password": "wrong-" + password})
        login = c.post("/api/session", json={"name": "lou", "password": password})
        csrf = login.json()["csrf"]
        cookie = c.cookies.get(SESSION_COOKIE)
        c.patch("/api/users/lou", json={"password": new_password}, headers=admin)
        c.get("/api/session", headers={"Authorization": f"Bearer {token[:-3]}xyz"})  # forged
        secrets_seen += [
            token,
            token.split(".")[1],
            csrf,
            cookie or "no-cookie",
            r.tokens["admin"].split(".")[1],
        ]
    text = all_logs.getvalue()
    assert "token issued" in text and "logged in" in text, "the actions above should have been logged"
    leaked = [s for s in secrets_seen if s and s in text]
    assert not leaked, f"secrets in the logs: {leaked}"
    assert "wrong-" + password not in text


@pytest.mark.postgres
def test_a_postgres_password_in_the_store_url_never_reaches_the_log(all_logs: io.StringIO) -> None:
    """The console on PostgreSQL logs where its store is (lifespan "console up"), never the password."""
    url = os.environ.get("SDL_TEST_POSTGRES_URL")
    if not url:
        pytest.skip("needs SDL_TEST_POSTGRES_URL (a PostgreSQL server; .ci/run starts one)")
    from argon2 import PasswordHasher
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.password is None:  # the CI cluster trusts local connections: any password is accepted
        parsed = parsed.set(password="pg-secret-in-the-url-77")
    secret = parsed.password
    assert secret
    app = create_app(
        parsed.render_as_string(hide_password=False),
        secret=SECRET,
        background=False,
        password_hasher=PasswordHasher(**HASHER_KW),
        source=FakeSource(),
    )
    with TestClient(app) as c:
        assert c.get("/api/health").status_code == 200
    text = all_logs.getvalue()
    assert "console up" in text and ":***@" in text  # the URL is there, its password masked
    assert str(secret) not in text


# -- binding ----------------------------------------------------------------------------------------


def _served_host(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, *extra: str) -> tuple[str, str]:
    seen: dict[str, Any] = {}
    monkeypatch.setattr(serve_cli.uvicorn, "run", lambda app, **kw: seen.update(kw))
    monkeypatch.setattr(serve_cli, "_json_logs", lambda level: None)  # leave the test's logging alone
    args = build_parser().parse_args(["serve", "--db", f"sqlite:///{tmp_path / 's.db'}", *extra])
    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    assert args.func(args) == 0
    return seen["host"], err.getvalue()


def test_sdl_serve_binds_loopback_by_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    host, err = _served_host(monkeypatch, tmp_path)
    assert host == "127.0.0.1"
    assert "other machines can reach" not in err


def test_sdl_serve_on_another_address_only_when_told_and_warns(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    host, err = _served_host(monkeypatch, tmp_path, "--host", "0.0.0.0")
    assert host == "0.0.0.0"
    assert "other machines can reach the console" in err
