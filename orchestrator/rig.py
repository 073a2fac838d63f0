"""Rigs: which pumps and spectrometer sit on which ports, validated from YAML, and built into live devices.

A rig file names each syringe pump (driver, port as any pyserial URL or device path, address, syringe),
the spectrometer, and the dead volume between the mixer and the detector. A rig with a ``simulation``
section is a dry-run rig: its ports are ``sim://`` URLs, its spectrometer the seabreeze-compatible
simulator, and :func:`build_rig` wires them all to one fresh :class:`simulators.world.World`.
"""

from __future__ import annotations

import hashlib
import importlib
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import structlog
from pydantic import BaseModel, ConfigDict, Field, model_validator

from drivers.base import Spectrometer, SyringePump
from drivers.errors import DeviceError, SimulationModelError
from orchestrator.config_errors import (
    ConfigError,
    CrossFieldProblems,
    Problem,
    read_yaml_mapping,
    validate_model,
)
from orchestrator.protocol import ExperimentProtocol
from simulators.faults import FAULT_PATHS, ONE_WAY_FAULTS, PUMP_FAULTS, SPECTROMETER_FAULTS, Fault
from simulators.serialsim import KNOWN_PROTOCOLS, drop_bus, get_bus, parse_sim_url
from simulators.spectrometer import (
    DEFAULT_INTEGRATION_US,
    ELECTRIC_DARK_PIXELS,
    LAMP_PEAK_COUNTS_PER_MS,
    SimulatedSeabreezeSpectrometer,
    model_absorbance,
    pixel_wavelengths,
)
from simulators.world import Clock, InputMap, VirtualClock, WallClock, World, set_world

log = structlog.get_logger("orchestrator.rig")

__all__ = [
    "ChemistrySpec",
    "ConfigError",
    "FaultSpec",
    "PumpConfig",
    "Rig",
    "RigConfig",
    "RigConnectionError",
    "SimulationSpec",
    "SpectrometerConfig",
    "build_rig",
    "check_protocol_against_rig",
    "dry_run_twin",
    "driver_ranges",
    "load_rig",
    "pump_rate_limits_ul_min",
]

NAME_MAX = 64
Identifier = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_-]*$", max_length=NAME_MAX)]
PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
SIM_SCHEME = "sim://"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FaultSpec(_Strict):
    """A fault injected into a simulated device ``at_s`` seconds (world clock) after it was built."""

    kind: str
    at_s: float = Field(0.0, ge=0, allow_inf_nan=False)
    duration_s: PositiveFloat | None = None
    path: Literal["both", "reply"] | None = Field(
        None,
        description="no_reply/garbage on a pump: 'both' (default; the pump hears nothing either) or "
        "'reply' (only its way back is broken: it still obeys commands)",
    )

    def to_fault(self) -> Fault:
        return Fault(kind=self.kind, at_s=self.at_s, duration_s=self.duration_s, path=self.path or "both")


def _fault_problems(faults: list[FaultSpec], allowed: tuple[str, ...], *, paths: bool) -> list[Problem]:
    problems = [
        Problem(f"faults[{i}].kind", f"unknown fault {f.kind!r}; allowed: {', '.join(allowed)}")
        for i, f in enumerate(faults)
        if f.kind not in allowed
    ]
    for i, f in enumerate(faults):
        if f.path is not None and not (paths and f.kind in ONE_WAY_FAULTS):
            where = f"{', '.join(ONE_WAY_FAULTS)} on a pump" if paths else "pump faults"
            problems.append(
                Problem(f"faults[{i}].path", f"only {where} take a path ({'/'.join(FAULT_PATHS)}); remove it")
            )
    return problems


