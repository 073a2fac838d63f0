"""Chemistry models: flow rates in, absorbance spectrum of one droplet out.

A model is any class with ``droplet(inputs, wavelengths, rng) -> absorbance`` (and optionally the
noise-free ``spectrum(inputs, wavelengths)``); a simulated rig names it as ``module:Class`` with
keyword ``params``. :class:`AgNanoprism` stands in for the seed-mediated silver nanoprism synthesis of
Mekki-Berrada et al., npj Comput. Mater. 7, 55 (2021).

The model is a small, physically shaped story, not a Mie/DDA calculation:

* Silver nitrate is reduced during the residence time in the tubing (``tau ~ 1/Q_total``); citrate
  complexes Ag+ and slows that reduction.
* The reduced silver deposits on the seeds. Silver per seed sets the prism edge length, so the
  in-plane dipole band red-shifts with the AgNO3/seed ratio; PVA caps lateral growth (less shift).
* Citrate is needed for planar (anisotropic) growth; with too few seeds part of the silver nucleates
  new isotropic particles instead. Silver not in prisms sits in near-spherical particles with the
  ~400 nm band of the seeds.
* The dipole band broadens with growth (polydispersity) and citrate, and narrows with PVA. Prisms also
  show a weak in-plane quadrupole and an out-of-plane quadrupole near 335 nm; silver's interband
  absorption rises below ~320 nm; a little Rayleigh-like scattering makes the baseline.

Bands are pseudo-Voigt profiles in photon energy (plasmon lines are Lorentzian; the size
distribution adds a Gaussian part). The default parameters were fitted to the measured losses of
the paper's BO runs 1-6 (``python -m benchmarks.calibration --fit``; see docs/calibration.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace

import numpy as np

HC_EV_NM = 1239.841984  # photon energy (eV) = HC_EV_NM / wavelength (nm)

# the chemistry inputs, in % of the aqueous flow except Q_total (uL/min)
INPUT_NAMES = ("Q_AgNO3", "Q_PVA", "Q_TSC", "Q_seed", "Q_total")


class ChemistryInputError(ValueError):
    """Inputs a chemistry model cannot take (a name missing, a negative or non-finite flow)."""


@dataclass(frozen=True)
class AgNanoprismParams:
    """Parameters of :class:`AgNanoprism`. Concentrations are the inputs' % of the aqueous flow."""

    # --- knobs to move the optimum (benchmarks); 1.0 is the paper's rig
    agno3_stock: float = 1.0  # relative AgNO3 stock concentration: < 1 needs more Q_AgNO3
    seed_stock: float = 1.0  # relative seed stock concentration: < 1 needs more Q_seed
    q_ref_ul_min: float = 800.0  # flow whose residence time is the unit of tau
    # Fitted (python -m benchmarks.calibration --fit: differential evolution, seed 0, 300 generations,
    # then least squares, of the noise-free loss against the per-condition median loss of BO1-BO6):
    # k_red, c_inhibit, shift_nm, ageing, seed_offset, c_half, seed_nucleation, width_ev, width_growth,
    # width_citrate, width_ageing, eps_prism, eps_sphere, seed_silver. The fit drove c_inhibit, ageing,
    # seed_nucleation and width_ageing to where they barely act: the data shows no clear sign of them.
    # Fixed from physics, not fitted: growth_exponent 0.5 (plates of constant thickness: edge length ~
    # sqrt(silver per seed)), the mild PVA terms, band shapes, the quadrupoles, scattering, interband.
    # The droplet variation was picked on a small grid (composition_cv 0.04-0.06 x volume_cv 0.02-0.04)
    # to match the measured per-condition spread of BO1-BO6 (0.026; the model gives 0.025).
    # --- reduction kinetics
    k_red: float = 3.947  # reduction rate x reference residence time
    c_inhibit: float = 138.6  # citrate (%) that halves the reduction rate
    # --- growth and the dipole position
    lambda_seed_nm: float = 400.0  # seed plasmon band
    shift_nm: float = 114.0  # dipole red-shift at one unit of growth per seed
    growth_exponent: float = 0.5  # shift ~ (silver per seed) ** exponent
    pva_cap: float = 200.0  # PVA (%) that halves the effective lateral growth
    ageing: float = 0.003289  # tip rounding over the residence time (blue shift per unit tau)
    seed_offset: float = 0.2294  # seed (%) added to Q_seed so growth per seed stays finite
    # --- prism yield
    c_half: float = 0.04717  # citrate (%) giving half the possible prism yield
    seed_nucleation: float = 0.1142  # seed (%) below which secondary nucleation takes over
    # --- band widths (eV, half width of the Gaussian-equivalent)
    width_ev: float = 0.3747  # dipole band at 640 nm without citrate or PVA
    width_growth: float = 1.219  # width ~ (dipole wavelength / 640 nm) ** width_growth
    width_citrate: float = 0.03101  # relative broadening per % citrate
    width_pva: float = 0.004  # relative narrowing per % PVA
    width_ageing: float = 0.000788  # relative broadening per unit of residence time beyond the reference
    sphere_width_ev: float = 0.25
    lorentz_fraction: float = 0.3
    quadrupole_ratio: float = 0.15  # in-plane quadrupole / dipole height
    # --- amplitudes (absorbance per % of silver in the droplet)
    eps_prism: float = 0.02777
    eps_sphere: float = 0.1013
    seed_silver: float = 0.1294  # silver in the seed stream relative to the AgNO3 stream (per %)
    scatter: float = 0.002
    interband: float = 0.01
    # --- droplet-to-droplet variation (droplet(); spectrum() is noise-free)
    composition_cv: float = 0.04  # relative jitter of each reagent's share (pump pulsation)
    volume_cv: float = 0.04  # droplet volume / optical path variation -> amplitude
    baseline_sd: float = 0.003  # absorbance offset between droplets
    pixel_noise_sd: float = 0.002  # absorbance noise per wavelength, grows with absorbance
    bubble_probability: float = 0.02  # a bubble in the beam: scattering, no band
    empty_probability: float = 0.01  # an empty (carrier-only) slot


