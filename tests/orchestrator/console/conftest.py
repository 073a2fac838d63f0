"""Console fixtures: an app on a fresh SQLite store with one user per role and a token for each."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from fastapi.testclient import TestClient

from orchestrator.console import create_app
from orchestrator.console.users import Role, UserDirectory

from .fakes import FakeSource

PASSWORD = "correct horse battery"
# argon2id at its cheapest: the tests check the logic, not the cost of a guess
FAST_HASHER = PasswordHasher(time_cost=1, memory_cost=64, parallelism=1)


@dataclass
class Console:
    app: object
    url: str
    users: UserDirectory
    tokens: dict[str, str]  # role -> bearer token
    source: FakeSource

    def client(self) -> TestClient:
        return TestClient(self.app)  # type: ignore[arg-type]

    def bearer(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}

    def login(self, role: str) -> tuple[TestClient, str]:
        """A client logged in as the user of ``role``, and its CSRF token."""
        client = self.client()
        r = client.post("/api/session", json={"name": NAMES[role], "password": PASSWORD})
        assert r.status_code == 200, r.text
        return client, r.json()["csrf"]


NAMES = {"observer": "olga", "operator": "otto", "admin": "ada"}


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'store.db'}"


@pytest.fixture
def console(store_url: str) -> Iterator[Console]:
    source = FakeSource()
    app = create_app(store_url, secret="s" * 48, background=False, password_hasher=FAST_HASHER, source=source)
    directory: UserDirectory = app.state.auth.users
    tokens = {}
    for role, name in NAMES.items():
        directory.add_user(name, Role(role), PASSWORD, who="test")
        tokens[role], _ = directory.issue_token(name, days=1, who="test")
    with TestClient(app):  # runs the lifespan
        yield Console(app, store_url, directory, tokens, source)
