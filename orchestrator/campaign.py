"""The campaign runner: a protocol and a rig in, an unattended closed-loop campaign out.

:func:`start_campaign` checks the protocol, the rig and the pair before anything moves, and stores
everything the campaign needs (protocol and rig YAML text, target spectrum text, seed, options), so
any process can run or resume it with :func:`run_campaign`.

One round: the optimiser's batch (seeded from ``SeedSequence([seed, round])``) is persisted before
the first pump moves; each condition's inputs become pump rates (refused beyond the hard limits),
the rig equilibrates on its own clock (virtual on a simulated rig), and N replicate droplets are
acquired, screened (:mod:`orchestrator.screening`), scored and stored one transaction each. The
replicate boundary is the checkpoint: pause, resume, abort and e-stop are honoured there, and a
process killed anywhere resumes after the last stored replicate. Every replicate's simulated noise
is seeded from (seed, round, condition, attempt, replicate), so a resumed run equals an
uninterrupted one. The median and MAD of a condition's accepted losses are its observation.
"""

from __future__ import annotations

import os
import secrets
import socket
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import structlog
import yaml
from sqlalchemy.exc import InterfaceError, OperationalError

from drivers.errors import DeviceError, NotConnected, SimulationModelError, StallAlarm
from orchestrator import state
from orchestrator.config_errors import ConfigError, Problem, validate_model
from orchestrator.logging import bind, unbind
from orchestrator.optimize.base import History, Observation
from orchestrator.optimize.registry import (
    OptimizerSettingsError,
    UnknownStrategyError,
    make_optimizer,
    resolve,
)
from orchestrator.protocol import ExperimentProtocol, InfeasibleInputs, load_protocol, protocol_from_dict
from orchestrator.rig import (
    DEFAULT_DRY_RUN_CHEMISTRY,
    Rig,
    RigConfig,
    _check_chemistry_takes,
    build_rig,
    check_protocol_against_rig,
    dry_run_twin,
    load_rig,
    make_chemistry,
)
from orchestrator.screening import ReplicateScreen, median_mad, outlier_verdicts, reject_kind
from orchestrator.spectra import TargetFileError, parse_target_text, read_target_csv, read_target_text
from orchestrator.store import (
    ClaimLost,
    ConditionRow,
    DuplicateReplicate,
    PlannedCondition,
    RoundRow,
    Store,
    database_error_text,
    jsonable,
    owner_is_dead,
)

log = structlog.get_logger("orchestrator.campaign")

__all__ = [
    "CampaignError",
    "CampaignSpec",
    "ProgressSink",
    "load_spec",
    "process_owner",
    "run_campaign",
    "start_campaign",
]

CONTROL_POLL_S = 0.5  # wall seconds between looks at the store while paused, faulted or e-stopped
ESTOP_POLL_S = 0.2  # wall seconds between looks at the e-stop latch (watcher thread)
EQUILIBRATION_LOOK_S = 2.0  # rig-clock seconds between looks for a pause or abort while equilibrating
HEARTBEAT_EVERY_S = 5.0  # well inside the store's STALE_AFTER_S
DEVICE_RETRIES = 3  # retries of a failed device operation before the campaign is faulted
# a database restart or a network blip: the runner waits this long for the store (flow and data kept in
# hand) before it gives up, pumps safe; a replicate measured meanwhile is written when the store is back
DB_PATIENCE_S = 120.0
DB_RETRY_S = 2.0
CALIBRATION_ROUND = 2**31 - 1  # the seed "round" of the dark and reference spectra (never a real round)


class CampaignError(RuntimeError):
    """A campaign that cannot run as stored (and what to do about it)."""


class ProgressSink(Protocol):
    """Receives progress: ``sink(event, **info)`` with event ``start``, ``round``, ``condition``,
    ``replicate``, ``condition_done``, ``status``. Must be quick; must not raise."""

    def __call__(self, event: str, **info: Any) -> None: ...


# -- what a campaign is ----------------------------------------------------------------------------


@dataclass(frozen=True)
class CampaignSpec:
    """A campaign as the store holds it, validated again (any process can rebuild it)."""

    protocol: ExperimentProtocol
    rig: RigConfig
    seed: int
    chemistry: str | None
    max_rounds: int | None
    target_csv: str
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def rounds_limit(self) -> int | None:
        limits = [v for v in (self.protocol.stop.max_rounds, self.max_rounds) if v is not None]
        return min(limits) if limits else None


def _widening(protocol: ExperimentProtocol) -> dict[str, Any]:
    return protocol.optimizer.widening.model_dump()


def _check_optimizer(protocol: ExperimentProtocol, seed: int, source: str) -> None:
    spec = protocol.optimizer
    try:
        make_optimizer(spec.strategy, spec.settings, _widening(protocol), seed)
    except (UnknownStrategyError, OptimizerSettingsError, ValueError) as exc:
        raise ConfigError(source, [Problem("optimizer", str(exc))]) from exc


@dataclass(frozen=True)
class CheckedCampaign:
    """A protocol and rig that passed every check of :func:`check_campaign`, ready to be stored."""

    protocol: ExperimentProtocol
    rig: RigConfig  # a dry run's simulated twin in place of the real rig
    rig_yaml: str
    protocol_path: Path
    rig_path: Path
    seed: int
    options: dict[str, Any]  # as stored with the campaign


def start_campaign(
    store: Store,
    protocol_path: str | Path,
    rig_path: str | Path,
    *,
    seed: int | None = None,
    options: Mapping[str, Any] | None = None,
    status: str = state.CREATED,
    who: str = "system",
    checked: CheckedCampaign | None = None,
) -> str:
    """:func:`check_campaign` (unless ``checked`` is its answer already), then store the campaign
    (refused while the rig is busy, unless it is queued); returns its id. Nothing moves here."""
    checked = checked or check_campaign(protocol_path, rig_path, seed=seed, options=options)
    if status == state.CREATED:  # to run now: refused before it is stored while the rig is busy
        store.check_rig_free(checked.rig.name)
    return store.create_campaign(
        name=checked.protocol.name,
        protocol_yaml=checked.protocol_path.read_text(encoding="utf-8"),
        protocol_path=str(checked.protocol_path.resolve()),
        rig_yaml=checked.rig_yaml,
        rig_path=str(checked.rig_path.resolve()),
        rig_name=checked.rig.name,
        seed=checked.seed,
        options=checked.options,
        status=status,
        who=who,
    )


