"""Held-out chemistry for the optimiser benchmark: two models written in session 9 by a helper testing
``sdl run --chemistry`` as a new user, before any optimiser had run on them (``--chemistry
benchmarks.heldout.chemistry:LorentzPlasmon --target benchmarks/heldout/lorentz_target.tsv``). Kept as
written; nothing was tuned on them. The targets are the models' noise-free spectra at the
optimum in the layouts the helper chose (a tab-separated 5 nm table; a Cary export, descending, with
trailing commas).
"""


from __future__ import annotations

from collections.abc import Mapping

import numpy as np

HC = 1239.841984


def _x(inputs: Mapping[str, float]) -> tuple[float, float, float, float, float]:
    return (float(inputs["Q_AgNO3"]), float(inputs["Q_PVA"]), float(inputs["Q_TSC"]),
            float(inputs["Q_seed"]), float(inputs["Q_total"]))


class _Noisy:
    """Replicate noise: amplitude jitter, baseline offset, pixel noise."""

    def droplet(self, inputs, wavelengths, rng):
        wl = np.asarray(wavelengths, dtype=float)
        a = self.spectrum(inputs, wl)
        return (a * np.exp(0.04 * rng.standard_normal()) + 0.003 * rng.standard_normal()
                + 0.002 * rng.standard_normal(wl.shape))


class LorentzPlasmon(_Noisy):
    """(a) One Lorentzian dipole band (in energy). Its position red-shifts with the AgNO3:seed ratio
    (silver per seed sets the plate size); its height is the silver reduced in the tubing
    (Q_AgNO3 x conversion, conversion 1 - exp(-k tau), tau ~ 1/Q_total). Citrate broadens it.
    Target made at Q_AgNO3 50, Q_PVA 25, Q_TSC 10, Q_seed 6, Q_total 600: outside the protocol's
    initial Q_AgNO3 bounds (4-20 %); at Q_AgNO3 <= 20 the band cannot be both red and tall enough."""

    def __init__(self, shift_nm: float = 104.0, eps: float = 0.0233, k_red: float = 2.0,
                 q_ref: float = 600.0, width_ev: float = 0.14, width_citrate: float = 0.02) -> None:
        self.shift_nm, self.eps, self.k_red, self.q_ref = shift_nm, eps, k_red, q_ref
        self.width_ev, self.width_citrate = width_ev, width_citrate

    def spectrum(self, inputs, wavelengths):
        ag, pva, tsc, seed, total = _x(inputs)
        wl = np.asarray(wavelengths, dtype=float)
        ratio = ag / (seed + 0.2)
        centre = 400.0 + self.shift_nm * np.sqrt(ratio) / (1.0 + pva / 400.0)
        conv = 1.0 - np.exp(-self.k_red * self.q_ref / max(total, 1e-6))
        height = self.eps * ag * conv
        hw = self.width_ev * (1.0 + self.width_citrate * tsc)
        d = HC / wl - HC / centre
        return height / (1.0 + (d / hw) ** 2) + 0.01 * (400.0 / wl) ** 4


class NarrowValley(_Noisy):
    """(b) Narrow optimum with a strong PVA x citrate interaction: the product band forms cleanly only
    when PVA:TSC is near 3 (else a 420 nm by-product grows fast), and its position follows
    log(PVA x TSC). Optimum (inside the initial bounds): Q_AgNO3 12, Q_PVA 24, Q_TSC 8, Q_seed 10,
    Q_total 600."""

    def spectrum(self, inputs, wavelengths):
        ag, pva, tsc, seed, total = _x(inputs)
        wl = np.asarray(wavelengths, dtype=float)
        ratio_err = np.log(max(pva, 1e-6) / max(tsc, 1e-6) / 3.0) / 0.12
        clean = np.exp(-ratio_err**2)
        centre = 540.0 + 60.0 * np.log(max(pva * tsc, 1e-6) / 192.0) + 25.0 * np.log(ag / seed / 1.2)
        width = 35.0 * (1.0 + 0.5 * abs(np.log(total / 600.0)))
        height = 0.9 * (ag / 12.0) ** 0.5 * (1.0 - np.exp(-1200.0 / total)) / (1.0 - np.exp(-2.0))
        prod = clean * height * np.exp(-0.5 * ((wl - centre) / width) ** 2)
        side = (1.0 - clean) * 0.8 * height * np.exp(-0.5 * ((wl - 420.0) / 40.0) ** 2)
        return prod + side + 0.02 * (400.0 / wl) ** 2
