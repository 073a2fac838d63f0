"""A simulated Ocean Insight spectrometer with the python-seabreeze ``Spectrometer`` API.

It stands in as the ``backend`` of :class:`drivers.ocean.OceanSpectrometer`, so a dry run executes
the same driver code as a real rig. The simulated instrument is a FLAME-S-like UV-Vis spectrometer:

* 2048-pixel linear CCD (Sony ILX511B class), 200-850 nm through a third-order pixel -> wavelength
  polynomial (as stored in a real unit's EEPROM), pixels 2-19 optically masked ("electric dark").
* 16-bit ADC: raw counts clip at 65535 (``max_intensity``); integration time 1 ms-65 s.
* Dark counts: an electronic offset, a per-pixel fixed pattern, dark current growing with the
  integration time, read noise. ``intensities(correct_dark_counts=True)`` subtracts the mean of the
  electric dark pixels, as seabreeze does.
* A balanced deuterium-halogen lamp (DH-2000-BAL class) seen through the detector's response:
  deuterium continuum in the UV with its Balmer lines at 486.0 and 656.1 nm, a ~3000 K halogen
  continuum in the visible, a grating/CCD response falling off at both ends.
* Light through the flow cell: ``counts = dark + lamp * 10**-A + shot noise``, where ``A`` is the
  absorbance of whatever sits at the detector now (``world.detector_inputs()``: None -> carrier only,
  A = 0; else ``world.chemistry.droplet(inputs, wavelengths, world.rng)``).
* The detector is linear, so the nonlinearity correction is accepted and changes nothing.

All noise comes from ``world.rng``, so a seeded replicate is reproducible. Faults
(:mod:`simulators.faults`): ``saturated`` (the lamp floods the detector), ``dark_lamp`` (no light
arrives), ``no_reply`` (USB transfer timeout), ``disconnect`` (the device is gone).
"""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np

from drivers.errors import SimulationModelError
from simulators.faults import SPECTROMETER_FAULTS, Fault, FaultSchedule
from simulators.world import World, get_world

PIXELS = 2048
MAX_COUNTS = 65535.0  # 16-bit ADC
INTEGRATION_LIMITS_US = (1_000, 65_000_000)
ELECTRIC_DARK_PIXELS = tuple(range(2, 20))
# the lamp's peak through the bench, and the integration time the unit starts at: 40,000 counts at the
# peak, about 61 % of full scale, where a bench's lamp and integration time are set together
LAMP_PEAK_COUNTS_PER_MS = 4000.0
DEFAULT_INTEGRATION_US = 10_000
# third-order pixel -> wavelength calibration (nm); spans ~200-850 nm, slightly compressed to the red
WAVELENGTH_COEFFS = (199.8, 0.3672, -2.38e-5, -1.0e-10)


def model_name(model: Any) -> str:
    """``module:Class`` of a chemistry model, as ``--chemistry`` names it."""
    return f"{type(model).__module__}:{type(model).__qualname__}"


def model_absorbance(model: Any, inputs: dict[str, float], wavelengths: np.ndarray, rng: Any) -> np.ndarray:
    """One droplet's absorbance at ``wavelengths`` from the chemistry model, or a
    :class:`SimulationModelError` that names the model, the inputs and what went wrong: a model that
    raises, or answers with the wrong number of values, is the model's bug, not the spectrometer's."""

    def where() -> str:  # only for the error: this runs for every droplet of a dry run
        return ", ".join(f"{k}={v:.4g}" for k, v in inputs.items())

    try:
        absorbance = np.asarray(model.droplet(inputs, wavelengths, rng), dtype=float)
    except Exception as exc:
        raise SimulationModelError(
            f"chemistry model {model_name(model)} raised {type(exc).__name__}: {exc} at {where()} "
            f"(wavelengths {wavelengths[0]:.1f}-{wavelengths[-1]:.1f} nm, {len(wavelengths)} points)"
        ) from exc
    if absorbance.shape != wavelengths.shape:
        raise SimulationModelError(
            f"chemistry model {model_name(model)} returned {absorbance.size} values for "
            f"{len(wavelengths)} wavelengths ({wavelengths[0]:.1f}-{wavelengths[-1]:.1f} nm) at {where()}: "
            "droplet() must return one absorbance per wavelength it is given"
        )
    return absorbance


class SeaBreezeError(Exception):
    """What python-seabreeze raises; the simulator raises the same kind of error."""

    def __init__(self, message: str, error_code: int | None = None) -> None:
        super().__init__(message)
        self.error_code = error_code


