"""Ocean Insight (Ocean Optics) spectrometers through python-seabreeze.

python-seabreeze is an optional extra (``pip install sdl-orchestrator[ocean]``) and is imported only
when a real device is connected, so the package works without it. The driver prefers the
``cseabreeze`` backend (Ocean's C library) and falls back to the pure-Python ``pyseabreeze``.

``backend``: any object with the seabreeze ``Spectrometer`` API (``wavelengths()``,
``intensities(correct_dark_counts, correct_nonlinearity)``, ``integration_time_micros(t)``,
``integration_time_micros_limits``, ``max_intensity``, ``features``, ``serial_number``, ``model``,
``close()``). ``simulators.spectrometer.SimulatedSeabreezeSpectrometer`` is one, so dry runs execute
this same driver code.

Not yet checked on hardware: the method calls follow the python-seabreeze 2.x documentation.
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import os
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import structlog

from drivers.errors import (
    DeviceError,
    DeviceTimeout,
    NoDeviceFound,
    OutOfRange,
    SimulationModelError,
    SpectrometerError,
    UsbPermissionDenied,
)

log = structlog.get_logger("drivers.ocean")

BACKENDS = ("cseabreeze", "pyseabreeze")
INSTALL_HINT = (
    "python-seabreeze is needed to talk to an Ocean Insight spectrometer: "
    "`pip install sdl-orchestrator[ocean]`, then `seabreeze_os_setup` once to install the udev rule."
)
UDEV_RULE = "/etc/udev/rules.d/10-oceanoptics.rules"
# USB vendor ids: Ocean Optics (USB2000+, FLAME, HR4000, ...) and Ocean Insight's newer units (ST, SR2, HR2)
OCEAN_USB_VENDORS = ("2457", "0999")
# where Linux shows USB devices; module attributes so tests can point them at a fake tree
SYSFS_USB = Path("/sys/bus/usb/devices")
DEVFS_USB = Path("/dev/bus/usb")
_PERMISSION_MARKERS = (
    "access denied",
    "insufficient permissions",
    "permission denied",
    "libusb_error_access",
)


_bound: tuple[ModuleType, ModuleType] | None = None  # (seabreeze, its spectrometers module) once a backend loaded


def load_seabreeze() -> ModuleType:
    """``seabreeze.spectrometers`` on the first backend that loads (cseabreeze, then pyseabreeze)."""
    try:
        seabreeze = importlib.import_module("seabreeze")
    except ImportError as exc:
        raise SpectrometerError("python-seabreeze is not installed", hint=INSTALL_HINT) from exc
    global _bound
    if _bound is not None and _bound[0] is seabreeze:  # a reconnect: seabreeze.use() warns once a backend is bound
        return _bound[1]
    failures = []
    for name in BACKENDS:
        try:
            seabreeze.use(name)
            importlib.import_module("seabreeze.backends").get_backend()
            _bound = (seabreeze, importlib.import_module("seabreeze.spectrometers"))
            return _bound[1]
        except ImportError as exc:
            failures.append(f"{name}: {exc}")
    raise SpectrometerError(
        f"no python-seabreeze backend could be loaded ({'; '.join(failures)})",
        hint="Reinstall with `pip install sdl-orchestrator[ocean]`; the pyseabreeze backend also needs pyusb "
        "and libusb-1.0 (`apt install libusb-1.0-0`).",
    )


def is_permission_error(exc: BaseException) -> bool:
    """USB access refused: errno 13 from pyusb/libusb, or libseabreeze's claim-interface message."""
    if (
        getattr(exc, "errno", None) in (errno.EACCES, errno.EPERM)
        or getattr(exc, "backend_error_code", None) == -3
    ):
        return True
    text = str(exc).lower()
    return any(m in text for m in _PERMISSION_MARKERS) or "usb_claim_interface" in text


def _can_read_write(node: Path) -> bool:
    return os.access(node, os.R_OK | os.W_OK)