class PumpConfig(_Strict):
    name: Identifier
    driver: Literal["newera", "harvard", "sila"]
    port: str = Field(
        min_length=1, description="pyserial URL or device path: /dev/serial/by-id/..., sim://newera/rig"
    )
    address: int = Field(0, ge=0, le=99, description="address on a daisy chain (both pump families: 0-99)")
    syringe_diameter_mm: PositiveFloat = Field(description="inside diameter; the driver's range is checked")
    syringe_volume_ul: PositiveFloat | None = None
    stream: Identifier | None = Field(
        None, description="the reagent stream it pumps; defaults to the pump's name"
    )
    baudrate: int | None = Field(None, description="None: the driver's default (New Era: detects 19200/9600)")
    safe_mode_timeout_s: int | None = Field(
        None,
        ge=0,
        le=255,
        description="New Era Safe-mode watchdog: the pump stops itself this many seconds after the host "
        "falls silent (1-255; 0 turns it off; default 5). Harvard pumps have no such watchdog.",
    )
    faults: list[FaultSpec] = Field(default_factory=list)

    @property
    def stream_name(self) -> str:
        return self.stream or self.name

    @property
    def is_simulated(self) -> bool:
        return self.port.startswith(SIM_SCHEME)

    @property
    def watchdog_s(self) -> int:
        """The Safe-mode watchdog this pump gets (0: none): the rig file's, else the driver's default."""
        if self.driver != "newera":
            return 0
        from drivers.newera import DEFAULT_SAFE_TIMEOUT_S

        return DEFAULT_SAFE_TIMEOUT_S if self.safe_mode_timeout_s is None else self.safe_mode_timeout_s

    @model_validator(mode="after")
    def _check(self) -> PumpConfig:
        problems = _fault_problems(self.faults, PUMP_FAULTS, paths=True)
        if self.driver != "newera" and self.safe_mode_timeout_s:
            problems.append(
                Problem(
                    "safe_mode_timeout_s",
                    f"a {self.driver} pump has no communication watchdog (only New Era pumps have Safe "
                    "mode): remove safe_mode_timeout_s or set it to 0",
                )
            )
        (dia_low, dia_high), baudrates = driver_ranges(self.driver)
        if not dia_low <= self.syringe_diameter_mm <= dia_high:
            problems.append(
                Problem(
                    "syringe_diameter_mm",
                    f"{self.syringe_diameter_mm:g} mm is outside what a {self.driver} pump accepts "
                    f"({dia_low:g}-{dia_high:g} mm): give the syringe's inside diameter in mm",
                )
            )
        if self.driver == "sila":  # checked here with the rest of the file, not when the pump is built
            problems += _sila_problems(self)
        elif self.baudrate is not None and self.baudrate not in baudrates:
            problems.append(
                Problem(
                    "baudrate",
                    f"a {self.driver} pump talks at {', '.join(map(str, baudrates))} baud, not {self.baudrate}",
                )
            )
        if self.faults and not self.is_simulated:
            problems.append(Problem("faults", "faults can only be injected into simulated (sim://) pumps"))
        if self.is_simulated:
            protocol = self.port[len(SIM_SCHEME) :].split("/", 1)[0].split("?", 1)[0]
            if protocol != self.driver:
                problems.append(
                    Problem(
                        "port",
                        f"a {self.driver} pump needs a sim://{self.driver}/<bus> port, got {self.port!r}",
                    )
                )
            if "?" in self.port:
                problems.append(
                    Problem(
                        "port",
                        "give sim:// ports without a query (sim://<driver>/<bus>); the rig sets address and world",
                    )
                )
        if self.syringe_volume_ul is not None and dia_low <= self.syringe_diameter_mm <= dia_high:
            # (only for a diameter the driver takes: 1e200 mm or 5e-324 mm would overflow or divide by 0)
            # a syringe's barrel is longer than wide: a volume/diameter pair that gives a stroke under
            # 10 mm or over 200 mm is almost surely a typo (mL for uL, radius for diameter)
            stroke_mm = self.syringe_volume_ul / (math.pi * (self.syringe_diameter_mm / 2) ** 2)
            if not 10.0 <= stroke_mm <= 200.0:
                problems.append(
                    Problem(
                        "syringe_volume_ul",
                        f"{self.syringe_volume_ul:g} uL in a {self.syringe_diameter_mm:g} mm barrel is a "
                        f"{stroke_mm:.0f} mm stroke; real syringes have 10-200 mm: check volume (uL) and diameter (mm)",
                    )
                )
        if problems:
            raise CrossFieldProblems(problems)
        return self


class SpectrometerConfig(_Strict):
    driver: Literal["ocean", "simulated"]
    serial_number: str | None = Field(
        None, description="pick one of several Ocean devices; None: the only one"
    )
    # Ocean's USB spectrometers accept 1 us (some models 10 us or 1 ms) up to tens of seconds; the
    # driver checks the model's own limits when it connects
    integration_time_us: int = Field(10_000, ge=1, le=60_000_000)
    scans_to_average: int = Field(1, ge=1, le=5000)
    faults: list[FaultSpec] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check(self) -> SpectrometerConfig:
        problems = _fault_problems(self.faults, SPECTROMETER_FAULTS, paths=False)
        if self.faults and self.driver != "simulated":
            problems.append(Problem("faults", "faults can only be injected into the simulated spectrometer"))
        if problems:
            raise CrossFieldProblems(problems)
        return self


class ChemistrySpec(_Strict):
    model: str = Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$", description="module:Class")
    params: dict[str, Any] = Field(default_factory=dict)


class SimulationSpec(_Strict):
    """What a dry-run rig simulates. ``dead_volume_ul`` here is the simulated tubing's *true* volume,
    when it should differ from the rig's planning value (to test a mis-measured dead volume)."""

    dead_volume_ul: PositiveFloat | None = None
    chemistry: ChemistrySpec | None = None
    world: Identifier | None = Field(
        None, description="name of the simulated world; defaults to the rig's name"
    )


