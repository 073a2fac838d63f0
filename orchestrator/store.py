"""The campaign store: campaigns, rounds, conditions, replicates, the event journal, control
requests and e-stop latches, in one SQL database (SQLAlchemy 2.x Core).

SQLite file by default (WAL, foreign keys on, a busy timeout, write transactions ``BEGIN IMMEDIATE``
so two processes never deadlock upgrading a read lock), PostgreSQL by URL
(``postgresql+psycopg://user@host/db``). The schema is created and upgraded by the Alembic
migrations in :mod:`orchestrator.migrations` whenever :func:`open_store` opens a store.

Every method that changes something does it in ONE transaction together with its journal event, so
the journal and the data never disagree, whatever moment a process is killed at. Event ids grow in
commit order (PostgreSQL: writers of events take a transaction-scoped advisory lock), so a reader
that polls ``events(after_id=last)`` never misses one. The API is agreed in
``/work/notes/STORE_API.md``; names listed there are never renamed.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import secrets
import socket
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa
import structlog
from sqlalchemy import event as sa_event
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, IntegrityError
from sqlalchemy.pool import StaticPool

from orchestrator import state
from orchestrator.state import InvalidTransition

log = structlog.get_logger(__name__)

DB_ENV = "SDL_DB_URL"
# the console and deploy/ read SDL_DB; honour it too so every part opens the same database
CONSOLE_DB_ENV = "SDL_DB"
FALLBACK_DB_URL = "sqlite:///runs/sdl.db"


def owner_is_dead(owner: str) -> bool:
    """Whether ``owner`` (``program@host:pid``) names a process on this host that no longer runs."""
    _, _, place = owner.rpartition("@")
    host, _, pid_text = place.rpartition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def default_db_url() -> str:
    """$SDL_DB_URL, else $SDL_DB, else ``sqlite:///runs/sdl.db`` (relative to the working directory)."""
    return os.environ.get(DB_ENV) or os.environ.get(CONSOLE_DB_ENV) or FALLBACK_DB_URL


DEFAULT_DB_URL = default_db_url()  # read at import; call default_db_url() for the current environment

# a claim without a heartbeat for this long is stale: its process is presumed dead
STALE_AFTER_S = 60.0
# heartbeat at least this often (a background thread in the runner), well inside STALE_AFTER_S
HEARTBEAT_EVERY_S = 15.0

CONDITION_STATUSES = ("planned", "measuring", "done", "failed")
ROUND_STATUSES = ("planned", "measuring", "done")

# PostgreSQL advisory-lock keys (arbitrary constants, one per purpose)
_PG_EVENTS_LOCK = 0x5D1_0001


# ---------------------------------------------------------------------------------------- errors


class StoreError(RuntimeError):
    """The store refused an operation; the message says why and what to do."""


class UnknownCampaign(StoreError, LookupError):
    def __init__(self, campaign_id: str) -> None:
        self.campaign_id = campaign_id
        super().__init__(f"no campaign {campaign_id!r} in this store: `sdl status` lists the campaigns")


class DuplicateReplicate(StoreError):
    """That (campaign, round, condition, attempt, replicate) is already stored: never measure twice."""


class CampaignClaimed(StoreError):
    """Another live process drives this campaign."""


class RigBusy(CampaignClaimed):
    """Another campaign on the same rig is driven by a live process: one campaign per rig at a time."""


class ClaimLost(StoreError):
    """This process no longer holds the campaign (another took it over after a stale heartbeat)."""


def _rig_busy_error(rig_name: str, other: CampaignRow, then: str) -> RigBusy:
    return RigBusy(
        f"rig {rig_name!r} is driving campaign {other.id} ({other.status}, by {other.owner}, "
        f"heartbeat at {other.heartbeat_at:%H:%M:%S} UTC): one campaign per rig at a time; {then}"
    )


# ---------------------------------------------------------------------------------------- rows


@dataclass(frozen=True)
class PlannedCondition:
    inputs: dict[str, float]
    source: str
    prediction: np.ndarray | None = None


@dataclass(frozen=True)
class CampaignRow:
    id: str
    name: str
    status: str
    reason: str
    status_by: str
    status_at: datetime
    protocol_yaml: str
    protocol_path: str
    rig_yaml: str
    rig_path: str
    rig_name: str
    seed: int
    options: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    owner: str | None = None
    heartbeat_at: datetime | None = None
    claimed_at: datetime | None = None
    queued_for_rig: str | None = None

    @property
    def campaign_id(self) -> str:
        return self.id

    @property
    def ended(self) -> bool:
        return self.status in state.ENDED

    @property
    def description(self) -> str:
        """``"paused by alice at 02:14: bubble in line"``"""
        return state.describe(self.status, self.reason, self.status_by, self.status_at)

    def is_live(self, now: datetime, stale_after_s: float = STALE_AFTER_S) -> bool:
        """Whether a process holds the campaign: it heartbeated within ``stale_after_s`` and, if it ran
        on this host, it still runs (a kill -9 leaves a fresh heartbeat behind for a minute)."""
        return (
            self.owner is not None
            and self.heartbeat_at is not None
            and now - self.heartbeat_at < timedelta(seconds=stale_after_s)
            and not owner_is_dead(self.owner)
        )


@dataclass(frozen=True)
class RoundRow:
    campaign_id: str
    index: int
    strategy: str
    bounds: dict[str, tuple[float, float]]
    notes: dict[str, Any]
    status: str  # planned | measuring | done
    planned_at: datetime
    finished_at: datetime | None = None
    bounds_next: dict[str, tuple[float, float]] | None = None


@dataclass(frozen=True)
class ConditionRow:
    campaign_id: str
    round: int
    index: int
    inputs: dict[str, float]
    source: str
    prediction: np.ndarray | None
    status: str  # planned | measuring | done | failed
    attempt: int
    median_loss: float | None
    mad: float | None
    accepted: int
    rates: dict[str, float] | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def failed(self) -> bool:
        return self.status == "failed"


@dataclass(frozen=True)
class RoundBrief:
    """A round without its notes: what a progress view needs."""

    index: int
    strategy: str
    bounds: dict[str, tuple[float, float]]


@dataclass(frozen=True)
class ConditionBrief:
    """A condition without its predicted spectrum and rates: what a progress view needs."""

    round: int
    index: int
    status: str
    attempt: int
    inputs: dict[str, float]
    median_loss: float | None
    accepted: int


@dataclass(frozen=True)
class CampaignProgress:
    """A campaign, its rounds and conditions read in one transaction, and the condition being measured."""

    campaign: CampaignRow
    rounds: list[RoundBrief]
    conditions: list[ConditionBrief]
    measuring: ConditionBrief | None
    replicates: int  # droplets (not set aside) of the measuring condition's current attempt

    @property
    def round_indices(self) -> list[int]:
        return [r.index for r in self.rounds]


@dataclass(frozen=True)
class Droplet:
    """One replicate's absorbance and verdict, without the raw counts."""

    index: int
    absorbance: np.ndarray
    loss: float | None
    accepted: bool


@dataclass(frozen=True)
class ReplicateRow:
    campaign_id: str
    round: int
    condition: int
    attempt: int
    index: int
    absorbance: np.ndarray
    raw: dict[str, np.ndarray]
    loss: float | None
    accepted: bool
    reject_reason: str | None
    set_aside: bool
    clock_s: float
    at: datetime
    set_aside_reason: str | None = None


@dataclass(frozen=True)
class ReplicateLoss:
    """A replicate without its arrays: what summaries and loss plots need."""

    round: int
    condition: int
    attempt: int
    index: int
    loss: float | None
    accepted: bool
    reject_reason: str | None
    set_aside: bool
    clock_s: float


@dataclass(frozen=True)
class CampaignTally:
    """How far a campaign has got, counted in SQL (no arrays loaded)."""

    rounds: int
    conditions: int
    conditions_done: int
    conditions_failed: int
    replicates: int  # measured and not set aside
    accepted: int
    set_aside: int = 0  # measured, then set aside (an aged or remeasured attempt): kept, not counted
    best_loss: float | None = None
    best_round: int | None = None
    best_condition: int | None = None


