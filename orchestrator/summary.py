"""The campaign summary: one JSON document built from the store, and its CSV export.

``sdl run --summary PATH`` and ``sdl export CAMPAIGN --format json`` write the same document;
``sdl export --format csv`` writes one row per replicate. Everything comes from the store, so a
summary can be rebuilt at any time, for a running, paused or ended campaign.

Schema (``"schema": "sdl-campaign-summary/1"``; losses are the paper's 1 - delta * cos, 0 is a
perfect match; ``null`` where a value does not exist yet)::

    {
      "schema": "sdl-campaign-summary/1",
      "campaign_id": "c-20261129-0153-ab12",
      "name": "ag_nanoprism",
      "status": "finished",                # created|queued|running|pausing|paused|faulted|estopped|
                                           # aborting|aborted|finished|orphaned
      "reason": "loss threshold reached",  # why it is in that status ("" if none given)
      "status_text": "finished at 02:41: loss threshold reached",
      "seed": 7, "rig": "simulated", "protocol_path": "...", "rig_path": "...",
      "chemistry": "mymodel:Nanoshell" | null,   # sdl run --chemistry (a dry run's own model)
      "max_rounds_option": 3 | null,             # sdl run --max-rounds
      "optimizer": {"strategy": "default", "settings": {...}},   # as the protocol gives it
      "created_at": "2026-11-29T01:53:00+00:00", "updated_at": "...",
      "variables": [{"name": "Q_AgNO3", "kind": "percent", "stream": "AgNO3", "unit": "%",
                     "bounds": [4, 20], "hard_limits": [0.5, 80]}, ...],
      "target": {"file": "targets/ag_nanoprism.csv", "a_low": 0.7, "a_high": 1.2,
                 "grid_nm": [380, 800, 1],
                 "loss": "1 - delta * cos(minmax(A), minmax(target)) ..."},
      "rounds": [{
        "index": 0, "strategy": "composite_mix", "status": "done",  # planned|measuring|done
        "bounds": {"Q_AgNO3": [4, 20], ...},               # the bounds this round was drawn in
        "bounds_next": {...} | null,                       # the next round's bounds (null: not planned yet)
        "widened": ["Q_seed"],                             # variables whose bounds grew since the last round
        "widening": [{"variable": "Q_seed", "edge": "low", "old": 4, "new": 2.8,
                      "reason": "gated rule: 40% of the batch crowds it; ..."}],  # each edge moved, and why
        "policy": {"dnn_count": 14, "reason": "network trusted ...", ...} | null,  # two_step's share
        "fallback": "too few measured conditions to model" | null,  # the strategy could not model it
        "conditions": [{
          "index": 0, "inputs": {"Q_AgNO3": 7.1, ...}, "source": "lhs",
          "status": "done", "failed": false,               # status: planned|measuring|done|failed
          "attempt": 0,                                    # the attempt the observation comes from
          "rates_ul_min": {"AgNO3": 35.5, ..., "water": 120.0} | null,
          "losses": [{"replicate": 0, "attempt": 0, "loss": 0.31, "accepted": true,
                      "reject_reason": null, "set_aside": false}, ...],
          "median_loss": 0.29 | null, "mad": 0.01 | null, "accepted": 18,
          "failed_reason": "0 of 20 droplets accepted, fewer than 10; ..." | null   # why it failed
        }, ...]
      }, ...],
      "best": {"round": 3, "condition": 11, "inputs": {...}, "median_loss": 0.14} | null,
      "totals": {"rounds": 9, "conditions": 135,   # planned
                 "conditions_measured": 135, "conditions_failed": 1,   # measured: done or failed, pumped
                 "conditions_refused": 0,        # failed before any pump ran (inputs or syringe refused)
                 "replicates": 2700, "replicates_accepted": 2650, "replicates_rejected": 40,
                 "replicates_set_aside": 10,
                 "volume_ul": {"AgNO3": 1234.5, ..., "water": 5678.9} | null,   # per stream
                 "reagent_ul": 23456.7 | null,   # every stream but the remainder (water)
                 "pumped_ul": 29135.6 | null,    # every stream, the remainder too: what stop.max_reagent_ml counts
                 "pumping_s": 4890.0 | null,     # time the pumps ran conditions (no holds, no idle)
                 "syringe_ul": {"AgNO3": 10000, ...},   # per stream, from the rig file (null: not given)
                 "refills": {"AgNO3": 1}}       # per stream: syringes a dry run refilled (none on a rig)
    }

``losses`` lists every stored replicate, set-aside ones included (marked), so nothing measured is
hidden; ``median_loss`` is over the accepted replicates of ``attempt`` only. Volumes come from the
runner's ``reagent_used`` journal events split by the condition's pump rates; they are ``null`` when
the journal has none (a campaign that measured nothing).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

import yaml

from orchestrator import state
from orchestrator.store import CampaignRow, Store, jsonable

SCHEMA = "sdl-campaign-summary/1"
LOSS_TEXT = (
    "1 - delta * cos(minmax(A), minmax(target)); delta = 1 for a_low <= max(A) <= a_high, "
    "max(A)/a_low below a_low, 0 above a_high; median over a condition's accepted replicates"
)
CSV_FIXED = ["campaign_id", "round", "condition", "source", "attempt", "replicate"]
CSV_TAIL = ["loss", "accepted", "reject_reason", "set_aside", "median_loss"]


def _protocol_dict(row: CampaignRow) -> dict[str, Any]:
    """The stored protocol YAML as a plain mapping (no validation: a summary must work even if the
    protocol's target file has moved since)."""
    try:
        data = yaml.safe_load(row.protocol_yaml)
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def _variables(protocol: Mapping[str, Any]) -> list[dict[str, Any]]:
    out = []
    for name, spec in dict(protocol.get("variables") or {}).items():
        spec = dict(spec or {})
        kind = spec.get("kind")
        out.append(
            {
                "name": name,
                "kind": kind,
                "stream": spec.get("stream"),
                "unit": "%" if kind == "percent" else "uL/min" if kind == "total" else "",
                "bounds": spec.get("bounds"),
                "hard_limits": spec.get("hard_limits"),
            }
        )
    return out


def _target(protocol: Mapping[str, Any], row: CampaignRow) -> dict[str, Any]:
    target = dict(protocol.get("target") or {})
    grid = dict(protocol.get("grid") or {})
    override = (row.options or {}).get("target_file")
    return {
        "file": override or target.get("file"),
        "a_low": target.get("a_low", 0.7),
        "a_high": target.get("a_high", 1.2),
        "grid_nm": [grid.get("start_nm", 380), grid.get("stop_nm", 800), grid.get("step_nm", 1)],
        "loss": LOSS_TEXT,
    }


def _widened(bounds: Mapping[str, tuple[float, float]], before: Mapping[str, Any] | None) -> list[str]:
    if not before:
        return []
    grown = []
    for name, (lo, hi) in bounds.items():
        if name in before and before[name] is not None:
            plo, phi = before[name]
            if lo < float(plo) or hi > float(phi):
                grown.append(name)
    return grown


def reagent_use(
    store: Store, campaign_id: str, *, conditions: list[Any] | None = None, row: CampaignRow | None = None
) -> dict[str, Any]:
    """What the campaign pumped: ``volume_ul`` per stream (None before anything ran), ``pumping_s``
    (time the pumps ran conditions: equilibration and droplets, not holds or idle time, so the same on
    a dry run's virtual clock as on the rig), ``syringe_ul`` per stream (the rig file's syringe
    volume, None where it gives none) and ``refills`` per stream (``syringe_refilled`` events: a dry
    run's emulated syringes that ran empty). The runner journals each condition's total volume
    (``reagent_used``); the condition's pump rates split it by stream."""
    row = row or store.campaign(campaign_id)
    conditions = store.conditions(campaign_id) if conditions is None else conditions
    used_ul: dict[tuple[int, int], float] = {}
    refilled: dict[str, int] = {}  # per pump: the dry run's refills (syringe_refilled events)
    after = 0
    while True:
        batch = store.events(campaign_id, after_id=after, limit=1000)
        if not batch:
            break
        for e in batch:
            if e.kind == "reagent_used" and e.data.get("ul") is not None:
                key = (int(e.data["round"]), int(e.data["condition"]))
                used_ul[key] = used_ul.get(key, 0.0) + float(e.data["ul"])
            elif e.kind == "syringe_refilled":
                refilled[str(e.data.get("pump"))] = refilled.get(str(e.data.get("pump")), 0) + 1
        after = batch[-1].id
    volume: dict[str, float] = {}
    pumping_s = 0.0
    for c in conditions:
        ul = used_ul.get((c.round, c.index))
        flow = sum(c.rates.values()) if c.rates else 0.0
        if ul and flow > 0:
            pumping_s += 60.0 * ul / flow
            for stream, rate in c.rates.items():
                volume[stream] = volume.get(stream, 0.0) + ul * rate / flow
    try:
        rig = yaml.safe_load(row.rig_yaml) or {}
    except yaml.YAMLError:
        rig = {}
    pumps = rig.get("pumps") if isinstance(rig, dict) else None
    pumps = [p for p in (pumps if isinstance(pumps, list) else []) if isinstance(p, dict)]
    syringes = {str(p.get("stream") or p.get("name")): p.get("syringe_volume_ul") for p in pumps}
    stream_of = {str(p.get("name")): str(p.get("stream") or p.get("name")) for p in pumps}
    refills = {stream_of.get(pump, pump): n for pump, n in refilled.items()}
    return {"volume_ul": volume or None, "pumping_s": pumping_s if volume else None, "syringe_ul": syringes,
            "refills": refills}


def droplet_counts(replicates: Sequence[Any]) -> dict[str, int]:
    """``replicates`` (every stored one), ``replicates_accepted`` and ``replicates_rejected`` (of those
    counted) and ``replicates_set_aside`` (attempts measured again), from the store's replicate rows."""
    counted = [r for r in replicates if not r.set_aside]
    return {
        "replicates": len(replicates),
        "replicates_accepted": sum(1 for r in counted if r.accepted),
        "replicates_rejected": sum(1 for r in counted if not r.accepted),
        "replicates_set_aside": len(replicates) - len(counted),
    }


def failure_reasons(store: Store, campaign_id: str) -> dict[tuple[int, int], str]:
    """Why each failed condition failed, by (round, condition): the reason its ``condition_failed``
    event gives (too few accepted droplets and what rejected the rest, or refused before any pump ran)."""
    events = store.recent_events(campaign_id, limit=1_000_000, kind="condition_failed")
    return {(int(e.data["round"]), int(e.data["condition"])): e.reason for e in events if "round" in e.data}


def syringe_fills(used_ul: float, syringe_ul: float | None) -> int | None:
    """How many full syringes ``used_ul`` takes (1: no refill), or None without a syringe volume."""
    if not syringe_ul or syringe_ul <= 0:
        return None
    return max(1, math.ceil(used_ul / syringe_ul - 1e-9))


def reagent_rows(use: Mapping[str, Any]) -> list[tuple[str, float, float | None, int | None]]:
    """(stream, used uL, syringe uL or None, full syringes it takes or None) per stream of
    :func:`reagent_use`, in the rig's pump order. Where a dry run refilled a syringe, the syringes it
    took are the refills journaled plus the first: the volume is the set rates over the condition's
    time, a stalled pump's wait included, so dividing it by the syringe can count one refill too many."""
    volume = use.get("volume_ul") or {}
    syringes = use.get("syringe_ul") or {}
    refills = use.get("refills") or {}
    order = [s for s in syringes if s in volume] + [s for s in volume if s not in syringes]
    return [(s, volume[s], syringes.get(s),
             refills[s] + 1 if refills.get(s) and syringes.get(s) else syringe_fills(volume[s], syringes.get(s)))
            for s in order]


def build_summary(store: Store, campaign_id: str) -> dict[str, Any]:
    """The summary document of one campaign (schema in this module's docstring), plain JSON types."""
    row = store.campaign(campaign_id)
    protocol = _protocol_dict(row)
    variables = _variables(protocol)
    remainder = str(protocol.get("remainder_stream", "water"))

    conditions = store.conditions(campaign_id)
    replicates = store.replicate_losses(campaign_id)
    by_condition: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for r in replicates:
        by_condition.setdefault((r.round, r.condition), []).append(
            {
                "replicate": r.index,
                "attempt": r.attempt,
                "loss": r.loss,
                "accepted": r.accepted,
                "reject_reason": r.reject_reason,
                "set_aside": r.set_aside,
            }
        )

    use = reagent_use(store, campaign_id, conditions=conditions, row=row)
    volume = use["volume_ul"] or {}
    why_failed = failure_reasons(store, campaign_id)
    rounds_out: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    previous: Mapping[str, Any] | None = {v["name"]: v["bounds"] for v in variables if v["bounds"]}
    rounds = store.rounds(campaign_id)
    for i, rnd in enumerate(rounds):
        conds_out = []
        for c in (c for c in conditions if c.round == rnd.index):
            conds_out.append(
                {
                    "index": c.index,
                    "inputs": c.inputs,
                    "source": c.source,
                    "status": c.status,
                    "failed": c.failed,
                    "attempt": c.attempt,
                    "rates_ul_min": c.rates,
                    "losses": by_condition.get((c.round, c.index), []),
                    "median_loss": c.median_loss,
                    "mad": c.mad,
                    "accepted": c.accepted,
                    "failed_reason": why_failed.get((c.round, c.index)) if c.failed else None,
                }
            )
            if (
                c.status == "done"
                and c.median_loss is not None
                and (best is None or c.median_loss < best["median_loss"])
            ):
                best = {
                    "round": c.round,
                    "condition": c.index,
                    "inputs": c.inputs,
                    "median_loss": c.median_loss,
                }
        rounds_out.append(
            {
                "index": rnd.index,
                "strategy": rnd.strategy,
                "status": rnd.status,
                "bounds": {k: list(v) for k, v in rnd.bounds.items()},
                # the next round's own bounds: they are decided when it is planned, after this one ends
                "bounds_next": {k: list(v) for k, v in rounds[i + 1].bounds.items()} if i + 1 < len(rounds) else None,
                "widened": _widened(rnd.bounds, previous),
                # each edge the optimiser moved for this round, and why (trigger, gate, prediction)
                "widening": list((rnd.notes or {}).get("widening") or []),
                # two_step: the network's share of this batch and why (accuracy, stability, gates)
                "policy": (rnd.notes or {}).get("policy"),
                # why the strategy did not model this round (too few measured conditions): what it did instead
                "fallback": (rnd.notes or {}).get("fallback"),
                "conditions": conds_out,
            }
        )
        previous = {k: list(v) for k, v in rnd.bounds.items()}

    totals = {
        "rounds": len(rounds_out),
        "conditions": len(conditions),
        # an aborted campaign planned more than it measured: done or failed, not left planned
        # a condition refused before any pump ran has no rates: failed, but never measured
        "conditions_measured": sum(1 for c in conditions if c.status == "done" or (c.status == "failed" and c.rates)),
        "conditions_refused": sum(1 for c in conditions if c.status == "failed" and not c.rates),
        "conditions_failed": sum(1 for c in conditions if c.failed),
        **droplet_counts(replicates),
        "volume_ul": volume or None,
        "reagent_ul": sum(v for s, v in volume.items() if s != remainder) if volume else None,
        "pumped_ul": sum(volume.values()) if volume else None,  # as the reagent budget counts
        "pumping_s": use["pumping_s"],
        "syringe_ul": use["syringe_ul"],
        "refills": use["refills"],
    }
    summary = {
        "schema": SCHEMA,
        "campaign_id": row.id,
        "name": row.name,
        "status": row.status,
        "reason": row.reason,
        "status_text": state.describe(row.status, row.reason, row.status_by, row.status_at),
        "seed": row.seed,
        "rig": row.rig_name,
        "protocol_path": row.protocol_path,
        "rig_path": row.rig_path,
        # how it was started: --chemistry, --target, --max-rounds (a dry run with a model of one's own
        # must not read as a reference run), and the optimiser it ran
        "chemistry": (row.options or {}).get("chemistry"),
        "max_rounds_option": (row.options or {}).get("max_rounds"),
        "optimizer": {k: v for k, v in dict(protocol.get("optimizer") or {}).items() if k in ("strategy", "settings")},
        "created_at": row.created_at,
        "updated_at": row.updated_at,
        "generated_at": store.now(),
        "variables": variables,
        "target": _target(protocol, row),
        "rounds": rounds_out,
        "best": best,
        "totals": totals,
    }
    return jsonable(summary)


def summary_json(summary: Mapping[str, Any]) -> str:
    return json.dumps(summary, indent=2, allow_nan=False) + "\n"


def write_summary(store: Store, campaign_id: str, path: str | Path) -> Path:
    """Write the summary JSON to ``path`` (parent folders created, replaced atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(summary_json(build_summary(store, campaign_id)), encoding="utf-8")
    tmp.replace(path)
    return path


def write_csv(summary: Mapping[str, Any], out: TextIO) -> int:
    """One row per replicate (set-aside ones included, marked): campaign_id, round, condition,
    source, attempt, replicate, one column per variable, loss, accepted, reject_reason, set_aside,
    median_loss (the condition's). Returns the number of rows written."""
    names = [v["name"] for v in summary["variables"]]
    for rnd in summary["rounds"]:  # inputs the protocol does not list (should not happen) still get a column
        for cond in rnd["conditions"]:
            names.extend(k for k in cond["inputs"] if k not in names)
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*CSV_FIXED, *names, *CSV_TAIL])
    rows = 0
    for rnd in summary["rounds"]:
        for cond in rnd["conditions"]:
            for rep in cond["losses"]:
                writer.writerow(
                    [
                        summary["campaign_id"],
                        rnd["index"],
                        cond["index"],
                        cond["source"],
                        rep["attempt"],
                        rep["replicate"],
                        *[_cell(cond["inputs"].get(n)) for n in names],
                        _cell(rep["loss"]),
                        str(bool(rep["accepted"])).lower(),
                        rep["reject_reason"] or "",
                        str(bool(rep["set_aside"])).lower(),
                        _cell(cond["median_loss"]),
                    ]
                )
                rows += 1
    return rows


def csv_text(summary: Mapping[str, Any]) -> str:
    buf = io.StringIO()
    write_csv(summary, buf)
    return buf.getvalue()


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)