class RigConfig(_Strict):
    name: Identifier
    description: str = ""
    pumps: list[PumpConfig] = Field(default_factory=list)
    spectrometer: SpectrometerConfig | None = None
    dead_volume_ul: PositiveFloat | None = Field(
        None,
        description="mixer-to-detector volume; the equilibration wait is this over the total flow, plus margins",
    )
    simulation: SimulationSpec | None = None

    @property
    def is_simulated(self) -> bool:
        return self.simulation is not None

    def pump(self, name: str) -> PumpConfig:
        for p in self.pumps:
            if p.name == name:
                return p
        raise KeyError(
            f"rig {self.name!r} has no pump {name!r}; its pumps: {', '.join(p.name for p in self.pumps)}"
        )

    @model_validator(mode="after")
    def _check(self) -> RigConfig:
        problems: list[Problem] = []
        names: dict[str, int] = {}
        streams: dict[str, int] = {}
        lines: dict[tuple[str, int], int] = {}
        port_driver: dict[str, tuple[str, int | None, int]] = {}
        for i, p in enumerate(self.pumps):
            if p.name in names:
                problems.append(Problem(f"pumps[{i}].name", f"{p.name!r} is already pumps[{names[p.name]}]"))
            names.setdefault(p.name, i)
            if p.stream_name in streams:
                problems.append(
                    Problem(
                        f"pumps[{i}].stream",
                        f"stream {p.stream_name!r} is already pumped by pumps[{streams[p.stream_name]}]",
                    )
                )
            streams.setdefault(p.stream_name, i)
            if (p.port, p.address) in lines and p.driver == "sila":
                problems.append(
                    Problem(f"pumps[{i}].port", f"{p.port} already serves pumps[{lines[(p.port, p.address)]}]: "
                            "a SiLA 2 server serves one pump, each pump its own port")
                )
            elif (p.port, p.address) in lines:
                problems.append(
                    Problem(
                        f"pumps[{i}].address",
                        f"address {p.address} on {p.port} is already pumps[{lines[(p.port, p.address)]}]",
                    )
                )
            lines.setdefault((p.port, p.address), i)
            if p.port in port_driver:
                driver, baud, first = port_driver[p.port]
                if driver != p.driver:
                    problems.append(
                        Problem(
                            f"pumps[{i}].driver",
                            f"{p.port} is a {driver} line (pumps[{first}]); one port, one protocol",
                        )
                    )
                elif baud != p.baudrate:
                    problems.append(
                        Problem(
                            f"pumps[{i}].baudrate",
                            f"pumps on {p.port} must share one baud rate (pumps[{first}]: "
                            f"{'the driver default' if baud is None else baud}); give every pump on it the same",
                        )
                    )
            else:
                port_driver[p.port] = (p.driver, p.baudrate, i)
        if self.is_simulated:
            bus_driver: dict[str, tuple[str, int]] = {}
            for i, p in enumerate(self.pumps):
                if not p.is_simulated:
                    continue
                bus = parse_sim_url(p.port)[1]
                driver, first = bus_driver.setdefault(bus, (p.driver, i))
                if driver != p.driver:
                    problems.append(
                        Problem(
                            f"pumps[{i}].port",
                            f"bus {bus!r} is already the {driver} line of pumps[{first}]: the simulated world "
                            "tells pumps apart by bus name and address, so give each driver its own bus name",
                        )
                    )
            for i, p in enumerate(self.pumps):
                if not p.is_simulated:
                    problems.append(
                        Problem(
                            f"pumps[{i}].port",
                            f"a simulated rig needs sim://{p.driver}/<bus> ports, got {p.port!r}",
                        )
                    )
            if self.spectrometer is not None and self.spectrometer.driver != "simulated":
                problems.append(Problem("spectrometer.driver", "a simulated rig needs driver: simulated"))
            if (
                self.dead_volume_ul is None
                and self.simulation is not None
                and self.simulation.dead_volume_ul is None
            ):
                problems.append(
                    Problem("dead_volume_ul", "a simulated rig needs the dead volume of its tubing (uL)")
                )
        else:
            for i, p in enumerate(self.pumps):
                if p.is_simulated:
                    problems.append(
                        Problem(
                            f"pumps[{i}].port", "sim:// ports need a 'simulation' section in the rig file"
                        )
                    )
            if self.spectrometer is not None and self.spectrometer.driver == "simulated":
                problems.append(
                    Problem(
                        "spectrometer.driver",
                        "the simulated spectrometer needs a 'simulation' section in the rig file",
                    )
                )
        if problems:
            raise CrossFieldProblems(problems)
        return self


def load_rig(path: str | Path) -> RigConfig:
    """Read and validate a rig file; every problem comes back in one :class:`ConfigError`."""
    path = Path(path)
    return validate_model(RigConfig, read_yaml_mapping(path, "rig"), path)


# -- what a syringe on a pump can deliver ------------------------------------------------------------


def _sila_problems(pump: PumpConfig) -> list[Problem]:
    """A SiLA 2 pump's entry: its own sila:// server, no serial address or baud rate."""
    from drivers.sila import parse_sila_url

    problems = []
    try:
        parse_sila_url(pump.port)
    except ValueError as exc:
        problems.append(Problem("port", str(exc)))
    if pump.address != 0 or pump.baudrate is not None:
        problems.append(Problem("address" if pump.address != 0 else "baudrate",
                                "a SiLA 2 pump has a server of its own (its sila:// port): remove address and baudrate"))
    return problems


def driver_ranges(driver: str) -> tuple[tuple[float, float], tuple[int, ...]]:
    """(syringe diameter range in mm, baud rates) the driver of that pump family accepts."""
    if driver == "newera":
        from drivers import newera

        return (newera.MIN_DIAMETER_MM, newera.MAX_DIAMETER_MM), tuple(newera.BAUDRATES)
    if driver == "sila":  # a pump served over SiLA 2 (sila://host:port): no serial line
        from drivers import sila

        return (sila.MIN_DIAMETER_MM, sila.MAX_DIAMETER_MM), ()
    if driver == "harvard":
        from drivers import harvard

        return tuple(harvard.DIAMETER_RANGE_MM), tuple(harvard.VALID_BAUDRATES)  # type: ignore[return-value]
    # a family added to PumpConfig.driver but not here must not get another family's limits
    raise ValueError(f"no syringe and baud ranges for pump driver {driver!r}: add a branch to driver_ranges()")