class SeaBreezeTimeout(SeaBreezeError, TimeoutError):
    """A USB transfer that got no reply in time (pyseabreeze raises usb.core.USBTimeoutError)."""


def pixel_wavelengths(pixels: int = PIXELS, coeffs: tuple[float, ...] = WAVELENGTH_COEFFS) -> np.ndarray:
    i = np.arange(pixels, dtype=float)
    return sum(c * i**k for k, c in enumerate(coeffs))


def lamp_profile(wl_nm: np.ndarray) -> np.ndarray:
    """Relative counts of a balanced deuterium-halogen lamp through a UV-Vis bench (peak ~1)."""
    wl = np.asarray(wl_nm, dtype=float)
    # halogen: Planck at 3000 K, visible and NIR
    hc_k = 1.4388e7  # nm K
    planck = (wl / 900.0) ** -5 * np.expm1(hc_k / (900.0 * 3000.0)) / np.expm1(hc_k / (wl * 3000.0))
    # deuterium: a continuum strongest in the UV, fading above ~400 nm, plus the Balmer lines
    d2 = 0.9 * np.exp(-0.5 * ((wl - 240.0) / 70.0) ** 2) + 0.25 / (1.0 + np.exp((wl - 400.0) / 25.0))
    lines = 0.35 * np.exp(-0.5 * ((wl - 656.1) / 0.9) ** 2) + 0.12 * np.exp(-0.5 * ((wl - 486.0) / 0.9) ** 2)
    # bench response: grating blaze and CCD quantum efficiency, low in the deep UV and the NIR
    response = np.exp(-0.5 * ((wl - 520.0) / 190.0) ** 2) * (1.0 / (1.0 + np.exp((215.0 - wl) / 8.0)))
    out = (0.8 * planck + d2 + lines) * response
    return out / out.max()


class SimulatedStrobeLamp:
    """The ``strobe_lamp`` feature: the lamp's TTL enable line."""

    identifier = "strobe_lamp"

    def __init__(self, spectrometer: SimulatedSeabreezeSpectrometer) -> None:
        self._spec = spectrometer

    def enable_lamp(self, state: bool) -> None:
        self._spec._check_alive()
        self._spec.lamp_enabled = bool(state)