class AgNanoprism:
    """Flows -> absorbance of a droplet of silver seeds and triangular nanoprisms.

    ``AgNanoprism(**params)``: any field of :class:`AgNanoprismParams` can be overridden, e.g.
    ``AgNanoprism(agno3_stock=0.6)`` moves the best Q_AgNO3 up by about 1/0.6.
    """

    def __init__(self, **params: float) -> None:
        known = {f.name for f in fields(AgNanoprismParams)}
        unknown = sorted(set(params) - known)
        if unknown:
            raise TypeError(
                f"AgNanoprism: unknown parameter(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        bad = [k for k, v in params.items() if not np.isfinite(float(v))]
        if bad:
            raise ValueError(f"AgNanoprism: parameter(s) {', '.join(bad)} must be finite numbers")
        self.params = replace(AgNanoprismParams(), **{k: float(v) for k, v in params.items()})

    def describe(self) -> dict[str, float]:
        return asdict(self.params)

    # ---- public API ---------------------------------------------------------------------------
    def spectrum(self, inputs: Mapping[str, float], wavelengths: np.ndarray) -> np.ndarray:
        """Noise-free absorbance of the mean droplet of this condition at ``wavelengths`` (nm)."""
        x = as_input_array(inputs)
        return self.spectra(x[None, :], np.asarray(wavelengths, dtype=float))[0]

    def droplet(
        self, inputs: Mapping[str, float], wavelengths: np.ndarray, rng: np.random.Generator
    ) -> np.ndarray:
        """Absorbance of one droplet: the condition's spectrum with replicate variation, drawn from ``rng``."""
        p = self.params
        wl = np.asarray(wavelengths, dtype=float)
        x = as_input_array(inputs)
        # draw every random number in a fixed order so a seeded replicate is reproducible
        u_defect = rng.random()
        jitter = 1.0 + p.composition_cv * rng.standard_normal(4)
        volume = float(np.exp(p.volume_cv * rng.standard_normal()))
        baseline = p.baseline_sd * rng.standard_normal()
        pixel = rng.standard_normal(wl.shape)
        if u_defect < p.empty_probability:
            return baseline + p.pixel_noise_sd * pixel
        if u_defect < p.empty_probability + p.bubble_probability:
            # a bubble scatters and refracts the beam away: a featureless, tilted offset
            level = 0.05 + 0.3 * rng.random()
            return level * (400.0 / wl) ** 1.0 + baseline + p.pixel_noise_sd * pixel
        xj = x.copy()
        xj[:4] = np.clip(x[:4] * jitter, 0.0, None)
        a = volume * self.spectra(xj[None, :], wl)[0] + baseline
        # shot noise in absorbance grows as fewer photons pass: ~ 10**(A/2)
        return a + p.pixel_noise_sd * np.power(10.0, 0.5 * np.clip(a, 0.0, 3.0)) * pixel

    # ---- the model, vectorised over conditions ---------------------------------------------
    def spectra(self, x: np.ndarray, wavelengths: np.ndarray) -> np.ndarray:
        """Noise-free spectra for rows of ``x`` = (Q_AgNO3, Q_PVA, Q_TSC, Q_seed, Q_total): (n, n_wl)."""
        p = self.params
        x = np.atleast_2d(np.asarray(x, dtype=float))
        wl = np.asarray(wavelengths, dtype=float)
        ag = p.agno3_stock * x[:, 0:1]
        pva = x[:, 1:2]
        cit = x[:, 2:3]
        seeds = p.seed_stock * x[:, 3:4]
        tau = p.q_ref_ul_min / np.maximum(x[:, 4:5], 1e-6)

        converted = 1.0 - np.exp(-p.k_red * tau / (1.0 + cit / p.c_inhibit))
        deposited = converted * ag
        growth = deposited / (seeds + p.seed_offset)
        prism_yield = cit / (cit + p.c_half) * seeds / (seeds + p.seed_nucleation)

        lateral = growth / (1.0 + pva / p.pva_cap)
        dipole_nm = p.lambda_seed_nm + p.shift_nm * lateral**p.growth_exponent / (1.0 + p.ageing * tau)
        width = (
            p.width_ev
            * (dipole_nm / 640.0) ** p.width_growth
            * (1.0 + p.width_citrate * cit)
            * (1.0 + p.width_ageing * (tau - 1.0))
            / (1.0 + p.width_pva * pva)
        )
        energy = HC_EV_NM / wl[None, :]
        e_dip = HC_EV_NM / dipole_nm
        # in-plane quadrupole of a prism sits at ~1.45x the dipole energy
        e_quad = np.minimum(1.45 * e_dip, HC_EV_NM / 335.0)
        e_sphere = HC_EV_NM / p.lambda_seed_nm
        e_oop = HC_EV_NM / 335.0

        prism_ag = prism_yield * deposited
        sphere_ag = (1.0 - prism_yield) * deposited + p.seed_silver * seeds
        total_ag = ag + p.seed_silver * seeds
        eta = p.lorentz_fraction
        # a band's area follows the silver in it, so a broader band is lower
        a = (
            p.eps_prism
            * prism_ag
            * (p.width_ev / width)
            * (
                _pseudo_voigt(energy, e_dip, width, eta)
                + p.quadrupole_ratio * _pseudo_voigt(energy, e_quad, width, eta)
                + 0.5 * p.quadrupole_ratio * _pseudo_voigt(energy, e_oop, 0.1, eta)
            )
        )
        a = a + p.eps_sphere * sphere_ag * _pseudo_voigt(energy, e_sphere, p.sphere_width_ev, eta)
        a = a + p.scatter * total_ag * (400.0 / wl[None, :]) ** 4
        a = a + p.interband * total_ag / (1.0 + np.exp((wl[None, :] - 320.0) / 8.0))
        return a


def _pseudo_voigt(
    energy: np.ndarray, centre: np.ndarray, sigma: np.ndarray | float, eta: float
) -> np.ndarray:
    """Peak-normalised mix of a Gaussian (sd ``sigma``) and a Lorentzian of the same half width."""
    hwhm = sigma * np.sqrt(2.0 * np.log(2.0))
    d = energy - centre
    gauss = np.exp(-0.5 * (d / sigma) ** 2)
    lorentz = 1.0 / (1.0 + (d / hwhm) ** 2)
    return (1.0 - eta) * gauss + eta * lorentz


def as_input_array(inputs: Mapping[str, float]) -> np.ndarray:
    """The five inputs in model order, checked: every name present, finite, >= 0, Q_total > 0."""
    missing = [n for n in INPUT_NAMES if n not in inputs]
    if missing:
        raise ChemistryInputError(
            f"chemistry inputs lack {', '.join(missing)}: the protocol's input names must be "
            f"{', '.join(INPUT_NAMES)}"
        )
    x = np.array([float(inputs[n]) for n in INPUT_NAMES])
    if not np.all(np.isfinite(x)) or np.any(x < 0):
        raise ChemistryInputError(
            f"chemistry inputs must be finite and >= 0, got {dict(zip(INPUT_NAMES, x, strict=True))}"
        )
    if x[4] <= 0:
        raise ChemistryInputError("Q_total must be > 0 uL/min")
    return x