def pump_rate_limits_ul_min(driver: str, diameter_mm: float) -> tuple[float, float]:
    """(min, max) rate in uL/min of that pump family with a syringe of this inside diameter, from the
    driver module (``drivers.<driver>.rate_limits_ul_min``: the manuals' specifications)."""
    module = importlib.import_module(f"drivers.{driver}")
    limits = getattr(module, "rate_limits_ul_min", None)
    if limits is None:  # a new family must say what its pump can deliver before any protocol is checked
        raise ValueError(f"drivers.{driver} has no rate_limits_ul_min(diameter_mm): add it (the manual's "
                         "slowest and fastest rate for a syringe of that inside diameter)")
    low, high = limits(diameter_mm)
    return float(low), float(high)


# a rate twenty times or more off the pump's range is a unit slip more often than a syringe to change
_UNITS_HINT = (" (far off its range: check the units; a percent variable is % of the total flow, 0-100, "
               "and a total flow is in uL/min, not mL/min)")


def _safe(x: float, *, up: bool) -> str:
    """``x`` to 4 significant digits, rounded the safe way: down for an upper limit, up for a lower one."""
    if x <= 0:
        return "0"
    step = 10.0 ** (math.floor(math.log10(x)) - 3)
    return f"{(math.ceil if up else math.floor)(x / step * (1 - 1e-12 if up else 1 + 1e-12)) * step:.4g}"


def _share_variable(protocol: ExperimentProtocol, stream: str) -> str | None:
    """The percent variable that sets ``stream``'s share (None for the remainder stream)."""
    return next((name for name, s in protocol.percent_streams.items() if s == stream), None)


def _lower_highs(protocol: ExperimentProtocol, stream: str, need_high: float, can_high: float) -> str:
    """Which hard upper limits to lower, and to what, for ``stream``'s top rate to fit ``can_high``."""
    total = protocol.total_variable
    total_hi = protocol.variables[total].hard_limits[1]
    fit_total = f"{total}'s hard upper limit to <= {_safe(total_hi * can_high / need_high, up=False)} uL/min"
    share = _share_variable(protocol, stream)
    if share is None:  # the remainder gets what the shares leave
        return (f"lower {fit_total}, or raise the hard lower limits of the other shares (to sum to >= "
                f"{_safe(100 - 100 * can_high / total_hi, up=True)} %)")
    return f"lower {fit_total} or {share}'s to <= {_safe(100 * can_high / total_hi, up=False)} %"


def _raise_lows(protocol: ExperimentProtocol, stream: str, can_low: float) -> str:
    """Which hard lower limits to raise, and to what, for ``stream``'s lowest rate to reach ``can_low``."""
    total = protocol.total_variable
    total_lo = protocol.variables[total].hard_limits[0]
    share = _share_variable(protocol, stream)
    if share is None:
        return (f"raise {total}'s hard lower limit, or lower the hard upper limits of the shares, so the "
                f"{stream} left over is >= {can_low:.3g} uL/min")
    share_lo = protocol.variables[share].hard_limits[0]
    return (f"raise {share}'s hard lower limit to >= {_safe(100 * can_low / total_lo, up=True)} % or {total}'s to >= "
            f"{_safe(100 * can_low / share_lo, up=True)} uL/min")


def acquisition_s(integration_time_us: float, scans_to_average: int = 1) -> float:
    """Seconds one spectrum takes at least: the scans it averages, back to back."""
    return integration_time_us * scans_to_average / 1e6


def _syringe_problems(protocol: ExperimentProtocol, rig: RigConfig) -> list[Problem]:
    """Syringes smaller than one condition at the initial bounds draws: such a condition can never be
    measured (its pump stalls part-way, and after the refill the condition starts over), however often
    someone refills."""
    if rig.spectrometer is None or rig.dead_volume_ul is None:
        return []  # reported on their own
    seconds = acquisition_s(rig.spectrometer.integration_time_us, rig.spectrometer.scans_to_average)
    largest = protocol.largest_condition_ul(rig.dead_volume_ul, seconds)
    problems = []
    for k, pump in enumerate(rig.pumps):
        need = largest.get(pump.stream_name)
        if need is None or pump.syringe_volume_ul is None or need <= pump.syringe_volume_ul:
            continue
        bounds = ("lower the upper bound of the total flow, or raise the lower bounds of the other streams' shares"
                  if pump.stream_name == protocol.remainder_stream  # it gets what the shares leave
                  else "lower the upper bound of the total flow or of this stream's share")
        problems.append(Problem(
            f"pumps[{k}].syringe_volume_ul",
            f"pump {pump.name}'s {pump.syringe_volume_ul:g} uL syringe holds less than one condition within the "
            f"protocol's bounds can draw of {pump.stream_name} ({need:.0f} uL: the equilibration wait and "
            f"{protocol.replicates.n} spectra of {seconds:g} s each at the highest flow), so that condition could "
            f"never finish: use a larger syringe, shorten the spectra (integration time, scans to average), or {bounds}",
        ))
    return problems


