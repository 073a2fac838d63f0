"""Chemistry with ground where conditions fail, for the optimiser benchmark's check of how it honours
failures (``python -m benchmarks.optimizer --chemistry benchmarks.failing_chemistry:RatioPrecipitate
--target benchmarks/heldout/lorentz_target.tsv``; the table gains a count of failed conditions).

Both wrap the held-out :class:`~benchmarks.heldout.chemistry.LorentzPlasmon` unchanged, and give NaN
droplets (a turbid droplet the spectrometer software cannot read) where a precipitate forms. Its true
spectrum there is a flat turbid baseline, so the benchmark's true optimum is a condition that measures.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from benchmarks.heldout.chemistry import LorentzPlasmon

TURBID = 0.5  # a flat absorbance: scattering, no band


class _Precipitating(LorentzPlasmon):
    def precipitates(self, inputs: Mapping[str, float]) -> bool:
        raise NotImplementedError

    def spectrum(self, inputs, wavelengths):
        if self.precipitates(inputs):
            return np.full(np.shape(wavelengths), TURBID)
        return super().spectrum(inputs, wavelengths)

    def droplet(self, inputs, wavelengths, rng):
        if self.precipitates(inputs):
            return np.full(np.shape(wavelengths), np.nan)
        return super().droplet(inputs, wavelengths, rng)


class RatioPrecipitate(_Precipitating):
    """Too much silver per seed precipitates: AgNO3 : (seed + 0.2) above 10 (a diagonal boundary). The
    target's condition sits at 8.1, inside but near it, and the band red-shifts toward the boundary, so
    a model of the spectra alone points into the failed ground."""

    def precipitates(self, inputs: Mapping[str, float]) -> bool:
        return float(inputs["Q_AgNO3"]) / (float(inputs["Q_seed"]) + 0.2) > 10.0


class SilverLimit(_Precipitating):
    """Above 25 % AgNO3 the silver precipitates whatever else (session 9's helper case): the target's
    condition (50 %) lies past it, so the best reachable condition is on the boundary."""

    def precipitates(self, inputs: Mapping[str, float]) -> bool:
        return float(inputs["Q_AgNO3"]) > 25.0