@dataclass(frozen=True)
class EventRow:
    id: int
    campaign_id: str | None
    at: datetime
    kind: str
    who: str
    reason: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ControlRow:
    id: int
    campaign_id: str
    action: str
    who: str
    reason: str
    at: datetime
    handled_at: datetime | None = None
    outcome: str | None = None


@dataclass(frozen=True)
class EstopRow:
    id: int
    rig: str | None  # None: every rig
    who: str
    reason: str
    at: datetime
    cleared_at: datetime | None = None
    cleared_by: str | None = None
    clear_reason: str | None = None


@dataclass(frozen=True)
class AgentRow:
    """A rig agent as the store knows it. ``seen_at``: its last sign of life, idle or driving
    (the heartbeat of the campaign it drives counts)."""

    owner: str
    rig: str
    started_at: datetime
    seen_at: datetime
    campaign_id: str | None
    stopped_at: datetime | None

    def is_live(self, now: datetime, stale_after_s: float = STALE_AFTER_S) -> bool:
        """Seen within ``stale_after_s``, not stopped, and (on this host) its process still runs."""
        return (
            self.stopped_at is None
            and now - self.seen_at < timedelta(seconds=stale_after_s)
            and not owner_is_dead(self.owner)
        )


# ---------------------------------------------------------------------------------------- schema


class UTCDateTime(sa.TypeDecorator[datetime]):
    """Timezone-aware UTC in, timezone-aware UTC out, on SQLite (naive text) and PostgreSQL alike."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: the store takes timezone-aware UTC times")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# integer primary keys that are 64-bit on PostgreSQL and ROWID aliases on SQLite
_BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

metadata = sa.MetaData()

campaigns_t = sa.Table(
    "campaigns",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("reason", sa.Text(), nullable=False),
    sa.Column("status_by", sa.String(200), nullable=False),
    sa.Column("status_at", UTCDateTime(), nullable=False),
    sa.Column("protocol_yaml", sa.Text(), nullable=False),
    sa.Column("protocol_path", sa.Text(), nullable=False),
    sa.Column("rig_yaml", sa.Text(), nullable=False),
    sa.Column("rig_path", sa.Text(), nullable=False),
    sa.Column("rig_name", sa.String(200), nullable=False),
    sa.Column("seed", sa.BigInteger(), nullable=False),
    sa.Column("options", sa.JSON(), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
    sa.Column("owner", sa.String(200), nullable=True),
    sa.Column("heartbeat_at", UTCDateTime(), nullable=True),
    sa.Column("claimed_at", UTCDateTime(), nullable=True),
    sa.Column("queued_for_rig", sa.String(200), nullable=True),
    sa.Index("ix_campaigns_status", "status"),
    sa.Index("ix_campaigns_queued_for_rig", "queued_for_rig"),
)

rounds_t = sa.Table(
    "rounds",
    metadata,
    sa.Column("id", _BigId, primary_key=True, autoincrement=True),
    sa.Column("campaign_id", sa.String(64), sa.ForeignKey("campaigns.id"), nullable=False),
    sa.Column("round_index", sa.Integer(), nullable=False),
    sa.Column("strategy", sa.String(100), nullable=False),
    sa.Column("bounds", sa.JSON(), nullable=False),
    sa.Column("notes", sa.JSON(), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("bounds_next", sa.JSON(), nullable=True),
    sa.Column("planned_at", UTCDateTime(), nullable=False),
    sa.Column("finished_at", UTCDateTime(), nullable=True),
    sa.UniqueConstraint("campaign_id", "round_index", name="uq_rounds_campaign_round"),
)

conditions_t = sa.Table(
    "conditions",
    metadata,
    sa.Column("id", _BigId, primary_key=True, autoincrement=True),
    sa.Column("campaign_id", sa.String(64), nullable=False),
    sa.Column("round_index", sa.Integer(), nullable=False),
    sa.Column("condition_index", sa.Integer(), nullable=False),
    sa.Column("inputs", sa.JSON(), nullable=False),
    sa.Column("source", sa.String(100), nullable=False),
    sa.Column("prediction", sa.LargeBinary(), nullable=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("attempt", sa.Integer(), nullable=False),
    sa.Column("median_loss", sa.Float(), nullable=True),
    sa.Column("mad", sa.Float(), nullable=True),
    sa.Column("accepted", sa.Integer(), nullable=False),
    sa.Column("rates", sa.JSON(), nullable=True),
    sa.Column("started_at", UTCDateTime(), nullable=True),
    sa.Column("finished_at", UTCDateTime(), nullable=True),
    sa.UniqueConstraint("campaign_id", "round_index", "condition_index", name="uq_conditions_key"),
    sa.ForeignKeyConstraint(
        ["campaign_id", "round_index"],
        ["rounds.campaign_id", "rounds.round_index"],
        name="fk_conditions_round",
    ),
)

replicates_t = sa.Table(
    "replicates",
    metadata,
    sa.Column("id", _BigId, primary_key=True, autoincrement=True),
    sa.Column("campaign_id", sa.String(64), nullable=False),
    sa.Column("round_index", sa.Integer(), nullable=False),
    sa.Column("condition_index", sa.Integer(), nullable=False),
    sa.Column("attempt", sa.Integer(), nullable=False),
    sa.Column("replicate_index", sa.Integer(), nullable=False),
    sa.Column("absorbance", sa.LargeBinary(), nullable=False),
    sa.Column("raw", sa.LargeBinary(), nullable=False),
    sa.Column("loss", sa.Float(), nullable=True),
    sa.Column("accepted", sa.Boolean(), nullable=False),
    sa.Column("reject_reason", sa.Text(), nullable=True),
    sa.Column("set_aside", sa.Boolean(), nullable=False),
    sa.Column("set_aside_reason", sa.Text(), nullable=True),
    sa.Column("clock_s", sa.Float(), nullable=False),
    sa.Column("at", UTCDateTime(), nullable=False),
    sa.UniqueConstraint(
        "campaign_id",
        "round_index",
        "condition_index",
        "attempt",
        "replicate_index",
        name="uq_replicates_key",
    ),
    sa.ForeignKeyConstraint(
        ["campaign_id", "round_index", "condition_index"],
        ["conditions.campaign_id", "conditions.round_index", "conditions.condition_index"],
        name="fk_replicates_condition",
    ),
)

events_t = sa.Table(
    "events",
    metadata,
    sa.Column("id", _BigId, primary_key=True, autoincrement=True),
    sa.Column("campaign_id", sa.String(64), sa.ForeignKey("campaigns.id"), nullable=True),
    sa.Column("at", UTCDateTime(), nullable=False),
    sa.Column("kind", sa.String(64), nullable=False),
    sa.Column("who", sa.String(200), nullable=False),
    sa.Column("reason", sa.Text(), nullable=False),
    sa.Column("data", sa.JSON(), nullable=False),
    sa.Index("ix_events_campaign_id", "campaign_id", "id"),
)

control_requests_t = sa.Table(
    "control_requests",
    metadata,
    sa.Column("id", _BigId, primary_key=True, autoincrement=True),
    sa.Column("campaign_id", sa.String(64), sa.ForeignKey("campaigns.id"), nullable=False),
    sa.Column("action", sa.String(32), nullable=False),
    sa.Column("who", sa.String(200), nullable=False),
    sa.Column("reason", sa.Text(), nullable=False),
    sa.Column("at", UTCDateTime(), nullable=False),
    sa.Column("handled_at", UTCDateTime(), nullable=True),
    sa.Column("outcome", sa.Text(), nullable=True),
    sa.Index("ix_control_requests_pending", "campaign_id", "handled_at"),
)

estops_t = sa.Table(
    "estops",
    metadata,
    sa.Column("id", _BigId, primary_key=True, autoincrement=True),
    sa.Column("rig", sa.String(200), nullable=True),
    sa.Column("who", sa.String(200), nullable=False),
    sa.Column("reason", sa.Text(), nullable=False),
    sa.Column("latched_at", UTCDateTime(), nullable=False),
    sa.Column("cleared_at", UTCDateTime(), nullable=True),
    sa.Column("cleared_by", sa.String(200), nullable=True),
    sa.Column("clear_reason", sa.Text(), nullable=True),
    sa.Index("ix_estops_active", "cleared_at"),
)

agents_t = sa.Table(
    "agents",
    metadata,
    sa.Column("owner", sa.String(200), primary_key=True),
    sa.Column("rig", sa.String(200), nullable=False),
    sa.Column("started_at", UTCDateTime(), nullable=False),
    sa.Column("seen_at", UTCDateTime(), nullable=False),
    sa.Column("campaign_id", sa.String(64), nullable=True),
    sa.Column("stopped_at", UTCDateTime(), nullable=True),
    sa.Index("ix_agents_rig", "rig"),
)


# ---------------------------------------------------------------------------------------- codecs


def array_to_bytes(a: np.ndarray | Sequence[float]) -> bytes:
    """float64 array -> ``.npy`` bytes (shape and dtype kept, no pickle)."""
    buf = io.BytesIO()
    np.save(buf, np.asarray(a, dtype=np.float64), allow_pickle=False)
    return buf.getvalue()


def array_from_bytes(blob: bytes) -> np.ndarray:
    return np.load(io.BytesIO(blob), allow_pickle=False)


def arrays_to_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    """{name: array} -> ``.npz`` bytes; each array keeps its dtype (raw counts may be integers)."""
    buf = io.BytesIO()
    np.savez(buf, **{str(k): np.asarray(v) for k, v in arrays.items()})
    return buf.getvalue()


def arrays_from_bytes(blob: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(blob), allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def jsonable(value: Any) -> Any:
    """Plain JSON for the journal: numpy scalars and arrays to Python, NaN/inf to None (PostgreSQL's
    json refuses them), tuples to lists, datetimes to ISO text."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        return jsonable(value.item())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    return value