def check_protocol_against_rig(
    protocol: ExperimentProtocol, rig: RigConfig, *, source: str | None = None
) -> None:
    """Refuse a protocol/rig pair that cannot run: a stream without a pump, a rate the syringe cannot
    deliver within the protocol's hard limits, no spectrometer, no dead volume. Lists every problem."""
    problems: list[Problem] = []
    by_stream = {p.stream_name: p for p in rig.pumps}
    ranges = protocol.rate_ranges_ul_min()
    for stream in protocol.streams:
        pump = by_stream.get(stream)
        if pump is None:
            # a stream named in another case (ctab, CTAB) is a typo, not a missing pump
            same = [s for s in by_stream if s.lower() == stream.lower()]
            fix = (
                f"The rig's {same[0]!r} differs only in case: streams are case-sensitive, spell it "
                f"{same[0]!r} in the protocol"
                if same
                else f"Say which pump holds {stream!r}: in a copy of the rig file, give that pump "
                f"`stream: {stream}` (its name is the stream unless `stream:` says otherwise)"
            )
            problems.append(
                Problem(
                    "pumps",
                    f"no pump carries stream {stream!r} (needed by protocol {protocol.name!r}); "
                    f"the rig's streams: {', '.join(sorted(by_stream)) or 'none'}. {fix}",
                )
            )
            continue
        need_low, need_high = ranges[stream]
        can_low, can_high = pump_rate_limits_ul_min(pump.driver, pump.syringe_diameter_mm)
        where = f"pumps[{rig.pumps.index(pump)}].syringe_diameter_mm"
        what = f"pump {pump.name} ({pump.driver}, {pump.syringe_diameter_mm:g} mm syringe) delivers {can_low:.3g}-{can_high:.4g} uL/min"
        if need_low < can_low:
            problems.append(
                Problem(
                    where,
                    f"{what}, but the protocol's hard limits can ask {need_low:.3g} uL/min of {stream}: "
                    f"use a narrower syringe or {_raise_lows(protocol, stream, can_low)}"
                    + _UNITS_HINT * (need_low < can_low / 20),
                )
            )
        if need_high > can_high:
            problems.append(
                Problem(
                    where,
                    f"{what}, but the protocol's hard limits can ask {need_high:.4g} uL/min of {stream}: "
                    f"use a wider syringe or {_lower_highs(protocol, stream, need_high, can_high)}"
                    + _UNITS_HINT * (need_high > 20 * can_high),
                )
            )
    problems += _syringe_problems(protocol, rig)
    if rig.spectrometer is None:
        problems.append(Problem("spectrometer", "a campaign needs a spectrometer"))
    elif rig.spectrometer.driver == "simulated":  # a real unit's range is checked when it connects
        # its lit pixels: those before the last optically masked (electric dark) one see no light
        pixels, grid = pixel_wavelengths()[max(ELECTRIC_DARK_PIXELS) + 1:], protocol.wavelengths()
        if grid[0] < pixels[0] or grid[-1] > pixels[-1]:
            problems.append(Problem(
                "spectrometer",
                f"the simulated spectrometer reads {pixels[0]:.1f}-{pixels[-1]:.1f} nm, but protocol "
                f"{protocol.name!r} scores spectra on {grid[0]:g}-{grid[-1]:g} nm: narrow the protocol's "
                "grid (start_nm, stop_nm) to that range to rehearse it",
            ))
    if rig.dead_volume_ul is None:
        problems.append(
            Problem(
                "dead_volume_ul", "a campaign needs the mixer-to-detector dead volume (uL) to equilibrate"
            )
        )
    if problems:
        raise ConfigError(source or f"rig {rig.name!r} with protocol {protocol.name!r}", problems)


# -- dry runs of real rigs ----------------------------------------------------------------------------

DRY_RUN_SUFFIX = "-dry-run"
DEFAULT_DRY_RUN_CHEMISTRY = "simulators.chemistry:AgNanoprism"


def dry_run_twin(cfg: RigConfig, *, source: str | Path | None = None) -> RigConfig:
    """The simulated twin of a real rig, for ``sdl run --dry-run``: the same pumps (driver, address,
    syringe, baud rate, Safe mode), daisy chains and dead volume, each serial port replaced by an emulated
    line speaking the same protocol (one ``sim://`` bus per port), the spectrometer by the simulated one
    at the same integration time and averaging, and the reference chemistry
    (:data:`DEFAULT_DRY_RUN_CHEMISTRY`; ``sdl run --chemistry`` replaces it). Its name is the rig's plus
    ``-dry-run``: a dry run never takes the real rig's turn, and an agent of the real rig never runs it.
    A rig that is simulated already comes back unchanged. SiLA pumps have no emulator: refused."""
    if cfg.is_simulated:
        return cfg
    sila = [f"pumps[{i}] ({p.name})" for i, p in enumerate(cfg.pumps) if p.driver == "sila"]
    if sila:
        raise ConfigError(source, [Problem(
            "pumps", f"{', '.join(sila)}: a SiLA 2 pump has no emulator to dry-run against; dry-run a copy "
            "of the rig file with newera or harvard pumps of the same syringes")])
    name = cfg.name + DRY_RUN_SUFFIX
    if len(name) > NAME_MAX:  # shortened, with a digest of the whole name: two long names never meet
        digest = hashlib.sha1(cfg.name.encode()).hexdigest()[:6]
        name = f"{cfg.name[: NAME_MAX - len(DRY_RUN_SUFFIX) - 7]}-{digest}{DRY_RUN_SUFFIX}"
    buses: dict[str, str] = {}
    pumps = []
    for p in cfg.pumps:
        bus = buses.setdefault(p.port, f"{name}-{len(buses)}")
        pumps.append({**p.model_dump(exclude_defaults=True), "port": f"{SIM_SCHEME}{p.driver}/{bus}"})
    data: dict[str, Any] = {
        "name": name,
        "description": f"dry run of rig {cfg.name!r}: its pumps on emulated lines, a simulated spectrometer",
        "pumps": pumps,
        "dead_volume_ul": cfg.dead_volume_ul,
        "simulation": {"chemistry": {"model": DEFAULT_DRY_RUN_CHEMISTRY}},
    }
    if cfg.spectrometer is not None:
        data["spectrometer"] = {
            "driver": "simulated",
            "integration_time_us": cfg.spectrometer.integration_time_us,
            "scans_to_average": cfg.spectrometer.scans_to_average,
        }
    return validate_model(RigConfig, data, f"dry run of {source or cfg.name}")


