"""Bad input, generated: protocol files, rig files and console API payloads, each judged one way.

Shared by the CI tests (tests/reliability/test_bad_input.py, a few dozen examples each) and the
benchmark (``python -m benchmarks.fuzz``, a thousand or more). Every generated input ends in exactly
one :class:`Outcome`; only ``REJECTED_CLEAR`` and ``ACCEPTED_VALID`` are good:

- rejected with a clear error: a ConfigError (or an HTTP 4xx) whose problems name a field of the
  input that was changed (by its dotted path, or by name in the message);
- accepted and valid: the checks the loader should have made hold when re-done here, and every rate
  the accepted file can produce, sent through the real drivers to emulated pumps, lies within the
  protocol's hard limits (rates beyond them are refused before a byte goes out);
- a traceback: any other exception type (or an HTTP 5xx);
- a hardware command: bytes reaching an emulated pump for a refused rate, a serial port opened
  while validating, a pump left running, or a control request written for a refused API call.
"""

from __future__ import annotations

import copy
import enum
import json
import math
import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import serial
import yaml
from hypothesis import strategies as st

from drivers.errors import DeviceError
from orchestrator.config_errors import ConfigError
from orchestrator.protocol import ExperimentProtocol, InfeasibleInputs, load_protocol
from orchestrator.rig import (
    RigConfig,
    build_rig,
    check_protocol_against_rig,
    driver_ranges,
    load_rig,
    pump_rate_limits_ul_min,
)
from simulators.serialsim import get_bus, parse_sim_url

REPO = Path(__file__).resolve().parents[2]
PROTOCOL_FILE = REPO / "protocols" / "ag_nanoprism.yaml"
RIG_FILES = [
    REPO / "deploy" / "rigs" / n for n in ("simulated.yaml", "example_newera.yaml", "example_harvard.yaml")
]
SIM_RIG_FILE = REPO / "deploy" / "rigs" / "simulated.yaml"
# a rig file names its chemistry model as module:Class and building the rig imports it: generated
# names are never imported (see docs/reliability.md); the harness builds only rigs with this one
TRUSTED_CHEMISTRY = "simulators.chemistry:AgNanoprism"
RATE_TOL = 2e-3  # relative: pumps round a rate to 4-5 significant digits


class Outcome(enum.StrEnum):
    REJECTED_CLEAR = "rejected with a clear error"
    ACCEPTED_VALID = "accepted and valid"
    REJECTED_UNCLEAR = "rejected, field not named"
    ACCEPTED_INVALID = "accepted but invalid"
    TRACEBACK = "traceback"
    HARDWARE = "hardware command"

    @property
    def good(self) -> bool:
        return self in (Outcome.REJECTED_CLEAR, Outcome.ACCEPTED_VALID)


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    detail: str = ""


# -- generating documents ---------------------------------------------------------------------------

Path_ = tuple[str | int, ...]

NASTY: st.SearchStrategy[Any] = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(
        [0, -1, 1e308, -0.0, 5e-324, "1e400", "nan", "inf", "", " ", "\x00", "é", "10 %", "0x10"]
    ),
    st.text(max_size=24),
    st.lists(st.one_of(st.integers(), st.floats(), st.text(max_size=5)), max_size=4),
    st.dictionaries(st.text(max_size=8), st.one_of(st.integers(), st.text(max_size=5)), max_size=3),
)
SCALES = [-1.0, 0.0, 0.001, 0.1, 0.5, 0.9, 1.1, 2.0, 10.0, 1e3, 1e6]


def paths(doc: Any, prefix: Path_ = ()) -> Iterator[Path_]:
    """Every path into a document of dicts and lists, the root excluded."""
    items: Any = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else ()
    for key, value in items:
        yield (*prefix, key)
        yield from paths(value, (*prefix, key))


def _get(doc: Any, path: Path_) -> Any:
    for part in path:
        doc = doc[part]
    return doc


