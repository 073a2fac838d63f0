"""The operator console: a FastAPI app over the campaign store.

``create_app(store_url)`` wires the store, the user directory, the routes, the page and (unless told
not to) the scheduler and the notifier. The console never drives hardware itself: control actions are
requests in the store that the campaign process honours at its next checkpoint.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import sqlalchemy as sa
import structlog
from argon2 import PasswordHasher
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy.exc import SQLAlchemyError

from orchestrator.console import db
from orchestrator.console.auth import Authenticator
from orchestrator.console.feed import JournalFeed
from orchestrator.console.middleware import MAX_BODY_BYTES, BodyLimit, SecurityHeaders
from orchestrator.console.notify import Notifier, NotifyConfig, Sender
from orchestrator.console.routes import campaigns, control, schedules, session, stream, users
from orchestrator.console.scheduler import ConsoleScheduler, JobContext, set_job_context
from orchestrator.console.source import CampaignSource
from orchestrator.console.users import UserDirectory
from orchestrator.store import database_error_text, redacted

log = structlog.get_logger("orchestrator.console")

STATIC_DIR = Path(__file__).with_name("static")
SECRET_ENV = "SDL_CONSOLE_SECRET"
DB_WARNING_EVERY_S = 60.0  # a database outage is logged once this often, however many requests fail


def create_app(
    store_url: str,
    *,
    secret: str | None = None,
    session_hours: float = 12.0,
    secure_cookies: bool = False,
    background: bool = True,
    password_hasher: PasswordHasher | None = None,
    source: CampaignSource | None = None,
    notify: NotifyConfig | None = None,
    log_dir: Path | None = None,
    file_roots: list[Path] | None = None,
) -> FastAPI:
    """The console app.

    ``background=False`` keeps the scheduler paused (schedules are stored, none runs) and leaves out
    the notifier: for tests and for a second, read-mostly server on the same store. ``file_roots``:
    the folders scheduled starts may read protocol and rig files from (default $SDL_FILES, else the
    working directory).
    ``password_hasher`` defaults to argon2id at argon2-cffi's recommended cost; ``source`` to the
    campaign store at ``store_url``; ``notify`` to the SDL_NOTIFY_*/SDL_SMTP_* environment."""
    from orchestrator.store import normalise_url

    store_url = normalise_url(store_url)  # a plain SQLite path too, for every part below (the scheduler's job store)
    if source is None:
        # first: opening the store creates or upgrades its schema (and a SQLite file's folder)
        from orchestrator.console.store_source import StoreSource

        source = StoreSource(store_url)
    campaign_source = source
    engine = db.engine_for(store_url)
    db.ensure_console_schema(engine)
    directory = UserDirectory(engine, password_hasher)
    signing = secret or os.environ.get(SECRET_ENV) or directory.signing_secret()
    scheduler = ConsoleScheduler(store_url, file_roots, engine=engine)
    set_job_context(
        JobContext(
            request_control=lambda _url, c, action, who, why: campaign_source.request_control(
                c, action, who, why
            ),
            campaign_health=lambda _url, c: campaign_source.health(c),
            workdir=Path.cwd(),
            log_dir=log_dir,
        )
    )
    notify = notify if notify is not None else NotifyConfig.from_env()
    notifier = None
    if background and notify.enabled:
        notifier = Notifier(
            Sender(notify),
            fetch=lambda after, limit: campaign_source.events(None, after, limit),
            latest_id=campaign_source.latest_event_id,
            load_cursor=lambda: directory.setting("notify_cursor"),
            save_cursor=lambda value: directory.set_setting("notify_cursor", value),
        )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        scheduler.start(paused=not background)
        start_source = getattr(campaign_source, "start", None)
        if start_source is not None:
            start_source()  # e.g. StoreSource renews the views pages read in the background
        if notifier is not None:
            notifier.start()
        log.info("console up", store=redacted(store_url), background=background, notify=notify.enabled)
        try:
            yield
        finally:
            if notifier is not None:
                notifier.stop()
            scheduler.shutdown()
            stop_source = getattr(campaign_source, "stop", None)
            if stop_source is not None:
                stop_source()
            engine.dispose()

    app = FastAPI(
        title="sdl-orchestrator console",
        description="Watch and steer self-driving microfluidic campaigns. Roles: observer (read), "
        "operator (pause, resume, abort, e-stop, recalibrate, schedule), admin (users, tokens, e-stop clear). "
        "Scripts send 'Authorization: Bearer sdl_...' (make one with `sdl users token NAME`).",
        version="1",
        lifespan=lifespan,
    )
    app.state.store_url = store_url
    app.state.engine = engine
    app.state.auth = Authenticator(
        directory, signing, session_hours=session_hours, secure_cookies=secure_cookies
    )
    app.state.source = source
    app.state.feed = JournalFeed(source)
    app.state.scheduler = scheduler

    for module in (session, campaigns, control, schedules, stream, users):
        app.include_router(module.router)

    @app.get("/api/health", tags=["session"], summary="liveness and the database (no login needed)")
    def health() -> JSONResponse:
        try:
            with engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
        except SQLAlchemyError as exc:  # up, but with nothing to show: monitoring must see it
            return JSONResponse(status_code=503, content={"status": "database unreachable", "detail": database_error_text(exc)})
        return JSONResponse({"status": "ok"})

    outage = {"logged_at": -math.inf, "unlogged": 0}  # one warning a minute, not one per polling client

    @app.exception_handler(SQLAlchemyError)
    async def database_error(request: Request, exc: SQLAlchemyError) -> JSONResponse:
        """A database restart or a lost network: 503 in words (the page says it), not a bare 500 with a
        traceback in the log for every request. Logged once a minute, with the count of the others."""
        now = time.monotonic()
        if now - outage["logged_at"] >= DB_WARNING_EVERY_S:
            log.warning("database error", path=request.url.path, error=database_error_text(exc),
                        more_requests_failed=outage["unlogged"])
            outage.update(logged_at=now, unlogged=0)
        else:
            outage["unlogged"] += 1
        return JSONResponse(
            status_code=503,
            content={"detail": f"the database is unreachable ({database_error_text(exc)}); the console keeps trying: "
                               "reload in a minute"},
        )

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-store"})

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        """FastAPI's 422, except that a NaN or Infinity the client sent (Python's JSON reader takes
        them) is echoed as text: JSON has no such numbers, and failing to render them made a 500."""
        # without the input: it echoed whole bodies (30 MB of them) and the password of a failed login
        errors = [{k: v for k, v in e.items() if k not in ("input", "ctx", "url")} for e in exc.errors()]
        return JSONResponse(status_code=422, content={"detail": _json_safe(jsonable_encoder(errors))})

    app.add_middleware(SecurityHeaders)
    app.add_middleware(BodyLimit, max_bytes=MAX_BODY_BYTES)

    return app


def _json_safe(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)  # 'nan', 'inf', '-inf'
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    return value