# -- live rigs --------------------------------------------------------------------------------------


class RigConnectionError(DeviceError):
    """Devices of a rig that failed to connect: one line per device, each saying what to check."""

    def __init__(self, rig_name: str, problems: list[Problem]) -> None:
        self.problems = problems
        self.device = rig_name
        self.hint = ""
        lines = [
            f"rig {rig_name!r}: {len(problems)} device(s) failed to connect",
            *(f"  - {p}" for p in problems),
        ]
        self.detail = "\n".join(lines)
        Exception.__init__(self, self.detail)


class Rig:
    """The live devices of one rig. Build it with :func:`build_rig`."""

    def __init__(
        self,
        *,
        name: str,
        pumps: dict[str, SyringePump],
        pump_streams: Mapping[str, str],
        spectrometer: Spectrometer | None,
        clock: Clock,
        dead_volume_ul: float | None,
        world: World | None = None,
        world_name: str | None = None,
        syringes_ul: Mapping[str, float | None] | None = None,
        sim_lines: list[tuple[Any, dict[int, str]]] | None = None,
    ) -> None:
        self.name = name
        self.syringes_ul = dict(syringes_ul or {})  # per pump, as the rig file gives it (None: not given)
        self._sim_lines = list(sim_lines or [])  # a dry run's emulated lines: (firmware, {address: pump})
        self.pumps = pumps
        self.pump_for_stream: dict[str, SyringePump] = {
            stream: pumps[p] for p, stream in pump_streams.items()
        }
        self.spectrometer = spectrometer
        self.clock = clock
        self.dead_volume_ul = dead_volume_ul
        self.world = world
        self.world_name = world_name

    @property
    def is_simulated(self) -> bool:
        return self.world is not None

    def refill_empty_syringes(self) -> dict[str, float]:
        """A dry run's stand-in for the operator: every emulated syringe that has run empty is filled
        to its capacity; returns {pump name: uL}. A real rig's empty syringe stalls its pump and the
        campaign holds until someone refills it: empty here."""
        return {names[address]: ul for firmware, names in self._sim_lines
                for address, ul in firmware.refill_empty().items() if address in names}

    def empty_syringes(self) -> set[str]:
        """A dry run's pumps whose emulated syringe has run empty (the next flow refills them, as the
        operator would); always empty on a real rig."""
        return {names[address] for firmware, names in self._sim_lines for address in firmware.empty() if address in names}

    def syringe_shortfalls(self, protocol: ExperimentProtocol, inputs: Mapping[str, float]) -> list[str]:
        """What this condition needs of a stream in one go that its syringe (as the rig file gives it)
        cannot hold: a condition that could never finish, to be refused before any pump runs (widened
        bounds can reach one that the check at load could not see). Empty: it fits."""
        spectrometer = self.spectrometer
        if spectrometer is None or self.dead_volume_ul is None:
            return []
        seconds = acquisition_s(spectrometer.integration_time_us, getattr(spectrometer, "scans_to_average", 1))
        need = protocol.condition_ul(inputs, self.dead_volume_ul, seconds)
        short = []
        for stream, ul in need.items():
            pump = self.pump_for_stream.get(stream)
            size = None if pump is None else self.syringes_ul.get(pump.name)
            if size is not None and ul > size:
                short.append(f"it needs {ul:.0f} uL of {stream} in one go (the equilibration wait and "
                             f"{protocol.replicates.n} spectra of {seconds:g} s each), more than pump {pump.name}'s "
                             f"{size:g} uL syringe holds")
        return short

    def _devices(self) -> list[tuple[str, Any]]:
        devices: list[tuple[str, Any]] = [(f"pump {n}", p) for n, p in self.pumps.items()]
        if self.spectrometer is not None:
            name = self.spectrometer.name
            devices.append((name if name == "spectrometer" else f"spectrometer {name}", self.spectrometer))
        return devices

    def connect(self) -> None:
        """Connect every device; failures of several devices come back together in one error."""
        problems: list[Problem] = []
        for label, device in self._devices():
            try:
                device.connect()
            except Exception as exc:  # noqa: BLE001 - every device's failure is reported, then raised together
                text = str(exc)
                named = getattr(exc, "device", None)
                if named and text.startswith(f"{named}: ") and named in (device.name, getattr(device, "port", None)):
                    text = text[len(named) + 2 :]  # "pump PVA: PVA: ..." says the name once
                problems.append(Problem(label, text))
        if problems:
            self.close()
            raise RigConnectionError(self.name, problems)
        log.info("rig connected", rig=self.name, simulated=self.is_simulated)

    def close(self) -> None:
        for label, device in self._devices():
            try:
                device.close()
            except Exception as exc:  # noqa: BLE001 - closing must reach every device
                log.warning("close failed", rig=self.name, device=label, error=str(exc))

    def safe_state(self) -> list[str]:
        """Put every device in its safe state (pumps stopped). Never raises; returns what failed, one
        ``"<device label>: <what happened>"`` each (e.g. ``pump water: stop not confirmed (...)``)."""
        problems: list[str] = []
        for label, device in self._devices():
            try:
                device.safe_state()
            except Exception as exc:  # noqa: BLE001 - one failing device must not keep the others running
                problems.append(f"{label}: {getattr(exc, 'detail', None) or exc}")
                log.error("safe state failed", rig=self.name, device=label, error=str(exc))
        return problems

    def seed_replicate(self, seed: np.random.SeedSequence | int) -> None:
        """Seed the simulated droplet noise of the next replicate; a real rig has its own noise."""
        if self.world is not None:
            self.world.seed_replicate(seed)

    def __enter__(self) -> Rig:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.safe_state()
        self.close()