class SimulatedSeabreezeSpectrometer:
    """The subset of ``seabreeze.spectrometers.Spectrometer`` that ``drivers.ocean`` uses."""

    def __init__(
        self,
        world: World | None = None,
        *,
        serial_number: str = "FLMS00001",
        model: str = "FLAMES",
        lamp_peak_counts_per_ms: float = LAMP_PEAK_COUNTS_PER_MS,
        dark_offset_counts: float = 1000.0,
        dark_current_counts_per_s: float = 40.0,
        read_noise_counts: float = 6.0,
        electrons_per_count: float = 12.0,
        timeout_s: float = 1.0,
        faults: FaultSchedule | list[Fault] | None = None,
    ) -> None:
        self.world = world if world is not None else get_world()
        self._serial = serial_number
        self._model = model
        self._wavelengths = pixel_wavelengths()
        self._lamp = lamp_peak_counts_per_ms * lamp_profile(self._wavelengths)
        self._dark_offset = dark_offset_counts
        self._dark_current = dark_current_counts_per_s
        self._read_noise = read_noise_counts
        self._e_per_count = electrons_per_count
        self._timeout_s = timeout_s
        # the fixed pattern is a property of this unit, not noise: seeded by its serial number
        pattern_rng = np.random.default_rng(zlib.crc32(serial_number.encode()))
        self._pattern = 1.0 + 0.03 * pattern_rng.standard_normal(PIXELS)
        self._optical = np.ones(PIXELS, bool)
        self._optical[list(ELECTRIC_DARK_PIXELS)] = False
        self._integration_us = DEFAULT_INTEGRATION_US
        self.lamp_enabled = True
        self._open = True
        self.faults = faults if isinstance(faults, FaultSchedule) else FaultSchedule(list(faults or []))
        for f in self.faults.faults:
            if f.kind not in SPECTROMETER_FAULTS:
                raise ValueError(
                    f"unknown spectrometer fault {f.kind!r}; known: {', '.join(SPECTROMETER_FAULTS)}"
                )
        self._t0 = self.world.clock.now()
        # elapsed time of the last open(); a disconnect starting after it voids the handle (one at 0 too)
        self._opened_at_s = -1.0
        self._strobe = SimulatedStrobeLamp(self)

    # ---- seabreeze Spectrometer API ------------------------------------------------------------
    @property
    def serial_number(self) -> str:
        return self._serial

    @property
    def model(self) -> str:
        return self._model

    @property
    def pixels(self) -> int:
        return PIXELS

    @property
    def max_intensity(self) -> float:
        self._check_alive()
        return MAX_COUNTS

    @property
    def integration_time_micros_limits(self) -> tuple[int, int]:
        self._check_alive()
        return INTEGRATION_LIMITS_US

    @property
    def features(self) -> dict[str, list[Any]]:
        return {"strobe_lamp": [self._strobe], "light_source": [], "spectrometer": []}

    def wavelengths(self) -> np.ndarray:
        self._check_alive()
        return self._wavelengths.copy()

    def integration_time_micros(self, integration_time_micros: int) -> None:
        self._check_alive()
        lo, hi = INTEGRATION_LIMITS_US
        t = int(integration_time_micros)
        if not lo <= t <= hi:
            raise SeaBreezeError("[Fix] Specified integration time is out of range.", error_code=1)
        self._integration_us = t

    def intensities(
        self, correct_dark_counts: bool = False, correct_nonlinearity: bool = False
    ) -> np.ndarray:
        self._check_alive()
        if self.faults.holds("no_reply", self._elapsed()):
            self.world.clock.sleep(self._timeout_s)
            raise SeaBreezeTimeout("Data transfer error: [Errno 110] Operation timed out", error_code=110)
        counts = self._expose()
        if correct_dark_counts:
            counts = counts - counts[list(ELECTRIC_DARK_PIXELS)].mean()
        return counts

    def open(self) -> None:
        if self.faults.holds("disconnect", self._elapsed()):
            raise SeaBreezeError(
                "Failed to open device: [Errno 19] No such device (it may have been disconnected)",
                error_code=19,
            )
        self._open = True
        self._opened_at_s = self._elapsed()

    def close(self) -> None:
        self._open = False

    @property
    def is_open(self) -> bool:
        """As ``SeaBreezeDevice.is_open``: False once closed or unplugged; ``open()`` again."""
        try:
            self._check_alive()
        except SeaBreezeError:
            return False
        return True

    def __repr__(self) -> str:
        return f"<SimulatedSpectrometer {self._model}:{self._serial}>"

    # ---- the physics ---------------------------------------------------------------------------
    def _elapsed(self) -> float:
        return self.world.clock.now() - self._t0

    def _check_alive(self) -> None:
        elapsed = self._elapsed()
        if self.faults.holds("disconnect", elapsed):
            self._open = False
            raise SeaBreezeError(
                "Data transfer error: [Errno 19] No such device (it may have been disconnected)",
                error_code=19,
            )
        # a device unplugged and re-plugged since it was opened enumerates anew: the old handle is
        # dead even if no call happened while it was away
        if any(
            f.kind == "disconnect" and self._opened_at_s < f.at_s <= elapsed for f in self.faults.faults
        ):
            self._open = False
        if not self._open:
            raise SeaBreezeError("Device is not open.")

    def transmission(self) -> np.ndarray:
        """10**-A of what sits in the flow cell now; 1 where only carrier is there."""
        world = self.world
        inputs = world.detector_inputs()
        if inputs is None or world.chemistry is None:
            return np.ones(PIXELS)
        return np.power(10.0, -model_absorbance(world.chemistry, inputs, self._wavelengths, world.rng))

    def _expose(self) -> np.ndarray:
        t_s = self._integration_us * 1e-6
        elapsed = self._elapsed()
        light = self._lamp * (self._integration_us / 1000.0)
        if not self.lamp_enabled or self.faults.holds("dark_lamp", elapsed):
            light = np.zeros(PIXELS)
        elif self.faults.holds("saturated", elapsed):
            light = light * 8.0  # a lamp turned up / a fibre swapped: the detector floods
        signal = light * self.transmission() * self._pattern
        signal[~self._optical] = 0.0
        dark_current = self._dark_current * t_s * self._pattern
        rng = self.world.rng
        electrons = (signal + dark_current) * self._e_per_count
        shot = np.sqrt(np.clip(electrons, 0.0, None)) / self._e_per_count * rng.standard_normal(PIXELS)
        raw = (
            self._dark_offset + dark_current + signal + shot + self._read_noise * rng.standard_normal(PIXELS)
        )
        # the acquisition takes its integration time on the world's clock
        self.world.clock.sleep(t_s)
        return np.clip(np.round(raw), 0.0, MAX_COUNTS)
