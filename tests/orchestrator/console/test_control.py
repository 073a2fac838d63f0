"""Control requests: state rules, reasons, audit (who, when, why) and e-stop for everyone."""

from __future__ import annotations

import pytest

from orchestrator.console.source import allowed_actions
from orchestrator.console.users import Role

from .conftest import Console


def test_pause_is_recorded_with_user_and_reason_and_shown_in_words(console: Console) -> None:
    client, csrf = console.login("operator")
    r = client.post(
        "/api/campaigns/1/pause", json={"reason": "bubble in line"}, headers={"X-CSRF-Token": csrf}
    )
    assert r.status_code == 202
    assert r.json()["who"] == "otto" and r.json()["reason"] == "bubble in line" and r.json()["at"]
    assert console.source.requests == [("1", "pause", "otto", "bubble in line")]
    listed = client.get("/api/campaigns").json()["campaigns"]
    assert listed[0]["reason"] == "paused by otto at 01:14: bubble in line"
    events = client.get("/api/campaigns/1/events").json()["events"]
    assert events[-2]["who"] == "otto" and "bubble in line" in events[-2]["text"]


@pytest.mark.parametrize("action", ["pause", "abort", "estop-clear"])
def test_actions_that_need_a_reason_refuse_without_one(console: Console, action: str) -> None:
    if action == "estop-clear":
        console.source.request_control("1", "estop", "test", "setup")
    before = list(console.source.requests)
    r = console.client().post(
        f"/api/campaigns/1/{action}", json={"reason": "   "}, headers=console.bearer("admin")
    )
    assert r.status_code == 422 and "reason" in r.json()["detail"]
    assert console.source.requests == before


def test_estop_needs_no_reason_and_is_allowed_to_operators(console: Console) -> None:
    r = console.client().post("/api/campaigns/1/estop", headers=console.bearer("operator"))  # no body at all
    assert r.status_code == 202 and r.json()["reason"] == "e-stop pressed"
    assert (
        console.client().get("/api/campaigns/1", headers=console.bearer("operator")).json()["state"]
        == "estopped"
    )


def test_only_an_admin_clears_an_estop(console: Console) -> None:
    console.client().post("/api/campaigns/1/estop", json={}, headers=console.bearer("operator"))
    body = {"reason": "line flushed, pumps checked"}
    assert (
        console.client()
        .post("/api/campaigns/1/estop-clear", json=body, headers=console.bearer("operator"))
        .status_code
        == 403
    )
    assert (
        console.client()
        .post("/api/campaigns/1/estop-clear", json=body, headers=console.bearer("admin"))
        .status_code
        == 202
    )


def test_actions_that_make_no_sense_now_get_409(console: Console) -> None:
    r = console.client().post("/api/campaigns/1/resume", json={}, headers=console.bearer("operator"))
    assert r.status_code == 409 and "running" in r.json()["detail"]
    r = console.client().post(
        "/api/campaigns/2/pause", json={"reason": "x"}, headers=console.bearer("operator")
    )
    assert r.status_code == 409 and "finished" in r.json()["detail"]
    assert console.source.requests == []


def test_unknown_campaign_is_404_everywhere(console: Console) -> None:
    c, h = console.client(), console.bearer("admin")
    for path in ("", "/events", "/spectra", "/losses", "/bounds"):
        assert c.get(f"/api/campaigns/99{path}", headers=h).status_code == 404, path
    assert c.post("/api/campaigns/99/pause", json={"reason": "x"}, headers=h).status_code == 404


def test_estop_all_stops_every_campaign_not_over(console: Console) -> None:
    r = console.client().post("/api/estop", json={}, headers=console.bearer("operator"))
    assert r.status_code == 202
    assert [s["campaign_id"] for s in r.json()["stopped"]] == ["1"]  # campaign 2 is finished
    assert console.source.requests == [("1", "estop", "otto", "e-stop all pressed")]


def test_detail_lists_what_the_caller_may_do(console: Console) -> None:
    get = lambda role: console.client().get("/api/campaigns/1", headers=console.bearer(role)).json()  # noqa: E731
    assert get("observer")["actions"] == []
    assert set(get("operator")["actions"]) == {"pause", "abort", "estop", "recalibrate"}
    assert get("admin")["active"] is True


def test_allowed_actions_by_state() -> None:
    assert allowed_actions("paused", Role.OPERATOR) == ["resume", "abort", "estop", "recalibrate"]
    assert allowed_actions("estopped", Role.OPERATOR) == ["abort", "estop"]
    assert "estop-clear" in allowed_actions("estopped", Role.ADMIN)
    assert allowed_actions("finished", Role.ADMIN) == []


def test_read_routes_return_what_the_page_draws(console: Console) -> None:
    c, h = console.client(), console.bearer("observer")
    spectra = c.get("/api/campaigns/1/spectra", params={"limit": 2}, headers=h).json()
    assert len(spectra["droplets"]) == 2 and len(spectra["target"]) == len(spectra["wavelengths_nm"])
    losses = c.get("/api/campaigns/1/losses", headers=h).json()
    assert [b["round"] for b in losses["best_so_far"]] == [1, 2, 3]
    bounds = c.get("/api/campaigns/1/bounds", headers=h).json()
    assert bounds["history"][-1]["widened"] == ["Q_seed"]
    events = c.get("/api/campaigns/1/events", params={"after": 3}, headers=h).json()["events"]
    assert [e["id"] for e in events] == [4, 5]