def _near(value: Any) -> st.SearchStrategy[Any]:
    """Values of the same kind as ``value``: a number scaled, a pair reversed or stretched."""
    if isinstance(value, bool):
        return st.booleans()
    if isinstance(value, int | float):
        return st.sampled_from(SCALES).map(
            lambda s: type(value)(value * s) if isinstance(value, float) else int(value * s)
        )
    if isinstance(value, list) and len(value) == 2 and all(isinstance(v, int | float) for v in value):
        lo, hi = value
        return st.sampled_from(
            [[hi, lo], [lo, lo], [lo * 0.5, hi], [lo, hi * 2], [lo - 1, hi], [lo, hi, hi], [lo], [-hi, -lo]]
        )
    if isinstance(value, str):
        return st.sampled_from([value.upper(), value + "x", value[:-1], " " + value, value * 3])
    return NASTY


@dataclass(frozen=True)
class Mutation:
    op: str  # set, delete, add, rename
    path: Path_
    value: Any = None

    def field(self) -> str:
        from orchestrator.config_errors import dotted

        return dotted(self.path)

    def apply(self, doc: Any) -> None:
        *parent_path, key = self.path
        parent = _get(doc, tuple(parent_path))
        if self.op == "set":
            parent[key] = self.value
        elif self.op == "delete":
            del parent[key]
        elif self.op == "add":
            target = parent[key]
            if isinstance(target, dict):
                target[self.value[0]] = self.value[1]
            elif isinstance(target, list):
                target.append(copy.deepcopy(target[0]) if target and self.value[1] is None else self.value[1])
        elif self.op == "rename":
            parent[self.value] = parent.pop(key)


@st.composite
def mutations(draw: st.DrawFn, doc: Any) -> Mutation:
    found = list(paths(doc))
    path = draw(st.sampled_from(found))
    value = _get(doc, path)
    op = draw(st.sampled_from(["set", "set", "set", "delete", "add", "rename"]))
    if op == "add" and isinstance(value, dict | list):
        key = draw(st.one_of(st.text(min_size=1, max_size=12), st.sampled_from(["extra", "pumps", "n"])))
        item = draw(st.one_of(st.none(), NASTY)) if isinstance(value, list) else draw(NASTY)
        return Mutation("add", path, (key, item))
    if op == "rename" and isinstance(path[-1], str):
        key = draw(st.one_of(st.text(max_size=12), st.sampled_from(["Q_x", "1bad", "water", "a b", "AgNO3"])))
        return Mutation("rename", path, key)
    if op == "delete":
        return Mutation("delete", path)
    return Mutation("set", path, draw(st.one_of(_near(value), NASTY)))


@dataclass
class Generated:
    """One generated file: its text, and the paths that were changed ('' for the whole text)."""

    text: str
    changed: list[str] = field(default_factory=list)
    doc: Any = None


def _dump(doc: Any) -> str:
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)


@st.composite
def documents(draw: st.DrawFn, base: dict[str, Any]) -> Generated:
    """The base document with one to three mutations, or (one in eight) its text corrupted."""
    if draw(st.integers(0, 7)) == 0:
        text = _dump(base)
        kind = draw(st.sampled_from(["truncate", "insert", "garbage", "duplicate", "scalar"]))
        if kind == "truncate":
            text = text[: draw(st.integers(0, len(text)))]
        elif kind == "insert":
            at = draw(st.integers(0, len(text)))
            text = (
                text[:at]
                + draw(st.sampled_from([":", "- ", "{", "]", "\t", "&a", "*a", "!!python/object:os.system"]))
                + text[at:]
            )
        elif kind == "garbage":
            text = draw(st.text(max_size=200))
        elif kind == "duplicate":
            first = text.splitlines()[0]
            text = text + first + "\n"
        else:
            text = draw(st.sampled_from(["42", "- a\n- b", "null", "~", '"just a string"', ""]))
        return Generated(text, [""])
    doc = copy.deepcopy(base)
    changed = []
    for _ in range(draw(st.integers(1, 3))):
        m = draw(mutations(doc))
        try:
            m.apply(doc)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation removed the place
        changed.append(m.field())
        if m.op == "rename":
            changed.append(Mutation("set", (*m.path[:-1], m.value)).field())
    return Generated(_dump(doc), changed or [""], doc)


def base_protocol() -> dict[str, Any]:
    return yaml.safe_load(PROTOCOL_FILE.read_text())


def base_rigs() -> list[dict[str, Any]]:
    return [yaml.safe_load(p.read_text()) for p in RIG_FILES]


