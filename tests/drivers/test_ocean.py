"""The Ocean Insight driver against a fake python-seabreeze.

``FakeSeabreeze`` stands in for the ``seabreeze`` package (``use``, ``backends.get_backend``,
``spectrometers.list_devices`` / ``Spectrometer``). Its ``Spectrometer`` does what python-seabreeze
2.x's does (src/seabreeze/spectrometers.py): the dark offset is the mean of the electric dark pixels,
nonlinearity divides by the EEPROM polynomial of the dark-subtracted counts, and a correction the
unit cannot do raises "This device does not support ... correction.". The devices' raw counts are
set by each test, so every expected number is computed by hand here.
"""

from __future__ import annotations

import errno
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from drivers import ocean
from drivers.absorbance import Screening, absorbance_on_grid
from drivers.errors import (
    DetectorSaturated,
    DeviceTimeout,
    NoDeviceFound,
    OutOfRange,
    SpectrometerError,
    UsbPermissionDenied,
)
from drivers.ocean import OceanSpectrometer, load_seabreeze, unopenable_ocean_usb_devices
from simulators.faults import Fault
from simulators.spectrometer import SimulatedSeabreezeSpectrometer
from simulators.world import World

PIXELS = 16
DARK_PIXELS = [0, 1, 2]
WAVELENGTHS = np.linspace(380.0, 800.0, PIXELS)


class FakeSeaBreezeError(Exception):
    def __init__(self, message: str, error_code: int | None = None) -> None:
        super().__init__(message)
        self.error_code = error_code


