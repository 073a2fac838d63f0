"""Notifications: a webhook (JSON POST) and optional e-mail when a campaign faults, pauses, is
e-stopped or ends. A thread follows the journal from a cursor kept in the database, so a restarted
server neither repeats nor skips a notification.

Configured from the environment (``sdl serve`` passes flags through the same model):
SDL_NOTIFY_WEBHOOK, SDL_SMTP_HOST, SDL_SMTP_PORT, SDL_SMTP_USER, SDL_SMTP_PASSWORD, SDL_SMTP_STARTTLS,
SDL_MAIL_FROM, SDL_MAIL_TO (comma-separated). The SMTP password and the webhook's path (chat webhooks
carry their secret there) are never logged.
"""

from __future__ import annotations

import os
import smtplib
import threading
import time
from collections.abc import Callable, Sequence
from email.message import EmailMessage
from urllib.parse import urlsplit

import httpx
import structlog
from pydantic import BaseModel, Field, SecretStr, field_validator

from orchestrator.console.events import NOTIFY_CATEGORIES, ConsoleEvent

log = structlog.get_logger("orchestrator.console.notify")

CURSOR_KEY = "notify_cursor"


class NotifyConfig(BaseModel):
    webhook_url: str | None = None
    smtp_host: str | None = None
    smtp_port: int = Field(587, ge=1, le=65535)
    smtp_user: str | None = None
    smtp_password: SecretStr | None = None
    smtp_starttls: bool = True
    mail_from: str | None = None
    mail_to: list[str] = Field(default_factory=list)
    timeout_s: float = Field(5.0, gt=0)
    attempts: int = Field(3, ge=1, le=10)

    @field_validator("webhook_url")
    @classmethod
    def _http_only(cls, url: str | None) -> str | None:
        if url is not None and urlsplit(url).scheme not in ("http", "https"):
            raise ValueError("the webhook must be an http:// or https:// URL")
        return url

    @property
    def enabled(self) -> bool:
        return bool(self.webhook_url) or self.mail_enabled

    @property
    def mail_enabled(self) -> bool:
        return bool(self.smtp_host and self.mail_to)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> NotifyConfig:
        env = dict(os.environ if env is None else env)
        raw: dict[str, object] = {
            "webhook_url": env.get("SDL_NOTIFY_WEBHOOK") or None,
            "smtp_host": env.get("SDL_SMTP_HOST") or None,
            "smtp_user": env.get("SDL_SMTP_USER") or None,
            "smtp_password": env.get("SDL_SMTP_PASSWORD") or None,
            "mail_from": env.get("SDL_MAIL_FROM") or None,
            "mail_to": [a.strip() for a in env.get("SDL_MAIL_TO", "").split(",") if a.strip()],
        }
        if env.get("SDL_SMTP_PORT"):
            raw["smtp_port"] = int(env["SDL_SMTP_PORT"])
        if env.get("SDL_SMTP_STARTTLS"):
            raw["smtp_starttls"] = env["SDL_SMTP_STARTTLS"].lower() not in ("0", "false", "no")
        return cls.model_validate(raw)


def _where(url: str) -> str:
    """Scheme and host of a URL, for logs: chat webhooks carry their secret in the path."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}"


def payload(event: ConsoleEvent) -> dict[str, object]:
    return {
        "event": event.category,
        "kind": event.kind,
        "campaign_id": event.campaign_id,
        "campaign": event.campaign_name,
        "at": event.at.isoformat(),
        "who": event.who,
        "text": event.text,
        "summary": f"{event.about}: {event.text}",
    }


class Sender:
    """Delivers one event by webhook and e-mail, retrying a failed webhook with a short back-off."""

    def __init__(
        self,
        config: NotifyConfig,
        http: httpx.Client | None = None,
        smtp_factory: Callable[[str, int, float], smtplib.SMTP] = smtplib.SMTP,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.config = config
        self._http = http or httpx.Client(timeout=config.timeout_s)
        self._smtp_factory = smtp_factory
        self._sleep = sleep

    def send(self, event: ConsoleEvent) -> bool:
        ok = True
        if self.config.webhook_url:
            ok &= self._webhook(event)
        if self.config.mail_enabled:
            ok &= self._mail(event)
        return ok

    def _webhook(self, event: ConsoleEvent) -> bool:
        url = self.config.webhook_url
        assert url is not None
        for attempt in range(1, self.config.attempts + 1):
            try:
                response = self._http.post(url, json=payload(event))
                if response.status_code < 300:
                    log.info("webhook sent", to=_where(url), event_id=event.id, category=event.category)
                    return True
                problem = f"HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                problem = type(exc).__name__
            log.warning("webhook failed", to=_where(url), attempt=attempt, problem=problem, event_id=event.id)
            if attempt < self.config.attempts:
                self._sleep(0.5 * 2 ** (attempt - 1))
        return False

    def _mail(self, event: ConsoleEvent) -> bool:
        c = self.config
        assert c.smtp_host is not None
        message = EmailMessage()
        message["Subject"] = f"[sdl] {event.about}: {event.category}"
        message["From"] = c.mail_from or (c.smtp_user or "sdl-orchestrator")
        message["To"] = ", ".join(c.mail_to)
        message.set_content(
            f"{event.text}\n\ncampaign: {event.about}\n"
            f"when: {event.at:%Y-%m-%d %H:%M:%S} UTC\n"
        )
        try:
            with self._smtp_factory(c.smtp_host, c.smtp_port, c.timeout_s) as smtp:
                if c.smtp_starttls:
                    smtp.starttls()
                if c.smtp_user and c.smtp_password is not None:
                    smtp.login(c.smtp_user, c.smtp_password.get_secret_value())
                smtp.send_message(message)
        except (OSError, smtplib.SMTPException) as exc:
            log.warning("mail failed", host=c.smtp_host, problem=type(exc).__name__, event_id=event.id)
            return False
        log.info("mail sent", host=c.smtp_host, recipients=len(c.mail_to), event_id=event.id)
        return True


class Notifier:
    """Follows the journal and sends the events worth waking someone for.

    ``fetch(after_id, limit)`` returns journal events with ids above ``after_id`` in id order;
    ``latest_id()`` the newest id; ``load_cursor``/``save_cursor`` keep the position across restarts.
    """

    def __init__(
        self,
        sender: Sender,
        fetch: Callable[[int, int], Sequence[ConsoleEvent]],
        latest_id: Callable[[], int],
        load_cursor: Callable[[], str | None],
        save_cursor: Callable[[str], None],
        interval_s: float = 1.0,
    ) -> None:
        self.sender = sender
        self._fetch, self._latest_id = fetch, latest_id
        self._load_cursor, self._save_cursor = load_cursor, save_cursor
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def cursor(self) -> int:
        stored = self._load_cursor()
        if stored is None:
            # a new installation: notify from now on, not about the whole history
            start = self._latest_id()
            self._save_cursor(str(start))
            return start
        return int(stored)

    def poll_once(self) -> int:
        """Send what arrived since the cursor; returns how many events were notified."""
        after = self.cursor()
        sent = 0
        while True:
            events = self._fetch(after, 200)
            if not events:
                return sent
            for event in events:
                if event.category in NOTIFY_CATEGORIES:
                    self.sender.send(event)  # a failed delivery is logged, not retried forever
                    sent += 1
                after = event.id
                self._save_cursor(str(after))

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="sdl-notifier", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll_once()
            except Exception:  # the watcher must outlive a database hiccup
                log.exception("notifier poll failed")
            self._stop.wait(self.interval_s)