def protocol_files() -> st.SearchStrategy[Generated]:
    return documents(base_protocol())


def rig_files() -> st.SearchStrategy[Generated]:
    return st.one_of(*(documents(b) for b in base_rigs()))


# -- judging a rejection ----------------------------------------------------------------------------

_INDEX = re.compile(r"\[\d+\]")


def _names(field_path: str) -> set[str]:
    """'variables.Q_PVA.bounds[0]' -> {'variables', 'Q_PVA', 'bounds'}."""
    return {p for p in _INDEX.sub("", field_path).split(".") if p}


def names_the_field(exc: ConfigError, changed: list[str]) -> bool:
    """The error is about what was changed: a problem's field shares its top-level key with a changed
    path, or its message names the changed key. A corrupted text must be reported as such (line or
    file), which any problem with a message does."""
    if not exc.problems or not all(str(p).strip() for p in exc.problems):
        return False
    if "" in changed:
        return True
    for c in changed:
        top = _INDEX.sub("", c).split(".")[0].split("[")[0]
        last = [n for n in _INDEX.sub("", c).split(".") if n][-1:] or [top]
        for p in exc.problems:
            if p.field and (_INDEX.sub("", p.field).split(".")[0] == top):
                return True
            if last[0] and last[0] in p.message or top in p.message:
                return True
    return False


# -- judging an accepted protocol -------------------------------------------------------------------


def protocol_problems(p: ExperimentProtocol) -> list[str]:
    """The protocol's promises, checked again from scratch."""
    out: list[str] = []
    totals = [n for n, v in p.variables.items() if v.kind == "total"]
    if len(totals) != 1:
        out.append(f"{len(totals)} total variables")
    streams = [v.stream for v in p.variables.values() if v.kind == "percent"]
    if len(set(streams)) != len(streams) or p.remainder_stream in streams or None in streams:
        out.append(f"streams {streams} / remainder {p.remainder_stream}")
    for name, v in p.variables.items():
        (lo, hi), (hlo, hhi) = v.bounds, v.hard_limits
        if not all(math.isfinite(x) for x in (lo, hi, hlo, hhi)):
            out.append(f"{name}: not finite")
        if not (hlo <= lo < hi <= hhi):
            out.append(f"{name}: bounds {v.bounds} vs hard {v.hard_limits}")
        if v.kind == "percent" and not (0 <= hlo and hhi <= 100):
            out.append(f"{name}: percent hard limits {v.hard_limits}")
        if v.kind == "total" and hlo <= 0:
            out.append(f"{name}: total hard low {hlo}")
    if sum(v.bounds[0] for v in p.variables.values() if v.kind == "percent") > p.percent_sum_max:
        out.append("lower bounds exceed percent_sum_max")
    if p.replicates.min_accepted > p.replicates.n or p.replicates.min_accepted < 1:
        out.append("min_accepted")
    if p.stop.max_rounds is None and p.stop.max_conditions is None and p.stop.max_reagent_ml is None:
        out.append("unbounded campaign")
    target = p.target_spectrum()
    if target.shape != p.wavelengths().shape or not np.all(np.isfinite(target)):
        out.append("target spectrum not finite on the grid")
    for stream, (low, high) in p.rate_ranges_ul_min().items():
        if not (math.isfinite(low) and math.isfinite(high) and 0 <= low <= high):
            out.append(f"rate range of {stream}: {low}, {high}")
    return out


def corner_inputs(p: ExperimentProtocol) -> list[dict[str, Any]]:
    """Inputs at and beyond the edges: lower and upper bounds, hard limits, 10 % past them, NaN."""
    names = list(p.variables)
    lows = {n: v.bounds[0] for n, v in p.variables.items()}
    out: list[dict[str, Any]] = [lows, {n: v.bounds[1] for n, v in p.variables.items()}]
    out.append({n: v.hard_limits[0] for n, v in p.variables.items()})
    out.append({n: v.hard_limits[1] for n, v in p.variables.items()})
    for n in names:
        lo, hi = p.variables[n].hard_limits
        out.append({**lows, n: hi * 1.1 + 1})
        out.append({**lows, n: lo - 0.1 * abs(lo) - 1})
        out.append({**lows, n: float("nan")})
    out.append({**lows, "unknown": 1.0})
    out.append({k: v for k, v in lows.items() if k != names[0]})
    return out


