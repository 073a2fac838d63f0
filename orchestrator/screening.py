"""Replicate screening: which droplet spectra count towards a condition's median loss.

A replicate is rejected, never dropped: its spectrum and loss are stored with ``accepted=False`` and
a reason an operator can read. The screens, in order (the first that fails names the reason):

* ``saturated``: raw sample counts reach ``saturation_fraction`` of full scale somewhere on the grid
  (the absorbance there is meaningless);
* ``no_light``: almost no light reached the detector anywhere on the grid (lamp off, blocked cell);
* ``nan``: more than ``max_nan_fraction`` of the grid points have no valid absorbance;
* ``empty``: the peak absorbance stays below ``empty_max_absorbance`` (carrier oil, a gap or a bubble);
* ``outlier``: the loss lies more than ``outlier_mad`` scaled MADs from the median of the attempt's
  replicates that passed the screens above, judged once the attempt is complete (:func:`outlier_verdicts`):
  every droplet against all of them, so the verdict does not depend on the order the droplets came in,
  and a resumed run judges exactly as an uninterrupted one. A bubble or a merged droplet is rare: when
  more than ``MAX_OUTLIER_SHARE`` of the droplets lie that far out, they are two groups of real droplets
  (a condition at the edge of the absorbance window, an unstable reaction) and none is rejected.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from drivers.absorbance import Screening, pixel_absorbance, resample
from orchestrator.protocol import ReplicateSpec
from orchestrator.spectra import SpectrumLoss

__all__ = [
    "MIN_FOR_OUTLIER",
    "ReplicateScreen",
    "Screened",
    "median_mad",
    "outlier_verdicts",
]

MIN_FOR_OUTLIER = 5  # replicates needed before a loss can be called an outlier
MAX_OUTLIER_SHARE = 0.2  # more of the droplets than this far out: two groups of real droplets, not bubbles
MAD_SCALE = 1.4826  # MAD -> standard deviation of a normal distribution
MAD_FLOOR = 0.005  # scaled MAD floor: identical losses must not turn the next one into an outlier


def reject_kind(reason: str | None) -> str | None:
    """The screen a rejection reason names (``saturated``, ``no_light``, ``nan``, ``empty``,
    ``outlier``), without its numbers; None for no reason (an accepted replicate)."""
    return reason.split(":", 1)[0] if reason else None


@dataclass(frozen=True)
class Screened:
    """One replicate after screening. ``loss`` is None when it cannot be computed (no finite point)."""

    absorbance: np.ndarray
    loss: float | None
    accepted: bool
    reason: str | None = None

    @property
    def kind(self) -> str | None:
        """The screen that rejected it (``saturated``, ``no_light``, ``nan``, ``empty``, ``outlier``)."""
        return reject_kind(self.reason)


@dataclass(frozen=True)
class ReplicateScreen:
    """The protocol's screens bound to one detector (its saturation level) and grid."""

    saturation_counts: float
    saturation_fraction: float = 0.95
    empty_max_absorbance: float = 0.02
    max_nan_fraction: float = 0.05
    outlier_mad: float | None = 5.0
    min_light_counts: float = 100.0

    @classmethod
    def from_protocol(cls, spec: ReplicateSpec, saturation_counts: float) -> ReplicateScreen:
        return cls(
            saturation_counts=float(saturation_counts),
            saturation_fraction=spec.saturation_fraction,
            empty_max_absorbance=spec.empty_max_absorbance,
            max_nan_fraction=spec.max_nan_fraction,
            outlier_mad=spec.outlier_mad,
        )

    @property
    def detector(self) -> Screening:
        return Screening(
            saturation_counts=self.saturation_counts,
            saturation_fraction=self.saturation_fraction,
            min_reference_counts=self.min_light_counts,
        )

    def screen(
        self,
        sample: np.ndarray,
        dark: np.ndarray,
        reference: np.ndarray,
        wavelengths_nm: np.ndarray,
        grid_nm: np.ndarray,
        loss: SpectrumLoss,
    ) -> Screened:
        """Absorbance on the grid, loss and verdict of one sample spectrum (raw counts), by the screens
        that judge a droplet on its own; outliers are judged on the whole attempt (:func:`outlier_verdicts`)."""
        screening = self.detector
        px = pixel_absorbance(sample, dark, reference, screening)
        absorbance = resample(wavelengths_nm, px.absorbance, grid_nm)
        wl = np.asarray(wavelengths_nm, dtype=float)
        window = (wl >= grid_nm[0] - 1.0) & (wl <= grid_nm[-1] + 1.0)
        s = np.asarray(sample, dtype=float)[window]
        value = _loss(absorbance, loss)
        n_sat = int((s >= screening.saturation_level).sum())
        if n_sat:
            return Screened(
                absorbance,
                value,
                False,
                f"saturated: {n_sat} pixels at >= {screening.saturation_level:.0f} counts "
                "(lower the integration time or the lamp)",
            )
        light = s - np.asarray(dark, dtype=float)[window]
        if light.size and float(np.median(light)) < self.min_light_counts:
            return Screened(
                absorbance,
                value,
                False,
                f"no_light: median {float(np.median(light)):.0f} counts above dark (lamp off or cell blocked?)",
            )
        nan_fraction = float(np.mean(~np.isfinite(absorbance)))
        if nan_fraction > self.max_nan_fraction:
            return Screened(
                absorbance,
                value,
                False,
                f"nan: {nan_fraction:.0%} of the grid has no valid absorbance (limit {self.max_nan_fraction:.0%})",
            )
        peak = float(np.nanmax(absorbance))
        if peak < self.empty_max_absorbance:
            return Screened(
                absorbance,
                value,
                False,
                f"empty: peak absorbance {peak:.3g} < {self.empty_max_absorbance:g} (carrier, gap or bubble; or no product formed)",
            )
        if value is None:
            return Screened(absorbance, None, False, "nan: the loss could not be computed")
        return Screened(absorbance, value, True, None)


