"""Experiment protocols: what to vary, within which limits, against which target, and when to stop.

A protocol is a YAML file validated into :class:`ExperimentProtocol`. Every input is either a stream's
share of the aqueous flow ("percent", these share the ``percent_sum_max`` constraint) or the total flow
("total", uL/min); the ``remainder_stream`` (water in the reference experiment) makes up the rest.
:meth:`ExperimentProtocol.stream_rates_ul_min` is the only way from optimiser inputs to pump rates,
and it refuses anything outside the hard limits before a pump sees it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from orchestrator.config_errors import (
    ConfigError,
    CrossFieldProblems,
    Problem,
    read_yaml_mapping,
    validate_model,
)
from orchestrator.optimize.base import Space, Variable
from orchestrator.spectra import (
    SpectrumLoss,
    TargetFileError,
    interpolate_target,
    read_target_csv,
    wavelength_grid,
)

__all__ = [
    "ConfigError",
    "EquilibrationSpec",
    "ExperimentProtocol",
    "GridSpec",
    "InfeasibleInputs",
    "OptimizerSpec",
    "ReplicateSpec",
    "StopSpec",
    "TargetSpec",
    "VariableSpec",
    "WideningSpec",
    "load_protocol",
]

# names end up as database columns, JSON keys and CLI words: keep them plain identifiers
Identifier = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=64)]
PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Fraction = Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)]
MAX_GRID_POINTS = 100_000  # a grid finer than this is a typo, and would not fit in memory


class InfeasibleInputs(ValueError):
    """Optimiser inputs that must not reach the pumps (outside hard limits or the sum constraint)."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("inputs refused before reaching the pumps: " + "; ".join(problems))


# log: auto scales an input in log space when its hard limits span at least this factor
LOG_AUTO_SPAN = 10.0


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Interval = tuple[Annotated[float, Field(allow_inf_nan=False)], Annotated[float, Field(allow_inf_nan=False)]]


class VariableSpec(_Strict):
    """One optimiser input. ``bounds`` are where the search starts, ``hard_limits`` what the syringes,
    pumps and chemistry allow; the bounds may widen during a campaign but never past the hard limits."""

    kind: Literal["percent", "total"]
    stream: Identifier | None = None
    bounds: Interval
    hard_limits: Interval
    # scale the optimiser's inputs in log space: "auto" (default) where the hard limits are positive and
    # span at least a decade (flows and their ratios), linear otherwise; true/false forces it
    log: bool | Literal["auto"] = "auto"

    @property
    def log_scaled(self) -> bool:
        """Whether the optimiser sees this input in log space (``log``, with ``auto`` resolved)."""
        if self.log != "auto":
            return bool(self.log)
        low, high = self.hard_limits
        return low > 0 and high >= LOG_AUTO_SPAN * low

    @property
    def unit(self) -> str:
        return "%" if self.kind == "percent" else "uL/min"

    @model_validator(mode="after")
    def _consistent(self) -> VariableSpec:
        problems: list[Problem] = []
        if self.kind == "percent" and self.stream is None:
            problems.append(Problem("stream", "a percent variable must name the stream (pump) it sets"))
        if self.kind == "total" and self.stream is not None:
            problems.append(Problem("stream", "the total flow is not one stream; remove 'stream'"))
        for field, (low, high) in (("bounds", self.bounds), ("hard_limits", self.hard_limits)):
            if not low < high:
                problems.append(Problem(field, f"needs [low, high] with low < high, got [{low:g}, {high:g}]"))
        hlo, hhi = self.hard_limits
        if self.kind == "percent" and not (0 <= hlo and hhi <= 100):
            problems.append(
                Problem("hard_limits", f"percentages must lie in [0, 100], got [{hlo:g}, {hhi:g}]")
            )
        if self.kind == "total" and hlo <= 0:
            problems.append(Problem("hard_limits", f"the total flow must stay above 0 uL/min, got {hlo:g}"))
        if self.log is True and hlo <= 0:
            problems.append(Problem(
                "log", f"log: true needs hard_limits above 0, got low {hlo:g}: raise the hard low limit, "
                "or use log: auto (linear when a limit is 0) or log: false"))
        lo, hi = self.bounds
        if not (hlo <= lo and hi <= hhi):
            problems.append(
                Problem(
                    "bounds", f"[{lo:g}, {hi:g}] must lie inside hard_limits [{hlo:g}, {hhi:g}] {self.unit}"
                )
            )
        if problems:
            raise CrossFieldProblems(problems)
        return self