class FakeUSBError(Exception):
    """What pyseabreeze raises for a USB failure (USBTransportError: errno and libusb code)."""

    def __init__(self, message: str, errno_: int | None = None, code: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno_
        self.backend_error_code = code


class FakeDevice:
    """A SeaBreezeDevice from list_devices(): an unopened USB spectrometer with scripted raw counts."""

    def __init__(
        self,
        serial: str = "FLMS12345",
        *,
        raw: np.ndarray | None = None,
        nonlinearity: list[float] | None = (1.0,),  # type: ignore[assignment]
        dark_pixels: list[int] | None = None,
        limits_us: tuple[int, int] = (1_000, 65_000_000),
        max_intensity: float = 65535.0,
        is_open: bool = False,
    ) -> None:
        self.serial_number = serial
        self.model = "FLAMES"
        self.raw = np.full(PIXELS, 1000.0) if raw is None else np.asarray(raw, float)
        self.nonlinearity = nonlinearity  # EEPROM order: c0 + c1 x + c2 x^2 ...
        self.dark_pixels = DARK_PIXELS if dark_pixels is None else dark_pixels
        self.limits_us = limits_us
        self.maximum = max_intensity
        self.is_open = is_open
        self.integration_us: int | None = None
        self.sent: list[tuple[str, Any]] = []
        self.fail_next: Exception | None = None
        self.open_error: Exception | None = None


class FakeSpectrometer:
    """python-seabreeze's Spectrometer over a FakeDevice (the same corrections, the same errors)."""

    def __init__(self, device: FakeDevice) -> None:
        if device.open_error is not None:
            raise device.open_error
        device.is_open = True
        self._dev = device
        self._nc = np.poly1d(device.nonlinearity[::-1]) if device.nonlinearity else None
        self._dp = device.dark_pixels

    def wavelengths(self) -> np.ndarray:
        return WAVELENGTHS.copy()

    def intensities(
        self, correct_dark_counts: bool = False, correct_nonlinearity: bool = False
    ) -> np.ndarray:
        dev = self._dev
        if dev.fail_next is not None:
            exc, dev.fail_next = dev.fail_next, None
            raise exc
        if correct_dark_counts and not self._dp:
            raise FakeSeaBreezeError("This device does not support dark count correction.")
        if correct_nonlinearity and self._nc is None:  # seabreeze: `not self._nc` (a poly1d's order)
            raise FakeSeaBreezeError("This device does not support nonlinearity correction.")
        dev.sent.append(("intensities", (correct_dark_counts, correct_nonlinearity)))
        out = dev.raw.copy()
        if correct_nonlinearity or correct_dark_counts:
            dark_offset = np.mean(out[self._dp]) if self._dp else 0.0
            out -= dark_offset
        if correct_nonlinearity:
            out = out / np.polyval(self._nc, out)
        if correct_nonlinearity and not correct_dark_counts:
            out += dark_offset
        return out

    @property
    def max_intensity(self) -> float:
        return self._dev.maximum

    def integration_time_micros(self, integration_time_micros: int) -> None:
        lo, hi = self._dev.limits_us
        if not lo <= integration_time_micros <= hi:
            raise FakeSeaBreezeError("[Fix] Specified integration time is out of range.", error_code=1)
        self._dev.sent.append(("integration_time_micros", integration_time_micros))
        self._dev.integration_us = integration_time_micros

    @property
    def integration_time_micros_limits(self) -> tuple[int, int]:
        return self._dev.limits_us

    @property
    def serial_number(self) -> str:
        return self._dev.serial_number

    @property
    def model(self) -> str:
        return self._dev.model

    @property
    def features(self) -> dict[str, list[Any]]:
        return {"strobe_lamp": [], "light_source": []}

    def close(self) -> None:
        self._dev.is_open = False


class FakeSeabreeze:
    """The ``seabreeze`` package: which backends import, and the devices on the bus."""

    def __init__(self, devices: list[FakeDevice], broken_backends: tuple[str, ...] = ()) -> None:
        self.devices = devices
        self.broken = broken_backends
        self.requested: list[str] = []
        self.list_error: Exception | None = None
        self.loaded: str | None = None

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        package = types.ModuleType("seabreeze")
        package.use = self._use  # type: ignore[attr-defined]
        backends = types.ModuleType("seabreeze.backends")
        backends.get_backend = self._get_backend  # type: ignore[attr-defined]
        spectrometers = types.ModuleType("seabreeze.spectrometers")
        spectrometers.list_devices = self._list_devices  # type: ignore[attr-defined]
        spectrometers.Spectrometer = FakeSpectrometer  # type: ignore[attr-defined]
        spectrometers.SeaBreezeError = FakeSeaBreezeError  # type: ignore[attr-defined]
        package.backends = backends  # type: ignore[attr-defined]
        package.spectrometers = spectrometers  # type: ignore[attr-defined]
        for name, module in (
            ("seabreeze", package),
            ("seabreeze.backends", backends),
            ("seabreeze.spectrometers", spectrometers),
        ):
            monkeypatch.setitem(sys.modules, name, module)

    def _use(self, backend: str, force: bool = True) -> None:
        self.requested.append(backend)

    def _get_backend(self) -> object:
        name = self.requested[-1] if self.requested else "cseabreeze"
        if name in self.broken:
            raise ImportError(f"Could not import backend. Requested: {name}")
        self.loaded = name
        return object()

    def _list_devices(self) -> list[FakeDevice]:
        if self.list_error is not None:
            raise self.list_error
        return list(self.devices)


@pytest.fixture
def no_usb(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """An empty /sys/bus/usb: no Ocean device hides behind missing permissions."""
    monkeypatch.setattr(ocean, "SYSFS_USB", tmp_path / "sys")
    monkeypatch.setattr(ocean, "DEVFS_USB", tmp_path / "dev")


def fake_bus(
    monkeypatch: pytest.MonkeyPatch, *devices: FakeDevice, broken: tuple[str, ...] = ()
) -> FakeSeabreeze:
    sb = FakeSeabreeze(list(devices), broken)
    sb.install(monkeypatch)
    return sb


def connected(monkeypatch: pytest.MonkeyPatch, device: FakeDevice, **kwargs: Any) -> OceanSpectrometer:
    fake_bus(monkeypatch, device)
    spec = OceanSpectrometer("uvvis", **kwargs)
    spec.connect()
    return spec


# ---- backend loading ---------------------------------------------------------------------------


def test_cseabreeze_is_preferred(monkeypatch: pytest.MonkeyPatch) -> None:
    sb = fake_bus(monkeypatch)
    assert load_seabreeze() is sys.modules["seabreeze.spectrometers"]
    assert sb.requested == ["cseabreeze"] and sb.loaded == "cseabreeze"


def test_a_reconnect_does_not_choose_the_backend_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """seabreeze.use() after the backend is bound warns ("use has to be called before importing
    seabreeze.spectrometers"): every reconnect of a campaign warned."""
    sb = fake_bus(monkeypatch)
    first = load_seabreeze()
    assert load_seabreeze() is first and sb.requested == ["cseabreeze"]
    other = fake_bus(monkeypatch, broken=("cseabreeze",))  # another package (a test's): chosen afresh
    load_seabreeze()
    assert other.requested == ["cseabreeze", "pyseabreeze"]


def test_pyseabreeze_is_the_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    sb = fake_bus(monkeypatch, broken=("cseabreeze",))
    load_seabreeze()
    assert sb.requested == ["cseabreeze", "pyseabreeze"] and sb.loaded == "pyseabreeze"


def test_no_backend_names_both_failures(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_bus(monkeypatch, broken=("cseabreeze", "pyseabreeze"))
    with pytest.raises(SpectrometerError) as info:
        load_seabreeze()
    message = str(info.value)
    assert "cseabreeze: Could not import" in message and "pyseabreeze: Could not import" in message
    assert "libusb-1.0" in message


def test_seabreeze_not_installed_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "seabreeze", None)  # makes `import seabreeze` raise ImportError
    with pytest.raises(SpectrometerError, match=r"sdl-orchestrator\[ocean\]"):
        OceanSpectrometer().connect()


# ---- finding and opening the device ------------------------------------------------------------


def test_connect_opens_the_device_with_that_serial_number(monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = FakeDevice("FLMS00001"), FakeDevice("FLMS00002")
    fake_bus(monkeypatch, a, b)
    spec = OceanSpectrometer("uvvis", serial_number="FLMS00002", integration_time_us=20_000)
    spec.connect()
    assert b.is_open and not a.is_open
    # the integration time, then the frame exposed before it, dropped
    assert b.sent == [("integration_time_micros", 20_000), ("intensities", (True, True))]
    assert spec.integration_time_us == 20_000
    np.testing.assert_array_equal(spec.wavelengths_nm(), WAVELENGTHS)
    spec.connect()  # idempotent: no second open
    assert b.sent == [("integration_time_micros", 20_000), ("intensities", (True, True))]
    spec.close()
    assert not b.is_open
    spec.close()  # closing twice is harmless


def test_unknown_serial_number_lists_what_is_there(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_bus(monkeypatch, FakeDevice("FLMS00001"), FakeDevice("USB2+H0042"))
    with pytest.raises(NoDeviceFound) as info:
        OceanSpectrometer("uvvis", serial_number="FLMS99999").connect()
    assert "'FLMS99999'" in str(info.value) and "FLMS00001, USB2+H0042" in str(info.value)
    assert "rig file" in info.value.hint


def test_no_device_names_the_udev_rule(monkeypatch: pytest.MonkeyPatch, no_usb: None) -> None:
    fake_bus(monkeypatch)
    with pytest.raises(NoDeviceFound) as info:
        OceanSpectrometer("uvvis").connect()
    assert "no Ocean Insight spectrometer found on USB" in str(info.value)
    assert "10-oceanoptics.rules" in str(info.value) and "lsusb" in str(info.value)


def _sysfs_device(root: Path, name: str, vendor: str, product: str, bus: int, address: int) -> Path:
    entry = root / "sys" / name
    entry.mkdir(parents=True)
    for attr, value in (("idVendor", vendor), ("idProduct", product), ("busnum", bus), ("devnum", address)):
        (entry / attr).write_text(f"{value}\n")
    node = root / "dev" / f"{bus:03d}" / f"{address:03d}"
    node.parent.mkdir(parents=True, exist_ok=True)
    node.write_bytes(b"")
    return node


def test_a_device_the_user_may_not_open_is_a_permission_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # cseabreeze lists nothing when it cannot open the USB node; the kernel still shows the device
    flame = _sysfs_device(tmp_path, "1-2", "2457", "101e", 1, 7)
    _sysfs_device(tmp_path, "1-3", "046d", "c52b", 1, 8)  # a mouse: not ours
    monkeypatch.setattr(ocean, "SYSFS_USB", tmp_path / "sys")
    monkeypatch.setattr(ocean, "DEVFS_USB", tmp_path / "dev")
    monkeypatch.setattr(ocean, "_can_read_write", lambda node: node != flame)
    fake_bus(monkeypatch)
    with pytest.raises(UsbPermissionDenied) as info:
        OceanSpectrometer("uvvis").connect()
    message = str(info.value)
    assert f"{flame} (USB 2457:101e)" in message and "may not open it" in message
    assert "10-oceanoptics.rules" in message and "re-plug" in message
    # with the rule installed the same tree says nothing
    assert unopenable_ocean_usb_devices(tmp_path / "sys", tmp_path / "dev", lambda node: True) == []
    assert unopenable_ocean_usb_devices(tmp_path / "missing", tmp_path / "dev") == []


@pytest.mark.parametrize(
    "error",
    [
        FakeUSBError("[Errno 13] Access denied (insufficient permissions)", errno.EACCES, -3),
        FakeUSBError("LIBUSB_ERROR_ACCESS", None, -3),
        FakeSeaBreezeError("Error: could not open device: usb_claim_interface failed"),
    ],
    ids=["pyusb-errno-13", "libusb-code", "libseabreeze-claim"],
)
def test_usb_access_refused_is_a_permission_error(monkeypatch: pytest.MonkeyPatch, error: Exception) -> None:
    sb = fake_bus(monkeypatch, FakeDevice())
    sb.list_error = error  # pyseabreeze opens each device while listing it
    with pytest.raises(UsbPermissionDenied) as info:
        OceanSpectrometer("uvvis").connect()
    assert "listing USB spectrometers failed" in str(info.value)
    assert "10-oceanoptics.rules" in str(info.value)
    assert isinstance(info.value.__cause__, type(error))


def test_permission_refused_on_open(monkeypatch: pytest.MonkeyPatch) -> None:
    device = FakeDevice()
    device.open_error = FakeUSBError("[Errno 13] Access denied (insufficient permissions)", errno.EACCES)
    fake_bus(monkeypatch, device)
    with pytest.raises(UsbPermissionDenied, match="opening the spectrometer failed"):
        OceanSpectrometer("uvvis").connect()


def test_a_device_held_by_another_program(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_bus(monkeypatch, FakeDevice(is_open=True))
    with pytest.raises(SpectrometerError, match="already open") as info:
        OceanSpectrometer("uvvis").connect()
    assert "OceanView" in info.value.hint


def test_use_before_connect_says_so() -> None:
    with pytest.raises(SpectrometerError, match="before connect"):
        OceanSpectrometer("uvvis").acquire_counts()


# ---- integration time --------------------------------------------------------------------------


def test_integration_time_within_the_models_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    device = FakeDevice(limits_us=(3_800, 10_000_000))  # a USB4000's limits
    spec = connected(monkeypatch, device)
    assert spec.integration_time_limits_us() == (3_800, 10_000_000)
    spec.set_integration_time_us(3_800)
    spec.set_integration_time_us(9_999_999)
    # python-seabreeze takes t_min <= t < t_max: its own maximum is refused ("Integration not in [...]")
    for bad in (3_799, 10_000_000, 10_000_001):
        with pytest.raises(OutOfRange, match=f"integration time {bad} us is outside .* 3800 to 10000000 us"):
            spec.set_integration_time_us(bad)
    # bad values never reach the device, and the last good one stands
    assert [v for k, v in device.sent if k == "integration_time_micros"] == [10_000, 3_800, 9_999_999]
    assert spec.integration_time_us == 9_999_999


def test_a_rig_integration_time_outside_the_limits_fails_connect(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_bus(monkeypatch, FakeDevice(limits_us=(1_000, 65_000_000)))
    spec = OceanSpectrometer("uvvis", integration_time_us=500)
    with pytest.raises(OutOfRange) as info:
        spec.connect()
    assert "integration_time_us in the rig file" in str(info.value)
    with pytest.raises(SpectrometerError, match="before connect"):
        spec.wavelengths_nm()  # not left half-connected


def test_scans_to_average_must_be_positive() -> None:
    with pytest.raises(OutOfRange, match="scans_to_average"):
        OceanSpectrometer("uvvis", scans_to_average=0)


# ---- counts: dark pixels, nonlinearity, averaging, saturation ----------------------------------


def _raw(dark: float, signal: list[float] | float) -> np.ndarray:
    raw = np.full(PIXELS, dark) + np.asarray(signal, float)
    raw[DARK_PIXELS] = [dark - 3.0, dark, dark + 3.0]  # mean = dark
    return raw


def test_dark_pixel_correction_subtracts_the_electric_dark(monkeypatch: pytest.MonkeyPatch) -> None:
    device = FakeDevice(raw=_raw(1500.0, 2000.0), nonlinearity=None)
    spec = connected(monkeypatch, device, correct_nonlinearity=False)
    counts = spec.acquire_counts()
    assert counts[5] == pytest.approx(2000.0) and counts[DARK_PIXELS].mean() == pytest.approx(0.0)
    raw = connected(monkeypatch, FakeDevice(raw=_raw(1500.0, 2000.0)), correct_dark_counts=False)
    raw.correct_nonlinearity = False
    assert raw.acquire_counts()[5] == pytest.approx(3500.0)


def test_nonlinearity_correction_uses_the_eeprom_polynomial(monkeypatch: pytest.MonkeyPatch) -> None:
    # a CCD reads low near full scale: corrected = x / (c0 + c1 x + c2 x^2) on dark-subtracted counts
    coeffs = [1.0, -2.0e-6, -1.0e-10]
    device = FakeDevice(raw=_raw(1000.0, [0.0] * 8 + [10_000.0] * 8), nonlinearity=coeffs)
    counts = connected(monkeypatch, device).acquire_counts()
    x = 10_000.0
    assert counts[-1] == pytest.approx(x / (1.0 - 2.0e-6 * x - 1.0e-10 * x**2))
    assert counts[-1] == pytest.approx(10_000.0 / 0.97)  # 1 - 0.02 - 0.01
    assert device.sent[-1] == ("intensities", (True, True))


def test_a_unit_without_nonlinearity_coefficients_keeps_its_dark_correction(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    device = FakeDevice(raw=_raw(800.0, 1200.0), nonlinearity=None)
    spec = connected(monkeypatch, device)
    counts = spec.acquire_counts()
    assert counts[8] == pytest.approx(1200.0)  # dark-corrected, not linearised
    assert spec.correct_dark_counts and not spec.correct_nonlinearity
    assert device.sent[-1] == ("intensities", (True, False))


def test_a_unit_without_dark_pixels_keeps_its_nonlinearity_correction(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    device = FakeDevice(raw=np.full(PIXELS, 2000.0), dark_pixels=[], nonlinearity=[0.5, 1.0e-5])
    spec = connected(monkeypatch, device)
    assert spec.acquire_counts()[0] == pytest.approx(2000.0 / 0.52)  # x / (0.5 + 1e-5 x), no dark offset
    assert not spec.correct_dark_counts and spec.correct_nonlinearity


def test_scans_are_averaged(monkeypatch: pytest.MonkeyPatch) -> None:
    device = FakeDevice(raw=_raw(0.0, 100.0))
    spec = connected(monkeypatch, device, scans_to_average=4)
    calls = iter([100.0, 200.0, 300.0, 400.0])

    def next_scan(**_: bool) -> np.ndarray:
        return np.full(PIXELS, next(calls))

    monkeypatch.setattr(spec._dev, "intensities", next_scan)
    np.testing.assert_allclose(spec.acquire_counts(), np.full(PIXELS, 250.0))


def test_the_frame_after_a_change_of_integration_time_or_lamp_is_thrown_away(monkeypatch: pytest.MonkeyPatch) -> None:
    """python-seabreeze issues #110 and #177: after a new integration time a FLAME or USB2000+ hands over a
    frame exposed before it; a dark taken right after switching the lamp off could see the lamp."""
    from types import SimpleNamespace

    device = FakeDevice(raw=_raw(0.0, 100.0))
    spec = connected(monkeypatch, device)
    lamp = {"light_source": [SimpleNamespace(set_enable=lambda index, on: None)]}
    monkeypatch.setattr(FakeSpectrometer, "features", property(lambda self: lamp))
    def reads() -> int:
        return len([k for k, _ in device.sent if k == "intensities"])

    assert reads() == 1  # connect set the integration time, and dropped the frame in the pipeline
    spec.acquire_counts()
    assert reads() == 2
    for change in (lambda: spec.set_integration_time_us(20_000), lambda: spec.set_lamp_enabled(False)):
        before = reads()
        change()
        assert reads() == before + 1  # at the change: a seeded replicate later reads only its own frames


def test_a_light_source_without_an_enable_control_is_not_switched(monkeypatch: pytest.MonkeyPatch) -> None:
    """seabreeze: "Not all light sources have an enable/disable control, and this capability can be
    queried with has_enable()"; set_enable was called regardless."""
    from types import SimpleNamespace

    calls: list[bool] = []
    spec = connected(monkeypatch, FakeDevice(raw=_raw(0.0, 100.0)))
    fixed = SimpleNamespace(has_enable=lambda index: False, set_enable=lambda index, on: calls.append(on))
    monkeypatch.setattr(FakeSpectrometer, "features", property(lambda self: {"light_source": [fixed]}))
    with pytest.raises(SpectrometerError, match="cannot switch its lamp"):
        spec.set_lamp_enabled(False)
    assert calls == []
    fixed.has_enable = lambda index: True
    spec.set_lamp_enabled(False)
    assert calls == [False]


def test_a_clipped_pixel_is_saturated_after_the_dark_correction_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """seabreeze's dark correction takes the masked pixels' mean (900 counts on this 14-bit unit) off every
    pixel, so a clipped one read 15483 of 16383: 94.5 %, under the 95 % saturation screen."""
    from types import SimpleNamespace

    signal = np.full(PIXELS, 5000.0)
    signal[8:11] = 16383.0 - 900.0  # clipped: raw 16383
    device = FakeDevice(raw=_raw(900.0, signal), max_intensity=16383.0, nonlinearity=None)
    dark_pixels = SimpleNamespace(get_electric_dark_pixel_indices=lambda: list(DARK_PIXELS))
    monkeypatch.setattr(FakeSpectrometer, "features",
                        property(lambda self: {"strobe_lamp": [], "light_source": [], "spectrometer": [dark_pixels]}))
    spec = connected(monkeypatch, device)
    assert spec.saturation_counts == pytest.approx(16383.0 - 900.0)
    counts = spec.acquire_counts()
    assert counts[9] == pytest.approx(16383.0 - 900.0) and counts[9] >= 0.95 * spec.saturation_counts
    assert ("intensities", (False, False)) in device.sent  # the dark level read from a raw frame
    spec.correct_dark_counts = False  # raw counts: the full scale stands
    spec.set_integration_time_us(20_000)
    assert spec.saturation_counts == 16383.0


def test_a_connect_that_fails_half_way_releases_the_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """A read timing out during connect left the USB handle open: the runner's reconnect then met
    "spectrometer FLMS12345 is already open ... close that program"."""
    device = FakeDevice()
    fake_bus(monkeypatch, device)
    device.fail_next = FakeUSBError("[Errno 110] Operation timed out", errno.ETIMEDOUT)
    spec = OceanSpectrometer("uvvis")
    with pytest.raises(DeviceTimeout):
        spec.connect()
    assert device.is_open is False
    spec.close()
    spec.connect()  # as the runner's retry does
    assert device.is_open


def test_a_stray_dark_pixel_index_is_left_out(monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    device = FakeDevice(raw=_raw(900.0, 5000.0), max_intensity=16383.0)
    dark_pixels = SimpleNamespace(get_electric_dark_pixel_indices=lambda: [*DARK_PIXELS, PIXELS + 5])
    monkeypatch.setattr(FakeSpectrometer, "features",
                        property(lambda self: {"strobe_lamp": [], "light_source": [], "spectrometer": [dark_pixels]}))
    spec = connected(monkeypatch, device)
    assert spec.saturation_counts == pytest.approx(16383.0 - 900.0)


def test_one_clipped_scan_among_those_averaged_is_not_averaged_away(monkeypatch: pytest.MonkeyPatch) -> None:
    """1 of 3 scans clipped at 65535 averaged to 59012, under the 95 % saturation screen: a clipped
    spectrum went through as a good one."""
    spec = connected(monkeypatch, FakeDevice(raw=_raw(0.0, 100.0)), scans_to_average=3)
    clipped = np.full(PIXELS, 55_000.0)
    clipped[10:13] = 65_535.0
    calls = iter([np.full(PIXELS, 55_000.0), clipped, np.full(PIXELS, 55_000.0)])
    monkeypatch.setattr(spec._dev, "intensities", lambda **_: next(calls))  # noqa: SLF001
    counts = spec.acquire_counts()
    assert counts[11] == 65_535.0 and counts[0] == pytest.approx(55_000.0)  # the rest is still the mean
    screen = Screening(saturation_counts=spec.saturation_counts)
    assert counts.max() >= screen.saturation_level


def test_saturation_level_and_a_saturated_spectrum(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = np.full(PIXELS, 30_000.0)
    raw[8:11] = 16383.0  # a 14-bit HR4000 at full scale
    device = FakeDevice(raw=raw, max_intensity=16383.0, dark_pixels=[], nonlinearity=None)
    spec = connected(monkeypatch, device, correct_dark_counts=False, correct_nonlinearity=False)
    assert spec.saturation_counts == 16383.0
    reference = spec.acquire_counts()
    dark = np.zeros(PIXELS)
    with pytest.raises(DetectorSaturated, match="the reference saturates"):
        absorbance_on_grid(
            reference * 0.5,
            dark,
            reference,
            spec.wavelengths_nm(),
            WAVELENGTHS,
            Screening(saturation_counts=spec.saturation_counts),
        )


# ---- faults while running ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "kind", "hint"),
    [
        (FakeUSBError("[Errno 110] Operation timed out", errno.ETIMEDOUT), DeviceTimeout, "USB timeout"),
        (TimeoutError("read"), DeviceTimeout, "cable and hub"),
        (FakeUSBError("[Errno 19] No such device", errno.ENODEV), SpectrometerError, "re-plug"),
        # cseabreeze's words for a spectrometer pulled mid-read
        (FakeSeaBreezeError("Error: Data transfer error"), SpectrometerError, "disappeared from USB"),
        (FakeSeaBreezeError("Bad checksum"), SpectrometerError, "USB cable"),
    ],
    ids=["usb-timeout", "timeout-error", "unplugged", "cseabreeze-unplugged", "other"],
)
def test_read_failures_are_named(
    monkeypatch: pytest.MonkeyPatch, error: Exception, kind: type[Exception], hint: str
) -> None:
    device = FakeDevice()
    spec = connected(monkeypatch, device)
    device.fail_next = error
    with pytest.raises(kind) as info:
        spec.acquire_counts()
    assert type(info.value) is kind
    assert "uvvis: reading a spectrum failed" in str(info.value) and hint in str(info.value)
    assert spec.acquire_counts().shape == (PIXELS,)  # the next read works


def test_lamp_switch_needs_a_lamp_feature(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = connected(monkeypatch, FakeDevice())
    with pytest.raises(SpectrometerError, match="cannot switch its lamp") as info:
        spec.set_lamp_enabled(False)
    assert "strobe output" in info.value.hint
    spec.safe_state()  # nothing to do, never raises


def test_reconnect_after_an_unplugged_simulated_device() -> None:
    world = World()
    backend = SimulatedSeabreezeSpectrometer(world, faults=[Fault("disconnect", at_s=5.0, duration_s=5.0)])
    spec = OceanSpectrometer("uvvis", backend=backend)
    spec.connect()
    world.clock.sleep(6.0)
    with pytest.raises(SpectrometerError, match="No such device") as info:
        spec.acquire_counts()
    assert "re-plug" in str(info.value)
    spec.close()
    world.clock.sleep(5.0)  # plugged back in
    spec.connect()  # reopens the backend
    assert spec.acquire_counts().shape == (2048,)
    spec.set_lamp_enabled(False)  # the simulator has a strobe lamp
    assert np.median(spec.acquire_counts()) < 50.0