def check_campaign(
    protocol_path: str | Path,
    rig_path: str | Path,
    *,
    seed: int | None = None,
    options: Mapping[str, Any] | None = None,
) -> CheckedCampaign:
    """Validate protocol, rig and the pair (and the options: ``chemistry`` module:Class, ``target``
    CSV path, ``max_rounds``, ``dry_run``: run a real rig's simulated twin, :func:`dry_run_twin`), the
    target and the optimiser's settings; raises ConfigError (or ValueError) naming every problem.
    Nothing is stored and no device is opened (``sdl run --check``)."""
    options = dict(options or {})
    unknown = sorted(set(options) - {"chemistry", "target", "max_rounds", "dry_run"})
    if unknown:
        raise ValueError(
            f"unknown campaign option(s) {', '.join(unknown)}; known: chemistry, target, max_rounds, dry_run"
        )
    protocol_path, rig_path = Path(protocol_path), Path(rig_path)
    target = options.get("target")
    protocol = load_protocol(protocol_path, target_file=target)
    rig_cfg = load_rig(rig_path)
    rig_yaml = rig_path.read_text(encoding="utf-8")
    source = f"rig {rig_path} with protocol {protocol_path}"
    if options.get("dry_run") and not rig_cfg.is_simulated:
        real_name = rig_cfg.name
        # the twin keeps the rig's pumps and syringes; its simulated spectrometer has a range of its own
        rig_cfg = dry_run_twin(rig_cfg, source=rig_path)
        source = f"dry run of {source}"
        rig_yaml = (f"# dry run of rig {real_name!r} ({rig_path.resolve()}): sdl run --dry-run\n"
                    + yaml.safe_dump(rig_cfg.model_dump(exclude_defaults=True), sort_keys=False))
    check_protocol_against_rig(protocol, rig_cfg, source=source)
    try:
        target_file = Path(target) if target is not None else protocol.target_path
        target_csv = read_target_text(target_file)  # read once: the text checked is the text stored
        protocol.target_on_grid(*parse_target_text(target_csv, target_file), source=target_file)
    except (TargetFileError, OSError) as exc:
        raise ConfigError(target or protocol_path, [Problem("target", str(exc))]) from exc
    chemistry = options.get("chemistry")
    if chemistry is not None:
        if not rig_cfg.is_simulated:
            raise ConfigError(
                rig_path,
                [
                    Problem(
                        "chemistry",
                        f"--chemistry {chemistry} needs a simulated rig; {rig_cfg.name!r} is real "
                        "(add --dry-run to run the protocol on its simulated twin)",
                    )
                ],
            )
        _check_chemistry_takes(make_chemistry(chemistry), chemistry, protocol)
    elif rig_cfg.simulation is not None and rig_cfg.simulation.chemistry is not None:
        # the rig file's own model: imported and tried now, so a typo is told before anything is stored
        model = rig_cfg.simulation.chemistry
        try:
            _check_chemistry_takes(make_chemistry(model.model, model.params), model.model, protocol)
        except ConfigError as exc:
            hint = ""
            if model.model == DEFAULT_DRY_RUN_CHEMISTRY:  # made for the reference protocol: say where it came from
                whose = ("no chemistry was given, so the dry run uses" if options.get("dry_run")
                         else "the rig file names")
                hint = (f" ({whose} the reference model {model.model}, made for the reference protocol's "
                        "inputs: pass --chemistry module:Class for your own, or set simulation.chemistry.model "
                        "in a copy of the rig file)")
            # the protocol's inputs or the rig's model may be what is wrong: the pair is named
            raise ConfigError(
                f"protocol {protocol_path} with rig {rig_path}",
                [Problem(f"simulation.{p.field}", p.message + hint) for p in exc.problems],
            ) from exc
    max_rounds = options.get("max_rounds")
    if max_rounds is not None and (not isinstance(max_rounds, int) or max_rounds < 1):
        raise ValueError(f"max_rounds must be a whole number >= 1, got {max_rounds!r}")
    if seed is not None and not (isinstance(seed, int) and 0 <= seed < 2**63):
        raise ValueError(f"seed must be a whole number from 0 to 2^63 - 1, got {seed!r}")
    if seed is None:
        seed = protocol.seed if protocol.seed is not None else secrets.randbelow(2**31)
    _check_optimizer(protocol, int(seed), str(protocol_path))
    stored = {
        "chemistry": chemistry,
        "target_csv": target_csv,
        "target_file": str(Path(target).resolve() if target is not None else protocol.target_path.resolve()),
        "max_rounds": max_rounds,
    }
    return CheckedCampaign(protocol, rig_cfg, rig_yaml, protocol_path, rig_path, int(seed), stored)


def load_spec(row: Any, workdir: Path) -> CampaignSpec:
    """Rebuild a stored campaign's protocol and rig; the target comes from the stored CSV text
    (written into ``workdir``), so the campaign no longer depends on files that may have moved."""
    options = dict(row.options or {})
    target_file = workdir / "target.csv"
    target_file.write_text(options.get("target_csv", ""), encoding="utf-8")
    source = f"campaign {row.id} protocol ({row.protocol_path})"
    try:
        data = yaml.safe_load(row.protocol_yaml)
        rig_data = yaml.safe_load(row.rig_yaml)
    except yaml.YAMLError as exc:
        raise CampaignError(f"campaign {row.id}: stored YAML no longer parses ({exc})") from exc
    data = dict(data)
    data["target"] = {**dict(data.get("target") or {}), "file": str(target_file)}
    protocol = protocol_from_dict(data, base_dir=Path(row.protocol_path).parent, source=source)
    rig = validate_model(RigConfig, dict(rig_data), f"campaign {row.id} rig ({row.rig_path})")
    return CampaignSpec(
        protocol=protocol,
        rig=rig,
        seed=int(row.seed),
        chemistry=options.get("chemistry"),
        max_rounds=options.get("max_rounds"),
        target_csv=options.get("target_csv", ""),
        options=options,
    )


# -- control flow inside the runner -------------------------------------------------------------------


class _FromCaller(Exception):
    """An exception raised by the caller's ``sleep`` hook: passed back to the caller unchanged."""

    def __init__(self, original: BaseException) -> None:
        super().__init__(str(original))
        self.original = original


class _Aborted(Exception):
    def __init__(self, who: str, reason: str) -> None:
        super().__init__(reason)
        self.who, self.reason = who, reason


class _Fault(Exception):
    """A device that kept failing after its retries; the campaign is faulted until resumed."""


# droplet reject reasons (orchestrator.screening) that point at the instrument, not at the chemistry
INSTRUMENT_REJECTS = frozenset({"saturated", "no_light"})


class _Reequilibrate(Exception):
    """The flow was interrupted (pause, e-stop, fault): set it again and wait before the next replicate."""


class _Restart(Exception):
    """The pause outlasted the protocol's limit: the attempt's replicates are set aside."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class _Rep:
    """What the runner keeps of one stored replicate of the attempt in hand."""

    index: int
    loss: float | None
    accepted: bool
    absorbance: np.ndarray
    reason: str | None = None

    @classmethod
    def of(cls, row: Any) -> _Rep:
        return cls(row.index, row.loss, row.accepted, row.absorbance, row.reject_reason)


class _Watcher(threading.Thread):
    """Polls the e-stop latch (stops the pumps the moment it appears) and heartbeats the claim."""

    def __init__(self, runner: _Runner) -> None:
        super().__init__(name=f"estop-watch-{runner.campaign_id}", daemon=True)
        self.runner = runner
        self.stop_event = threading.Event()
        self.tripped = threading.Event()
        self.claim_lost: str | None = None
        self._last_beat = 0.0

    def check(self) -> None:
        r = self.runner
        latch = r.raw_store.estop_latched(r.rig_name)
        if latch is not None and not self.tripped.is_set():
            r.rig.safe_state()
            self.tripped.set()
            log.warning("estop seen: pumps stopped", who=latch.who, reason=latch.reason)

    def run(self) -> None:
        r = self.runner
        unreachable = False
        while not self.stop_event.wait(r.estop_poll_s):
            try:
                self.check()
                now = time.monotonic()
                if now - self._last_beat >= HEARTBEAT_EVERY_S:
                    r.raw_store.heartbeat(r.campaign_id, r.owner)
                    self._last_beat = now
                unreachable = False
            except ClaimLost as exc:
                self.claim_lost = str(exc)
                r.rig.safe_state()
                return
            except Exception as exc:  # noqa: BLE001 - a flaky database must not kill the watcher
                if not unreachable:  # once per outage, not every 0.2 s
                    log.warning("estop watcher: store unreachable", error=database_error_text(exc))
                unreachable = True


# -- the runner -----------------------------------------------------------------------------------


class _PatientStore:
    """The store as the runner uses it: a call that fails because the database is unreachable (a
    restart, the network) is tried again every DB_RETRY_S for DB_PATIENCE_S before the error stands, so
    a droplet measured during a short outage is written, not lost. A retried ``add_replicate`` whose
    first try was committed after all (the answer lost) finds it stored: that is success."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._store, name)
        if not callable(attr):
            return attr

        def patient(*args: Any, **kwargs: Any) -> Any:
            deadline, tries = time.monotonic() + DB_PATIENCE_S, 0
            while True:
                try:
                    return getattr(self._store, name)(*args, **kwargs)
                except DuplicateReplicate:
                    if tries:  # the try before was committed; its answer was lost with the connection
                        return None
                    raise
                except (OperationalError, InterfaceError) as exc:
                    tries += 1
                    if time.monotonic() >= deadline:
                        raise
                    if tries == 1:
                        log.warning("store unreachable: waiting for it", call=name, error=database_error_text(exc),
                                    patience_s=DB_PATIENCE_S)
                    time.sleep(DB_RETRY_S)

        return patient