# -- the hardware probe: emulated pumps behind the real drivers --------------------------------------


class PortOpened(RuntimeError):
    """Raised by the guarded serial_for_url for any port that is not sim://."""


@contextmanager
def no_real_ports(opened: list[str]) -> Iterator[None]:
    """serial_for_url refuses every non-sim:// URL for the duration and records it."""
    original = serial.serial_for_url

    def guarded(url: str, *args: Any, **kwargs: Any) -> Any:
        if not str(url).startswith("sim://"):
            opened.append(str(url))
            raise PortOpened(f"validation opened a real port: {url}")
        return original(url, *args, **kwargs)

    serial.serial_for_url = guarded  # type: ignore[assignment]
    try:
        yield
    finally:
        serial.serial_for_url = original  # type: ignore[assignment]


class WireTap:
    """Counts bytes sent to the emulated lines of a rig and reads back each pump's rate."""

    def __init__(self, rig_cfg: RigConfig) -> None:
        self.bytes = 0
        self.pumps: dict[str, tuple[Any, int]] = {}
        seen: set[tuple[str, str]] = set()
        for p in rig_cfg.pumps:
            protocol, bus, _ = parse_sim_url(p.port)
            firmware = get_bus(protocol, bus)
            self.pumps[p.stream_name] = (firmware, p.address)
            if (protocol, bus) not in seen:
                seen.add((protocol, bus))
                receive = firmware.receive

                def counting(data: bytes, baudrate: int, _receive: Callable[..., bytes] = receive) -> bytes:
                    self.bytes += len(data)
                    return _receive(data, baudrate)

                firmware.receive = counting  # type: ignore[method-assign]

    def rate(self, stream: str) -> float:
        firmware, address = self.pumps[stream]
        return float(firmware.snapshot(address).rate_ul_min)

    def running(self) -> list[str]:
        out = []
        for stream, (firmware, address) in self.pumps.items():
            snap = firmware.snapshot(address)
            if getattr(snap, "running", None) or getattr(snap, "state", "S") in ("I", "W", "X"):
                out.append(stream)
        return out


def send_rates(p: ExperimentProtocol, rig: Any, tap: WireTap, inputs: dict[str, Any]) -> Verdict | None:
    """Inputs -> rates -> pumps, as a campaign does. None when all went as it should."""
    before = tap.bytes
    try:
        rates = p.stream_rates_ul_min(inputs)
    except InfeasibleInputs:
        if tap.bytes != before:
            return Verdict(Outcome.HARDWARE, f"bytes sent for refused inputs {inputs}")
        return None
    if p.check_inputs(inputs):
        return Verdict(Outcome.ACCEPTED_INVALID, f"rates computed for infeasible inputs {inputs}")
    ranges = p.rate_ranges_ul_min()
    for stream, rate in rates.items():
        low, high = ranges[stream]
        if not (low * (1 - 1e-9) - 1e-12 <= rate <= high * (1 + 1e-9) + 1e-12):
            return Verdict(Outcome.HARDWARE, f"{stream}: {rate} uL/min outside {low}-{high} from {inputs}")
        pump = rig.pump_for_stream[stream]
        sent = tap.bytes
        try:
            pump.set_rate_ul_min(rate)
        except DeviceError:
            if rate > 0 and tap.bytes != sent and _out_of_pump_range(rig, stream, rate):
                return Verdict(Outcome.HARDWARE, f"bytes sent before refusing {rate} uL/min on {stream}")
            continue
        got = tap.rate(stream)
        if not (low * (1 - RATE_TOL) <= got <= high * (1 + RATE_TOL)):
            return Verdict(Outcome.HARDWARE, f"pump {stream} runs at {got} uL/min, hard range {low}-{high}")
    return None


def _out_of_pump_range(rig: Any, stream: str, rate: float) -> bool:
    pump = rig.pump_for_stream[stream]
    driver = "newera" if type(pump).__module__.endswith("newera") else "harvard"
    low, high = pump_rate_limits_ul_min(driver, pump.syringe_diameter_mm)
    return not low <= rate <= high


