"""Every route, every role: without credentials 401, below the route's role 403, and in both cases
nothing changes (no table row, no control request). The table of sample requests must cover every
route the app has, so a new route cannot slip in without its access rule being checked."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.routing import APIRoute
from sqlalchemy import MetaData, select

from orchestrator.console.users import Role

from .conftest import Console

OPEN_ROUTES = {("GET", "/api/health"), ("POST", "/api/session")}
REASON = {"reason": "role matrix"}

# (method, route path) -> (concrete path, JSON body); the path uses campaign 1 (running)
SAMPLES: dict[tuple[str, str], tuple[str, Any]] = {
    ("GET", "/api/session"): ("/api/session", None),
    ("DELETE", "/api/session"): ("/api/session", None),
    ("GET", "/api/campaigns"): ("/api/campaigns", None),
    ("GET", "/api/campaigns/{campaign_id}"): ("/api/campaigns/1", None),
    ("GET", "/api/campaigns/{campaign_id}/events"): ("/api/campaigns/1/events", None),
    ("GET", "/api/campaigns/{campaign_id}/spectra"): ("/api/campaigns/1/spectra", None),
    ("GET", "/api/campaigns/{campaign_id}/losses"): ("/api/campaigns/1/losses", None),
    ("GET", "/api/campaigns/{campaign_id}/bounds"): ("/api/campaigns/1/bounds", None),
    ("POST", "/api/campaigns/{campaign_id}/pause"): ("/api/campaigns/1/pause", REASON),
    ("POST", "/api/campaigns/{campaign_id}/resume"): ("/api/campaigns/1/resume", REASON),
    ("POST", "/api/campaigns/{campaign_id}/abort"): ("/api/campaigns/1/abort", REASON),
    ("POST", "/api/campaigns/{campaign_id}/estop"): ("/api/campaigns/1/estop", REASON),
    ("POST", "/api/campaigns/{campaign_id}/estop-clear"): ("/api/campaigns/1/estop-clear", REASON),
    ("POST", "/api/campaigns/{campaign_id}/recalibrate"): ("/api/campaigns/1/recalibrate", REASON),
    ("POST", "/api/estop"): ("/api/estop", REASON),
    ("GET", "/api/stream"): ("/api/stream", None),
    ("GET", "/api/schedules"): ("/api/schedules", None),
    ("POST", "/api/schedules"): (
        "/api/schedules",
        {"kind": "recalibrate", "campaign_id": "1", "every_minutes": 30},
    ),
    ("DELETE", "/api/schedules/{schedule_id}"): ("/api/schedules/nope", None),
    ("GET", "/api/users"): ("/api/users", None),
    ("POST", "/api/users"): (
        "/api/users",
        {"name": "newbie", "role": "observer", "password": "a long password"},
    ),
    ("PATCH", "/api/users/{name}"): ("/api/users/olga", {"role": "operator"}),
    ("GET", "/api/tokens"): ("/api/tokens", None),
    ("POST", "/api/users/{name}/tokens"): ("/api/users/olga/tokens", {"days": 1}),
    ("DELETE", "/api/tokens/{token_id}"): ("/api/tokens/nope", None),
    ("GET", "/api/audit"): ("/api/audit", None),
}


def _required_role(route: APIRoute) -> Role | None:
    names = {d.call.__name__ for d in route.dependant.dependencies if d.call is not None}
    roles = [r for r in Role if f"require_{r.value}" in names]
    assert len(roles) <= 1, route.path
    return roles[0] if roles else None


def _all_routes(routes: list[Any]) -> list[APIRoute]:
    """APIRoutes, looking inside included routers (FastAPI keeps them as wrappers of the original)."""
    found = []
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            found += _all_routes(inner.routes)
        elif isinstance(route, APIRoute):
            found.append(route)
    return found


def _api_routes(console: Console) -> list[tuple[str, str, Role | None]]:
    out = []
    for route in _all_routes(console.app.routes):  # type: ignore[attr-defined]
        if route.path.startswith("/api/"):
            for method in route.methods:
                out.append((method, route.path, _required_role(route)))
    return out


def test_the_walk_finds_what_openapi_documents(console: Console) -> None:
    documented = {
        (m.upper(), p)
        for p, ops in console.app.openapi()["paths"].items()
        for m in ops  # type: ignore[attr-defined]
    }
    assert documented == {(m, p) for m, p, _ in _api_routes(console)}


def _snapshot(console: Console) -> dict[str, list[tuple[Any, ...]]]:
    meta = MetaData()
    meta.reflect(console.users.engine)
    with console.users.engine.connect() as conn:
        tables = {
            name: sorted(map(tuple, conn.execute(select(t)).all()), key=repr)
            for name, t in meta.tables.items()
        }
    tables["control requests"] = list(console.source.requests)  # type: ignore[assignment]
    return tables


def test_every_route_has_a_sample_and_every_non_open_route_a_role(console: Console) -> None:
    routes = _api_routes(console)
    assert {(m, p) for m, p, _ in routes} == set(SAMPLES) | OPEN_ROUTES
    for method, path, role in routes:
        assert (role is None) == ((method, path) in OPEN_ROUTES), (method, path)


def test_the_roles_are_the_documented_ones(console: Console) -> None:
    roles = {(m, p): r for m, p, r in _api_routes(console)}
    assert roles[("POST", "/api/campaigns/{campaign_id}/estop")] is Role.OPERATOR  # never hard to hit
    assert roles[("POST", "/api/estop")] is Role.OPERATOR
    assert roles[("POST", "/api/campaigns/{campaign_id}/estop-clear")] is Role.ADMIN
    for action in ("pause", "resume", "abort", "recalibrate"):
        assert roles[("POST", f"/api/campaigns/{{campaign_id}}/{action}")] is Role.OPERATOR
    assert roles[("POST", "/api/schedules")] is Role.OPERATOR
    assert all(
        r is Role.ADMIN for (m, p), r in roles.items() if "/users" in p or "/tokens" in p or "/audit" in p
    )
    assert all(r is Role.OBSERVER for (m, p), r in roles.items() if m == "GET" and "campaigns" in p)


def test_refused_requests_change_nothing(console: Console) -> None:
    before = _snapshot(console)
    client = console.client()
    checked = 0
    for method, route_path, role in _api_routes(console):
        if role is None:
            continue
        path, body = SAMPLES[(method, route_path)]
        r = client.request(method, path, json=body)
        assert r.status_code == 401, (method, path, r.status_code)
        assert r.headers.get("www-authenticate") == "Bearer"
        for lower in [x for x in Role if not x.allows(role)]:
            r = client.request(method, path, json=body, headers=console.bearer(lower.value))
            assert r.status_code == 403, (method, path, lower, r.status_code)
            assert role.value in r.json()["detail"]
            checked += 1
    assert checked > 15
    assert _snapshot(console) == before


@pytest.mark.parametrize("role", list(Role))
def test_each_role_is_let_through_where_it_may(console: Console, role: Role) -> None:
    """Allowed calls are not refused for their role (they may still fail for their content: 404, 409)."""
    client = console.client()
    for method, route_path, needed in _api_routes(console):
        if needed is None or not role.allows(needed) or route_path == "/api/stream":
            continue  # the stream never ends: test_stream.py reads it
        if (method, route_path) == ("DELETE", "/api/session"):
            continue  # would be a no-op for a token and is tested with a session
        path, body = SAMPLES[(method, route_path)]
        r = client.request(method, path, json=body, headers=console.bearer(role.value))
        assert r.status_code not in (401, 403), (method, path, role, r.status_code, r.text)
        assert r.status_code < 500