class _Runner:
    def __init__(
        self,
        store: Store,
        campaign_id: str,
        *,
        owner: str,
        progress: ProgressSink | None,
        poll_s: float,
        estop_poll_s: float,
        wall: Callable[[], float],
        sleep: Callable[[float], None],
    ) -> None:
        self.store: Any = _PatientStore(store)  # waits out a short database outage
        self.raw_store = store  # for the watcher, which must not block on it
        self.campaign_id = campaign_id
        self.owner = owner
        self.progress = progress
        self.poll_s = poll_s
        self.estop_poll_s = estop_poll_s
        self.wall = wall
        self.sleep = sleep
        self.rig: Rig
        self.rig_name = ""
        self.watcher: _Watcher | None = None
        self._flow: dict[str, float] = {}
        self._flow_since: float | None = None
        self._flow_ul = 0.0
        self._clock_offset = 0.0
        self._reagent_ul: dict[tuple[int, int], float] = {}
        self._observations: dict[tuple[int, int], Observation] = {}
        self._recalibrate = False
        self._pumps_checked_at = 0.0
        self._last_heartbeat = 0.0
        self._rechecks_failed = 0
        self._ran_dry = 0  # a dry run's stalls on emptied syringes since the last droplet (refilled, not failed)
        self.started_by: tuple[str, str] | None = None  # (who, why) of a person's `sdl run`/`sdl resume`
        self._alarms_seen: dict[str, str] = {}  # pump -> the alarm a check has reported (until the next run)

    # ---- small helpers ------------------------------------------------------------------------
    def _emit(self, event: str, **info: Any) -> None:
        if self.progress is not None:
            try:
                self.progress(event, **info)
            except Exception as exc:  # noqa: BLE001 - a display problem must not stop a campaign
                log.warning("progress display failed", error=str(exc))

    def _status(self) -> str:
        return self.store.campaign(self.campaign_id).status

    def _set_status(
        self,
        new: str,
        *,
        reason: str = "",
        who: str = "system",
        data: Mapping[str, Any] | None = None,
        final: bool = False,
    ) -> None:
        """Change the campaign's status (journaled) and tell the progress sink; ``final``: the runner
        returns with it (a faulted campaign it does not hold for an operator)."""
        current = self._status()
        if current == new and new != state.ESTOPPED:
            return
        if (
            new not in state.allowed(current)
            and new == state.ABORTED
            and state.ABORTING in state.allowed(current)
        ):
            self.store.set_status(self.campaign_id, state.ABORTING, reason=reason, who=who)
        self.store.set_status(self.campaign_id, new, reason=reason, who=who, data=data)
        log.info("status", status=new, reason=reason, who=who)
        self._emit("status", status=new, reason=reason, who=who, final=final)

    def _clock_s(self) -> float:
        return self._clock_offset + self.rig.clock.now()

    # ---- flow and reagent accounting ----------------------------------------------------------
    def _account_flow(self) -> None:
        if self._flow_since is not None:
            now = self.rig.clock.now()
            self._flow_ul += sum(self._flow.values()) * max(0.0, now - self._flow_since) / 60.0
            self._flow_since = now

    def _stop_flow(self) -> list[str]:
        """Every pump stopped; returns the devices that could not be reached (see :meth:`_hold`)."""
        self._account_flow()
        self._flow_since = None
        return self.rig.safe_state()

    def _device(self, what: str, action: Callable[[], Any]) -> Any:
        """``action()`` with bounded retries on device errors; then a _Fault naming the device.

        The reason carries the first error of the sequence (the cause: no reply, an unreadable one)
        and what reconnecting said, not only the last error, which after a failed reconnect is just
        the driver's "not connected"."""
        first: DeviceError | None = None
        last: DeviceError | None = None
        reconnect_error: DeviceError | None = None
        for attempt in range(DEVICE_RETRIES + 1):
            try:
                return action()
            except DeviceError as exc:
                first, last = first or exc, exc
                log.warning("device error", what=what, attempt=attempt, device=exc.device, error=str(exc))
                self.store.journal(
                    self.campaign_id,
                    "device_error",
                    reason=str(exc),
                    data={"what": what, "device": exc.device, "try": attempt + 1},
                )
                if attempt < DEVICE_RETRIES:
                    reconnect_error = self._reconnect(exc.device) or reconnect_error
        assert first is not None and last is not None
        device = first.device or what
        if first.device in self.rig.pumps:
            device = f"pump {first.device}"
        elif self.rig.spectrometer is not None and first.device == self.rig.spectrometer.name:
            device = "spectrometer" if first.device == "spectrometer" else f"spectrometer {first.device}"
        # a device resumed without being reopened (its reconnect failed) first says "used before
        # connect()": what its line said when reopening it is the cause, with the line's own hint
        lead = reconnect_error if isinstance(first, NotConnected) and reconnect_error is not None else first
        reason = f"fault: {device}: {lead.detail}, retried {DEVICE_RETRIES} times ({what})"
        if reconnect_error is not None and lead is not reconnect_error:
            reason += f"; reconnecting failed: {reconnect_error.detail}"
        elif last.detail != lead.detail and not isinstance(last, NotConnected):
            reason += f"; last: {last.detail}"
        raise _Fault(f"{reason}. {lead.hint}")

    def _dry_run_refill(self) -> set[str]:
        """On a dry run, refill the syringes that ran empty, as the operator would at the hold a real
        rig comes to; each refill is journaled (``syringe_refilled``) with the pump and the volume.
        Returns the pumps refilled."""
        refilled = self.rig.refill_empty_syringes()
        for pump, ul in refilled.items():
            log.info("dry run: syringe refilled", pump=pump, ul=ul)
            size = f"{ul:g} uL" if self.rig.syringes_ul.get(pump) else \
                f"{ul:g} uL, the emulator's default syringe: give syringe_volume_ul in the rig file"
            self.store.journal(
                self.campaign_id,
                "syringe_refilled",
                reason=f"dry run: pump {pump}'s syringe ran empty and was refilled ({size}); "
                "on the rig the campaign holds here until the operator refills it",
                data={"pump": pump, "ul": ul},
            )
        return set(refilled)

    def _reconnect(self, name: str | None) -> DeviceError | None:
        """Open a failed device afresh before the next try: a power-cycled pump gets its syringe and
        mode set again, a re-plugged spectrometer a new handle (serial lines reopen by themselves).
        Returns why reconnecting failed, if it did."""
        device: Any = self.rig.pumps.get(name or "")
        if device is None and self.rig.spectrometer is not None and name == self.rig.spectrometer.name:
            device = self.rig.spectrometer
        if device is None:
            return None
        try:
            device.close()
            device.connect()
        except DeviceError as exc:
            log.warning("reconnect failed", device=name, error=str(exc))
            return exc
        return None

    def _establish_flow(self, rates: Mapping[str, float]) -> None:
        """Set every pump's rate, run them and check that each one runs (retried as a whole)."""

        def go() -> None:
            # rates are always set on stopped pumps: a pump's rate units (and so its rounding) then
            # depend on the rate alone, not on what ran before, and a resumed run pumps exactly the
            # same flows as an uninterrupted one
            for stream in rates:
                self.rig.pump_for_stream[stream].stop()
            self._alarms_on_stop(rates, refilled)
            for stream, rate in rates.items():
                if rate > 0:
                    self.rig.pump_for_stream[stream].set_rate_ul_min(rate)
            for stream, rate in rates.items():
                pump = self.rig.pump_for_stream[stream]
                if rate > 0:
                    pump.run()
                else:
                    pump.stop()
            self._check_pumps(rates)
            self._alarms_seen.clear()  # run() has cleared every latched alarm

        if self.store.estop_latched(self.rig_name) is not None and self.watcher is not None:
            self.watcher.tripped.set()  # latched before the watcher looked: never start the pumps
            raise _Reequilibrate()
        self._account_flow()
        # every flow passes here, also after a stall (the pump check sends it back): a dry run refills
        # the syringes that ran empty before any pump is told to run (a New Era pump would take RUN on
        # an empty syringe and stall a moment later, a Harvard pump would refuse it)
        refilled = self._dry_run_refill()
        self._device("setting pump rates", go)
        self._flow = {s: r for s, r in rates.items() if r > 0}
        self._flow_since = self.rig.clock.now()
        if self.watcher is not None and self.watcher.tripped.is_set():
            self._stop_flow()  # the e-stop came while the pumps were being started
            raise _Reequilibrate()
        self.store.journal(self.campaign_id, "rates_set", data={"rates_ul_min": dict(rates)})

    def _alarms_on_stop(self, rates: Mapping[str, float], refilled: set[str]) -> None:
        """A pump that stopped by itself since it was last checked (a stall, a power reset) answers the
        stop with its alarm, and that answer acknowledges it on the pump: the driver reports it in the
        next status. Journaled and counted as a failed pump check, so a pump that keeps stalling faults
        the campaign instead of being started again each condition as if nothing had happened. (A dry
        run's syringe that ran empty stalled its pump; its refill is journaled already.)"""
        alarms = {}
        for stream in rates:
            pump = self.rig.pump_for_stream[stream]
            alarm = pump.status().alarm
            if alarm is not None and pump.name not in refilled and self._alarms_seen.get(pump.name) != alarm:
                alarms[pump.name] = alarm
        if not alarms:
            return
        self._rechecks_failed += 1
        for name, alarm in sorted(alarms.items()):
            reason = f"pump {name} had stopped by itself ({alarm}) since it was last checked: it answered the stop with its alarm"
            log.warning("pump alarm on stop", pump=name, alarm=alarm)
            self.store.journal(
                self.campaign_id, "device_error", reason=reason, data={"what": "stopping the pumps", "device": name}
            )
        if self._rechecks_failed > DEVICE_RETRIES:
            names = ", ".join(f"{n} ({a})" for n, a in sorted(alarms.items()))
            raise _Fault(
                f"fault: pump {names} stopped by itself again, {DEVICE_RETRIES} times running. "
                "Check the pump's display, its syringe and its line, then resume."
            )

    def _check_interval_s(self, rates: Mapping[str, float]) -> float:
        """Half the mixer-to-detector transit: a pump that fails is seen before its liquid arrives."""
        total = sum(rates.values())
        return 0.5 * (self.rig.dead_volume_ul or 0.0) / total * 60.0 if total > 0 else 0.0

    def _recheck_pumps(self, rates: Mapping[str, float]) -> None:
        """Between replicates: a pump that stopped sends the flow back to :meth:`_establish_flow`."""
        try:
            self._check_pumps(rates)
        except DeviceError as exc:
            # a dry run's syringe that ran empty stalls its pump: the next flow refills it, as the operator
            # would at the rig's hold; not a failed check (three of them in a row faulted a rehearsal)
            if isinstance(exc, StallAlarm) and exc.device in self.rig.empty_syringes():
                self._ran_dry += 1
            else:
                self._rechecks_failed += 1
            log.warning("pump check failed", error=str(exc))
            self.store.journal(
                self.campaign_id,
                "device_error",
                reason=str(exc),
                data={"what": "checking the pumps", "device": exc.device},
            )
            if self._rechecks_failed > DEVICE_RETRIES:
                raise _Fault(
                    f"fault: pump {exc.device}: {exc.detail}, retried {DEVICE_RETRIES} times. {exc.hint}"
                ) from exc
            if self._ran_dry > 2 * len(self.rig.pumps):  # each refill's new equilibration empties the next one
                raise _Fault(
                    f"fault: the dry run's syringes ran empty {self._ran_dry} times without a droplet in between "
                    f"(last: pump {exc.device}): they hold too little for this flow, each refill's equilibration "
                    "drains the next one. Give larger syringes (syringe_volume_ul) or lower the total flow's bounds."
                ) from exc
            raise _Reequilibrate() from exc

    def _check_pumps(self, rates: Mapping[str, float]) -> None:
        self._pumps_checked_at = self.rig.clock.now()
        for stream, rate in rates.items():
            if rate <= 0:
                continue
            pump = self.rig.pump_for_stream[stream]
            status = pump.status()
            if status.alarm is not None:
                self._alarms_seen[pump.name] = status.alarm  # reported here: not news at the next stop
            if status.alarm == "stall":
                raise StallAlarm("stalled", device=pump.name)
            if status.alarm is not None or not status.running:
                raise DeviceError(
                    f"not pumping (state {status.state.name.lower()}, alarm {status.alarm or 'none'})",
                    device=pump.name,
                    hint="Check the pump's display, its syringe and its line, then resume.",
                )

    def _equilibrate(self, protocol: ExperimentProtocol, inputs: Mapping[str, float]) -> None:
        """Wait for the new flow to reach the cell. The wait can last a minute at low flows, so a pause,
        an abort or an e-stop cuts it short (the next checkpoint honours it; on resume the flow is set
        and waited for again) instead of keeping the operator waiting until the first replicate."""
        assert self.rig.dead_volume_ul is not None
        clock = self.rig.clock
        end = clock.now() + protocol.equilibration_s(self.rig.dead_volume_ul, inputs)
        while (left := end - clock.now()) > 0:
            clock.sleep(min(left, EQUILIBRATION_LOOK_S))
            if left > EQUILIBRATION_LOOK_S and self._interrupt_requested():
                log.info("equilibration cut short by a control request")
                raise _Reequilibrate()
        self._account_flow()

    def _interrupt_requested(self) -> bool:
        """An e-stop seen by the watcher, or a pause or abort waiting for the next checkpoint."""
        if self.watcher is not None and self.watcher.tripped.is_set():
            return True
        return any(c.action in ("pause", "abort") for c in self.store.pending_controls(self.campaign_id))

    # ---- calibration ----------------------------------------------------------------------------
    def _calibrate(self, spec: CampaignSpec, *, dark_only: bool = False) -> None:
        spectrometer = self.rig.spectrometer
        assert spectrometer is not None

        zero_dark: list[str] = []  # why the dark is zeros, if it is

        def take() -> None:
            zero_dark.clear()
            self._wavelengths = spectrometer.wavelengths_nm()
            self._saturation = spectrometer.saturation_counts
            self.rig.seed_replicate(np.random.SeedSequence([spec.seed, CALIBRATION_ROUND, 0]))
            try:
                spectrometer.set_lamp_enabled(False)
            except DeviceError as exc:
                log.warning("lamp cannot be switched: dark taken as zero counts", error=str(exc))
                self._dark = np.zeros_like(self._wavelengths)
                zero_dark.append(exc.detail)
            else:
                try:
                    self._dark = spectrometer.acquire_counts()
                finally:
                    spectrometer.set_lamp_enabled(True)
            if not dark_only:
                self.rig.seed_replicate(np.random.SeedSequence([spec.seed, CALIBRATION_ROUND, 1]))
                self._reference = spectrometer.acquire_counts()
            # a saturated or dark reference is a rig problem, not a bad droplet
            from drivers.absorbance import absorbance_on_grid

            absorbance_on_grid(
                self._reference,
                self._dark,
                self._reference,
                self._wavelengths,
                spec.protocol.wavelengths(),
                self._screen(spec).detector,
                device=spectrometer.name,
            )

        self._device("taking dark and reference spectra", take)
        reason = "dark re-taken" if dark_only else "dark and reference taken"
        if zero_dark:
            # said where the morning reader looks: without a dark, absorbance carries the detector's baseline
            uncorrected = getattr(spectrometer, "correct_dark_counts", True) is False
            reason = (f"{reason}; the dark is taken as zero counts ({zero_dark[0]})"
                      + ("; this spectrometer has no electric-dark correction either, so every absorbance carries "
                         "its baseline: fit a lamp shutter the spectrometer can switch, or take the dark by hand"
                         if uncorrected else ""))
            self.store.journal(self.campaign_id, "calibration_warning", reason=reason)
        self.store.journal(
            self.campaign_id,
            "calibrated",
            reason=reason,
            data={
                "dark_counts": np.asarray(self._dark).tolist(),
                "reference_counts": np.asarray(self._reference).tolist(),
                "wavelengths_nm": np.asarray(self._wavelengths).tolist(),
            },
        )

    def _screen(self, spec: CampaignSpec) -> ReplicateScreen:
        return ReplicateScreen.from_protocol(spec.protocol.replicates, self._saturation)

    # ---- checkpoints ------------------------------------------------------------------------------
    def _checkpoint(self, spec: CampaignSpec) -> None:
        """The replicate boundary: honour the e-stop and pending control requests. Raises
        _Reequilibrate after a hold (the flow was stopped), _Restart after a too-long pause."""
        if self.watcher is not None and self.watcher.claim_lost:
            raise CampaignError(self.watcher.claim_lost)
        self._heartbeat()
        held_s: float | None = None
        if self.watcher is not None and self.watcher.tripped.is_set():
            held_s = self._hold_estop(None)
        seen: set[int] = set()
        while True:
            # one request at a time, the list read afresh: a hold handles (refuses) requests that came
            # meanwhile, a second pause among them, which must not pause the campaign again after resume
            control = next((c for c in self.store.pending_controls(self.campaign_id) if c.id not in seen), None)
            if control is None:
                break
            seen.add(control.id)
            if control.action == "pause":
                self._stop_flow()
                self.store.mark_control_handled(control.id, "paused")
                held_s = (held_s or 0.0) + self._hold(state.PAUSED, control.reason, control.who)
            elif control.action == "abort":
                self.store.mark_control_handled(control.id, "aborted")
                raise _Aborted(control.who, control.reason)
            else:
                self._side_control(control)
        if self._recalibrate:
            self._recalibrate = False
            self._calibrate(spec, dark_only=True)
        if held_s is not None:
            limit = spec.protocol.pause_restart_after_s
            if held_s > limit:
                raise _Restart(
                    f"paused {held_s:.0f} s > pause_restart_after_s {limit:g} s: the droplets in the line have aged"
                )
            raise _Reequilibrate()

    def _heartbeat(self) -> None:
        """Prove the main loop is alive (at most once a second; the watcher covers long waits)."""
        now = time.monotonic()
        if now - self._last_heartbeat >= 1.0:
            self.store.heartbeat(self.campaign_id, self.owner)
            self._last_heartbeat = now

    def _side_control(self, control: Any) -> None:
        """Requests that do not change what the runner does next."""
        action = control.action
        if action == "resume":
            self.store.mark_control_handled(control.id, "refused: not paused")
        elif action == "recalibrate":
            self._recalibrate = True
            self.store.mark_control_handled(control.id, "dark spectrum re-taken at this checkpoint")
        elif action == "estop":
            # the console latched it as it asked (the latch is what stops the rig); latching again here
            # recorded each press twice, and a second press handled after a clear re-latched the rig
            self.store.mark_control_handled(control.id, "e-stop latched by the request")
        elif action == "estop-clear":
            # cleared by the console as it asked; clearing here again could clear a newer latch
            self.store.mark_control_handled(control.id, "e-stop cleared by the request")
        else:
            self.store.mark_control_handled(control.id, f"refused: unknown action {action!r}")

    def _latch_text(self, latch: Any) -> str:
        """A hold by an e-stop latch, in words: the latch may be older than this campaign (pressed on
        another campaign of the rig), so say when."""
        scope = f"on rig {self.rig_name}" if latch.rig else "on every rig"
        clear = (f"the console's Clear e-stop or `sdl estop --clear --rig {latch.rig}`" if latch.rig
                 else "`sdl estop --clear`")  # a lab-wide latch is cleared from the command line only
        return (f"e-stop latched {scope} at {latch.at:%Y-%m-%d %H:%M} UTC: {latch.reason}; when it is safe an "
                f"admin clears it ({clear}), then resume")

    def _hold_estop(self, latch: Any) -> float:
        self._stop_flow()
        start = self.wall()
        if latch is None:
            latch = self.store.estop_latched(self.rig_name)
        who = latch.who if latch is not None else "system"
        reason = self._latch_text(latch) if latch is not None else "e-stop"
        if self._status() != state.ESTOPPED:
            self._set_status(state.ESTOPPED, reason=reason, who=who)
        return (self.wall() - start) + self._hold(state.ESTOPPED, reason, who)

    def _hold(self, status: str, reason: str, who: str) -> float:
        """Pumps safe, status ``status``; wait (polling the store) for resume or abort. Returns the
        wall seconds held. An e-stop moves to paused once its latch is cleared."""
        unreachable = self._stop_flow()
        if unreachable:
            # a device that no longer answers may still be pumping: the operator has to know which
            names = ", ".join(problem.split(": ", 1)[0] for problem in unreachable)
            reason += f" | NOT STOPPED, stop by hand: {names} ({'; '.join(unreachable)})"
            log.error("devices not stopped", devices=unreachable)
        start = self.wall()
        if self._status() != status:
            self._set_status(status, reason=reason, who=who)
        # what held the campaign before an e-stop came on top (a fault, "NOT STOPPED" with it; a pause to
        # refill): the clear must not wipe it from the reason the operator reads next
        before = f"; before the e-stop: {status}: {reason}" if status != state.ESTOPPED else ""
        while True:
            if self.watcher is not None and self.watcher.claim_lost:
                raise CampaignError(self.watcher.claim_lost)
            latch = self.store.estop_latched(self.rig_name)
            if latch is not None and status != state.ESTOPPED:
                status = state.ESTOPPED
                self._set_status(status, reason=self._latch_text(latch), who=latch.who)
            if latch is None and status == state.ESTOPPED:
                if self.watcher is not None:
                    self.watcher.tripped.clear()
                status = state.PAUSED
                cleared = self.store.last_cleared_estop(self.rig_name)
                if cleared is not None and cleared.cleared_by:  # who cleared it and what they checked
                    self._set_status(status, reason=f"e-stop cleared: {cleared.clear_reason}{before}; resume when ready",
                                     who=cleared.cleared_by)
                else:
                    self._set_status(status, reason=f"e-stop cleared{before}; resume when ready")
            for control in self.store.pending_controls(self.campaign_id):
                if control.action == "resume":
                    if status == state.ESTOPPED:
                        self.store.mark_control_handled(control.id, "refused: the e-stop is still latched")
                        continue
                    self.store.mark_control_handled(control.id, "resumed")
                    self._set_status(state.RUNNING, reason=control.reason or "resumed", who=control.who)
                    return self.wall() - start
                if control.action == "abort":
                    self.store.mark_control_handled(control.id, "aborted")
                    raise _Aborted(control.who, control.reason)
                if control.action == "pause":
                    self.store.mark_control_handled(control.id, f"refused: already {status}")
                    continue
                self._side_control(control)
            try:
                self.sleep(self.poll_s)
            except BaseException as exc:  # the caller's hook (an agent handing the campaign back)
                raise _FromCaller(exc) from exc

    # ---- history and stop rules -----------------------------------------------------------------
    def _load_history(self, spec: CampaignSpec) -> None:
        by_key: dict[tuple[int, int], list[np.ndarray]] = {}
        for r in self.store.replicates(self.campaign_id):
            if r.accepted:
                by_key.setdefault((r.round, r.condition), []).append(r.absorbance)
            self._clock_offset = max(self._clock_offset, float(r.clock_s))
        for c in self.store.conditions(self.campaign_id):
            if c.status in ("done", "failed"):
                self._remember(c, by_key.get((c.round, c.index), []))
        after = 0
        while True:
            events = self.store.events(self.campaign_id, after_id=after, limit=500)
            if not events:
                break
            for e in events:
                if e.kind == "reagent_used":
                    self._reagent_ul[(int(e.data["round"]), int(e.data["condition"]))] = float(e.data["ul"])
            after = events[-1].id

    def _remember(self, c: ConditionRow, spectra: list[np.ndarray]) -> None:
        self._observations[(c.round, c.index)] = Observation(
            round_index=c.round,
            inputs=dict(c.inputs),
            median_loss=c.median_loss,
            mad=c.mad,
            failed=c.status == "failed",
            spectra=np.vstack(spectra) if spectra else None,
            source=c.source,
            prediction=c.prediction,
        )

    def _stop_reason(self, spec: CampaignSpec, rounds_done: int, planned: int) -> str | None:
        stop = spec.protocol.stop
        measured = [o for o in self._observations.values() if not o.failed and o.median_loss is not None]
        if stop.loss_threshold is not None and measured:
            best = min(measured, key=lambda o: float(o.median_loss))  # type: ignore[arg-type]
            if float(best.median_loss) <= stop.loss_threshold:  # type: ignore[arg-type]
                return f"loss threshold reached: {best.median_loss:.4f} <= {stop.loss_threshold:g} (round {best.round_index + 1})"
        limit = spec.rounds_limit
        if limit is not None and rounds_done >= limit:
            return f"round budget spent: {rounds_done} of {limit} rounds"
        if stop.max_conditions is not None and planned >= stop.max_conditions:
            return f"condition budget spent: {planned} of {stop.max_conditions} conditions"
        if stop.max_reagent_ml is not None and self._reagent_room(stop.max_reagent_ml) < 1:
            used_ml = sum(self._reagent_ul.values()) / 1000.0
            per_ml = max(self._reagent_ul.values()) / 1000.0
            return (
                f"reagent budget spent: {used_ml:.2f} of {stop.max_reagent_ml:g} mL pumped (all streams, "
                f"the solvent included), and a condition has taken up to {per_ml:.2f} mL"
            )
        return None

    def _reagent_room(self, budget_ml: float) -> int:
        """How many more conditions the reagent budget holds, at the most any condition has pumped so
        far (a large number before anything is measured: the first round is not cut)."""
        per_ul = max(self._reagent_ul.values(), default=0.0)
        if per_ul <= 0:
            return 1 << 30
        return max(0, int((budget_ml * 1000.0 - sum(self._reagent_ul.values())) // per_ul))

    # ---- rounds ---------------------------------------------------------------------------------
    def _plan_round(self, spec: CampaignSpec, planned: int, rounds: list[RoundRow]) -> bool:
        """Ask the optimiser for the next batch (after ``rounds``, all done) and persist it; False if the
        optimiser says stop."""
        protocol = spec.protocol
        space = protocol.space()
        index = len(rounds)
        if rounds:
            space = space.with_bounds(rounds[-1].bounds)
        n = protocol.batch_size
        if protocol.stop.max_conditions is not None:
            n = min(n, protocol.stop.max_conditions - planned)
        if protocol.stop.max_reagent_ml is not None:  # the last batch is cut to what the budget holds
            n = min(n, self._reagent_room(protocol.stop.max_reagent_ml))
        strategy = resolve(protocol.optimizer.strategy)
        optimizer = make_optimizer(
            protocol.optimizer.strategy, protocol.optimizer.settings, _widening(protocol), spec.seed
        )
        history = History(
            observations=[self._observations[k] for k in sorted(self._observations)],
            wavelengths=protocol.wavelengths(),
            loss=self._loss,
            round_index=index,
            bounds=[dict(r.bounds) for r in rounds],
        )
        suggestion = optimizer.suggest(history, space, n)
        notes = jsonable(dict(suggestion.notes))
        if notes.get("stop"):
            self.store.journal(
                self.campaign_id, "optimizer_stop", reason=str(notes["stop"]), data={"round": index}
            )
            self._stop_note = f"{state.OPTIMISER_STOP} {notes['stop']} (before round {index + 1})"
            return False
        predictions = list(suggestion.predictions) + [None] * (
            len(suggestion.batch) - len(suggestion.predictions)
        )
        conditions = [
            PlannedCondition(
                inputs={k: float(v) for k, v in inputs.items()},
                source=suggestion.sources[i] if i < len(suggestion.sources) else strategy,
                prediction=None if predictions[i] is None else np.asarray(predictions[i], dtype=float),
            )
            for i, inputs in enumerate(suggestion.batch)
        ]
        self.store.add_round(
            self.campaign_id,
            index,
            strategy=strategy,
            bounds=suggestion.space.bounds,
            conditions=conditions,
            notes=notes,
        )
        log.info("batch planned", round=index, conditions=len(conditions), strategy=strategy)
        return True

    def _drive(self, spec: CampaignSpec) -> str:
        self._stop_note: str | None = None
        while True:
            self._checkpoint_outside(spec)
            rounds = self.store.rounds(self.campaign_id)
            open_rounds = [r for r in rounds if r.status != "done"]
            if open_rounds:
                current = open_rounds[0]
            else:
                planned = len(self.store.conditions(self.campaign_id))
                reason = self._stop_reason(spec, len(rounds), planned)
                if reason is None:
                    if self._plan_round(spec, planned, rounds):
                        continue
                    reason = self._stop_note
                self._stop_flow()
                self._set_status(state.FINISHED, reason=reason or "done")
                return state.FINISHED
            bind(round=current.index)
            conditions = self.store.conditions(self.campaign_id, current.index)
            self._emit("round", index=current.index, conditions=len(conditions), rounds_max=spec.rounds_limit)
            for cond in conditions:
                if cond.status in ("done", "failed"):
                    self._emit(
                        "condition_done",
                        round=cond.round,
                        index=cond.index,
                        median=cond.median_loss,
                        failed=cond.failed,
                        skipped=True,
                    )
                    continue
                self._measure_condition(spec, cond)
            self.store.finish_round(self.campaign_id, current.index)
            unbind("round", "condition", "attempt", "replicate")
            lost = self._round_lost(current.index, spec)
            if lost is not None:
                self._hold(state.FAULTED, lost, "system")

    def _round_lost(self, index: int, spec: CampaignSpec) -> str | None:
        """Why the campaign must wait for an operator after round ``index``: droplets arrived but every
        condition failed, mostly on the instrument's side (a flooded detector, no light: a lamp left
        off, a blocked cell; on a dry run, a model answering in transmittance), so going on would spend
        reagent on rounds the optimiser learns nothing from. Failures on the chemistry's side (no valid
        spectrum, no product: NaN or empty droplets) are the optimiser's to avoid: journaled, no hold,
        unless the round before failed whole as well."""
        conditions = self.store.conditions(self.campaign_id, index)
        if not conditions or not all(c.failed for c in conditions):
            return None  # the usual case: no need to load the round's replicate spectra
        replicates = self.store.replicates(self.campaign_id, index)
        if not replicates:
            return None
        reasons = Counter(reject_kind(r.reject_reason) or "accepted" for r in replicates)
        common = ", ".join(f"{why} x{n}" for why, n in reasons.most_common(3))
        what = f"every condition of round {index + 1} failed ({len(replicates)} droplets: {common})"
        if reasons.most_common(1)[0][0] not in INSTRUMENT_REJECTS:
            log.warning("round failed", round=index, reasons=dict(reasons))
            self.store.journal(self.campaign_id, "round_failed", reason=what, data={"round": index})
            before = self.store.conditions(self.campaign_id, index - 1) if index > 0 else []
            if not before or not all(c.failed for c in before):
                return None  # one round: the optimiser's to steer away from
            if self._stop_reason(spec, index + 1, len(self.store.conditions(self.campaign_id))) is not None:
                return None  # the campaign ends here anyway: nothing more to spend
            # two rounds running without one measurable condition: the rest of the budget would go the
            # same way (wrong reagents, ranges that cannot work; on a dry run, a model that never answers)
            return (
                f"{what}, and every condition of round {index} before it: no condition gave a spectrum two "
                "rounds running; check the reagents, the protocol's ranges and the target (on a dry run: "
                "the chemistry model), then resume to plan the next round, or abort"
            )
        return (
            f"{what}; check the lamp, the flow cell and the detector (on a dry run: that the chemistry "
            "model returns the absorbance of one droplet), then resume to plan the next round"
        )

    def _checkpoint_outside(self, spec: CampaignSpec) -> None:
        """A checkpoint between conditions: a hold here needs no re-equilibration of its own."""
        try:
            self._checkpoint(spec)
        except (_Reequilibrate, _Restart):
            pass  # no condition in hand: the next one sets its flow and equilibrates anyway
        except _Fault as exc:
            self._stop_flow()
            self._hold(state.FAULTED, str(exc), "system")

    # ---- one condition ------------------------------------------------------------------------------
    def _measure_condition(self, spec: CampaignSpec, cond: ConditionRow) -> None:
        protocol = spec.protocol
        bind(round=cond.round, condition=cond.index)
        self._flow_ul = 0.0
        try:
            rates = protocol.stream_rates_ul_min(cond.inputs)
            if too_big := self.rig.syringe_shortfalls(protocol, cond.inputs):
                raise InfeasibleInputs(too_big)
        except InfeasibleInputs as exc:
            # nothing reaches a pump: the condition is failed and the optimiser learns so
            log.warning("condition refused", reason=str(exc))
            self.store.journal(
                self.campaign_id,
                "condition_refused",
                reason=str(exc),
                data={"round": cond.round, "condition": cond.index},
            )
            self._finish(cond, None, None, [], failed=True, reason=f"refused before any pump ran: {'; '.join(exc.problems)}")
            return
        attempt = cond.attempt
        if cond.status == "planned":
            self.store.start_condition(self.campaign_id, cond.round, cond.index, attempt, rates=rates)
        self._flow_ul = 0.0
        n = protocol.replicates.n
        while True:
            bind(attempt=attempt)
            rows = [r for r in self.store.replicates(self.campaign_id, cond.round, cond.index) if r.attempt == attempt]
            stored = [_Rep.of(r) for r in rows]
            aged = self._aged_attempt(protocol, rows)
            if aged is not None:  # taken before this process, longer ago than a pause may last
                self.store.set_aside(self.campaign_id, cond.round, cond.index, attempt, aged)
                attempt += 1
                self.store.start_condition(self.campaign_id, cond.round, cond.index, attempt, rates=rates)
                continue
            self._emit(
                "condition",
                round=cond.round,
                index=cond.index,
                attempt=attempt,
                replicates=n,
                done=len(stored),
            )
            try:
                if len(stored) < n:
                    stored = self._run_attempt(spec, cond, rates, attempt, stored)
            except _Restart as exc:
                self.store.set_aside(self.campaign_id, cond.round, cond.index, attempt, exc.reason)
                attempt += 1
                self.store.start_condition(self.campaign_id, cond.round, cond.index, attempt, rates=rates)
                continue
            stored = self._judge_outliers(spec, cond, attempt, stored)
            good = [r for r in stored if r.accepted and r.loss is not None]
            if len(good) >= protocol.replicates.min_accepted:
                self._finish(cond, *median_mad([r.loss for r in good]), good, failed=False)
                return
            every = self.store.replicates(self.campaign_id, cond.round, cond.index, include_set_aside=True)
            repeated = _repeated_rejection(every, attempt)
            if repeated is not None:  # measured twice, the same way: a third pass would only repeat it
                self.store.journal(self.campaign_id, "remeasure_skipped", reason=repeated,
                                   data={"round": cond.round, "condition": cond.index, "attempt": attempt})
                log.warning("remeasure skipped", reason=repeated)
            elif _short_attempts(spec, every, attempt) < protocol.replicates.max_remeasure:
                reason = (
                    f"too few accepted replicates ({len(good)} of {n} < {protocol.replicates.min_accepted}): "
                    "measured again"
                )
                log.warning("remeasure", reason=reason)
                self.store.set_aside(self.campaign_id, cond.round, cond.index, attempt, reason)
                attempt += 1
                self.store.start_condition(self.campaign_id, cond.round, cond.index, attempt, rates=rates)
                continue
            median, mad = median_mad([r.loss for r in good]) if good else (None, None)
            self._finish(cond, median, mad, good, failed=True, reason=_why_failed(stored, len(good), protocol))
            return

    def _aged_attempt(self, protocol: ExperimentProtocol, rows: Sequence[Any]) -> str | None:
        """Why an unfinished attempt's droplets may not be mixed with new ones: the last was taken longer
        ago than ``pause_restart_after_s`` (a Ctrl-C at night, `sdl resume` in the morning). A hold in
        this process is timed as it happens; this catches the time no process was running. None: fine."""
        if not rows or len(rows) >= protocol.replicates.n:
            return None
        age = (self.store.now() - max(r.at for r in rows)).total_seconds()
        if age <= protocol.pause_restart_after_s:
            return None
        return (
            f"its last droplet was taken {age:.0f} s ago, before this process took the campaign over "
            f"(> pause_restart_after_s {protocol.pause_restart_after_s:g} s): the droplets in the line have aged"
        )

    def _judge_outliers(self, spec: CampaignSpec, cond: ConditionRow, attempt: int, stored: list[_Rep]) -> list[_Rep]:
        """The attempt's outliers, judged on all its droplets that passed the other screens at once
        (:func:`orchestrator.screening.outlier_verdicts`); the verdicts stored and journaled. Judging again
        (a resumed run) gives the same verdicts."""
        judged = [r for r in stored if r.loss is not None and (r.accepted or reject_kind(r.reason) == "outlier")]
        losses = [float(r.loss) for r in judged if r.loss is not None]
        verdicts, note = outlier_verdicts(losses, spec.protocol.replicates.outlier_mad)
        verdict = {r.index: why for r, why in zip(judged, verdicts, strict=True)}
        if note or any(verdict[r.index] != r.reason for r in judged):
            self.store.judge_outliers(self.campaign_id, cond.round, cond.index, attempt, verdict, note)
        if note:
            log.warning("outlier screen stood down", reason=note)
        return [
            replace(r, accepted=verdict[r.index] is None, reason=verdict[r.index]) if r.index in verdict else r
            for r in stored
        ]

    def _finish(
        self,
        cond: ConditionRow,
        median: float | None,
        mad: float | None,
        good: list[_Rep],
        *,
        failed: bool,
        reason: str = "",
    ) -> None:
        self._account_flow()
        if not failed or self._flow_ul > 0:
            self._reagent_ul[(cond.round, cond.index)] = self._flow_ul
            self.store.journal(
                self.campaign_id,
                "reagent_used",
                data={"round": cond.round, "condition": cond.index, "ul": self._flow_ul},
            )
        if failed:
            median = mad = None
        self.store.finish_condition(
            self.campaign_id,
            cond.round,
            cond.index,
            median_loss=median,
            mad=mad,
            accepted=len(good),
            failed=failed,
            reason=reason,
        )
        log.info("condition done", median=median, mad=mad, accepted=len(good), failed=failed)
        self._observations[(cond.round, cond.index)] = Observation(
            round_index=cond.round,
            inputs=dict(cond.inputs),
            median_loss=median,
            mad=mad,
            failed=failed,
            spectra=np.vstack([r.absorbance for r in good]) if good else None,
            source=cond.source,
            prediction=cond.prediction,
        )
        self._emit("condition_done", round=cond.round, index=cond.index, median=median, failed=failed)

    def _run_attempt(
        self,
        spec: CampaignSpec,
        cond: ConditionRow,
        rates: dict[str, float],
        attempt: int,
        stored: list[_Rep],
    ) -> list[_Rep]:
        """Acquire the attempt's missing replicates; returns all of the attempt's replicates."""
        protocol = spec.protocol
        n = protocol.replicates.n
        reps = {r.index: r for r in stored}
        screen = self._screen(spec)
        grid = protocol.wavelengths()
        spectrometer = self.rig.spectrometer
        assert spectrometer is not None
        flowing = False
        i = 0
        while i < n:
            if i in reps:
                i += 1
                continue
            bind(replicate=i)
            try:
                self._checkpoint(spec)
                if not flowing:
                    self._establish_flow(rates)
                    self._equilibrate(protocol, cond.inputs)
                    flowing = True
                # also right after the equilibration wait: a pump that stopped during it (a power
                # reset, its watchdog) must not go unseen into the first replicate
                if self.rig.clock.now() - self._pumps_checked_at >= self._check_interval_s(rates):
                    self._recheck_pumps(rates)
                seq = np.random.SeedSequence([spec.seed, cond.round, cond.index, attempt, i])

                def acquire(seq: np.random.SeedSequence = seq) -> np.ndarray:
                    self.rig.seed_replicate(seq)
                    return spectrometer.acquire_counts()

                counts = self._device("acquiring a spectrum", acquire)
                if self.watcher is not None and self.watcher.tripped.is_set():
                    continue  # taken while the e-stop stopped the flow: not a measurement
            except _Reequilibrate:
                flowing = False
                continue
            except _Fault as exc:
                self._stop_flow()
                log.error("fault", reason=str(exc))
                held_s = self._hold(state.FAULTED, str(exc), "system")
                self._rechecks_failed = 0
                flowing = False
                if held_s > protocol.pause_restart_after_s:
                    raise _Restart(
                        f"faulted {held_s:.0f} s > pause_restart_after_s {protocol.pause_restart_after_s:g} s: "
                        "the droplets in the line have aged"
                    ) from exc
                continue
            result = screen.screen(counts, self._dark, self._reference, self._wavelengths, grid, self._loss)
            self.store.add_replicate(
                self.campaign_id,
                cond.round,
                cond.index,
                attempt,
                i,
                absorbance=result.absorbance,
                raw={"counts": np.asarray(counts, dtype=np.float32)},
                loss=result.loss,
                accepted=result.accepted,
                reject_reason=result.reason,
                clock_s=self._clock_s(),
            )
            self._rechecks_failed = self._ran_dry = 0
            reps[i] = _Rep(i, result.loss, result.accepted, result.absorbance, result.reason)
            if not result.accepted:
                log.info("replicate rejected", reason=result.reason)
            self._emit(
                "replicate",
                round=cond.round,
                condition=cond.index,
                attempt=attempt,
                index=i,
                loss=result.loss,
                accepted=result.accepted,
            )
            i += 1
        return [reps[k] for k in sorted(reps)]

    # ---- the whole run ------------------------------------------------------------------------------
    def _enter_running(self, row: Any) -> str | None:
        """Bring the stored status to running; a final status to return at once, or None."""
        status = row.status
        if status == state.ABORTING:
            self._set_status(state.ABORTED, reason=row.reason or "aborted before the process ended")
            return state.ABORTED
        if status == state.RUNNING:
            self.store.journal(
                self.campaign_id, "resumed", who=self.owner, reason="continued by a new process"
            )
            return None
        latch = self.store.estop_latched(self.rig_name)
        if latch is not None:
            self._hold_estop(latch)  # until the latch is cleared and someone resumes
            return None
        verb = "started" if status in (state.CREATED, state.QUEUED) else "resumed"
        if self.started_by is not None and self.started_by[1]:  # who started it and why, as every control
            who, why = self.started_by
            self._set_status(state.RUNNING, reason=f"{verb} in {self.owner}: {why}", who=who)
        else:
            self._set_status(state.RUNNING, reason=f"{verb} by {self.owner}")
        return None

    def run(self) -> str:
        row = self.store.campaign(self.campaign_id)
        if row.ended:
            return row.status
        self.rig_name = row.rig_name
        bind(campaign=self.campaign_id)
        with tempfile.TemporaryDirectory(prefix="sdl-campaign-") as workdir:
            spec = load_spec(row, Path(workdir))
            self._loss = spec.protocol.loss(Path(workdir) / "target.csv")
            self._claim(row)
            try:
                return self._run_claimed(spec, row)
            finally:
                try:  # not patient: a store that is gone leaves the claim to our pid, which dies with us
                    self.raw_store.release(self.campaign_id, self.owner)
                except (OperationalError, InterfaceError) as exc:
                    log.warning("could not release the campaign: store unreachable", error=database_error_text(exc))
                unbind("campaign", "round", "condition", "attempt", "replicate")

    def _claim(self, row: Any) -> None:
        """Claim the campaign; a previous owner on this host whose process is gone (kill -9) holds
        nothing (the store's liveness checks its pid), so it is taken over at once, and journaled."""
        self.store.claim(self.campaign_id, self.owner)
        if row.owner not in (None, self.owner) and owner_is_dead(row.owner):
            self.store.journal(
                self.campaign_id,
                "taken_over",
                who=self.owner,
                reason=f"{row.owner} is no longer running on this host",
            )
        # a request the last process did not live to act on (a pause sent just before a kill -9): a person
        # who starts the campaign now (`sdl resume`) wants it run, not paused or aborted by a request from
        # before, so each is closed, saying so; an agent taking over on its own honours them (nobody asked
        # it to run, and the operator's pause or abort must not vanish)
        if self.started_by is not None:
            before = row.owner if row.owner not in (None, self.owner) else "the process before"
            self.store.close_pending_controls(
                self.campaign_id,
                f"dropped: {before} ended before acting on it, and {self.started_by[0]} started the campaign "
                f"again ({self.owner}); send it again if it still stands",
            )

    def _not_started(self, row: Any, reason: str) -> str:
        """The rig is not there to run on, and nothing has moved: a campaign that never ran is paused
        (created cannot be faulted), one that ran is faulted; the reason says why. The final status."""
        status = (
            state.FAULTED
            if row.status == state.FAULTED or state.FAULTED in state.allowed(row.status)
            else state.PAUSED
        )
        if row.status == status:
            self.store.journal(self.campaign_id, "connect_failed", reason=reason)
        else:
            self._set_status(status, reason=reason, final=True)
        return status

    def _run_claimed(self, spec: CampaignSpec, row: Any) -> str:
        try:
            # a simulated rig's chemistry model is imported here: one gone since the campaign was stored
            # (another folder, another PYTHONPATH) stops it like a rig that does not connect
            self.rig = build_rig(spec.rig, spec.protocol, chemistry=spec.chemistry)
        except (ConfigError, DeviceError) as exc:  # a driver refusing its settings too: no traceback
            return self._not_started(row, f"fault: the rig could not be set up: {exc}")
        try:
            self.rig.connect()
        except DeviceError as exc:
            reason = f"fault: the rig did not connect: {exc}"
            if not self.rig.is_simulated:
                reason += ("; no hardware here? `sdl run PROTOCOL --rig RIG_FILE --dry-run` rehearses the "
                           "protocol on the rig's simulated twin")
            return self._not_started(row, reason)
        self._emit(
            "start",
            campaign=self.campaign_id,
            rounds_max=spec.rounds_limit,
            conditions=spec.protocol.batch_size,
            replicates=spec.protocol.replicates.n,
        )
        self.watcher = _Watcher(self)
        self.watcher.start()
        try:
            final = self._enter_running(row)
            if final is not None:
                return final
            self._load_history(spec)
            while True:
                try:
                    self._calibrate(spec)
                    break
                except _Fault as exc:
                    self._hold(state.FAULTED, str(exc), "system")
            return self._drive(spec)
        except _Aborted as exc:
            self._stop_flow()
            self._set_status(state.ABORTED, reason=exc.reason or "aborted", who=exc.who)
            return state.ABORTED
        except _FromCaller as passed:
            raise passed.original from None
        except (CampaignError, KeyboardInterrupt):
            raise
        except (OperationalError, InterfaceError):
            # the store stayed away past DB_PATIENCE_S: pumps safe, and up to the caller (an agent waits
            # and takes it up again first; `sdl run` says so in one line). Not faulted: nothing here is
            # broken, and writing the fault would wait for the store all over again.
            log.error("store unreachable past the patience: stopping", patience_s=DB_PATIENCE_S)
            self.rig.safe_state()
            raise
        except Exception as exc:
            # a bug, an optimiser failure or (dry run) the chemistry model's failure: pumps safe, the
            # campaign faulted with the reason, the traceback in the log file; `sdl resume` continues
            # once it is fixed. Not a hold: no operator at the rig can mend it.
            log.exception("chemistry model error" if isinstance(exc, SimulationModelError) else "engine error")
            self.rig.safe_state()
            if state.FAULTED in state.allowed(self._status()):
                reason = (
                    f"{exc}; fix the model, then `sdl resume {self.campaign_id}` or run again (see the log)"
                    if isinstance(exc, SimulationModelError)
                    else f"engine error: {type(exc).__name__}: {exc} (see the log)"
                )
                self._set_status(state.FAULTED, reason=reason, final=True)
                return state.FAULTED
            raise
        finally:
            self.watcher.stop_event.set()
            self.watcher.join(timeout=5)
            self.rig.safe_state()
            self.rig.close()


def process_owner(program: str = "sdl", pid: int | None = None) -> str:
    """The owner name of this process (or of process ``pid`` on this host) in the store:
    ``program@host:pid``."""
    return f"{program}@{socket.gethostname()}:{os.getpid() if pid is None else pid}"


def _why_failed(stored: Sequence[_Rep], accepted: int, protocol: ExperimentProtocol) -> str:
    """A failed condition in a line the operator and the chemist can act on: how many droplets counted
    and what the others were rejected for (``12 saturated, 8 empty``)."""
    kinds = Counter(reject_kind(r.reason) or "no loss" for r in stored if not r.accepted or r.loss is None)
    said = ", ".join(f"{n} {kind}" for kind, n in kinds.most_common())
    return (f"{accepted} of {len(stored)} droplets accepted, fewer than {protocol.replicates.min_accepted}"
            + (f"; rejected: {said}" if said else ""))


def _repeated_rejection(every: Sequence[Any], attempt: int) -> str | None:
    """Why not to measure a condition again (``every``: its replicates, set-aside ones too): this attempt
    and the one before accepted no droplet, every droplet of both rejected for the same reason
    (unreadable, saturated, empty: the chemistry at that condition, a precipitate, not a bubble that the
    next pass would miss). None otherwise."""
    if attempt < 1:
        return None
    reasons: dict[int, set[str | None]] = {}
    for r in every:
        if r.attempt in (attempt - 1, attempt):
            # the kind of rejection (saturated, no_light, nan, empty), not its numbers
            reasons.setdefault(r.attempt, set()).add(None if r.accepted else reject_kind(r.reject_reason))
    now, before = reasons.get(attempt, set()), reasons.get(attempt - 1, set())
    if len(now) == 1 and now == before and None not in now:
        return f"every droplet of two passes rejected as {next(iter(now))}: not measured again"
    return None


def _short_attempts(spec: CampaignSpec, every: Sequence[Any], attempt: int) -> int:
    """Earlier attempts of a condition (``every``: its replicates, set-aside ones too) that completed
    with too few accepted replicates (a pause-restarted attempt does not count against the remeasure
    limit)."""
    counts: dict[int, list[int]] = {}
    for r in every:
        if r.attempt < attempt:
            tally = counts.setdefault(r.attempt, [0, 0])
            tally[0] += 1
            tally[1] += int(r.accepted)
    n, need = spec.protocol.replicates.n, spec.protocol.replicates.min_accepted
    return sum(1 for total, ok in counts.values() if total >= n and ok < need)


def _operator_wait(seconds: float) -> None:
    """How the runner waits between looks at the store while it holds for an operator."""
    time.sleep(seconds)


def run_campaign(
    store: Store,
    campaign_id: str,
    *,
    owner: str,
    progress: ProgressSink | None = None,
    poll_s: float = CONTROL_POLL_S,
    estop_poll_s: float = ESTOP_POLL_S,
    wall: Callable[[], float] | None = None,
    sleep: Callable[[float], None] | None = None,
    started_by: tuple[str, str] | None = None,
) -> str:
    """Run (or resume) a stored campaign on its rig until it finishes, is aborted, or its rig cannot
    connect; returns the final status. ``wall``/``sleep`` measure and wait out pauses (tests pass
    their own); the rig's own clock drives everything else. ``started_by``: (who, why), for the
    journal, when a person started it (``sdl run``, ``sdl resume ID --reason TEXT``; why may be ''): such a
    start drops control requests left for a process that died, an agent's takeover honours them."""
    runner = _Runner(
        store,
        campaign_id,
        owner=owner,
        progress=progress,
        poll_s=poll_s,
        estop_poll_s=estop_poll_s,
        wall=wall or time.monotonic,
        sleep=sleep or _operator_wait,
    )
    runner.started_by = started_by
    return runner.run()


def read_target(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """A target CSV (for ``--target``), checked like the protocol's own."""
    return read_target_csv(path)