def unopenable_ocean_usb_devices(
    sysfs: Path | None = None,
    devfs: Path | None = None,
    can_open: Callable[[Path], bool] | None = None,
) -> list[str]:
    """Ocean spectrometers the kernel sees on USB but this user may not open (``/dev/bus/usb/BBB/DDD``
    not read-write): the reason the cseabreeze backend lists no device when the udev rule is missing."""
    sysfs = SYSFS_USB if sysfs is None else sysfs
    devfs = DEVFS_USB if devfs is None else devfs
    can_open = _can_read_write if can_open is None else can_open
    blocked = []
    try:
        entries = sorted(sysfs.iterdir())
    except OSError:  # not Linux, or no sysfs in a container: nothing to say
        return []
    for entry in entries:
        try:
            vendor = (entry / "idVendor").read_text().strip().lower()
            if vendor not in OCEAN_USB_VENDORS:
                continue
            product = (entry / "idProduct").read_text().strip().lower()
            bus, address = int((entry / "busnum").read_text()), int((entry / "devnum").read_text())
            node = devfs / f"{bus:03d}" / f"{address:03d}"
        except (OSError, ValueError):
            continue
        if node.exists() and not can_open(node):
            blocked.append(f"{node} (USB {vendor}:{product})")
    return blocked


# in any one averaged scan, a pixel this close to full scale may have clipped: reported at its highest
NEAR_FULL_SCALE = 0.95  # the protocols' default saturation_fraction