class TargetSpec(_Strict):
    """The target spectrum (CSV: wavelength_nm,absorbance; path relative to the protocol file) and
    the absorbance window of the loss's amplitude factor delta."""

    file: str
    a_low: PositiveFloat = 0.7
    a_high: PositiveFloat = 1.2

    @model_validator(mode="after")
    def _window(self) -> TargetSpec:
        if not self.a_low < self.a_high:
            raise CrossFieldProblems(
                [Problem("a_high", f"must exceed a_low ({self.a_low:g}), got {self.a_high:g}")]
            )
        return self


class GridSpec(_Strict):
    """The wavelength grid every spectrum is scored on (nm)."""

    start_nm: PositiveFloat = 380.0
    stop_nm: PositiveFloat = 800.0
    step_nm: PositiveFloat = 1.0

    @model_validator(mode="after")
    def _span(self) -> GridSpec:
        if not self.start_nm < self.stop_nm:
            raise CrossFieldProblems([Problem("stop_nm", f"must exceed start_nm ({self.start_nm:g})")])
        steps = (self.stop_nm - self.start_nm) / self.step_nm
        if not steps <= MAX_GRID_POINTS:  # also inf: a step of 5e-324 nm
            raise CrossFieldProblems(
                [
                    Problem(
                        "step_nm",
                        f"{self.step_nm:g} nm over {self.start_nm:g}-{self.stop_nm:g} nm is more than "
                        f"{MAX_GRID_POINTS} points: spectrometers resolve ~0.1 nm, use a coarser step",
                    )
                ]
            )
        if abs(steps - round(steps)) > 1e-6:
            raise CrossFieldProblems(
                [
                    Problem(
                        "step_nm",
                        f"{self.step_nm:g} nm does not divide {self.start_nm:g}-{self.stop_nm:g} nm evenly",
                    )
                ]
            )
        return self

    def wavelengths(self) -> np.ndarray:
        return wavelength_grid(self.start_nm, self.stop_nm, self.step_nm)


class ReplicateSpec(_Strict):
    """Droplet replicates per condition and the screens a replicate spectrum must pass."""

    n: int = Field(20, ge=1, le=100, description="replicate droplets measured per condition")
    min_accepted: int = Field(
        0, ge=0, description="accepted replicates needed for a condition's median; 0 means half of n"
    )
    max_remeasure: int = Field(
        2, ge=0, le=10, description="extra passes over a condition short of min_accepted"
    )
    saturation_fraction: Fraction = Field(
        0.95, description="reject a replicate whose raw counts reach this fraction of detector saturation"
    )
    empty_max_absorbance: float = Field(
        0.02,
        ge=0,
        description="reject a replicate whose peak absorbance stays below this (carrier, no droplet)",
    )
    max_nan_fraction: float = Field(
        0.05, ge=0, le=1, description="reject a replicate with more NaN points than this"
    )
    outlier_mad: PositiveFloat | None = Field(
        5.0,
        description="reject losses more than this many MADs from the median of the condition's droplets, "
        "judged on all of them once measured; more than a fifth that far out are two groups of real droplets "
        "and none is rejected (None: keep all)",
    )

    @model_validator(mode="after")
    def _enough(self) -> ReplicateSpec:
        if self.min_accepted == 0:
            object.__setattr__(self, "min_accepted", max(1, math.ceil(self.n / 2)))
        if self.min_accepted > self.n:
            raise CrossFieldProblems(
                [Problem("min_accepted", f"must be at most n ({self.n}), got {self.min_accepted}")]
            )
        return self


class EquilibrationSpec(_Strict):
    """How long to wait after new flow rates before the first replicate counts.

    wait = settle_s + margin_volumes * (dead volume / total flow) + margin_s: the liquid at the detector
    is what left the mixer one dead volume ago, sweeping it more than once flushes the mixing front,
    and syringe pumps need a few seconds of compliance settling after a rate change."""

    margin_s: float = Field(5.0, ge=0, allow_inf_nan=False)
    settle_s: float = Field(10.0, ge=0, allow_inf_nan=False)
    margin_volumes: float = Field(2.0, ge=1.0, le=20.0, allow_inf_nan=False)

    def wait_s(self, dead_volume_ul: float, total_ul_min: float) -> float:
        if total_ul_min <= 0:
            raise ValueError(f"total flow must be positive to equilibrate, got {total_ul_min:g} uL/min")
        return self.settle_s + self.margin_volumes * dead_volume_ul / total_ul_min * 60.0 + self.margin_s