def import_object(spec: str, what: str = "chemistry model") -> Any:
    """The object named ``module:Attr``, or a ConfigError that names it and says what went wrong."""
    module_name, _, attr = spec.partition(":")

    def problem(text: str) -> ConfigError:
        return ConfigError(None, [Problem("chemistry.model", text)])

    if not module_name or not attr:
        raise problem(f"{spec!r} is not module:Class")
    if module_name.endswith(".py") or "/" in module_name or "\\" in module_name:
        dotted = module_name.removesuffix(".py").replace("\\", "/").strip("/").replace("/", ".")
        raise problem(f"{spec!r} names a file; name the module with dots and without .py: {dotted}:{attr}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise problem(
            f"cannot import module {module_name!r} of {what} {spec!r} ({exc}); sdl looks in the current "
            f"folder ({Path.cwd()}) and on PYTHONPATH"
        ) from exc
    try:
        return getattr(module, attr)
    except AttributeError as exc:
        where = getattr(module, "__file__", None) or "a namespace package"
        raise problem(
            f"module {module_name!r} ({where}) has no {attr!r} ({what} {spec!r}); if that is not your "
            "file, another module of the same name comes first: rename yours"
        ) from exc


def make_chemistry(spec: str, params: Mapping[str, Any] | None = None) -> Any:
    cls = import_object(spec)
    if not callable(cls):
        raise ConfigError(None, [Problem("chemistry.model", f"{spec} is not a class (it is {type(cls).__name__} {cls!r:.40})")])
    try:
        model = cls(**dict(params or {}))
    except Exception as exc:  # noqa: BLE001 - any constructor failure is a config problem of this rig
        hint = (
            "check simulation.chemistry.params in the rig file" if params else
            "a model named with --chemistry is built without params: give them defaults, or name the "
            "model and its params in a copy of the rig file under simulation.chemistry (model, params)"
        )
        raise ConfigError(None, [Problem(
            "chemistry.params", f"{spec} rejected its params {dict(params or {})} ({exc}); {hint}"
        )]) from exc
    if not callable(getattr(model, "droplet", None)):
        raise ConfigError(
            None, [Problem("chemistry.model", f"{spec} has no droplet(inputs, wavelengths, rng) method")]
        )
    return model


def _check_chemistry_takes(model: Any, spec: str, protocol: ExperimentProtocol) -> None:
    """One droplet at the protocol's lower bounds (always feasible) and at the wavelengths the simulated
    spectrometer will ask for (its pixels, about 200-850 nm, not the protocol's grid), so that a model
    that cannot take either fails now, naming both, not at the first replicate of a dry run."""
    inputs = {name: float(v.bounds[0]) for name, v in protocol.variables.items()}
    try:
        model_absorbance(model, inputs, pixel_wavelengths(), np.random.default_rng(0))
    except SimulationModelError as exc:
        raise ConfigError(None, [Problem(
            "chemistry.model",
            f"{exc}. Checked with one droplet at the lower bounds of protocol {protocol.name}: {spec} is "
            "called as droplet(inputs, wavelengths, rng) with the protocol's variables by name, the "
            "simulated spectrometer's pixel wavelengths and a numpy Generator, and returns one "
            "absorbance per wavelength",
        )]) from exc


def build_rig(
    cfg: RigConfig,
    protocol: ExperimentProtocol | None = None,
    *,
    chemistry: str | None = None,
    world_name: str | None = None,
) -> Rig:
    """The rig's device objects, not yet connected (call ``connect()``).

    A simulated rig gets a fresh world (virtual clock, the rig's dead volume, the protocol's inputs,
    the chemistry model; ``chemistry`` overrides the rig file's, as ``sdl run --chemistry`` does),
    registered under ``world_name`` (default: the rig file's world, else the rig's name); its emulated
    pumps report their flows to it and the rig file's faults are injected into their firmware."""
    if protocol is not None:
        check_protocol_against_rig(protocol, cfg)
    if chemistry is not None and not cfg.is_simulated:
        raise ConfigError(
            None,
            [Problem("chemistry", f"--chemistry {chemistry} needs a simulated rig; {cfg.name!r} is real")],
        )
    world: World | None = None
    name: str | None = None
    lines: list[tuple[Any, dict[int, str]]] = []
    if cfg.is_simulated:
        world = new_world(cfg, protocol, chemistry)
        name = world_name or (cfg.simulation.world if cfg.simulation else None) or cfg.name
        set_world(name, world)
        lines = _attach_simulated_pumps(cfg, world, name)
    clock: Clock = world.clock if world is not None else WallClock()
    pumps = {p.name: _make_pump(p, clock) for p in cfg.pumps}
    spectrometer = _make_spectrometer(cfg.spectrometer, world, name) if cfg.spectrometer is not None else None
    return Rig(
        name=cfg.name,
        pumps=pumps,
        pump_streams={p.name: p.stream_name for p in cfg.pumps},
        syringes_ul={p.name: p.syringe_volume_ul for p in cfg.pumps},
        spectrometer=spectrometer,
        clock=clock,
        dead_volume_ul=cfg.dead_volume_ul or (cfg.simulation.dead_volume_ul if cfg.simulation else None),
        world=world,
        world_name=name,
        sim_lines=lines,
    )


