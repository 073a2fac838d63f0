"""``sdl users`` and ``sdl serve``'s argument handling."""

from __future__ import annotations

import io

import pytest

from orchestrator.cli.main import main
from orchestrator.cli.serve import _is_loopback
from orchestrator.console import db
from orchestrator.console.users import Role, UserDirectory


def _directory(url: str) -> UserDirectory:
    return UserDirectory(db.engine_for(url))


def test_first_admin_and_a_token_from_the_shell(
    store_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("a long admin password\n"))
    assert main(["users", "add", "ada", "--role", "admin", "--password-stdin", "--db", store_url]) == 0
    assert main(["users", "token", "ada", "--days", "3", "--label", "cron", "--db", store_url]) == 0
    out = capsys.readouterr()
    token = out.out.strip()
    assert token.startswith("sdl_") and "\n" not in token  # stdout holds the token alone
    directory = _directory(store_url)
    assert directory.authenticate_token(token).role is Role.ADMIN  # type: ignore[union-attr]
    assert directory.verify_password("ada", "a long admin password") is not None
    assert directory.audit_log()[0].who.startswith("cli")
    assert "a long admin password" not in out.err + out.out


def test_a_token_revoked_from_the_shell(store_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """By its id as `sdl users list` shows it, or by the whole token pasted; an unknown id changes nothing."""
    assert main(["users", "add", "cron", "--role", "operator", "--no-password", "--db", store_url]) == 0
    assert main(["users", "token", "cron", "--db", store_url]) == 0
    first = capsys.readouterr().out.strip()
    assert main(["users", "token", "cron", "--db", store_url]) == 0
    second = capsys.readouterr().out.strip()
    directory = _directory(store_url)
    (first_id, second_id) = (t.removeprefix("sdl_").partition(".")[0] for t in (first, second))
    assert main(["users", "revoke", "nonsense", "--db", store_url]) == 2
    assert "no token 'nonsense'" in capsys.readouterr().err and directory.authenticate_token(first) is not None
    assert main(["users", "revoke", first_id, "--db", store_url]) == 0
    assert main(["users", "revoke", second, "--db", store_url]) == 0
    assert f"token {second_id} revoked" in capsys.readouterr().err
    assert directory.authenticate_token(first) is None and directory.authenticate_token(second) is None
    assert main(["users", "list", "--db", store_url]) == 0
    assert capsys.readouterr().out.count("revoked") == 2
    assert [a.action for a in directory.audit_log() if a.action == "token.revoke"] == ["token.revoke"] * 2


def test_users_set_and_list(
    store_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["users", "add", "bot", "--role", "observer", "--no-password", "--db", store_url]) == 0
    assert main(["users", "set", "bot", "--role", "operator", "--disable", "--db", store_url]) == 0
    assert main(["users", "list", "--db", store_url]) == 0
    listing = capsys.readouterr().out
    assert "bot" in listing and "operator" in listing and "disabled" in listing
    assert _directory(store_url).get_user("bot").disabled


def test_errors_are_one_line_and_exit_2(store_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["users", "token", "ghost", "--db", store_url]) == 2
    assert "no user 'ghost'" in capsys.readouterr().err
    assert main(["users", "add", "x", "--role", "observer", "--db", store_url]) == 2  # no tty, no stdin flag
    assert "--password-stdin" in capsys.readouterr().err


@pytest.mark.parametrize(
    "host, loopback",
    [("127.0.0.1", True), ("::1", True), ("localhost", True), ("0.0.0.0", False), ("lab-pc", False)],
)
def test_only_loopback_counts_as_private(host: str, loopback: bool) -> None:
    assert _is_loopback(host) is loopback