class Probe:
    """A connected simulated rig (deploy/rigs/simulated.yaml) for protocols that pass the rig check."""

    def __init__(self, name: str = "probe") -> None:
        self.protocol = load_protocol(PROTOCOL_FILE)
        # its own sim:// lines, so that rigs built from generated files elsewhere never share them
        text = SIM_RIG_FILE.read_text().replace("sim://newera/", f"sim://newera/{name}-")
        self.rig_cfg = RigConfig.model_validate(
            yaml.safe_load(text.replace("sim://harvard/", f"sim://harvard/{name}-"))
        )
        self.rig = build_rig(self.rig_cfg, self.protocol, world_name=f"fuzz-{name}")
        self.rig.connect()
        self.tap = WireTap(self.rig_cfg)

    def close(self) -> None:
        self.rig.safe_state()
        self.rig.close()


# -- the judges -------------------------------------------------------------------------------------


def _write(workdir: Path, name: str, text: str) -> Path:
    path = workdir / name
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    return path


def protocol_workdir(root: Path) -> Path:
    """A folder with the protocol's target file, where generated protocol files are written."""
    (root / "targets").mkdir(parents=True, exist_ok=True)
    src = PROTOCOL_FILE.parent / "targets" / "ag_nanoprism.csv"
    shutil.copy(src, root / "targets" / src.name)
    return root


def judge_protocol(gen: Generated, workdir: Path, probe: Probe) -> Verdict:
    opened: list[str] = []
    try:
        with no_real_ports(opened):
            path = _write(workdir, "protocol.yaml", gen.text)
            try:
                p = load_protocol(path)
            except ConfigError as exc:
                ok = names_the_field(exc, gen.changed)
                return Verdict(
                    Outcome.REJECTED_CLEAR if ok else Outcome.REJECTED_UNCLEAR, f"{gen.changed}: {exc}"
                )
            problems = protocol_problems(p)
            if problems:
                return Verdict(Outcome.ACCEPTED_INVALID, "; ".join(problems))
            try:
                check_protocol_against_rig(p, probe.rig_cfg)
            except ConfigError:
                return Verdict(Outcome.ACCEPTED_VALID, "refused by the simulated rig")
            for inputs in corner_inputs(p):
                bad = send_rates(p, probe.rig, probe.tap, inputs)
                if bad is not None:
                    return bad
            probe.rig.safe_state()
    except Exception as exc:  # noqa: BLE001 - any other exception is what this harness counts
        return Verdict(Outcome.TRACEBACK, f"{gen.changed}: {type(exc).__name__}: {exc}")
    if opened:
        return Verdict(Outcome.HARDWARE, f"opened {opened}")
    return Verdict(Outcome.ACCEPTED_VALID)


def rig_problems(cfg: RigConfig) -> list[str]:
    out: list[str] = []
    names = [p.name for p in cfg.pumps]
    streams = [p.stream_name for p in cfg.pumps]
    if len(set(names)) != len(names) or len(set(streams)) != len(streams):
        out.append(f"duplicate pumps/streams {names} {streams}")
    lines = [(p.port, p.address) for p in cfg.pumps]
    if len(set(lines)) != len(lines):
        out.append("two pumps at one port and address")
    for p in cfg.pumps:
        (dlo, dhi), bauds = driver_ranges(p.driver)
        if not dlo <= p.syringe_diameter_mm <= dhi:
            out.append(f"{p.name}: diameter {p.syringe_diameter_mm}")
        if p.baudrate is not None and p.baudrate not in bauds:
            out.append(f"{p.name}: baud {p.baudrate}")
        if cfg.is_simulated != p.is_simulated:
            out.append(f"{p.name}: port {p.port} in a {'simulated' if cfg.is_simulated else 'real'} rig")
    return out


