"""The optimiser interface: ``suggest(history, space, n) -> Suggestion``.

Plain dataclasses inside the engine; the campaign builds them from the protocol and the store.
An optimiser is deterministic given its seed and the history (seed it per round from
``numpy.random.SeedSequence([seed, round_index])``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np

from orchestrator.spectra import SpectrumLoss


@dataclass(frozen=True)
class Variable:
    """One input. ``low``/``high`` are the current search bounds, ``hard_*`` what hardware and
    chemistry allow (bounds never widen past them). ``kind``: 'percent' of the aqueous flow (these
    share the sum constraint) or 'total' (the total flow, uL/min)."""

    name: str
    low: float
    high: float
    hard_low: float
    hard_high: float
    kind: str = "percent"
    log: bool = False


@dataclass(frozen=True)
class Space:
    variables: tuple[Variable, ...]
    percent_sum_max: float = 90.0

    @property
    def names(self) -> list[str]:
        return [v.name for v in self.variables]

    @property
    def bounds(self) -> dict[str, tuple[float, float]]:
        return {v.name: (v.low, v.high) for v in self.variables}

    def with_bounds(self, bounds: dict[str, tuple[float, float]]) -> Space:
        return replace(
            self,
            variables=tuple(replace(v, low=bounds[v.name][0], high=bounds[v.name][1]) for v in self.variables),
        )

    def percent_mask(self) -> np.ndarray:
        return np.array([v.kind == "percent" for v in self.variables])

    def feasible(self, x: np.ndarray, *, hard: bool = False, tol: float = 1e-9) -> np.ndarray:
        """Rows of ``x`` (n, d) inside the (current or hard) bounds and the sum constraint."""
        x = np.atleast_2d(x)
        lo = np.array([v.hard_low if hard else v.low for v in self.variables])
        hi = np.array([v.hard_high if hard else v.high for v in self.variables])
        inside = np.all((x >= lo - tol) & (x <= hi + tol), axis=1)
        return inside & (x[:, self.percent_mask()].sum(axis=1) <= self.percent_sum_max + tol)

    def to_array(self, inputs: list[dict[str, float]]) -> np.ndarray:
        return np.array([[row[n] for n in self.names] for row in inputs], dtype=float).reshape(-1, len(self.names))

    def to_dicts(self, x: np.ndarray) -> list[dict[str, float]]:
        return [{n: float(v) for n, v in zip(self.names, row, strict=True)} for row in np.atleast_2d(x)]


@dataclass
class Observation:
    """One measured condition. ``median_loss`` is None when the condition failed (too few good
    replicates); ``spectra`` holds its accepted replicate absorbance spectra on the protocol grid;
    ``prediction`` is the spectrum the optimiser predicted for it before it was measured
    (``Suggestion.predictions``, persisted with the batch), used to judge the model's accuracy."""

    round_index: int
    inputs: dict[str, float]
    median_loss: float | None
    mad: float | None = None
    failed: bool = False
    spectra: np.ndarray | None = None
    source: str = ""
    prediction: np.ndarray | None = None
    condition: int | None = None  # its index in the round (0-based), where known: how people find it


@dataclass
class History:
    observations: list[Observation]
    wavelengths: np.ndarray
    loss: SpectrumLoss
    round_index: int = 0
    # the search bounds of every past round, oldest first (the engine's per-round ``bounds``); widening
    # reads from them how many rounds running an edge has moved out
    bounds: list[dict[str, tuple[float, float]]] = field(default_factory=list)

    def measured(self) -> list[Observation]:
        return [o for o in self.observations if not o.failed and o.median_loss is not None]

    def failed(self) -> list[Observation]:
        return [o for o in self.observations if o.failed]


@dataclass
class Suggestion:
    batch: list[dict[str, float]]
    space: Space
    sources: list[str]
    predictions: list[np.ndarray | None] = field(default_factory=list)
    notes: dict = field(default_factory=dict)


class Optimizer(Protocol):
    name: str

    def suggest(self, history: History, space: Space, n: int) -> Suggestion: ...
