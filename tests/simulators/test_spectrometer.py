"""The simulated seabreeze spectrometer on its own (the driver on top is tested in tests/drivers)."""

from __future__ import annotations

import numpy as np
import pytest

from simulators.chemistry import AgNanoprism
from simulators.faults import Fault
from simulators.spectrometer import (
    ELECTRIC_DARK_PIXELS,
    MAX_COUNTS,
    SeaBreezeError,
    SeaBreezeTimeout,
    SimulatedSeabreezeSpectrometer,
    lamp_profile,
    pixel_wavelengths,
)
from simulators.world import InputMap, VirtualClock, World

STREAMS = ("agno3", "pva", "tsc", "seed", "water")
INPUTS = {
    "Q_AgNO3": InputMap("percent", "agno3"),
    "Q_PVA": InputMap("percent", "pva"),
    "Q_TSC": InputMap("percent", "tsc"),
    "Q_seed": InputMap("percent", "seed"),
    "Q_total": InputMap("total"),
}


def make_world(seed: int = 0) -> World:
    world = World(
        clock=VirtualClock(), inputs=INPUTS, chemistry=AgNanoprism(), rng=np.random.default_rng(seed)
    )
    for address, stream in enumerate(STREAMS):
        world.attach_pump("sim-bus", address, stream)
    return world


def set_flows(world: World, percents: dict[str, float], total_ul_min: float) -> None:
    percents = {**percents, "water": 100.0 - sum(percents.values())}
    for address, stream in enumerate(STREAMS):
        world.pump_flow_changed("sim-bus", address, total_ul_min * percents[stream] / 100.0)


def test_detector_geometry() -> None:
    wl = pixel_wavelengths()
    assert len(wl) == 2048 and 195 < wl[0] < 205 and 845 < wl[-1] < 855
    steps = np.diff(wl)
    assert (steps > 0).all() and steps[0] > 1.2 * steps[-1]  # nonuniform dispersion
    lamp = lamp_profile(wl)
    assert lamp.max() == pytest.approx(1.0) and lamp[np.argmin(abs(wl - 656.1))] == pytest.approx(1.0)
    assert (lamp[(wl > 380) & (wl < 800)] > 0.1).all()


def test_counts_scale_with_integration_time_and_clip() -> None:
    spec = SimulatedSeabreezeSpectrometer(make_world())
    spec.integration_time_micros(5_000)
    short = spec.intensities(correct_dark_counts=True)
    spec.integration_time_micros(10_000)
    long = spec.intensities(correct_dark_counts=True)
    window = (spec.wavelengths() > 400) & (spec.wavelengths() < 800)
    assert np.median(long[window] / short[window]) == pytest.approx(2.0, rel=0.02)
    spec.integration_time_micros(100_000)
    raw = spec.intensities()
    assert raw.max() == MAX_COUNTS and spec.max_intensity == MAX_COUNTS
    with pytest.raises(SeaBreezeError, match="out of range"):
        spec.integration_time_micros(10)


def test_dark_correction_and_lamp_switch() -> None:
    spec = SimulatedSeabreezeSpectrometer(make_world(), dark_offset_counts=1000.0)
    spec.features["strobe_lamp"][0].enable_lamp(False)
    raw_dark = spec.intensities()
    corrected = spec.intensities(correct_dark_counts=True, correct_nonlinearity=True)
    assert np.median(raw_dark) == pytest.approx(1000.0, abs=10.0)
    assert abs(np.median(corrected)) < 10.0
    assert abs(corrected[list(ELECTRIC_DARK_PIXELS)].mean()) < 1e-9


def test_carrier_only_transmits_everything_and_a_droplet_absorbs() -> None:
    world = make_world()
    spec = SimulatedSeabreezeSpectrometer(world)
    assert world.detector_inputs() is None
    np.testing.assert_array_equal(spec.transmission(), np.ones(2048))
    set_flows(world, {"agno3": 32.5, "pva": 16.0, "tsc": 6.5, "seed": 4.5}, 850.0)
    world.clock.sleep(30.0)  # 60 uL dead volume at 850 uL/min takes ~4 s
    assert world.detector_inputs() is not None
    t = spec.transmission()
    assert t.min() < 0.5 and (t > 0).all()


def test_seeded_replicates_are_reproducible() -> None:
    world = make_world()
    set_flows(world, {"agno3": 30.0, "pva": 20.0, "tsc": 5.0, "seed": 6.0}, 800.0)
    world.clock.sleep(30.0)
    spec = SimulatedSeabreezeSpectrometer(world)
    world.seed_replicate(np.random.SeedSequence([1, 2, 3, 4]))
    a = spec.intensities()
    world.seed_replicate(np.random.SeedSequence([1, 2, 3, 4]))
    b = spec.intensities()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, spec.intensities())


def test_faults_follow_their_schedule() -> None:
    world = make_world()
    spec = SimulatedSeabreezeSpectrometer(
        world,
        faults=[
            Fault("no_reply", at_s=10.0, duration_s=5.0),
            Fault("disconnect", at_s=100.0, duration_s=10.0),
        ],
    )
    spec.intensities()  # takes its 10 ms integration time on the clock
    world.clock.sleep(10.0)
    t0 = world.clock.now()
    with pytest.raises(SeaBreezeTimeout) as info:
        spec.intensities()
    assert isinstance(info.value, TimeoutError)
    assert world.clock.now() - t0 == pytest.approx(1.0)  # the transfer timeout passes on the clock
    world.clock.sleep(5.0)  # t = 16.01: the no-reply window (10-15 s) is over
    spec.intensities()
    assert spec.is_open
    world.clock.sleep(100.0 - world.clock.now() + 2.0)  # t = 102: unplugged (100-110 s)
    with pytest.raises(SeaBreezeError, match="No such device"):
        spec.wavelengths()
    assert not spec.is_open
    with pytest.raises(SeaBreezeError, match="Failed to open device: .*No such device"):
        spec.open()
    world.clock.sleep(10.0)  # t = 112: plugged back in
    with pytest.raises(SeaBreezeError, match="not open"):
        spec.wavelengths()  # a re-plugged device must be opened again
    spec.open()
    assert spec.is_open and len(spec.wavelengths()) == 2048


def test_an_unobserved_disconnect_still_voids_the_handle() -> None:
    world = make_world()
    spec = SimulatedSeabreezeSpectrometer(world, faults=[Fault("disconnect", at_s=5.0, duration_s=1.0)])
    spec.intensities()
    world.clock.sleep(10.0)  # unplugged and re-plugged while nobody asked
    with pytest.raises(SeaBreezeError, match="not open"):
        spec.intensities()
    spec.open()
    assert spec.intensities().shape == (2048,)


def test_light_faults() -> None:
    world = make_world()
    spec = SimulatedSeabreezeSpectrometer(world, faults=[Fault("dark_lamp", at_s=0.0, duration_s=1.0)])
    dark = spec.intensities(correct_dark_counts=True)
    assert np.median(dark) < 20.0
    world.clock.sleep(2.0)
    assert np.median(spec.intensities(correct_dark_counts=True)) > 1000.0
    flooded = SimulatedSeabreezeSpectrometer(world, faults=[Fault("saturated")])
    assert np.mean(flooded.intensities() >= MAX_COUNTS) > 0.3
    with pytest.raises(ValueError, match="unknown spectrometer fault"):
        SimulatedSeabreezeSpectrometer(world, faults=[Fault("stall")])
