"""Notifications: what is sent, where, with retries, from a cursor that survives restarts, and
without leaking the SMTP password or the webhook's secret path into the log."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import httpx
import pytest
from structlog.testing import capture_logs

from orchestrator.console.events import NOTIFY_CATEGORIES, ConsoleEvent
from orchestrator.console.notify import Notifier, NotifyConfig, Sender

WEBHOOK = "https://chat.example.org/hooks/T000/SECRETPATH"


def event(i: int, category: str, text: str = "fault: pump Q_seed stalled, retried 3 times") -> ConsoleEvent:
    return ConsoleEvent(i, "7", "ag_nanoprism", datetime(2026, 3, 2, 2, 14, tzinfo=UTC), "x", category, text)


class FakeSMTP:
    sent: list[tuple[str, object]] = []

    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.host = host

    def __enter__(self) -> FakeSMTP:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def starttls(self) -> None:
        FakeSMTP.sent.append(("starttls", None))

    def login(self, user: str, password: str) -> None:
        FakeSMTP.sent.append(("login", (user, password)))

    def send_message(self, message: object) -> None:
        FakeSMTP.sent.append(("message", message))


def http_recorder(statuses: list[int]) -> tuple[httpx.Client, list[dict]]:
    seen: list[dict] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        return httpx.Response(statuses.pop(0) if statuses else 200)

    return httpx.Client(transport=httpx.MockTransport(handler)), seen


def test_webhook_gets_json_and_retries_a_failure() -> None:
    client, seen = http_recorder([503, 200])
    sleeps: list[float] = []
    sender = Sender(NotifyConfig(webhook_url=WEBHOOK), http=client, sleep=sleeps.append)
    with capture_logs() as logs:
        assert sender.send(event(1, "fault")) is True
    assert len(seen) == 2 and sleeps == [0.5]
    body = seen[0]
    assert body["event"] == "fault" and body["campaign_id"] == "7"
    assert body["summary"] == "ag_nanoprism #7: fault: pump Q_seed stalled, retried 3 times"
    assert "SECRETPATH" not in repr(logs) and "chat.example.org" in repr(logs)


def test_a_lab_wide_event_and_an_abort_say_what_they_are() -> None:
    """A rig-wide event (an every-rig e-stop, a scheduled start that never ran) has no campaign: its
    summary read " #: ...". An abort went out as "finished", which a webhook filter reads as done."""
    from orchestrator import state
    from orchestrator.console.store_source import _CATEGORIES

    client, seen = http_recorder([])
    FakeSMTP.sent = []
    config = NotifyConfig(webhook_url=WEBHOOK, smtp_host="mail.lab", mail_to=["ops@lab"])
    failed = ConsoleEvent(
        2, "", "", datetime(2026, 3, 2, 2, 0, tzinfo=UTC), "schedule_failed", "fault", "scheduled start ... did not run"
    )
    assert Sender(config, http=client, smtp_factory=FakeSMTP).send(failed)
    assert seen[0]["summary"] == "lab: scheduled start ... did not run"
    assert FakeSMTP.sent[-1][1]["Subject"] == "[sdl] lab: fault"  # type: ignore[index]
    assert _CATEGORIES[state.ABORTED] == "aborted" != _CATEGORIES[state.FINISHED]
    assert {"aborted", "finished"} <= NOTIFY_CATEGORIES


def test_webhook_gives_up_after_its_attempts() -> None:
    client, seen = http_recorder([500, 500, 500])
    sender = Sender(NotifyConfig(webhook_url=WEBHOOK, attempts=3), http=client, sleep=lambda s: None)
    assert sender.send(event(1, "paused")) is False and len(seen) == 3


def test_mail_with_starttls_and_login_and_no_password_in_logs() -> None:
    FakeSMTP.sent = []
    config = NotifyConfig(
        smtp_host="mail.lab", smtp_user="sdl", smtp_password="hunter2-smtp", mail_to=["ops@lab", "me@lab"]
    )
    with capture_logs() as logs:
        assert (
            Sender(config, smtp_factory=FakeSMTP).send(event(1, "estop", "e-stopped by otto at 02:14"))
            is True
        )
    kinds = [k for k, _ in FakeSMTP.sent]
    assert kinds == ["starttls", "login", "message"]
    message = FakeSMTP.sent[-1][1]
    assert message["To"] == "ops@lab, me@lab" and "estop" in message["Subject"]  # type: ignore[index]
    assert "e-stopped by otto" in message.get_content()  # type: ignore[attr-defined]
    assert "hunter2-smtp" not in repr(logs) and "hunter2-smtp" not in repr(config)


def test_config_from_environment() -> None:
    config = NotifyConfig.from_env(
        {
            "SDL_NOTIFY_WEBHOOK": WEBHOOK,
            "SDL_SMTP_HOST": "m",
            "SDL_MAIL_TO": "a@x, b@x",
            "SDL_SMTP_PORT": "25",
            "SDL_SMTP_STARTTLS": "no",
        }
    )
    assert config.enabled and config.mail_enabled and config.mail_to == ["a@x", "b@x"]
    assert config.smtp_port == 25 and config.smtp_starttls is False
    assert not NotifyConfig.from_env({}).enabled
    with pytest.raises(ValueError, match="http"):
        NotifyConfig(webhook_url="ftp://x")


def test_notifier_sends_only_what_matters_once_from_a_kept_cursor() -> None:
    journal = [event(1, "progress"), event(2, "fault"), event(3, "info")]
    stored: dict[str, str] = {}
    sent: list[int] = []

    class Spy(Sender):
        def send(self, e: ConsoleEvent) -> bool:
            sent.append(e.id)
            return True

    def make() -> Notifier:
        return Notifier(
            Spy(NotifyConfig()),
            fetch=lambda after, limit: [e for e in journal if e.id > after][:limit],
            latest_id=lambda: journal[-1].id,
            load_cursor=lambda: stored.get("c"),
            save_cursor=lambda v: stored.__setitem__("c", v),
        )

    notifier = make()
    assert notifier.poll_once() == 0  # a new installation starts at the newest event, no history flood
    journal += [event(4, "paused"), event(5, "progress"), event(6, "finished"), event(7, "estop")]
    assert notifier.poll_once() == 3 and sent == [4, 6, 7]
    journal.append(event(8, "fault"))
    restarted = make()  # a restarted server goes on from the stored cursor
    assert restarted.poll_once() == 1 and sent == [4, 6, 7, 8]
    assert restarted.poll_once() == 0