def judge_rig(gen: Generated, protocol: ExperimentProtocol, workdir: Path) -> Verdict:
    """Load the rig file; if accepted and simulated with the trusted chemistry, build it, connect it,
    send the protocol's corner rates and check the firmware, then put it in its safe state."""
    opened: list[str] = []
    try:
        with no_real_ports(opened):
            path = _write(workdir, "rig.yaml", gen.text)
            try:
                cfg = load_rig(path)
            except ConfigError as exc:
                ok = names_the_field(exc, gen.changed)
                return Verdict(
                    Outcome.REJECTED_CLEAR if ok else Outcome.REJECTED_UNCLEAR, f"{gen.changed}: {exc}"
                )
            problems = rig_problems(cfg)
            if problems:
                return Verdict(Outcome.ACCEPTED_INVALID, "; ".join(problems))
            try:
                check_protocol_against_rig(protocol, cfg)
            except ConfigError:
                return Verdict(Outcome.ACCEPTED_VALID, "refused with the protocol")
            chem = cfg.simulation.chemistry if cfg.simulation else None
            if not cfg.is_simulated or (chem is not None and chem.model != TRUSTED_CHEMISTRY):
                return Verdict(Outcome.ACCEPTED_VALID, "not built (real ports or untrusted chemistry)")
            try:
                rig = build_rig(cfg, protocol, world_name="fuzz-rig")
            except ConfigError:
                return Verdict(Outcome.ACCEPTED_VALID, "chemistry params refused at build")
            tap = WireTap(cfg)
            try:
                rig.connect()
            except DeviceError as exc:
                faults = [f.kind for p in cfg.pumps for f in p.faults]
                if cfg.spectrometer is not None:
                    faults += [f.kind for f in cfg.spectrometer.faults]
                if not faults:
                    # limits only the connected device knows (a spectrometer model's integration
                    # times) are checked at connect: clear if the error names what was changed
                    named = [c for c in gen.changed if c and c.split(".")[-1].split("[")[0] in str(exc)]
                    if named:
                        return Verdict(Outcome.REJECTED_CLEAR, f"refused at connect: {exc}")
                    return Verdict(Outcome.TRACEBACK, f"a fault-free simulated rig failed to connect: {exc}")
                return Verdict(Outcome.ACCEPTED_VALID, f"connect failed with injected faults {faults}")
            try:
                for inputs in corner_inputs(protocol):
                    bad = send_rates(protocol, rig, tap, inputs)
                    if bad is not None:
                        return bad
            except DeviceError:
                pass  # an injected fault mid-way: a device error, named
            finally:
                rig.safe_state()
                running = _running_after_safe_state(tap)
                rig.close()
            if running:
                return Verdict(Outcome.HARDWARE, f"pumps left running: {running}")
    except Exception as exc:  # noqa: BLE001 - any other exception is what this harness counts
        return Verdict(Outcome.TRACEBACK, f"{gen.changed}: {type(exc).__name__}: {exc}")
    if opened:
        return Verdict(Outcome.HARDWARE, f"opened {opened}")
    return Verdict(Outcome.ACCEPTED_VALID)


def _running_after_safe_state(tap: WireTap) -> list[str]:
    try:
        return tap.running()
    except Exception:  # noqa: BLE001 - a disconnected emulator cannot pump either
        return []


# -- console API payloads ---------------------------------------------------------------------------
#
# The console never drives hardware: its only path to a pump is a control request in the store, which
# the campaign honours at a checkpoint. So for the API, "a hardware command" is a control request (or
# any other change: user, token, schedule, campaign state) left behind by a call that was refused.