def _sim_bus(port: str) -> tuple[str, str]:
    protocol, bus, _ = parse_sim_url(port)
    return protocol, bus


def _attach_simulated_pumps(cfg: RigConfig, world: World, world_name: str) -> list[tuple[Any, dict[int, str]]]:
    """Fresh emulated lines for this rig's buses, each pump attached to its stream in the world and
    carrying the rig file's faults. Other buses in the process are left alone. Returns each line's
    firmware with its pumps' names by address."""
    lines: list[tuple[Any, dict[int, str]]] = []
    by_bus: dict[tuple[str, str], list[PumpConfig]] = {}
    for p in cfg.pumps:
        by_bus.setdefault(_sim_bus(p.port), []).append(p)
    for (protocol, bus), pumps in by_bus.items():
        drop_bus(protocol, bus)
        query = {"address": [str(p.address) for p in pumps], "world": [world_name]}
        default = importlib.import_module(KNOWN_PROTOCOLS[protocol]).DEFAULT_SYRINGE_UL
        # one volume per address: a pump without syringe_volume_ul gets the emulator's default syringe
        query["syringe_ul"] = [f"{p.syringe_volume_ul or default:g}" for p in pumps]
        if pumps[0].baudrate is not None:  # one baud rate per line (checked when the rig loaded)
            query["baud"] = [str(pumps[0].baudrate)]
        firmware = get_bus(protocol, bus, query)
        for p in pumps:
            world.attach_pump(bus, p.address, p.stream_name)
            for fault in p.faults:
                firmware.inject(p.address, fault.to_fault())  # type: ignore[attr-defined]
        lines.append((firmware, {p.address: p.name for p in pumps}))
    return lines


def _make_pump(p: PumpConfig, clock: Clock) -> SyringePump:
    kwargs: dict[str, Any] = {"address": p.address, "syringe_diameter_mm": p.syringe_diameter_mm}
    if p.baudrate is not None:
        kwargs["baudrate"] = p.baudrate
    if p.driver == "newera":
        from drivers.newera import NewEraPump

        # the heartbeat keeps the pump's watchdog fed on the clock the rig lives on (virtual in a dry run)
        return NewEraPump(p.name, p.port, safe_mode_timeout_s=p.watchdog_s, clock=clock, **kwargs)
    if p.driver == "sila":
        from drivers.sila import SilaPump

        return SilaPump(p.name, p.port, **kwargs)
    if p.driver == "harvard":
        from drivers.harvard import HarvardPump

        return HarvardPump(p.name, p.port, **kwargs)
    # a family added to PumpConfig.driver but not here must not be driven with another family's commands
    raise ValueError(f"no driver class for pump driver {p.driver!r}: add a branch to _make_pump()")


def _make_spectrometer(s: SpectrometerConfig, world: World | None, world_name: str | None) -> Spectrometer:
    from drivers.ocean import OceanSpectrometer

    backend: Any = None
    if s.driver == "simulated":
        # a bench's lamp and integration time are set together (the reference well below saturation):
        # the simulated lamp is as bright as the rig file's integration time expects, so the reference
        # peaks where the simulator's default lamp does at its default integration time
        backend = SimulatedSeabreezeSpectrometer(
            world=world, faults=[f.to_fault() for f in s.faults],
            lamp_peak_counts_per_ms=LAMP_PEAK_COUNTS_PER_MS * DEFAULT_INTEGRATION_US / s.integration_time_us,
        )
    return OceanSpectrometer(
        "spectrometer",
        serial_number=s.serial_number,
        integration_time_us=s.integration_time_us,
        scans_to_average=s.scans_to_average,
        backend=backend,
    )


def input_maps(protocol: ExperimentProtocol | None) -> dict[str, InputMap]:
    """How the world reads each protocol variable off the flows (percent of a stream, or the total)."""
    if protocol is None:
        return {}
    return {
        name: InputMap("percent", spec.stream) if spec.kind == "percent" else InputMap("total")
        for name, spec in protocol.variables.items()
    }


def new_world(cfg: RigConfig, protocol: ExperimentProtocol | None, chemistry: str | None) -> World:
    sim = cfg.simulation
    assert sim is not None
    model: object | None = None
    if chemistry is not None:
        model = make_chemistry(chemistry)
    elif sim.chemistry is not None:
        model = make_chemistry(sim.chemistry.model, sim.chemistry.params)
    if model is not None and protocol is not None:
        _check_chemistry_takes(model, chemistry or (sim.chemistry.model if sim.chemistry else "?"), protocol)
    dead = sim.dead_volume_ul or cfg.dead_volume_ul
    assert dead is not None
    return World(clock=VirtualClock(), dead_volume_ul=dead, inputs=input_maps(protocol), chemistry=model)
