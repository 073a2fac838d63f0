"""User administration: the directory's rules, the admin routes, the audit trail, and that no
password or token ever reaches a log line."""

from __future__ import annotations

import pytest
from structlog.testing import capture_logs

from orchestrator.console.users import Role, UnknownUser, UserError

from .conftest import PASSWORD, Console


def test_roles_are_ordered() -> None:
    assert Role.ADMIN.allows(Role.OPERATOR) and Role.OPERATOR.allows(Role.OBSERVER)
    assert not Role.OBSERVER.allows(Role.OPERATOR) and not Role.OPERATOR.allows(Role.ADMIN)
    assert Role.parse(" Operator ") is Role.OPERATOR
    with pytest.raises(UserError, match="observer, operator, admin"):
        Role.parse("root")


@pytest.mark.parametrize(
    "name, password, match",
    [
        ("1abc", PASSWORD, "start with a letter"),
        ("a b", PASSWORD, "not allowed"),
        ("ok", "short", "at least 10"),
        ("ok", " padded password ", "white space"),
        ("ada", PASSWORD, "exists already"),
        ("ada\n", PASSWORD, "not allowed"),  # would read as a second "ada" in the journal
        ("Ada", PASSWORD, "user 'ada' exists already"),  # and so would this one
    ],
)
def test_bad_new_users_are_refused_with_a_reason(
    console: Console, name: str, password: str, match: str
) -> None:
    with pytest.raises(UserError, match=match):
        console.users.add_user(name, Role.OBSERVER, password, who="test")


def test_the_last_admin_cannot_be_demoted_or_disabled(console: Console) -> None:
    with pytest.raises(UserError, match="last active admin"):
        console.users.update_user("ada", "test", role=Role.OPERATOR)
    with pytest.raises(UserError, match="last active admin"):
        console.users.update_user("ada", "test", disabled=True)
    console.users.update_user("otto", "test", role=Role.ADMIN)
    assert console.users.update_user("ada", "test", role=Role.OPERATOR).role is Role.OPERATOR


def test_unknown_user_and_empty_change(console: Console) -> None:
    with pytest.raises(UnknownUser, match="sdl users list"):
        console.users.update_user("zed", "test", role=Role.ADMIN)
    with pytest.raises(UserError, match="nothing to change"):
        console.users.update_user("otto", "test")


def test_token_only_user_cannot_log_in(console: Console) -> None:
    console.users.add_user("robot", Role.OPERATOR, None, who="test")
    token, info = console.users.issue_token("robot", days=2, who="test")
    assert console.users.verify_password("robot", "") is None
    assert console.users.authenticate_token(token).name == "robot"  # type: ignore[union-attr]
    assert not info.expired and info.user == "robot"


@pytest.mark.parametrize("days", [0, -1, 100000])
def test_token_lifetime_is_bounded(console: Console, days: float) -> None:
    with pytest.raises(UserError, match="days"):
        console.users.issue_token("otto", days=days, who="test")


def test_password_change_ends_sessions_and_the_new_one_works(console: Console) -> None:
    client, _ = console.login("observer")
    console.users.update_user("olga", "test", password="a brand new secret")
    assert client.get("/api/session").status_code == 401
    assert console.users.verify_password("olga", "a brand new secret") is not None
    assert console.users.verify_password("olga", PASSWORD) is None


def test_admin_routes_add_change_list_and_audit(console: Console) -> None:
    c, h = console.client(), console.bearer("admin")
    r = c.post(
        "/api/users", json={"name": "pia", "role": "operator", "password": "pia's long pass"}, headers=h
    )
    assert r.status_code == 201 and r.json()["role"] == "operator"
    assert c.post("/api/users", json={"name": "pia", "role": "operator"}, headers=h).status_code == 400
    r = c.post("/api/users", json={"name": "q", "role": "king"}, headers=h)
    assert r.status_code == 422
    assert c.patch("/api/users/pia", json={"role": "observer"}, headers=h).json()["role"] == "observer"
    assert c.patch("/api/users/nobody", json={"role": "observer"}, headers=h).status_code == 404
    assert c.patch("/api/users/ada", json={"disabled": True}, headers=h).status_code == 400
    names = [u["name"] for u in c.get("/api/users", headers=h).json()]
    assert names == sorted(["ada", "olga", "otto", "pia"])
    r = c.post("/api/users/pia/tokens", json={"days": 7, "label": "plate reader"}, headers=h)
    assert r.status_code == 201
    token = r.json()["token"]
    assert c.get("/api/session", headers={"Authorization": f"Bearer {token}"}).json()["user"]["name"] == "pia"
    listed = c.get("/api/tokens", params={"user": "pia"}, headers=h).json()
    assert [t["label"] for t in listed] == ["plate reader"] and "token" not in listed[0]
    assert c.post("/api/users/nobody/tokens", json={"days": 1}, headers=h).status_code == 404
    assert c.delete("/api/tokens/nope", headers=h).status_code == 404
    audit = c.get("/api/audit", headers=h).json()
    assert audit[0]["action"] == "token.issue" and audit[0]["who"] == "ada"
    assert {"user.add", "user.update"} <= {a["action"] for a in audit}
    assert all("pia's long pass" not in a["detail"] for a in audit)


def test_passwords_and_tokens_never_reach_the_log(console: Console) -> None:
    secret_password = "s3cret-password-for-logs"
    with capture_logs() as logs:
        c, h = console.client(), console.bearer("admin")
        c.post("/api/users", json={"name": "lou", "role": "operator", "password": secret_password}, headers=h)
        token = c.post("/api/users/lou/tokens", json={"days": 1}, headers=h).json()["token"]
        c.get("/api/session", headers={"Authorization": f"Bearer {token}"})
        c.post("/api/session", json={"name": "lou", "password": secret_password})
        c.post("/api/session", json={"name": "lou", "password": "wrong-" + secret_password})
        c.patch("/api/users/lou", json={"password": secret_password + "2"}, headers=h)
    assert logs, "the actions above should have been logged"
    text = repr(logs)
    assert secret_password not in text
    assert token.split(".")[1] not in text