API_PASSWORD = "correct horse battery"
API_ROUTES: list[tuple[str, str, dict[str, Any] | None]] = [
    ("POST", "/api/session", {"name": "ada", "password": API_PASSWORD}),
    ("GET", "/api/session", None),
    ("GET", "/api/campaigns", None),
    ("GET", "/api/campaigns/{campaign_id}", None),
    ("GET", "/api/campaigns/{campaign_id}/events", None),
    ("GET", "/api/campaigns/{campaign_id}/spectra", None),
    ("GET", "/api/campaigns/{campaign_id}/losses", None),
    ("GET", "/api/campaigns/{campaign_id}/bounds", None),
    *(
        ("POST", f"/api/campaigns/{{campaign_id}}/{action}", {"reason": "fuzz"})
        for action in ("pause", "resume", "abort", "estop", "estop-clear", "recalibrate")
    ),
    ("POST", "/api/estop", {"reason": "fuzz"}),
    ("GET", "/api/schedules", None),
    ("POST", "/api/schedules", {"kind": "recalibrate", "campaign_id": "1", "every_minutes": 30}),
    (
        "POST",
        "/api/schedules",
        {"kind": "health", "campaign_id": "1", "every_minutes": 5, "stale_after_s": 60},
    ),
    (
        "POST",
        "/api/schedules",
        {
            "kind": "start",
            "at": "2099-01-01T00:00:00+00:00",
            "protocol": str(PROTOCOL_FILE),
            "rig": str(SIM_RIG_FILE),
        },
    ),
    ("DELETE", "/api/schedules/{schedule_id}", None),
    ("GET", "/api/users", None),
    ("POST", "/api/users", {"name": "newbie", "role": "observer", "password": "a long password"}),
    ("PATCH", "/api/users/{name}", {"role": "operator"}),
    ("GET", "/api/tokens", None),
    ("POST", "/api/users/{name}/tokens", {"days": 1, "label": "fuzz"}),
    ("DELETE", "/api/tokens/{token_id}", None),
    ("GET", "/api/audit", None),
]
QUERY_KEYS = ["after", "limit", "user"]

JSON: st.SearchStrategy[Any] = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=10), inner, max_size=3)
    ),
    max_leaves=8,
)
SEGMENT = st.one_of(
    st.sampled_from(
        ["1", "2", "olga", "otto", "newbie", "nope", "0", "-1", "..", "%00", "1 OR 1=1", "x" * 300]
    ),
    st.text(min_size=1, max_size=20),
)


@dataclass
class ApiCall:
    method: str
    route: str
    path: str
    query: dict[str, str]
    body: Any  # a JSON value, or bytes sent as the raw body
    changed: list[str]


@st.composite
def api_calls(draw: st.DrawFn) -> ApiCall:
    import urllib.parse

    method, route, sample = draw(st.sampled_from(API_ROUTES))
    path = route
    for param in re.findall(r"{(\w+)}", route):
        path = path.replace("{" + param + "}", urllib.parse.quote(draw(SEGMENT), safe=""), 1)
    query = draw(st.dictionaries(st.sampled_from(QUERY_KEYS), st.text(max_size=8), max_size=2))
    mode = draw(st.sampled_from(["sample", "mutated", "mutated", "json", "raw"]))
    body: Any = copy.deepcopy(sample)
    changed = ["body"]
    if mode == "mutated" and isinstance(sample, dict):
        doc = copy.deepcopy(sample)
        m = draw(mutations(doc))
        m.apply(doc)
        body, changed = doc, [m.field()] + ([str(m.value)] if m.op == "rename" else [])
    elif mode == "json":
        body = draw(JSON)
    elif mode == "raw":
        body = draw(st.binary(max_size=40))
    return ApiCall(method, route, path, query, body, changed)


