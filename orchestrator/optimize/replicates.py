"""One spectrum per condition from its accepted replicate spectra, which may hold a few missing points.

Replicate screening (:mod:`orchestrator.screening`) accepts a droplet with up to ``max_nan_fraction`` of
its grid points non-finite (a saturated or masked pixel band), so every optimiser that models spectra
must cope with them. The rule, in one place for all of them:

* a point missing (NaN or +-inf) in some replicates is taken from the others (``nanmedian``/``nanmean``);
* a point missing in every replicate is bridged by linear interpolation along wavelength between its
  nearest finite neighbours (beyond the first or last finite point: that point's value), as the
  screening's own loss does;
* a condition with no finite point at all has no spectrum (None).

Spectra without missing points give exactly what ``np.median``/``np.nanmean`` gave before this module
existed (the same functions on the same numbers), so NaN-free histories keep their suggestions.
"""

from __future__ import annotations

import warnings

import numpy as np


def _stack(spectra: np.ndarray | None) -> np.ndarray | None:
    """Replicates as a float (r, n_wl) array with non-finite points as NaN; None when there are none."""
    if spectra is None:
        return None
    s = np.atleast_2d(np.asarray(spectra, dtype=float))
    if s.shape[0] == 0 or s.shape[-1] == 0:
        return None
    return s


def bridge_gaps(spectrum: np.ndarray, wavelengths: np.ndarray | None = None) -> np.ndarray | None:
    """``spectrum`` (n_wl,) with its non-finite points linearly interpolated along ``wavelengths``
    (increasing; the grid index when None or of another length) from the finite ones; None when no
    point is finite. A spectrum without missing points is returned as it is."""
    a = np.asarray(spectrum, dtype=float)
    ok = np.isfinite(a)
    if ok.all():
        return a
    if not ok.any():
        return None
    wl = np.asarray(wavelengths, dtype=float) if wavelengths is not None else None
    x = wl if wl is not None and wl.shape == a.shape else np.arange(len(a), dtype=float)
    out = a.copy()
    out[~ok] = np.interp(x[~ok], x[ok], a[ok])
    return out


def replicate_median(spectra: np.ndarray | None, wavelengths: np.ndarray | None = None) -> np.ndarray | None:
    """Point-wise median of the replicate ``spectra`` (r, n_wl) over their finite values, the points
    missing in every replicate bridged along ``wavelengths``; None without any finite point."""
    s = _stack(spectra)
    if s is None:
        return None
    finite = np.isfinite(s)
    if finite.all():
        return np.median(s, axis=0)
    if not finite.any():
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)  # "All-NaN slice": bridged below
        med = np.nanmedian(np.where(finite, s, np.nan), axis=0)
    return bridge_gaps(med, wavelengths)


def replicate_mean(
    spectra: np.ndarray | None, wavelengths: np.ndarray | None = None
) -> tuple[np.ndarray | None, int]:
    """Point-wise mean of the replicate ``spectra`` over their finite values (points missing in every
    replicate bridged along ``wavelengths``) and the number of replicates; (None, 0) without any finite
    point."""
    s = _stack(spectra)
    if s is None:
        return None, 0
    finite = np.isfinite(s)
    if not finite.any():
        return None, 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)  # "Mean of empty slice": bridged below
        mean = np.nanmean(s if finite.all() else np.where(finite, s, np.nan), axis=0)
    return bridge_gaps(mean, wavelengths), int(s.shape[0])