class WideningSpec(_Strict):
    """Bounds policy: widen an edge (towards the hard limit) when a batch crowds it."""

    enabled: bool = True
    edge_fraction: Fraction = Field(
        0.05, description="a suggestion this close to an edge (fraction of range) crowds it"
    )
    trigger_fraction: Fraction = Field(
        0.3, description="widen when this fraction of the batch crowds one edge"
    )
    step_fraction: Fraction = Field(
        0.25, description="widen by this fraction of the current range, capped at hard limits"
    )
    step_growth: float = Field(
        2.0, ge=1.0, le=4.0, allow_inf_nan=False,
        description="an edge that moved out in each of the last k rounds steps step_fraction x step_growth^k "
        "(at most the whole current range); 1 keeps every step the same",
    )
    stalled_edge_rounds: int = Field(
        2, ge=0, le=20,
        description="also open an edge the best measured condition sits on once it is this many rounds old "
        "(no later round beat it), even if no model predicts a gain beyond it; 0 turns this off",
    )


class OptimizerSpec(_Strict):
    strategy: str = "default"
    settings: dict[str, Any] = Field(default_factory=dict)
    widening: WideningSpec = Field(default_factory=WideningSpec)

    @field_validator("strategy")
    @classmethod
    def _known(cls, strategy: str) -> str:
        """Named with the protocol's other problems (``optimizer.strategy``), not only once they are fixed."""
        from orchestrator.optimize.registry import UnknownStrategyError, resolve

        try:
            resolve(strategy)
        except UnknownStrategyError as exc:
            raise ValueError(str(exc)) from None
        return strategy


class StopSpec(_Strict):
    """The campaign ends at the first rule met (None: rule off). At least one bound on length is required."""

    loss_threshold: float | None = Field(None, ge=0, le=1)
    max_rounds: int | None = Field(None, ge=1)
    max_conditions: int | None = Field(None, ge=1)
    # all streams pumped, the solvent included; later rounds are cut to what the rest of it holds
    max_reagent_ml: PositiveFloat | None = None

    @model_validator(mode="after")
    def _bounded(self) -> StopSpec:
        if self.max_rounds is None and self.max_conditions is None and self.max_reagent_ml is None:
            raise CrossFieldProblems(
                [Problem("", "set at least one of max_rounds, max_conditions, max_reagent_ml")]
            )
        return self


