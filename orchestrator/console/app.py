"""The operator console: a FastAPI app over the campaign store.

``create_app(store_url)`` wires the store, the user directory, the routes, the page and (unless told
not to) the scheduler and the notifier. The console never drives hardware itself: control actions are
requests in the store that the campaign process honours at its next checkpoint.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import structlog
from argon2 import PasswordHasher
from fastapi import FastAPI, Request, Response
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from orchestrator.console import db
from orchestrator.console.auth import Authenticator
from orchestrator.console.routes import session, users
from orchestrator.console.users import UserDirectory

log = structlog.get_logger("orchestrator.console")

STATIC_DIR = Path(__file__).with_name("static")
SECRET_ENV = "SDL_CONSOLE_SECRET"

# the page loads nothing from elsewhere; /docs (Swagger UI) is left out because FastAPI fetches it from a CDN
PAGE_CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


def create_app(
    store_url: str,
    *,
    secret: str | None = None,
    session_hours: float = 12.0,
    secure_cookies: bool = False,
    background: bool = True,
    password_hasher: PasswordHasher | None = None,
) -> FastAPI:
    """The console app. ``background=False`` leaves out the scheduler and the notifier (tests);
    ``password_hasher`` defaults to argon2id with argon2-cffi's recommended cost."""
    engine = db.engine_for(store_url)
    db.ensure_console_schema(engine)
    directory = UserDirectory(engine, password_hasher)
    signing = secret or os.environ.get(SECRET_ENV) or directory.signing_secret()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        log.info("console up", store=db.redacted(store_url), background=background)
        yield
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

    for module in (session, users):
        app.include_router(module.router)

    @app.get("/api/health", tags=["session"], summary="liveness (no login needed)")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-store"})

    @app.middleware("http")
    async def security_headers(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        response = await call_next(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault("X-Frame-Options", "DENY")
        if not request.url.path.startswith(("/docs", "/redoc")):
            response.headers.setdefault("Content-Security-Policy", PAGE_CSP)
        if request.url.path.startswith("/api/"):
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    return app