class ApiHarness:
    """A console app on a fresh SQLite file with the fake campaign source, called as its admin."""

    def __init__(self, root: Path) -> None:
        from argon2 import PasswordHasher
        from fastapi.testclient import TestClient

        from orchestrator.console import create_app
        from orchestrator.console.users import Role
        from tests.orchestrator.console.fakes import FakeSource

        self.source = FakeSource()
        self._fresh = FakeSource
        hasher = PasswordHasher(time_cost=1, memory_cost=64, parallelism=1)
        root.mkdir(parents=True, exist_ok=True)
        self.app = create_app(
            f"sqlite:///{root / 'console.db'}",
            secret="s" * 48,
            background=False,
            password_hasher=hasher,
            source=self.source,
        )
        self.users = self.app.state.auth.users
        for role, name in (("observer", "olga"), ("operator", "otto"), ("admin", "ada")):
            self.users.add_user(name, Role(role), API_PASSWORD, who="fuzz")
        token, _ = self.users.issue_token("ada", days=1, who="fuzz")
        self.headers = {"Authorization": f"Bearer {token}"}
        self.client = TestClient(self.app)
        self.client.__enter__()
        # a connected simulated rig beside the console: no API call may send it a byte
        self.probe = Probe("api")
        self.probe.rig.safe_state()
        self.probe.tap.bytes = 0

    def close(self) -> None:
        self.client.__exit__(None, None, None)
        self.probe.close()

    def state(self) -> tuple[Any, ...]:
        return (
            len(self.source.requests),
            {k: (c.state, c.reason) for k, c in self.source.campaigns.items()},
            [(u.name, u.role, u.disabled) for u in self.users.list_users()],
            [(t.id, t.revoked) for t in self.users.list_tokens()],
            [s.id for s in self.app.state.scheduler.list()],
        )

    def judge(self, call: ApiCall) -> Verdict:
        self.source.campaigns = self._fresh().campaigns  # every call starts from running/finished
        before = self.state()
        kwargs: dict[str, Any] = {"params": call.query, "headers": dict(self.headers)}
        if isinstance(call.body, bytes):
            kwargs["content"] = call.body
            kwargs["headers"]["Content-Type"] = "application/json"
        elif call.body is not None or call.method in ("POST", "PATCH"):
            # as a careless client would: NaN and Infinity as the bare tokens Python's json writes
            kwargs["content"] = json.dumps(call.body, allow_nan=True).encode()
            kwargs["headers"]["Content-Type"] = "application/json"
        try:
            r = self.client.request(call.method, call.path, **kwargs)
        except Exception as exc:  # noqa: BLE001 - a server exception is what this harness counts
            return Verdict(
                Outcome.TRACEBACK, f"{call.method} {call.path} {call.body!r}: {type(exc).__name__}: {exc}"
            )
        what = f"{call.method} {call.path} {call.query} {call.body!r} -> {r.status_code} {r.text[:300]}"
        if r.status_code >= 500:
            return Verdict(Outcome.TRACEBACK, what)
        if self.probe.tap.bytes:
            return Verdict(Outcome.HARDWARE, f"{self.probe.tap.bytes} bytes reached a pump: {what}")
        after = self.state()
        if r.status_code >= 400:
            if after != before:
                return Verdict(Outcome.HARDWARE, f"refused call changed state: {what}")
            return Verdict(Outcome.REJECTED_CLEAR if _clear_detail(r) else Outcome.REJECTED_UNCLEAR, what)
        problems = self._accepted_problems(call, before, after, r)
        return (
            Verdict(Outcome.ACCEPTED_INVALID, f"{problems}: {what}")
            if problems
            else Verdict(Outcome.ACCEPTED_VALID)
        )

    def _accepted_problems(self, call: ApiCall, before: Any, after: Any, r: Any) -> list[str]:
        from orchestrator.console.source import ACTIONS, REASON_REQUIRED
        from orchestrator.console.users import MAX_TOKEN_DAYS, NAME_PATTERN, Role

        out: list[str] = []
        action = call.route.rsplit("/", 1)[-1]
        if call.method == "POST" and action in ACTIONS:
            new = self.source.requests[before[0] :]
            if len(new) != 1 or new[0][1] != action or new[0][2] != "ada":
                out.append(f"control requests written: {new}")
            elif not (0 < len(new[0][3]) <= 500) or (action in REASON_REQUIRED and not new[0][3].strip()):
                out.append(f"reason {new[0][3]!r}")
        elif call.method == "GET" and after != before:
            out.append("a read changed state")
        if call.route == "/api/users" and call.method == "POST":
            user = r.json()
            if not NAME_PATTERN.match(user["name"]) or user["role"] not in set(Role):
                out.append(f"user {user}")
        if call.route.endswith("/tokens") and call.method == "POST":
            info = r.json()
            days = (_iso(info["expires_at"]) - _iso(info["created_at"])).total_seconds() / 86400
            if not 0 < days <= MAX_TOKEN_DAYS + 1e-6:
                out.append(f"token for {days} days")
        return out


def _iso(text: str) -> Any:
    from datetime import datetime

    return datetime.fromisoformat(text)


def _clear_detail(r: Any) -> bool:
    """FastAPI's 422 lists each error with its location (body.field, query.limit, path.name) and a
    message; the console's own refusals are one sentence."""
    try:
        detail = r.json().get("detail")
    except ValueError:
        return False
    if isinstance(detail, str):
        return bool(detail.strip())
    if isinstance(detail, list) and detail:
        return all(isinstance(e, dict) and e.get("loc") and e.get("msg") for e in detail)
    return False