class ExperimentProtocol(_Strict):
    name: Identifier
    description: str = ""
    variables: dict[Identifier, VariableSpec]
    percent_sum_max: float = Field(90.0, gt=0, le=100)
    remainder_stream: Identifier = "water"
    target: TargetSpec
    grid: GridSpec = Field(default_factory=GridSpec)
    batch_size: int = Field(15, ge=1, le=200)
    replicates: ReplicateSpec = Field(default_factory=ReplicateSpec)
    equilibration: EquilibrationSpec = Field(default_factory=EquilibrationSpec)
    pause_restart_after_s: PositiveFloat = Field(
        600.0, description="a pause longer than this discards the interrupted condition's replicates"
    )
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec)
    stop: StopSpec
    seed: int | None = Field(None, ge=0, lt=2**63, description="campaign seed (0 to 2^63 - 1)")

    # where relative paths (the target file) are resolved from: the protocol file's folder
    _base_dir: Path = PrivateAttr(default_factory=Path.cwd)

    @field_validator("variables")
    @classmethod
    def _not_empty(cls, value: dict[str, VariableSpec]) -> dict[str, VariableSpec]:
        if not value:
            raise ValueError("at least one variable is needed")
        return value

    @model_validator(mode="after")
    def _cross_checks(self, info: ValidationInfo) -> ExperimentProtocol:
        context = info.context or {}
        if context.get("base_dir") is not None:
            self._base_dir = Path(context["base_dir"])
        problems = [*self._variable_problems(), *self._target_problems(context.get("target_file"))]
        if problems:
            raise CrossFieldProblems(problems)
        return self

    def _variable_problems(self) -> list[Problem]:
        problems: list[Problem] = []
        totals = [n for n, v in self.variables.items() if v.kind == "total"]
        percents = {n: v for n, v in self.variables.items() if v.kind == "percent"}
        if len(totals) != 1:
            problems.append(
                Problem(
                    "variables",
                    f"exactly one variable of kind 'total' (the total flow) is needed, found {len(totals)}",
                )
            )
        if not percents:
            problems.append(Problem("variables", "at least one variable of kind 'percent' is needed"))
        seen: dict[str, str] = {}
        for name, spec in percents.items():
            stream = spec.stream or ""
            if stream == self.remainder_stream:
                problems.append(
                    Problem(
                        f"variables.{name}.stream",
                        f"{stream!r} is the remainder_stream; it gets what the others leave",
                    )
                )
            if stream in seen:
                problems.append(
                    Problem(f"variables.{name}.stream", f"{stream!r} is already set by {seen[stream]}")
                )
            seen[stream] = name
        low_sum = sum(v.bounds[0] for v in percents.values())
        if low_sum > self.percent_sum_max:
            problems.append(
                Problem(
                    "variables",
                    f"the percent lower bounds add up to {low_sum:g} % > percent_sum_max {self.percent_sum_max:g} %: "
                    "no condition would be feasible",
                )
            )
        return problems

    def _target_problems(self, override: str | Path | None = None) -> list[Problem]:
        try:
            self.target_spectrum(override)
        except TargetFileError as exc:
            return [Problem("target" if override is not None else "target.file", str(exc))]
        return []

    # -- the optimiser's view -------------------------------------------------------------------

    @property
    def total_variable(self) -> str:
        return next(n for n, v in self.variables.items() if v.kind == "total")

    @property
    def percent_streams(self) -> dict[str, str]:
        """variable name -> stream, for the percent variables."""
        return {n: v.stream for n, v in self.variables.items() if v.kind == "percent" and v.stream}

    @property
    def streams(self) -> list[str]:
        """Every stream that needs a pump: the percent streams, then the remainder."""
        return [*self.percent_streams.values(), self.remainder_stream]

    def space(self) -> Space:
        return Space(
            variables=tuple(
                Variable(
                    name=n,
                    low=v.bounds[0],
                    high=v.bounds[1],
                    hard_low=v.hard_limits[0],
                    hard_high=v.hard_limits[1],
                    kind=v.kind,
                    log=v.log_scaled,
                )
                for n, v in self.variables.items()
            ),
            percent_sum_max=self.percent_sum_max,
        )

    def wavelengths(self) -> np.ndarray:
        return self.grid.wavelengths()

    def resolve(self, path: str | Path) -> Path:
        """A path from the protocol file, relative to the protocol file's folder."""
        path = Path(path)
        return path if path.is_absolute() else self._base_dir / path

    @property
    def target_path(self) -> Path:
        return self.resolve(self.target.file)

    def target_spectrum(self, override_csv: str | Path | None = None) -> np.ndarray:
        """The target on the protocol grid; ``override_csv`` (relative to the working directory)
        replaces the protocol's target for one campaign."""
        path = Path(override_csv) if override_csv is not None else self.target_path
        return self.target_on_grid(*read_target_csv(path), source=path)

    def target_on_grid(self, wl: np.ndarray, absorbance: np.ndarray, *, source: str | Path) -> np.ndarray:
        """A target table (as read from ``source``) on the protocol grid, which must lie inside it."""
        try:
            return interpolate_target(wl, absorbance, self.wavelengths())
        except TargetFileError as exc:
            raise TargetFileError(f"{source}: {exc}") from exc

    def loss(self, override_csv: str | Path | None = None) -> SpectrumLoss:
        return SpectrumLoss(
            self.target_spectrum(override_csv), a_low=self.target.a_low, a_high=self.target.a_high
        )

    # -- from inputs to pump rates --------------------------------------------------------------

    def check_inputs(self, inputs: Mapping[str, float], *, tol: float = 1e-6) -> list[str]:
        """Everything wrong with one condition's inputs (empty when it may run)."""
        problems: list[str] = []
        missing = [n for n in self.variables if n not in inputs]
        unknown = [n for n in inputs if n not in self.variables]
        if missing:
            problems.append(f"missing inputs {missing}")
        if unknown:
            problems.append(f"unknown inputs {unknown}; the protocol's variables are {list(self.variables)}")
        percent_sum = 0.0
        for name, spec in self.variables.items():
            if name not in inputs:
                continue
            try:
                value = float(inputs[name])
            except (TypeError, ValueError):
                problems.append(f"{name}={inputs[name]!r} is not a number")
                continue
            low, high = spec.hard_limits
            if not math.isfinite(value):
                problems.append(f"{name}={value} is not finite")
            elif not (low - tol <= value <= high + tol):
                problems.append(
                    f"{name}={value:g} {spec.unit} is outside the hard limits [{low:g}, {high:g}]"
                )
            elif spec.kind == "percent":
                percent_sum += value
        if percent_sum > self.percent_sum_max + tol:
            problems.append(
                f"the percent inputs add up to {percent_sum:g} % > percent_sum_max {self.percent_sum_max:g} %"
            )
        return problems

    def stream_rates_ul_min(self, inputs: Mapping[str, float]) -> dict[str, float]:
        """Per-stream pump rates (uL/min) of one condition: percent/100 * total for each percent stream,
        the rest to the remainder stream. Raises :class:`InfeasibleInputs` listing every problem."""
        problems = self.check_inputs(inputs)
        if problems:
            raise InfeasibleInputs(problems)
        total = float(inputs[self.total_variable])
        rates = {stream: float(inputs[name]) / 100.0 * total for name, stream in self.percent_streams.items()}
        # clamp the rounding residue of a sum that sits exactly on 100 %
        rates[self.remainder_stream] = max(0.0, total - sum(rates.values()))
        return rates

    def equilibration_s(self, dead_volume_ul: float, inputs: Mapping[str, float]) -> float:
        """Seconds to wait after setting this condition's rates before its replicates count."""
        return self.equilibration.wait_s(dead_volume_ul, float(inputs[self.total_variable]))

    def condition_ul(self, inputs: Mapping[str, float], dead_volume_ul: float, acquisition_s: float) -> dict[str, float]:
        """The least each stream's syringe must hold to measure this condition in one go: its rate over
        the equilibration wait and ``replicates.n`` back-to-back acquisitions of ``acquisition_s``."""
        seconds = self.equilibration_s(dead_volume_ul, inputs) + self.replicates.n * acquisition_s
        return {s: rate * seconds / 60.0 for s, rate in self.stream_rates_ul_min(inputs).items()}

    def largest_condition_ul(self, dead_volume_ul: float, acquisition_s: float) -> dict[str, float]:
        """The most of each stream one condition (:meth:`condition_ul`) can draw within the initial bounds:
        at the highest total flow and that stream's largest share, where both the rate and the share of
        the equilibration's sweep of the dead volume peak."""
        total_hi = self.variables[self.total_variable].bounds[1]
        eq = self.equilibration
        fixed_s = eq.settle_s + eq.margin_s + self.replicates.n * acquisition_s
        return {
            stream: high * fixed_s / 60.0 + high / total_hi * eq.margin_volumes * dead_volume_ul
            for stream, (_, high) in self.rate_ranges_ul_min("bounds").items()
        }

    def rate_ranges_ul_min(
        self, within: Literal["hard_limits", "bounds"] = "hard_limits"
    ) -> dict[str, tuple[float, float]]:
        """The lowest and highest rate (uL/min) each stream can be asked for within the hard limits (or
        the initial bounds)."""
        total_lo, total_hi = getattr(self.variables[self.total_variable], within)
        ranges: dict[str, tuple[float, float]] = {}
        percents = {n: getattr(v, within) for n, v in self.variables.items() if v.kind == "percent"}
        streams = {n: self.variables[n].stream or n for n in percents}
        for name, (low, high) in percents.items():
            others_lo = sum(lim[0] for n, lim in percents.items() if n != name)
            top = min(high, self.percent_sum_max - others_lo)
            ranges[streams[name]] = (low / 100 * total_lo, top / 100 * total_hi)
        highest_sum = min(self.percent_sum_max, sum(lim[1] for lim in percents.values()))
        lowest_sum = sum(lim[0] for lim in percents.values())
        ranges[self.remainder_stream] = (
            (100 - highest_sum) / 100 * total_lo,
            (100 - lowest_sum) / 100 * total_hi,
        )
        return ranges


def load_protocol(path: str | Path, *, target_file: str | Path | None = None) -> ExperimentProtocol:
    """Read and validate a protocol file; every problem comes back in one :class:`ConfigError`.
    ``target_file`` (``--target``) is checked in place of the protocol's own target, which then need
    not exist (a protocol copied without its target folder)."""
    path = Path(path)
    data = read_yaml_mapping(path, "protocol")
    return validate_model(ExperimentProtocol, data, path, base_dir=path.resolve().parent, target_file=target_file)


def protocol_from_dict(
    data: Mapping[str, Any], *, base_dir: str | Path, source: str = "protocol"
) -> ExperimentProtocol:
    """Validate a protocol held elsewhere (a database row), resolving relative paths from ``base_dir``."""
    return validate_model(ExperimentProtocol, dict(data), source, base_dir=Path(base_dir))
