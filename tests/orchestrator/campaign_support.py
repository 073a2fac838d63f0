"""Shared by the campaign engine's tests: the tiny protocol, rigs with faults, stores, fingerprints."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from orchestrator.store import Store, open_store

ROOT = Path(__file__).resolve().parents[2]
TINY = Path(__file__).resolve().parent / "fixtures" / "tiny_campaign.yaml"
SIM_RIG = ROOT / "deploy" / "rigs" / "simulated.yaml"
TARGET = ROOT / "protocols" / "targets" / "ag_nanoprism.csv"


def _merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def tiny_protocol(folder: Path, **changes: Any) -> Path:
    """The tiny protocol (2 rounds x 3 conditions x 3 replicates), changed as asked, in ``folder``."""
    data = yaml.safe_load(TINY.read_text())
    data["target"]["file"] = str(TARGET)
    data = _merge(data, changes)
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def rig_with_faults(
    folder: Path, *, pumps: dict[str, list[dict]] | None = None, spectrometer: list[dict] | None = None
) -> Path:
    """The simulated rig with fault injection: ``pumps={"seed": [{"kind": "stall", "at_s": 30}]}``."""
    data = yaml.safe_load(SIM_RIG.read_text())
    for pump in data["pumps"]:
        if pumps and pump["name"] in pumps:
            pump["faults"] = pumps[pump["name"]]
    if spectrometer:
        data["spectrometer"]["faults"] = spectrometer
    path = folder / "rig.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def new_store(folder: Path, name: str = "sdl.db") -> Store:
    return open_store(f"sqlite:///{folder / name}")


def fingerprint(store: Store, campaign_id: str) -> dict[str, Any]:
    """What must be identical between an uninterrupted and an interrupted run with the same seed."""
    conditions = [
        (c.round, c.index, c.status, tuple(sorted(c.inputs.items())), c.median_loss, c.mad, c.accepted)
        for c in store.conditions(campaign_id)
    ]
    replicates = [
        (r.round, r.condition, r.index, r.loss, r.accepted, r.reject_reason, r.absorbance.tobytes())
        for r in store.replicates(campaign_id)
    ]
    rounds = [(r.index, r.strategy, tuple(sorted(r.bounds.items()))) for r in store.rounds(campaign_id)]
    return {"rounds": rounds, "conditions": conditions, "replicates": replicates}


def statuses(store: Store, campaign_id: str) -> list[tuple[str, str]]:
    """Every status change the journal holds, as (from, to)."""
    out = []
    after = 0
    while True:
        events = store.events(campaign_id, after_id=after, limit=500)
        if not events:
            return out
        out += [(e.data["from"], e.data["to"]) for e in events if "from" in e.data and "to" in e.data]
        after = events[-1].id


def event_kinds(store: Store, campaign_id: str) -> list[str]:
    kinds = []
    after = 0
    while True:
        events = store.events(campaign_id, after_id=after, limit=500)
        if not events:
            return kinds
        kinds += [e.kind for e in events]
        after = events[-1].id