class OceanSpectrometer:
    """An Ocean Insight spectrometer (FLAME, USB2000+/4000, HR4000, ...) as a ``drivers.base.Spectrometer``."""

    def __init__(
        self,
        name: str = "spectrometer",
        *,
        serial_number: str | None = None,
        integration_time_us: int = 10_000,
        scans_to_average: int = 1,
        correct_dark_counts: bool = True,
        correct_nonlinearity: bool = True,
        backend: Any | None = None,
    ) -> None:
        if scans_to_average < 1:
            raise OutOfRange(f"scans_to_average must be >= 1, got {scans_to_average}", device=name)
        self.name = name
        self.serial_number = serial_number
        self.scans_to_average = int(scans_to_average)
        self.correct_dark_counts = correct_dark_counts
        self.correct_nonlinearity = correct_nonlinearity
        self._requested_integration_us = int(integration_time_us)
        self._backend = backend
        self._dev: Any | None = None
        self._wavelengths: np.ndarray | None = None
        self._integration_us: int | None = None
        self._electric_dark = 0.0  # counts the dark correction takes off every pixel (its masked pixels' mean)

    # ---- connection ---------------------------------------------------------------------------
    def connect(self) -> None:
        if self._dev is not None:
            return
        dev = self._backend if self._backend is not None else self._open_real_device()
        if self._backend is not None and getattr(dev, "is_open", True) is False:
            # a backend closed by close() or re-plugged after a disconnect: open it again
            self._call(dev.open)
        self._dev = dev
        try:
            self._wavelengths = np.asarray(self._call(dev.wavelengths), dtype=float)
            self.set_integration_time_us(self._requested_integration_us)
        except Exception:
            self._dev = None
            # a handle left open would be "already open" to the reconnect that follows
            with contextlib.suppress(Exception):
                dev.close()
            raise
        log.info(
            "spectrometer connected",
            device=self.name,
            model=getattr(dev, "model", "?"),
            serial=getattr(dev, "serial_number", "?"),
            pixels=len(self._wavelengths),
        )

    def _open_real_device(self) -> Any:
        sb = load_seabreeze()
        try:
            devices = list(sb.list_devices())
        except Exception as exc:  # noqa: BLE001 - the backend raises many kinds; classify them
            raise self._classify(exc, "listing USB spectrometers failed") from exc
        if not devices:
            blocked = unopenable_ocean_usb_devices()
            if blocked:
                raise UsbPermissionDenied(
                    f"an Ocean spectrometer is on USB ({', '.join(blocked)}) but this user may not open it",
                    device=self.name,
                )
            raise NoDeviceFound("no Ocean Insight spectrometer found on USB (or none this process can open)",
                                device=self.name)
        if self.serial_number is not None:
            matching = [d for d in devices if str(getattr(d, "serial_number", "")) == str(self.serial_number)]
            if not matching:
                found = ", ".join(str(getattr(d, "serial_number", "?")) for d in devices)
                raise NoDeviceFound(
                    f"no spectrometer with serial number {self.serial_number!r} (found: {found})",
                    device=self.name,
                    hint="Check the serial number in the rig file against the label on the spectrometer.",
                )
            device = matching[0]
        else:
            device = devices[0]
        if getattr(device, "is_open", False):
            raise SpectrometerError(
                f"spectrometer {getattr(device, 'serial_number', '?')} is already open",
                device=self.name,
                hint="Another program (OceanView, another sdl process) holds it: close that program.",
            )
        try:
            return sb.Spectrometer(device)
        except Exception as exc:  # noqa: BLE001
            raise self._classify(exc, "opening the spectrometer failed") from exc

    def close(self) -> None:
        dev, self._dev = self._dev, None
        if dev is not None:
            try:
                dev.close()
            except Exception as exc:  # noqa: BLE001 - closing a vanished device must not raise
                log.warning("spectrometer close failed", device=self.name, error=str(exc))

    # ---- reading ------------------------------------------------------------------------------
    def wavelengths_nm(self) -> np.ndarray:
        self._require()
        assert self._wavelengths is not None
        return self._wavelengths.copy()

    @property
    def integration_time_us(self) -> int:
        self._require()
        assert self._integration_us is not None
        return self._integration_us

    def integration_time_limits_us(self) -> tuple[int, int]:
        dev = self._require()
        lo, hi = self._call(lambda: dev.integration_time_micros_limits)
        return int(lo), int(hi)

    def set_integration_time_us(self, integration_time_us: int) -> None:
        dev = self._require()
        t = int(integration_time_us)
        lo, hi = self.integration_time_limits_us()
        # python-seabreeze takes t_min <= t < t_max: the maximum it reports is itself refused
        if not lo <= t < hi:
            raise OutOfRange(
                f"integration time {t} us is outside this spectrometer's {lo} to {hi} us (the maximum excluded)",
                device=self.name,
                hint="Give an integration time within the spectrometer's limits (integration_time_us in the rig file, "
                "or --integration-time-us).",
            )
        self._call(lambda: dev.integration_time_micros(t))
        self._integration_us = t
        self._electric_dark = 0.0  # the full scale until this time's dark level is read
        self._settle(dev)
        self._electric_dark = self._electric_dark_level(dev)

    def _electric_dark_level(self, dev: Any) -> float:
        """The mean of the optically masked (electric dark) pixels in a raw frame: what seabreeze's dark
        correction subtracts from every pixel, so a clipped pixel reads full scale minus this. 0 where the
        counts are not corrected or the unit does not name its dark pixels (``features["spectrometer"]``)."""
        if not self.correct_dark_counts:
            return 0.0
        try:
            indices = list(dev.features["spectrometer"][0].get_electric_dark_pixel_indices())
        except (KeyError, IndexError, AttributeError, TypeError):
            return 0.0  # a backend without the feature: the full scale stands
        if not indices:
            return 0.0
        raw = np.asarray(self._call(lambda: dev.intensities(correct_dark_counts=False, correct_nonlinearity=False)),
                         dtype=float)
        indices = [int(i) for i in indices if 0 <= int(i) < len(raw)]  # a firmware's stray index is left out
        return float(np.mean(raw[indices])) if indices else 0.0

    @property
    def saturation_counts(self) -> float:
        """The full scale, less the electric dark level the dark correction takes off every pixel (a
        clipped pixel of a 14-bit HR4000 with a dark level of 900 read 15483, under 95 % of 16383, and
        passed the saturation screen). The nonlinearity correction, where on, divides by the unit's
        polynomial as well, which is close to 1 at full scale; it is not accounted for here."""
        dev = self._require()
        return float(self._call(lambda: dev.max_intensity)) - self._electric_dark

    def acquire_counts(self) -> np.ndarray:
        """One spectrum (the mean of ``scans_to_average`` scans) of dark- and nonlinearity-corrected counts.

        A pixel that came near full scale in any one scan is reported at its highest, not the mean: one
        clipped scan of three averaged to 90 % of full scale, and the saturation screen (95 % by
        default) let a clipped spectrum through."""
        dev = self._require()
        scans = [self._read_once(dev) for _ in range(self.scans_to_average)]
        if len(scans) == 1:
            return scans[0]
        stack = np.asarray(scans)
        near_full = (stack >= NEAR_FULL_SCALE * self.saturation_counts).any(axis=0)
        return np.where(near_full, stack.max(axis=0), stack.mean(axis=0))

    def _read_once(self, dev: Any) -> np.ndarray:
        try:
            return np.asarray(
                dev.intensities(
                    correct_dark_counts=self.correct_dark_counts,
                    correct_nonlinearity=self.correct_nonlinearity,
                ),
                dtype=float,
            )
        except SimulationModelError:
            raise
        except Exception as exc:  # noqa: BLE001
            # some units store no nonlinearity coefficients or have no electric dark pixels: seabreeze
            # says "This device does not support dark count/nonlinearity correction."; drop that one
            text = str(exc).lower()
            if "does not support" in text:
                if "nonlinearity" in text and self.correct_nonlinearity:
                    self.correct_nonlinearity = False
                    dropped = "nonlinearity"
                elif "dark" in text and self.correct_dark_counts:
                    self.correct_dark_counts = False
                    dropped = "dark-pixel"
                else:
                    raise self._classify(exc, "reading a spectrum failed") from exc
                log.warning(
                    f"spectrometer has no {dropped} correction; reading without it",
                    device=self.name,
                    reason=str(exc),
                )
                return self._read_once(dev)
            raise self._classify(exc, "reading a spectrum failed") from exc

    # ---- lamp ---------------------------------------------------------------------------------
    def set_lamp_enabled(self, enabled: bool) -> None:
        dev = self._require()
        features = self._call(lambda: dict(getattr(dev, "features", {}) or {}))
        source = (features.get("light_source") or [None])[0]
        # not every light source can be switched: seabreeze says so by has_enable(index)
        if source is not None and self._call(lambda: getattr(source, "has_enable", lambda i: True)(0)):
            self._call(lambda: source.set_enable(0, bool(enabled)))
            self._settle(dev)
        elif features.get("strobe_lamp"):
            self._call(lambda: features["strobe_lamp"][0].enable_lamp(bool(enabled)))
            self._settle(dev)
        else:
            raise SpectrometerError(
                "this spectrometer cannot switch its lamp",
                device=self.name,
                hint="Wire the lamp's TTL/shutter input to the spectrometer's strobe output, or take dark "
                "spectra with the lamp shutter closed by hand.",
            )

    def safe_state(self) -> None:
        """Nothing to make safe: the lamp stays as it is (a deuterium lamp needs ~30 min to restabilise)."""

    # ---- helpers ------------------------------------------------------------------------------
    def _settle(self, dev: Any) -> None:
        """Read and drop the frame in the pipeline: after a new integration time or a lamp switch it
        may have been exposed before the change (python-seabreeze issues #110 and #177: FLAME,
        USB2000+ hand it over as the next spectrum)."""
        self._read_once(dev)

    def _require(self) -> Any:
        if self._dev is None:
            raise SpectrometerError(
                "spectrometer used before connect()", device=self.name, hint="Call connect() first."
            )
        return self._dev

    def _call(self, fn: Any) -> Any:
        try:
            return fn()
        except (DeviceError, SimulationModelError):
            raise
        except Exception as exc:  # noqa: BLE001
            raise self._classify(exc, "the spectrometer refused a command") from exc

    def _classify(self, exc: BaseException, what: str) -> SpectrometerError | DeviceTimeout:
        detail, text = f"{what}: {exc}", str(exc).lower()
        if is_permission_error(exc):
            return UsbPermissionDenied(detail, device=self.name)
        if isinstance(exc, TimeoutError) or "timed out" in text or "timeout" in text:
            return DeviceTimeout(
                detail,
                device=self.name,
                hint="The spectrometer did not answer on USB: check the cable and hub, then re-plug it; an "
                "integration time longer than the USB timeout also causes this.",
            )
        if "no pyusb backend" in text:
            return SpectrometerError(
                detail,
                device=self.name,
                hint="The pyseabreeze backend needs libusb: `apt install libusb-1.0-0` (or install the "
                "cseabreeze wheel for this platform), then retry.",
            )
        # pyusb says [Errno 19]; cseabreeze "Error: Data transfer error" or "Error: No device found"
        if (getattr(exc, "errno", None) == errno.ENODEV or "no such device" in text or "data transfer error" in text
                or "no device found" in text):
            return SpectrometerError(
                detail,
                device=self.name,
                hint="The spectrometer disappeared from USB: check the cable and re-plug it.",
            )
        return SpectrometerError(detail, device=self.name)
