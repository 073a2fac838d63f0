"""Absorbance from raw counts: ``A = -log10((S - D) / (R - D))``, screened and put on the protocol's grid.

``S`` is the sample (droplet) spectrum, ``D`` the dark (lamp off), ``R`` the reference (carrier
only), all in counts from the same detector at the same integration time.

Pixels are masked (NaN) where the reference carries no light (``R - D`` below ``min_reference_counts``)
or where ``S`` or ``R`` reaches ``saturation_fraction`` of full scale (the last few % of a CCD's range
are already nonlinear). Where ``S - D <= 0`` the sample let no measurable light through; the
transmission is floored at ``min_transmission`` (A = 4 by default) rather than dropped, because "at
least this dark" is a measurement.

On the grid, a point takes ``np.interp`` over the valid pixels; it is NaN when no valid pixel lies
within ``reach_nm`` of it or it lies outside the valid pixels' span (no extrapolation).
:func:`absorbance_on_grid` raises :class:`~drivers.errors.DetectorSaturated` or
:class:`~drivers.errors.LampOff` when masked points fall on the grid, so bad light never reaches the loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from drivers.errors import DetectorSaturated, LampOff, SpectrometerError


@dataclass(frozen=True)
class Screening:
    """What counts as usable light. Counts are dark-subtracted or raw alike: only differences matter,
    except the saturation test, which compares each raw spectrum with full scale."""

    saturation_counts: float
    saturation_fraction: float = 0.95
    min_reference_counts: float = 100.0
    min_transmission: float = 1e-4

    @property
    def saturation_level(self) -> float:
        return self.saturation_fraction * self.saturation_counts


@dataclass(frozen=True)
class PixelAbsorbance:
    """Per-pixel absorbance (NaN where masked) and why each pixel was masked."""

    absorbance: np.ndarray
    saturated: np.ndarray
    dark_reference: np.ndarray

    @property
    def valid(self) -> np.ndarray:
        return ~(self.saturated | self.dark_reference)


def pixel_absorbance(
    sample: np.ndarray, dark: np.ndarray, reference: np.ndarray, screening: Screening
) -> PixelAbsorbance:
    s, d, r = (np.asarray(v, dtype=float) for v in (sample, dark, reference))
    if not s.shape == d.shape == r.shape or s.ndim != 1:
        raise SpectrometerError(
            f"sample, dark and reference must be 1-D spectra of one length, got {s.shape}, {d.shape}, {r.shape}",
            hint="Take dark, reference and sample on the same spectrometer without changing its settings.",
        )
    light = r - d
    saturated = (s >= screening.saturation_level) | (r >= screening.saturation_level)
    dark_reference = ~saturated & (light < screening.min_reference_counts)
    valid = ~(saturated | dark_reference)
    with np.errstate(divide="ignore", invalid="ignore"):
        transmission = np.where(valid, (s - d) / np.where(valid, light, 1.0), np.nan)
    transmission = np.where(valid, np.maximum(transmission, screening.min_transmission), np.nan)
    return PixelAbsorbance(-np.log10(transmission), saturated, dark_reference)


def resample(
    wavelengths_nm: np.ndarray, values: np.ndarray, grid_nm: np.ndarray, *, reach_nm: float = 1.0
) -> np.ndarray:
    """``values`` (NaN = invalid pixel) linearly interpolated onto ``grid_nm`` over the valid pixels;
    NaN where no valid pixel lies within ``reach_nm`` or outside the valid span."""
    wl = np.asarray(wavelengths_nm, dtype=float)
    v = np.asarray(values, dtype=float)
    grid = np.asarray(grid_nm, dtype=float)
    order = np.argsort(wl)
    wl, v = wl[order], v[order]
    ok = np.isfinite(v)
    out = np.full(grid.shape, np.nan)
    if not ok.any():
        return out
    wl_ok, v_ok = wl[ok], v[ok]
    out = np.interp(grid, wl_ok, v_ok)
    # distance from each grid point to its nearest valid pixel
    idx = (
        np.clip(np.searchsorted(wl_ok, grid), 1, len(wl_ok) - 1)
        if len(wl_ok) > 1
        else np.zeros(len(grid), int)
    )
    nearest = np.minimum(np.abs(grid - wl_ok[idx]), np.abs(grid - wl_ok[np.maximum(idx - 1, 0)]))
    outside = (grid < wl_ok[0]) | (grid > wl_ok[-1])
    return np.where(outside | (nearest > reach_nm), np.nan, out)


def absorbance_on_grid(
    sample: np.ndarray,
    dark: np.ndarray,
    reference: np.ndarray,
    wavelengths_nm: np.ndarray,
    grid_nm: np.ndarray,
    screening: Screening,
    *,
    reach_nm: float = 1.0,
    max_masked_fraction: float = 0.0,
    device: str | None = None,
) -> np.ndarray:
    """The absorbance on the protocol's grid; raises when more than ``max_masked_fraction`` of the grid
    is masked: DetectorSaturated if saturation masked it, LampOff if the reference is dark there."""
    px = pixel_absorbance(sample, dark, reference, screening)
    a = resample(wavelengths_nm, px.absorbance, grid_nm, reach_nm=reach_nm)
    masked = ~np.isfinite(a)
    if masked.mean() <= max_masked_fraction:
        return a
    grid = np.asarray(grid_nm, dtype=float)
    wl = np.asarray(wavelengths_nm, dtype=float)
    beyond = (grid < wl.min() - reach_nm) | (grid > wl.max() + reach_nm)
    if beyond.any():  # no light can be missing where there is no pixel: say what the range is
        raise SpectrometerError(
            f"the spectrometer's pixels ({wl.min():.1f}-{wl.max():.1f} nm) do not cover the protocol's grid at "
            f"{_ranges(grid[beyond])} nm",
            device=device,
            hint="Narrow the protocol's wavelength grid to the spectrometer's range, or use a spectrometer that covers it.",
        )
    window = (wl >= grid.min() - reach_nm) & (wl <= grid.max() + reach_nm)
    n_sat, n_dark = int(px.saturated[window].sum()), int(px.dark_reference[window].sum())
    where = _ranges(grid[masked])
    if n_sat >= n_dark and n_sat > 0:
        which = (
            "the sample"
            if not (np.asarray(reference) >= screening.saturation_level)[window].any()
            else "the reference"
        )
        raise DetectorSaturated(
            f"{which} saturates the detector at {where} nm ({n_sat} pixels at >= "
            f"{screening.saturation_level:.0f} counts)",
            device=device,
        )
    if n_dark > 0:
        idx = np.flatnonzero(masked)
        at_end = bool(np.all(np.diff(idx) == 1) and (idx[0] == 0 or idx[-1] == len(grid) - 1))
        raise LampOff(
            f"the reference is as dark as the dark spectrum at {where} nm ({n_dark} pixels with less than "
            f"{screening.min_reference_counts:g} counts of light)"
            + (", the end of the protocol's grid" if at_end and masked.mean() < 0.5 else ""),
            device=device,
            # the spectrometer's first pixels may be masked (electric dark) or the lamp may not reach there
            hint=("Those pixels see no light (optically masked, or beyond the lamp's range): narrow the protocol's "
                  "wavelength grid to where the reference is bright. If the lamp is off, switch it on and seat the fibre."
                  if at_end and masked.mean() < 0.5 else None),
        )
    raise SpectrometerError(
        f"the spectrometer's pixels do not cover the protocol's grid at {where} nm",
        device=device,
        hint="Check that the protocol's wavelength range lies within the spectrometer's range.",
    )


def _ranges(values: np.ndarray) -> str:
    """'380-412, 655' style summary of masked grid points."""
    if len(values) == 0:
        return "-"
    parts, start, prev = [], values[0], values[0]
    steps = np.diff(values)
    step = float(np.min(steps)) if len(steps) else 0.0
    for v in values[1:]:
        if v - prev > step * 1.5:
            parts.append(f"{start:g}" if start == prev else f"{start:g}-{prev:g}")
            start = v
        prev = v
    parts.append(f"{start:g}" if start == prev else f"{start:g}-{prev:g}")
    return ", ".join(parts)
