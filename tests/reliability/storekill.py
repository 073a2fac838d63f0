"""The store losing power in the middle of a write: a child process that only writes replicates
(each one transaction: the replicate row and its ``replicate_acquired`` event) is SIGKILLed at a
random moment, and the store is opened again and checked.

Checked after every kill: the store opens (schema check and upgrade included); SQLite's
``PRAGMA integrity_check`` is ok; every replicate row has its event and every event its row (no
half-written transaction); the stored replicates are exactly 0..n-1 (none torn, none skipped); and the
writer can go on at n, as a resumed campaign would.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from dataclasses import dataclass

import numpy as np
import sqlalchemy as sa

from orchestrator.store import PlannedCondition, Store, events_t, open_store, replicates_t

WAVELENGTHS = 421


def new_campaign(store: Store) -> str:
    cid = store.create_campaign(
        name="storekill",
        protocol_yaml="name: storekill\n",
        protocol_path="/dev/null",
        rig_yaml="name: none\n",
        rig_path="/dev/null",
        rig_name=f"storekill-{os.getpid()}-{time.monotonic_ns()}",
        seed=0,
        options={},
    )
    store.add_round(
        cid, 0, strategy="lhs", bounds={"x": (0.0, 1.0)}, conditions=[PlannedCondition({"x": 0.5}, "lhs")]
    )
    return cid


def write_forever(url: str, campaign_id: str, start: int) -> None:
    """In the child: replicates start, start+1, ... until killed."""
    store = open_store(url, upgrade=False)
    rng = np.random.default_rng(start)
    i = start
    while True:
        spectrum = rng.random(WAVELENGTHS)
        store.add_replicate(
            campaign_id, 0, 0, 0, i,
            absorbance=spectrum, raw={"sample": spectrum * 4e4, "dark": spectrum, "reference": spectrum * 5e4},
            loss=float(spectrum[0]), accepted=True, reject_reason=None, clock_s=float(i),
        )  # fmt: skip
        i += 1


@dataclass(frozen=True)
class WriteKill:
    opened: bool
    integrity_ok: bool
    rows: int
    events: int
    contiguous: bool  # the stored indices are exactly 0..rows-1
    continues: bool  # the next replicate could be written


def kill_during_writes(url: str, campaign_id: str, delay_s: float) -> WriteKill:
    """Fork a writer, SIGKILL it after ``delay_s``, then check the store from this process."""
    before = _rows(url, campaign_id)
    pid = os.fork()
    if pid == 0:  # the child: never returns
        try:
            write_forever(url, campaign_id, before)
        finally:
            os._exit(1)
    time.sleep(delay_s)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    try:
        store = open_store(url)
    except Exception:  # noqa: BLE001 - a store that does not open is what this counts
        return WriteKill(False, False, 0, 0, False, False)
    try:
        ok = True
        if url.startswith("sqlite:///"):
            with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
                ok = conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        with store.engine.connect() as conn:
            indices = sorted(
                conn.execute(
                    sa.select(replicates_t.c.replicate_index).where(replicates_t.c.campaign_id == campaign_id)
                ).scalars()
            )
            events = conn.execute(
                sa.select(sa.func.count())
                .select_from(events_t)
                .where(events_t.c.campaign_id == campaign_id, events_t.c.kind == "replicate_acquired")
            ).scalar_one()
        n = len(indices)
        try:
            spectrum = np.zeros(WAVELENGTHS)
            store.add_replicate(
                campaign_id, 0, 0, 0, n, absorbance=spectrum, raw={}, loss=0.0, accepted=True,
                reject_reason=None, clock_s=float(n),
            )  # fmt: skip
            continues = True
        except Exception:  # noqa: BLE001
            continues = False
        return WriteKill(True, ok, n, int(events), indices == list(range(n)), continues)
    finally:
        store.engine.dispose()


def _rows(url: str, campaign_id: str) -> int:
    store = open_store(url, upgrade=False)
    try:
        with store.engine.connect() as conn:
            return int(
                conn.execute(
                    sa.select(sa.func.count())
                    .select_from(replicates_t)
                    .where(replicates_t.c.campaign_id == campaign_id)
                ).scalar_one()
            )
    finally:
        store.engine.dispose()