def _bounds_json(bounds: Mapping[str, Sequence[float]]) -> dict[str, list[float]]:
    return {str(k): [float(v[0]), float(v[1])] for k, v in bounds.items()}


def _bounds_from(data: Mapping[str, Sequence[float]] | None) -> dict[str, tuple[float, float]] | None:
    if data is None:
        return None
    return {k: (float(v[0]), float(v[1])) for k, v in data.items()}


def _opt_float(value: float | None) -> float | None:
    return None if value is None else float(value)


def _event_row(r: Mapping[str, Any]) -> EventRow:
    return EventRow(
        id=r["id"],
        campaign_id=r["campaign_id"],
        at=r["at"],
        kind=r["kind"],
        who=r["who"],
        reason=r["reason"],
        data=dict(r["data"] or {}),
    )


def _estop_row(r: Mapping[str, Any]) -> EstopRow:
    return EstopRow(id=r["id"], rig=r["rig"], who=r["who"], reason=r["reason"], at=r["latched_at"],
                    cleared_at=r["cleared_at"], cleared_by=r["cleared_by"], clear_reason=r["clear_reason"])


# ---------------------------------------------------------------------------------------- engine


def normalise_url(url: str) -> str:
    """``postgresql://`` and ``postgres://`` mean psycopg 3 here (the only PostgreSQL driver installed);
    a plain file path (``runs/sdl.db``, ``~/lab.db``: no ``://``) means that SQLite file."""
    if "://" not in url and url.strip():
        return f"sqlite:///{Path(url).expanduser().resolve()}"
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def sqlite_file(url: str) -> Path | None:
    """The database file a ``sqlite:///`` URL names (None: another backend, or in memory)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def database_error_text(exc: BaseException) -> str:
    """A database error in one line: the driver's first line, without SQLAlchemy's SQL and link."""
    lines = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return lines[0][:300] if lines else type(exc).__name__


def redacted(url: str) -> str:
    """The store URL to print: its password hidden (a URL that cannot be parsed is not printed)."""
    try:
        return make_url(normalise_url(url)).render_as_string(hide_password=True)
    except ArgumentError:
        return "(an unreadable store URL)"


def make_engine(url: str) -> Engine:
    """An engine with the store's connection settings (SQLite: WAL, foreign keys, busy timeout, and
    ``BEGIN IMMEDIATE`` for write transactions)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return sa.create_engine(url, pool_pre_ping=True)
    database = parsed.database or ""
    in_memory = database in ("", ":memory:") or database.startswith("file::memory:")
    if in_memory:
        engine = sa.create_engine(url, poolclass=StaticPool, connect_args={"check_same_thread": False})
    else:
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": 30})

    @sa_event.listens_for(engine, "connect")
    def _sqlite_connect(dbapi_conn: Any, _record: object) -> None:
        # the driver's own implicit BEGIN is off: SQLAlchemy's "begin" event below emits it
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process kills
        cur.close()

    @sa_event.listens_for(engine, "begin")
    def _sqlite_begin(conn: Connection) -> None:
        # a writer takes the write lock up front: no deadlock between two read-then-write transactions
        mode = "IMMEDIATE" if conn.get_execution_options().get("sdl_write") else "DEFERRED"
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine


def open_store(
    url: str | None = None, *, clock: Callable[[], datetime] | None = None, upgrade: bool = True
) -> Store:
    """Open the store at ``url`` (default :func:`default_db_url`), creating or upgrading its schema
    with the Alembic migrations (``upgrade head``). ``clock`` returns the current UTC time (tests)."""
    from orchestrator import migrations  # late: alembic is only needed here

    url = normalise_url(url or default_db_url())
    engine = make_engine(url)
    if upgrade:
        migrations.upgrade(engine)
    return Store(engine, url, clock=clock)


# ---------------------------------------------------------------------------------------- store