def _loss(absorbance: np.ndarray, loss: SpectrumLoss) -> float | None:
    """The loss of a spectrum whose few masked points are bridged linearly (None if none is finite)."""
    ok = np.isfinite(absorbance)
    if not ok.any():
        return None
    a = absorbance
    if not ok.all():
        idx = np.arange(len(a))
        a = np.interp(idx, idx[ok], a[ok])
    value = float(loss(a))
    return value if np.isfinite(value) else None


def median_mad(values: Sequence[float]) -> tuple[float, float]:
    """Median and (unscaled) median absolute deviation."""
    arr = np.asarray(values, dtype=float)
    med = float(np.median(arr))
    return med, float(np.median(np.abs(arr - med)))


def outlier_verdicts(losses: Sequence[float], k: float | None) -> tuple[list[str | None], str | None]:
    """Which of an attempt's ``losses`` (its droplets that passed the other screens) are outliers: a
    reason for each that is, None for each that is not, judged against all of them at once. The second
    value is a note when the far-out losses are too many to be bubbles (then none is rejected)."""
    n = len(losses)
    if k is None or n < MIN_FOR_OUTLIER:
        return [None] * n, None
    med, mad = median_mad(losses)
    scale = max(MAD_SCALE * mad, MAD_FLOOR)
    verdicts: list[str | None] = []
    for value in losses:
        distance = abs(value - med) / scale
        verdicts.append(
            f"outlier: loss {value:.4f} is {distance:.1f} MADs from the median {med:.4f} "
            f"(limit {k:g}; a bubble or merged droplet)"
            if distance > k
            else None
        )
    far = sum(v is not None for v in verdicts)
    if far > MAX_OUTLIER_SHARE * n:
        note = (
            f"{far} of {n} droplets lie more than {k:g} MADs from the median loss {med:.4f}: too many for "
            "bubbles, so two groups of real droplets (a condition at the edge of the absorbance window, or "
            "an unstable reaction); none rejected as an outlier"
        )
        return [None] * n, note
    return verdicts, None