class Store:
    """All reads and writes of campaign data. Thread-safe (one connection per call)."""

    def __init__(self, engine: Engine, url: str, *, clock: Callable[[], datetime] | None = None) -> None:
        self.engine = engine
        self.url = url
        self._clock = clock or (lambda: datetime.now(UTC))

    def now(self) -> datetime:
        return self._clock()

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({make_url(self.url).render_as_string(hide_password=True)!r})"

    # -- transactions

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            conn.execution_options(sdl_write=True)
            with conn.begin():
                yield conn

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn, conn.begin():
            yield conn

    def _event(
        self,
        conn: Connection,
        campaign_id: str | None,
        kind: str,
        *,
        who: str = "system",
        reason: str = "",
        data: Mapping[str, Any] | None = None,
    ) -> int:
        if conn.dialect.name == "postgresql":
            # ids in commit order: the lock is held until this transaction ends
            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_PG_EVENTS_LOCK)))
        result = conn.execute(
            events_t.insert().values(
                campaign_id=campaign_id,
                at=self.now(),
                kind=kind,
                who=who,
                reason=reason or "",
                data=jsonable(dict(data or {})),
            )
        )
        assert result.inserted_primary_key is not None
        return int(result.inserted_primary_key[0])

    def _campaign_row(self, conn: Connection, campaign_id: str, *, for_update: bool = False) -> CampaignRow:
        query = sa.select(campaigns_t).where(campaigns_t.c.id == campaign_id)
        if for_update and conn.dialect.name == "postgresql":
            query = query.with_for_update()
        row = conn.execute(query).mappings().first()
        if row is None:
            raise UnknownCampaign(campaign_id)
        return CampaignRow(**row)

    # -- campaigns

    def create_campaign(
        self,
        *,
        name: str,
        protocol_yaml: str,
        protocol_path: str,
        rig_yaml: str,
        rig_path: str,
        rig_name: str,
        seed: int,
        options: Mapping[str, Any],
        status: str = state.CREATED,
        who: str = "system",
    ) -> str:
        """Store a new campaign and return its id, e.g. ``c-20261129-0153-ab12``."""
        if status not in (state.CREATED, state.QUEUED, state.RUNNING):
            raise InvalidTransition(
                "(new)", status, f"a new campaign starts as created, queued or running, not {status!r}"
            )
        now = self.now()
        with self._write() as conn:
            while True:
                campaign_id = f"c-{now:%Y%m%d-%H%M}-{secrets.token_hex(2)}"
                taken = conn.execute(
                    sa.select(campaigns_t.c.id).where(campaigns_t.c.id == campaign_id)
                ).first()
                if taken is None:
                    break
            conn.execute(
                campaigns_t.insert().values(
                    id=campaign_id,
                    name=name,
                    status=status,
                    reason="",
                    status_by=who,
                    status_at=now,
                    protocol_yaml=protocol_yaml,
                    protocol_path=str(protocol_path),
                    rig_yaml=rig_yaml,
                    rig_path=str(rig_path),
                    rig_name=rig_name,
                    seed=int(seed),
                    options=jsonable(dict(options)),
                    created_at=now,
                    updated_at=now,
                    queued_for_rig=rig_name if status == state.QUEUED else None,
                )
            )
            self._event(
                conn,
                campaign_id,
                "campaign_created",
                who=who,
                data={
                    "name": name,
                    "status": status,
                    "rig": rig_name,
                    "seed": int(seed),
                    "protocol": str(protocol_path),
                },
            )
        log.info("campaign_created", campaign=campaign_id, name=name, rig=rig_name)
        return campaign_id

    def campaign(self, campaign_id: str) -> CampaignRow:
        with self._read() as conn:
            return self._campaign_row(conn, campaign_id)

    def campaigns(self) -> list[CampaignRow]:
        """Every campaign, newest first."""
        with self._read() as conn:
            rows = conn.execute(
                sa.select(campaigns_t).order_by(campaigns_t.c.created_at.desc(), campaigns_t.c.id.desc())
            ).mappings()
            return [CampaignRow(**r) for r in rows]

    def set_status(
        self,
        campaign_id: str,
        status: str,
        *,
        reason: str = "",
        who: str = "system",
        kind: str | None = None,
        data: Mapping[str, Any] | None = None,
    ) -> None:
        """Change the status (checked by :func:`orchestrator.state.check_transition`), with its
        reason, and journal it, in one transaction. Becoming ``running`` is refused while an e-stop
        latch holds the campaign's rig."""
        with self._write() as conn:
            row = self._campaign_row(conn, campaign_id, for_update=True)
            state.check_transition(row.status, status)
            if status == state.RUNNING:
                latch = self._active_latch(conn, row.rig_name)
                if latch is not None:
                    scope = "every rig" if latch.rig is None else f"rig {latch.rig!r}"
                    raise InvalidTransition(
                        row.status,
                        status,
                        f"an e-stop is latched on {scope} "
                        f"({state.describe('estop', latch.reason, latch.who, latch.at)}); "
                        "clear it with `sdl estop --clear --reason TEXT` before resuming",
                    )
            now = self.now()
            values: dict[str, Any] = {
                "status": status,
                "reason": reason or "",
                "status_by": who,
                "status_at": now,
                "updated_at": now,
            }
            if status == state.QUEUED:
                values["queued_for_rig"] = row.rig_name
            elif row.status == state.QUEUED:
                values["queued_for_rig"] = None
            conn.execute(campaigns_t.update().where(campaigns_t.c.id == campaign_id).values(**values))
            self._event(
                conn,
                campaign_id,
                kind or status,
                who=who,
                reason=reason,
                data={"from": row.status, "to": status, **dict(data or {})},
            )
        log.info("campaign_status", campaign=campaign_id, old=row.status, new=status, who=who, reason=reason)

    # -- claims: which process drives a campaign

    def claim(self, campaign_id: str, owner: str, *, stale_after_s: float = STALE_AFTER_S) -> None:
        """Take the campaign for ``owner`` (re-claiming your own is fine). Refused while another owner
        heartbeats within ``stale_after_s``, and for a campaign that has ended."""
        with self._write() as conn:
            row = self._campaign_row(conn, campaign_id, for_update=True)
            now = self.now()
            if row.ended:
                raise StoreError(f"campaign {campaign_id} is {row.status}: it is final, nothing to run")
            if row.owner not in (None, owner) and row.is_live(now, stale_after_s):
                raise CampaignClaimed(
                    f"campaign {campaign_id} is driven by {row.owner} (heartbeat at "
                    f"{row.heartbeat_at:%H:%M:%S} UTC); stop that process first, or wait "
                    f"{stale_after_s:.0f} s after it died"
                )
            other = self._rig_busy(conn, row.rig_name, owner, campaign_id, now)
            if other is not None:
                raise _rig_busy_error(row.rig_name, other, f"wait for it to end or abort it, then `sdl resume {campaign_id}`")
            conn.execute(
                campaigns_t.update()
                .where(campaigns_t.c.id == campaign_id)
                .values(owner=owner, heartbeat_at=now, claimed_at=now)
            )
            self._event(conn, campaign_id, "claimed", who=owner, data={"owner": owner, "previous": row.owner})

    def check_rig_free(
        self,
        rig_name: str,
        *,
        then: str = "wait for it to end, abort it, or queue this one for the rig's agent (sdl run --queue)",
    ) -> None:
        """Raise :class:`RigBusy` (its message ending in ``then``) while a live process drives a campaign
        on ``rig_name`` (``sdl run`` asks before it stores a campaign it could not run, the claim checks
        again under its lock; ``sdl hw`` asks before it talks to a device)."""
        with self._read() as conn:
            other = self._rig_busy(conn, rig_name, "", None, self.now())
        if other is not None:
            raise _rig_busy_error(rig_name, other, then)

    def _rig_busy(self, conn: Connection, rig_name: str, owner: str, except_id: str | None, now: datetime) -> CampaignRow | None:
        """Another campaign on ``rig_name`` that another live process drives (it holds the rig's pumps,
        also while held for an operator), or None. On PostgreSQL the rig's claims are serialised by a
        transaction-level advisory lock, so two processes cannot both find the rig free."""
        if conn.dialect.name == "postgresql":
            key = int.from_bytes(hashlib.blake2b(f"sdl-rig:{rig_name}".encode(), digest_size=8).digest(), "big", signed=True)
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
        c = campaigns_t.c
        query = sa.select(campaigns_t).where(
            c.rig_name == rig_name,
            c.owner.is_not(None),
            c.owner != owner,
            c.heartbeat_at > now - timedelta(seconds=STALE_AFTER_S),
            c.status.not_in(sorted(state.ENDED)),
        )
        if except_id is not None:
            query = query.where(c.id != except_id)
        # a process of this host that died (kill -9) holds nothing, whatever its last heartbeat says
        for r in conn.execute(query.order_by(c.heartbeat_at.desc())).mappings():
            if not owner_is_dead(r["owner"]):
                return CampaignRow(**r)
        return None

    def heartbeat(self, campaign_id: str, owner: str) -> None:
        """Prove ``owner`` is alive; raises :class:`ClaimLost` if another process took the campaign."""
        with self._write() as conn:
            done = conn.execute(
                campaigns_t.update()
                .where(campaigns_t.c.id == campaign_id, campaigns_t.c.owner == owner)
                .values(heartbeat_at=self.now())
            ).rowcount
            if not done:
                row = self._campaign_row(conn, campaign_id)
                raise ClaimLost(
                    f"campaign {campaign_id} is no longer held by {owner} (owner now: {row.owner or 'nobody'}); "
                    "stop driving the rig"
                )

    def release(self, campaign_id: str, owner: str) -> None:
        """Let go of the campaign (no-op if ``owner`` does not hold it)."""
        with self._write() as conn:
            done = conn.execute(
                campaigns_t.update()
                .where(campaigns_t.c.id == campaign_id, campaigns_t.c.owner == owner)
                .values(owner=None, heartbeat_at=None)
            ).rowcount
            if done:
                self._event(conn, campaign_id, "released", who=owner, data={"owner": owner})

    def live_owner(self, campaign_id: str, *, stale_after_s: float = STALE_AFTER_S) -> str | None:
        """The process driving the campaign now, or None if nobody heartbeats it or its process is gone
        from this host (a kill -9: its heartbeat stays fresh for a minute, and a request sent to it
        then would wait for whoever takes the campaign over)."""
        row = self.campaign(campaign_id)
        return row.owner if row.is_live(self.now(), stale_after_s) else None

    def claim_next(self, rig_name: str, owner: str, *, stale_after_s: float = STALE_AFTER_S) -> str | None:
        """For an agent: claim the oldest queued campaign for ``rig_name`` nobody live holds; its id or None.
        None as well while another process drives a campaign on that rig (one campaign per rig at a
        time: two would command the same pumps).

        The choice is made in SQL (one row, ``LIMIT 1``); on PostgreSQL that row is locked
        ``FOR UPDATE SKIP LOCKED`` and the rig's claims are serialised by an advisory lock, so agents
        claiming at once never take the same campaign nor two campaigns of one rig."""
        with self._write() as conn:
            now = self.now()
            if self._rig_busy(conn, rig_name, owner, None, now) is not None:
                return None  # the rig is driving another campaign: its agent picks the next one after
            stale_before = now - timedelta(seconds=stale_after_s)
            c = campaigns_t.c
            query = (
                sa.select(campaigns_t)
                .where(
                    c.status == state.QUEUED,
                    c.queued_for_rig == rig_name,
                    sa.or_(
                        c.owner.is_(None),
                        c.owner == owner,
                        c.heartbeat_at.is_(None),
                        c.heartbeat_at <= stale_before,
                    ),
                )
                .order_by(c.created_at, c.id)
                .limit(1)
            )
            if conn.dialect.name == "postgresql":
                query = query.with_for_update(skip_locked=True)
            r = conn.execute(query).mappings().first()
            if r is None:
                return None
            row = CampaignRow(**r)
            conn.execute(
                campaigns_t.update().where(c.id == row.id).values(owner=owner, heartbeat_at=now, claimed_at=now)
            )
            self._event(conn, row.id, "claimed", who=owner, data={"owner": owner, "previous": row.owner})
            return row.id

    # -- rounds and conditions

    def add_round(
        self,
        campaign_id: str,
        index: int,
        *,
        strategy: str,
        bounds: Mapping[str, Sequence[float]],
        conditions: Sequence[PlannedCondition],
        notes: Mapping[str, Any] | None = None,
    ) -> None:
        """Persist a planned batch: the round, its conditions and event ``batch_planned``, at once.
        A round index that already exists raises :class:`StoreError` (the batch is planned once)."""
        with self._write() as conn:
            self._campaign_row(conn, campaign_id, for_update=True)
            exists = conn.execute(
                sa.select(rounds_t.c.id).where(
                    rounds_t.c.campaign_id == campaign_id, rounds_t.c.round_index == index
                )
            ).first()
            if exists is not None:
                raise StoreError(
                    f"round {index} of campaign {campaign_id} is already planned; "
                    "resume it instead of planning it again"
                )
            now = self.now()
            conn.execute(
                rounds_t.insert().values(
                    campaign_id=campaign_id,
                    round_index=int(index),
                    strategy=strategy,
                    bounds=_bounds_json(bounds),
                    notes=jsonable(dict(notes or {})),
                    status="planned",
                    planned_at=now,
                )
            )
            if conditions:
                conn.execute(
                    conditions_t.insert(),
                    [
                        {
                            "campaign_id": campaign_id,
                            "round_index": int(index),
                            "condition_index": i,
                            "inputs": {str(k): float(v) for k, v in c.inputs.items()},
                            "source": c.source,
                            "prediction": None if c.prediction is None else array_to_bytes(c.prediction),
                            "status": "planned",
                            "attempt": 0,
                            "accepted": 0,
                        }
                        for i, c in enumerate(conditions)
                    ],
                )
            self._event(
                conn,
                campaign_id,
                "batch_planned",
                reason=str((notes or {}).get("fallback") or ""),  # why the strategy could not model it
                data={
                    "round": int(index),
                    "strategy": strategy,
                    "bounds": _bounds_json(bounds),
                    "conditions": [{"inputs": c.inputs, "source": c.source} for c in conditions],
                },
            )

    def rounds(self, campaign_id: str) -> list[RoundRow]:
        with self._read() as conn:
            self._campaign_row(conn, campaign_id)
            rows = conn.execute(
                sa.select(rounds_t)
                .where(rounds_t.c.campaign_id == campaign_id)
                .order_by(rounds_t.c.round_index)
            ).mappings()
            return [
                RoundRow(
                    campaign_id=r["campaign_id"],
                    index=r["round_index"],
                    strategy=r["strategy"],
                    bounds=_bounds_from(r["bounds"]) or {},
                    notes=dict(r["notes"] or {}),
                    status=r["status"],
                    planned_at=r["planned_at"],
                    finished_at=r["finished_at"],
                    bounds_next=_bounds_from(r["bounds_next"]),
                )
                for r in rows
            ]

    def conditions(self, campaign_id: str, round_index: int | None = None) -> list[ConditionRow]:
        with self._read() as conn:
            self._campaign_row(conn, campaign_id)
            query = sa.select(conditions_t).where(conditions_t.c.campaign_id == campaign_id)
            if round_index is not None:
                query = query.where(conditions_t.c.round_index == round_index)
            rows = conn.execute(
                query.order_by(conditions_t.c.round_index, conditions_t.c.condition_index)
            ).mappings()
            return [
                ConditionRow(
                    campaign_id=r["campaign_id"],
                    round=r["round_index"],
                    index=r["condition_index"],
                    inputs=dict(r["inputs"]),
                    source=r["source"],
                    prediction=None if r["prediction"] is None else array_from_bytes(r["prediction"]),
                    status=r["status"],
                    attempt=r["attempt"],
                    median_loss=r["median_loss"],
                    mad=r["mad"],
                    accepted=r["accepted"],
                    rates=None if r["rates"] is None else dict(r["rates"]),
                    started_at=r["started_at"],
                    finished_at=r["finished_at"],
                )
                for r in rows
            ]

    def _condition_key(self, campaign_id: str, round_index: int, condition_index: int) -> list[Any]:
        return [
            conditions_t.c.campaign_id == campaign_id,
            conditions_t.c.round_index == round_index,
            conditions_t.c.condition_index == condition_index,
        ]

    @staticmethod
    def _kept_of_attempt(campaign_id: str, round_index: int, condition_index: int, attempt: int) -> list[Any]:
        """Where-clauses for one attempt's replicates that are not set aside."""
        c = replicates_t.c
        return [
            c.campaign_id == campaign_id,
            c.round_index == round_index,
            c.condition_index == condition_index,
            c.attempt == attempt,
            c.set_aside.is_(False),
        ]

    def _require_condition(
        self, conn: Connection, campaign_id: str, round_index: int, condition_index: int
    ) -> None:
        found = conn.execute(
            sa.select(conditions_t.c.id).where(
                *self._condition_key(campaign_id, round_index, condition_index)
            )
        ).first()
        if found is None:
            self._campaign_row(conn, campaign_id)
            raise StoreError(
                f"campaign {campaign_id} has no planned round {round_index} condition {condition_index}; "
                "add_round must persist the batch before it is measured"
            )

    def start_condition(
        self,
        campaign_id: str,
        round_index: int,
        condition_index: int,
        attempt: int,
        *,
        rates: Mapping[str, float] | None = None,
    ) -> None:
        """Mark the condition measuring (attempt ``attempt``) and journal ``condition_started`` with the
        pump rates set for it (uL/min per pump or stream)."""
        with self._write() as conn:
            self._require_condition(conn, campaign_id, round_index, condition_index)
            now = self.now()
            rates_json = None if rates is None else {str(k): float(v) for k, v in rates.items()}
            conn.execute(
                conditions_t.update()
                .where(*self._condition_key(campaign_id, round_index, condition_index))
                .values(status="measuring", attempt=int(attempt), rates=rates_json, started_at=now)
            )
            conn.execute(
                rounds_t.update()
                .where(
                    rounds_t.c.campaign_id == campaign_id,
                    rounds_t.c.round_index == round_index,
                    rounds_t.c.status == "planned",
                )
                .values(status="measuring")
            )
            self._event(
                conn,
                campaign_id,
                "condition_started",
                data={
                    "round": round_index,
                    "condition": condition_index,
                    "attempt": attempt,
                    "rates": rates_json,
                },
            )

    def add_replicate(
        self,
        campaign_id: str,
        round_index: int,
        condition_index: int,
        attempt: int,
        replicate_index: int,
        *,
        absorbance: np.ndarray,
        raw: Mapping[str, np.ndarray],
        loss: float | None,
        accepted: bool,
        reject_reason: str | None,
        clock_s: float,
    ) -> None:
        """Store one measured replicate with event ``replicate_acquired``; the same key twice raises
        :class:`DuplicateReplicate`."""
        key = (campaign_id, round_index, condition_index, attempt, replicate_index)
        duplicate = DuplicateReplicate(
            f"campaign {campaign_id} round {round_index} condition {condition_index} attempt {attempt} "
            f"replicate {replicate_index} is already stored; a resumed run must continue after it"
        )
        loss_value = None if loss is None else float(loss)
        try:
            with self._write() as conn:
                self._require_condition(conn, campaign_id, round_index, condition_index)
                taken = conn.execute(
                    sa.select(replicates_t.c.id).where(
                        replicates_t.c.campaign_id == key[0],
                        replicates_t.c.round_index == key[1],
                        replicates_t.c.condition_index == key[2],
                        replicates_t.c.attempt == key[3],
                        replicates_t.c.replicate_index == key[4],
                    )
                ).first()
                if taken is not None:
                    raise duplicate
                conn.execute(
                    replicates_t.insert().values(
                        campaign_id=campaign_id,
                        round_index=int(round_index),
                        condition_index=int(condition_index),
                        attempt=int(attempt),
                        replicate_index=int(replicate_index),
                        absorbance=array_to_bytes(absorbance),
                        raw=arrays_to_bytes(raw),
                        loss=loss_value,
                        accepted=bool(accepted),
                        reject_reason=reject_reason,
                        set_aside=False,
                        clock_s=float(clock_s),
                        at=self.now(),
                    )
                )
                self._event(
                    conn,
                    campaign_id,
                    "replicate_acquired",
                    data={
                        "round": round_index,
                        "condition": condition_index,
                        "attempt": attempt,
                        "replicate": replicate_index,
                        "loss": loss_value,
                        "accepted": bool(accepted),
                        "reject_reason": reject_reason,
                        "clock_s": float(clock_s),
                    },
                )
        except IntegrityError as exc:  # a concurrent writer won the race for the same key
            raise duplicate from exc

    def replicates(
        self,
        campaign_id: str,
        round_index: int | None = None,
        condition_index: int | None = None,
        *,
        include_set_aside: bool = False,
    ) -> list[ReplicateRow]:
        """Replicates in measurement order (round, condition, attempt, index)."""
        with self._read() as conn:
            self._campaign_row(conn, campaign_id)
            c = replicates_t.c
            query = sa.select(replicates_t).where(c.campaign_id == campaign_id)
            if round_index is not None:
                query = query.where(c.round_index == round_index)
            if condition_index is not None:
                query = query.where(c.condition_index == condition_index)
            if not include_set_aside:
                query = query.where(c.set_aside.is_(False))
            query = query.order_by(c.round_index, c.condition_index, c.attempt, c.replicate_index)
            return [
                ReplicateRow(
                    campaign_id=r["campaign_id"],
                    round=r["round_index"],
                    condition=r["condition_index"],
                    attempt=r["attempt"],
                    index=r["replicate_index"],
                    absorbance=array_from_bytes(r["absorbance"]),
                    raw=arrays_from_bytes(r["raw"]),
                    loss=r["loss"],
                    accepted=bool(r["accepted"]),
                    reject_reason=r["reject_reason"],
                    set_aside=bool(r["set_aside"]),
                    clock_s=r["clock_s"],
                    at=r["at"],
                    set_aside_reason=r["set_aside_reason"],
                )
                for r in conn.execute(query).mappings()
            ]

    def replicate_losses(self, campaign_id: str, round_index: int | None = None) -> list[ReplicateLoss]:
        """Every replicate's loss and verdict, set-aside ones included, without loading arrays; in
        measurement order."""
        with self._read() as conn:
            self._campaign_row(conn, campaign_id)
            c = replicates_t.c
            query = sa.select(
                c.round_index,
                c.condition_index,
                c.attempt,
                c.replicate_index,
                c.loss,
                c.accepted,
                c.reject_reason,
                c.set_aside,
                c.clock_s,
            ).where(c.campaign_id == campaign_id)
            if round_index is not None:
                query = query.where(c.round_index == round_index)
            query = query.order_by(c.round_index, c.condition_index, c.attempt, c.replicate_index)
            return [
                ReplicateLoss(
                    round=r[0],
                    condition=r[1],
                    attempt=r[2],
                    index=r[3],
                    loss=r[4],
                    accepted=bool(r[5]),
                    reject_reason=r[6],
                    set_aside=bool(r[7]),
                    clock_s=r[8],
                )
                for r in conn.execute(query)
            ]

    def progress(self, campaign_id: str) -> CampaignProgress:
        """The campaign, its rounds, conditions and the measuring condition's droplet count in one read
        transaction, without the large columns (predicted spectra, raw counts) ``conditions`` decodes:
        a console polls this every few seconds."""
        with self._read() as conn:
            campaign = self._campaign_row(conn, campaign_id)
            r, c = rounds_t.c, conditions_t.c
            rounds = [
                RoundBrief(x.round_index, x.strategy, _bounds_from(x.bounds) or {})
                for x in conn.execute(
                    sa.select(r.round_index, r.strategy, r.bounds)
                    .where(r.campaign_id == campaign_id)
                    .order_by(r.round_index)
                )
            ]
            conditions = [
                ConditionBrief(
                    x.round_index, x.condition_index, x.status, x.attempt,
                    {k: float(v) for k, v in x.inputs.items()},
                    None if x.median_loss is None else float(x.median_loss), int(x.accepted or 0),
                )
                for x in conn.execute(
                    sa.select(c.round_index, c.condition_index, c.status, c.attempt, c.inputs, c.median_loss, c.accepted)
                    .where(c.campaign_id == campaign_id)
                    .order_by(c.round_index, c.condition_index)
                )
            ]
            measuring = next((x for x in reversed(conditions) if x.status == "measuring"), None)
            replicates = 0
            if measuring is not None:
                replicates = conn.execute(
                    sa.select(sa.func.count())
                    .select_from(replicates_t)
                    .where(*self._kept_of_attempt(campaign_id, measuring.round, measuring.index, measuring.attempt))
                ).scalar_one()
        return CampaignProgress(campaign, rounds, conditions, measuring, int(replicates))

    def latest_droplets(
        self, campaign_id: str, round_index: int, condition_index: int, attempt: int, limit: int
    ) -> list[Droplet]:
        """The last ``limit`` droplets (not set aside) of one attempt, oldest first, without the raw
        counts ``replicates`` decodes."""
        c = replicates_t.c
        query = (
            sa.select(c.replicate_index, c.absorbance, c.loss, c.accepted)
            .where(*self._kept_of_attempt(campaign_id, round_index, condition_index, attempt))
            .order_by(c.replicate_index.desc())
            .limit(limit)
        )
        with self._read() as conn:
            rows = conn.execute(query).all()
        return [Droplet(x.replicate_index, array_from_bytes(x.absorbance), x.loss, bool(x.accepted)) for x in reversed(rows)]

    def judge_outliers(
        self,
        campaign_id: str,
        round_index: int,
        condition_index: int,
        attempt: int,
        verdicts: Mapping[int, str | None],
        note: str | None = None,
    ) -> None:
        """Record the outlier verdicts of an attempt's replicates (replicate index -> reason, None: kept):
        each listed replicate is accepted or rejected accordingly, nothing is deleted; journaled as
        ``outliers_judged`` with the rejected indices (and ``note``, when the screen stood down)."""
        with self._write() as conn:
            self._require_condition(conn, campaign_id, round_index, condition_index)
            c = replicates_t.c
            for index, reason in verdicts.items():
                conn.execute(
                    replicates_t.update()
                    .where(
                        *self._kept_of_attempt(campaign_id, round_index, condition_index, attempt),
                        c.replicate_index == int(index),
                    )
                    .values(accepted=reason is None, reject_reason=reason)
                )
            rejected = sorted(int(i) for i, reason in verdicts.items() if reason is not None)
            self._event(
                conn,
                campaign_id,
                "outliers_judged",
                reason=note or "",
                data={"round": round_index, "condition": condition_index, "attempt": attempt, "rejected": rejected},
            )

    def set_aside(
        self, campaign_id: str, round_index: int, condition_index: int, attempt: int, reason: str
    ) -> None:
        """Set aside every replicate of that attempt (kept, but no longer counted), journaled."""
        with self._write() as conn:
            self._require_condition(conn, campaign_id, round_index, condition_index)
            count = conn.execute(
                replicates_t.update()
                .where(*self._kept_of_attempt(campaign_id, round_index, condition_index, attempt))
                .values(set_aside=True, set_aside_reason=reason)
            ).rowcount
            self._event(
                conn,
                campaign_id,
                "replicates_set_aside",
                reason=reason,
                data={"round": round_index, "condition": condition_index, "attempt": attempt, "count": count},
            )

    def finish_condition(
        self,
        campaign_id: str,
        round_index: int,
        condition_index: int,
        *,
        median_loss: float | None,
        mad: float | None,
        accepted: int,
        failed: bool,
        reason: str = "",
    ) -> None:
        """Record the condition's observation (median and MAD of accepted losses) or its failure;
        journals ``condition_done`` or ``condition_failed`` (``reason``: why it failed)."""
        status = "failed" if failed else "done"
        with self._write() as conn:
            self._require_condition(conn, campaign_id, round_index, condition_index)
            conn.execute(
                conditions_t.update()
                .where(*self._condition_key(campaign_id, round_index, condition_index))
                .values(
                    status=status,
                    median_loss=_opt_float(median_loss),
                    mad=_opt_float(mad),
                    accepted=int(accepted),
                    finished_at=self.now(),
                )
            )
            self._event(
                conn,
                campaign_id,
                f"condition_{status}",
                reason=reason,
                data={
                    "round": round_index,
                    "condition": condition_index,
                    "median_loss": median_loss,
                    "mad": mad,
                    "accepted": int(accepted),
                    "failed": failed,
                },
            )

    def finish_round(
        self, campaign_id: str, round_index: int, *, bounds_next: Mapping[str, Sequence[float]] | None = None
    ) -> None:
        """Mark the round done (``bounds_next``: the bounds the next round will use), journals ``round_done``."""
        with self._write() as conn:
            self._campaign_row(conn, campaign_id)
            done = conn.execute(
                rounds_t.update()
                .where(rounds_t.c.campaign_id == campaign_id, rounds_t.c.round_index == round_index)
                .values(
                    status="done",
                    finished_at=self.now(),
                    bounds_next=None if bounds_next is None else _bounds_json(bounds_next),
                )
            ).rowcount
            if not done:
                raise StoreError(f"campaign {campaign_id} has no round {round_index} to finish")
            self._event(
                conn,
                campaign_id,
                "round_done",
                data={
                    "round": round_index,
                    "bounds_next": None if bounds_next is None else _bounds_json(bounds_next),
                },
            )

    def tally(self, campaign_id: str) -> CampaignTally:
        """Counts of rounds, conditions and replicates, and the best condition so far."""
        with self._read() as conn:
            self._campaign_row(conn, campaign_id)
            rounds = conn.execute(
                sa.select(sa.func.count()).select_from(rounds_t).where(rounds_t.c.campaign_id == campaign_id)
            ).scalar_one()
            by_status = dict(
                conn.execute(
                    sa.select(conditions_t.c.status, sa.func.count())
                    .where(conditions_t.c.campaign_id == campaign_id)
                    .group_by(conditions_t.c.status)
                ).all()
            )
            rc = replicates_t.c
            replicates, accepted, set_aside = conn.execute(
                sa.select(
                    sa.func.coalesce(sa.func.sum(sa.case((rc.set_aside, 0), else_=1)), 0),
                    sa.func.coalesce(sa.func.sum(sa.case((sa.and_(rc.accepted, ~rc.set_aside), 1), else_=0)), 0),
                    sa.func.coalesce(sa.func.sum(sa.case((rc.set_aside, 1), else_=0)), 0),
                ).where(rc.campaign_id == campaign_id)
            ).one()
            cc = conditions_t.c
            best = conn.execute(
                sa.select(cc.round_index, cc.condition_index, cc.median_loss)
                .where(cc.campaign_id == campaign_id, cc.status == "done", cc.median_loss.is_not(None))
                .order_by(cc.median_loss, cc.round_index, cc.condition_index)
                .limit(1)
            ).first()
        return CampaignTally(
            rounds=int(rounds),
            conditions=int(sum(by_status.values())),
            conditions_done=int(by_status.get("done", 0)),
            conditions_failed=int(by_status.get("failed", 0)),
            replicates=int(replicates),
            accepted=int(accepted),
            set_aside=int(set_aside),
            best_loss=None if best is None else float(best[2]),
            best_round=None if best is None else int(best[0]),
            best_condition=None if best is None else int(best[1]),
        )

    # -- journal

    def journal(
        self,
        campaign_id: str | None,
        kind: str,
        *,
        who: str = "system",
        reason: str = "",
        data: Mapping[str, Any] | None = None,
    ) -> int:
        """Append an event (e.g. ``rates_set``, ``paused``) and return its id."""
        with self._write() as conn:
            if campaign_id is not None:
                self._campaign_row(conn, campaign_id)
            return self._event(conn, campaign_id, kind, who=who, reason=reason, data=data)

    def events(
        self,
        campaign_id: str | None = None,
        after_id: int = 0,
        limit: int = 200,
        *,
        exclude: Collection[str] = (),
    ) -> list[EventRow]:
        """Events with id > ``after_id``, oldest first (``campaign_id=None``: every campaign's and the
        rig-wide ones; ``exclude``: kinds left out)."""
        with self._read() as conn:
            query = sa.select(events_t).where(events_t.c.id > after_id)
            if campaign_id is not None:
                query = query.where(events_t.c.campaign_id == campaign_id)
            if exclude:
                query = query.where(events_t.c.kind.not_in(list(exclude)))
            rows = conn.execute(query.order_by(events_t.c.id).limit(limit)).mappings()
            return [_event_row(r) for r in rows]

    def recent_events(
        self,
        campaign_id: str | None = None,
        limit: int = 20,
        *,
        kind: str | None = None,
        exclude: Collection[str] = (),
    ) -> list[EventRow]:
        """The last ``limit`` events (of one campaign, or all; of one kind, or any but ``exclude``),
        oldest first."""
        with self._read() as conn:
            query = sa.select(events_t)
            if campaign_id is not None:
                query = query.where(events_t.c.campaign_id == campaign_id)
            if kind is not None:
                query = query.where(events_t.c.kind == kind)
            if exclude:
                query = query.where(events_t.c.kind.not_in(list(exclude)))
            rows = conn.execute(query.order_by(events_t.c.id.desc()).limit(limit)).mappings().all()
            return [_event_row(r) for r in reversed(rows)]

    def claimed_since(self, owner: str, since: datetime) -> bool:
        """Whether ``owner`` has taken a campaign (to run it) at or after ``since``."""
        with self._read() as conn:
            query = sa.select(events_t.c.id).where(
                events_t.c.kind == "claimed", events_t.c.who == owner, events_t.c.at >= since
            )
            return conn.execute(query.limit(1)).first() is not None

    def latest_event_id(self) -> int:
        with self._read() as conn:
            return int(conn.execute(sa.select(sa.func.coalesce(sa.func.max(events_t.c.id), 0))).scalar_one())

    # -- control requests

    def request_control(self, campaign_id: str, action: str, *, who: str, reason: str) -> int:
        """Ask the process running the campaign for ``action`` (honoured at its next checkpoint);
        journals ``control_requested``. Returns the request id."""
        if action not in state.CONTROL_ACTIONS:
            raise StoreError(
                f"unknown control action {action!r}: use one of {', '.join(sorted(state.CONTROL_ACTIONS))}"
            )
        with self._write() as conn:
            row = self._campaign_row(conn, campaign_id)
            if row.ended:
                raise InvalidTransition(
                    row.status,
                    row.status,
                    f"campaign {campaign_id} is {row.status}: it is final, nothing to {action}",
                )
            result = conn.execute(
                control_requests_t.insert().values(
                    campaign_id=campaign_id, action=action, who=who, reason=reason or "", at=self.now()
                )
            )
            assert result.inserted_primary_key is not None
            request_id = int(result.inserted_primary_key[0])
            self._event(
                conn,
                campaign_id,
                "control_requested",
                who=who,
                reason=reason,
                data={"request_id": request_id, "action": action},
            )
        return request_id

    def pending_controls(self, campaign_id: str) -> list[ControlRow]:
        """Requests not yet handled, oldest first."""
        with self._read() as conn:
            c = control_requests_t.c
            rows = conn.execute(
                sa.select(control_requests_t)
                .where(c.campaign_id == campaign_id, c.handled_at.is_(None))
                .order_by(c.id)
            ).mappings()
            return [ControlRow(**r) for r in rows]

    def close_pending_controls(self, campaign_id: str, outcome: str, *, action: str | None = None) -> int:
        """Close the campaign's pending requests (those for ``action``, or all) with ``outcome``, each
        journaled; how many were closed."""
        pending = [p for p in self.pending_controls(campaign_id) if action is None or p.action == action]
        for request in pending:
            self.mark_control_handled(request.id, outcome)
        return len(pending)

    def mark_control_handled(self, request_id: int, outcome: str) -> None:
        """Close a request with what came of it ("paused", "refused: already paused"); journals
        ``control_handled``. Closing a closed request again changes nothing."""
        with self._write() as conn:
            c = control_requests_t.c
            row = conn.execute(sa.select(control_requests_t).where(c.id == request_id)).mappings().first()
            if row is None:
                raise StoreError(f"no control request {request_id}")
            if row["handled_at"] is not None:
                return
            conn.execute(
                control_requests_t.update()
                .where(c.id == request_id)
                .values(handled_at=self.now(), outcome=outcome)
            )
            self._event(
                conn,
                row["campaign_id"],
                "control_handled",
                data={"request_id": request_id, "action": row["action"], "by": row["who"], "outcome": outcome},
            )

    # -- rig agents

    def agent_seen(self, owner: str, rig: str, campaign_id: str | None = None) -> None:
        """An agent's sign of life (every idle poll, and as it starts and ends a campaign)."""
        now = self.now()
        with self._write() as conn:
            done = conn.execute(
                agents_t.update().where(agents_t.c.owner == owner)
                .values(rig=rig, seen_at=now, campaign_id=campaign_id, stopped_at=None)
            ).rowcount
            if not done:
                conn.execute(agents_t.insert().values(owner=owner, rig=rig, started_at=now, seen_at=now,
                                                      campaign_id=campaign_id))

    def agent_stopped(self, owner: str) -> None:
        now = self.now()
        with self._write() as conn:
            conn.execute(agents_t.update().where(agents_t.c.owner == owner)
                         .values(seen_at=now, stopped_at=now, campaign_id=None))

    def agents(self, rig: str | None = None) -> list[AgentRow]:
        """The agents of ``rig`` (None: every rig), most recently seen first; an agent driving a
        campaign counts as seen at that campaign's latest heartbeat while it holds the claim."""
        a, c = agents_t.c, campaigns_t.c
        query = sa.select(agents_t, c.heartbeat_at, c.owner.label("claim_owner")).select_from(
            agents_t.outerjoin(campaigns_t, c.id == a.campaign_id))
        if rig is not None:
            query = query.where(a.rig == rig)
        out = []
        with self._read() as conn:
            for r in conn.execute(query).mappings():
                seen = r["seen_at"]
                if r["claim_owner"] == r["owner"] and r["heartbeat_at"] is not None:
                    seen = max(seen, r["heartbeat_at"])
                out.append(AgentRow(owner=r["owner"], rig=r["rig"], started_at=r["started_at"], seen_at=seen,
                                    campaign_id=r["campaign_id"], stopped_at=r["stopped_at"]))
        return sorted(out, key=lambda g: g.seen_at, reverse=True)

    def queue_note(self, rig: str) -> str:
        """Why a campaign queued for ``rig`` is (not) being picked up: '' when a live agent serves the
        rig, else what to do."""
        now = self.now()
        agents = self.agents(rig)
        if any(g.is_live(now) for g in agents):
            return ""
        if not agents:
            return f"no agent has served rig {rig} yet: start one with `sdl agent --rig {rig}`"
        last = agents[0]
        gone = f"stopped at {last.stopped_at:%Y-%m-%d %H:%M} UTC" if last.stopped_at else \
            f"silent since {last.seen_at:%Y-%m-%d %H:%M} UTC"
        return f"no live agent for rig {rig} (the last, {last.owner}, {gone}): start `sdl agent --rig {rig}`"

    def has_live_agent(self, rig: str) -> bool:
        """Whether a live `sdl agent` serves ``rig`` (it runs what is queued for the rig)."""
        now = self.now()
        return any(agent.is_live(now) for agent in self.agents(rig))

    def waiting_note(self, row: CampaignRow) -> str:
        """Why a campaign that should move does not, and what to do: a queued one with no live agent
        for its rig (:meth:`queue_note`), a running one whose process stopped heartbeating. '' else."""
        if row.status == state.QUEUED:
            return self.queue_note(row.queued_for_rig or row.rig_name)
        now = self.now()
        dead = bool(row.owner) and owner_is_dead(row.owner)  # killed on this host: known at once
        if row.status not in state.ACTIVE or row.is_live(now):
            return ""
        who = (f"{row.owner} is no longer running on this host" if dead
               else f"{row.owner} fell silent at {row.heartbeat_at:%Y-%m-%d %H:%M} UTC"
               if row.owner and row.heartbeat_at else "no process drives it")
        then = (f"the live agent of rig {row.rig_name} marks it orphaned and resumes it" if self.has_live_agent(row.rig_name)
                else f"`sdl resume {row.id}` continues it here, or `sdl agent --rig {row.rig_name}` resumes it")
        return f"no live process: {who}; {then}"

    # -- e-stop latch

    def _active_latch(self, conn: Connection, rig: str | None) -> EstopRow | None:
        c = estops_t.c
        scope = c.rig.is_(None) if rig is None else sa.or_(c.rig.is_(None), c.rig == rig)
        row = (
            conn.execute(sa.select(estops_t).where(c.cleared_at.is_(None), scope).order_by(c.id).limit(1))
            .mappings()
            .first()
        )
        return None if row is None else _estop_row(row)

    def latch_estop(self, *, who: str, reason: str, rig: str | None = None) -> int:
        """Latch an e-stop on ``rig`` (None: every rig); journals ``estop``. Returns the latch id.
        Running campaigns see it at once (:meth:`estop_latched`) and stop their pumps."""
        with self._write() as conn:
            result = conn.execute(
                estops_t.insert().values(rig=rig, who=who, reason=reason or "", latched_at=self.now())
            )
            assert result.inserted_primary_key is not None
            latch_id = int(result.inserted_primary_key[0])
            self._event(conn, None, "estop", who=who, reason=reason, data={"rig": rig, "estop_id": latch_id})
        log.warning("estop_latched", rig=rig or "*", who=who, reason=reason)
        return latch_id

    def estop_latched(self, rig: str | None) -> EstopRow | None:
        """The oldest uncleared latch that holds ``rig`` (its own or an every-rig one);
        ``rig=None`` asks about every-rig latches only."""
        with self._read() as conn:
            return self._active_latch(conn, rig)

    def last_cleared_estop(self, rig: str) -> EstopRow | None:
        """The latch on ``rig`` (its own or an every-rig one) cleared most recently: who cleared it, why."""
        c = estops_t.c
        with self._read() as conn:
            r = conn.execute(
                sa.select(estops_t)
                .where(c.cleared_at.is_not(None), sa.or_(c.rig.is_(None), c.rig == rig))
                .order_by(c.cleared_at.desc(), c.id.desc())
                .limit(1)
            ).mappings().first()
        return None if r is None else _estop_row(r)

    def active_estops(self) -> list[EstopRow]:
        """Every uncleared latch, oldest first."""
        with self._read() as conn:
            rows = conn.execute(
                sa.select(estops_t).where(estops_t.c.cleared_at.is_(None)).order_by(estops_t.c.id)
            ).mappings()
            return [_estop_row(r) for r in rows]

    def clear_estop(self, *, who: str, reason: str, rig: str | None = None) -> int:
        """Clear latches: ``rig=None`` clears every latch, ``rig="X"`` the latches on X only (an
        every-rig latch still holds X). A reason is required. Journals ``estop_cleared``; returns how
        many latches were cleared (0: nothing was latched, nothing journaled)."""
        if not reason or not reason.strip():
            raise StoreError("clearing an e-stop needs a reason (what was checked): --reason TEXT")
        with self._write() as conn:
            c = estops_t.c
            query = estops_t.update().where(c.cleared_at.is_(None))
            if rig is not None:
                query = query.where(c.rig == rig)
            count = conn.execute(
                query.values(cleared_at=self.now(), cleared_by=who, clear_reason=reason)
            ).rowcount
            if count:
                self._event(
                    conn, None, "estop_cleared", who=who, reason=reason, data={"rig": rig, "count": count}
                )
        if count:
            log.warning("estop_cleared", rig=rig or "*", who=who, reason=reason, count=count)
        return count
