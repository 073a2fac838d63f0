"""The New Era driver against the emulated firmware over sim://: every command, pumps sharing one
line, baud and mode detection, Safe mode, and every injected fault mapped to its exception with the
pump left stopped afterwards. Time is the world's virtual clock; nothing sleeps."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator

import pytest

import simulators  # noqa: F401 - installs the sim:// URL handler
from drivers.base import PumpState, StopNotConfirmed, SyringePump
from drivers.errors import (
    CommunicationsAlarm,
    DeviceTimeout,
    NotConnected,
    OutOfRange,
    PowerResetAlarm,
    ProtocolError,
    StallAlarm,
)
from drivers.newera import AddressConflict, NewEraPump
from simulators.faults import Fault
from simulators.newera import NewEraFirmware
from simulators.serialsim import drop_bus, get_bus
from simulators.world import VirtualClock, World, drop_world, set_world

_ids = itertools.count()


class Line:
    """One emulated line in its own virtual-clock world, and the driver objects opened on it."""

    def __init__(self, addresses: tuple[int, ...] = (0,), **query: str) -> None:
        self.name = f"newera-test-{next(_ids)}"
        self.world = set_world(self.name, World(clock=VirtualClock()))
        self.flows: list[tuple[str, int, float]] = []
        record = self.world.pump_flow_changed

        def spy(bus: str, address: int, rate: float) -> None:
            self.flows.append((bus, address, rate))
            record(bus, address, rate)

        self.world.pump_flow_changed = spy  # type: ignore[method-assign]
        parts = [f"address={a}" for a in addresses] + [f"world={self.name}"]
        parts += [f"{k}={v}" for k, v in query.items()]
        self.url = f"sim://newera/{self.name}?" + "&".join(parts)
        self.pumps: list[NewEraPump] = []

    @property
    def firmware(self) -> NewEraFirmware:
        fw = get_bus("newera", self.name)
        assert isinstance(fw, NewEraFirmware)
        return fw

    def pump(self, address: int = 0, *, connect: bool = True, **kwargs: object) -> NewEraPump:
        kwargs.setdefault("reply_timeout_s", 0.05)
        kwargs.setdefault("heartbeat", False)
        kwargs.setdefault("syringe_diameter_mm", 14.57)
        p = NewEraPump(f"pump{address}", self.url, address=address, **kwargs)  # type: ignore[arg-type]
        self.pumps.append(p)
        if connect:
            p.connect()
        return p

    def advance(self, seconds: float) -> None:
        self.world.clock.sleep(seconds)

    def close(self) -> None:
        for p in self.pumps:
            p.close()
        drop_bus("newera", self.name)
        drop_world(self.name)


@pytest.fixture
def line() -> Iterator[Callable[..., Line]]:
    made: list[Line] = []

    def make(addresses: tuple[int, ...] = (0,), **query: str) -> Line:
        made.append(Line(addresses, **query))
        return made[-1]

    yield make
    for m in made:
        m.close()


def test_a_pump_not_yet_connected_is_a_syringe_pump() -> None:
    """isinstance() against the runtime-checkable protocol reads every property: the diameter raised
    NotConnected before connect(), so the check itself raised."""
    import math

    from drivers.newera import NewEraPump

    pump = NewEraPump("p", "sim://newera/not-yet")
    assert isinstance(pump, SyringePump) and math.isnan(pump.syringe_diameter_mm)


def test_every_command(line: Callable[..., Line]) -> None:
    rig = line()
    pump = rig.pump()
    rig.world.attach_pump(rig.name, 0, "AgNO3")
    assert isinstance(pump, SyringePump)
    assert (pump.model, pump.firmware, pump.baudrate, pump.safe_mode) == ("NE-1000", "3.928", 19200, False)
    assert pump.syringe_diameter_mm == 14.57
    pump.set_syringe_diameter_mm(4.78)
    assert pump.syringe_diameter_mm == 4.78
    pump.set_syringe_diameter_mm(14.57)
    pump.set_rate_ul_min(120.0)
    assert pump.status().state is PumpState.STOPPED
    pump.run()
    pump.run()  # idempotent: RUN while infusing changes nothing
    rig.advance(30.0)
    status = pump.status()
    assert (status.state, status.rate_ul_min, status.alarm) == (PumpState.INFUSING, 120.0, None)
    assert status.dispensed_ul == pytest.approx(60.0)
    assert rig.world.detector_flows() in ({}, {"AgNO3": 120.0})
    pump.set_rate_ul_min(150.0)  # while pumping, same units
    pump.set_rate_ul_min(0.5)  # 0.5 UM: same units again
    with pytest.raises(OutOfRange):
        pump.set_rate_ul_min(0.0125)  # below this syringe's 0.113 uL/min: refused, old rate kept
    assert pump.status().state is PumpState.INFUSING
    pump.set_rate_ul_min(0.12345)  # 0.123 UM is 0.4 % off: stop, 7.407 UH, run
    assert rig.firmware.snapshot(0).rate_ul_min == pytest.approx(0.12345, rel=1e-4)
    assert pump.status().state is PumpState.INFUSING
    rig.advance(60.0)
    assert pump.dispensed_ul() == pytest.approx(60.0 + 0.12345, abs=0.01)  # DIS carries 4 digits
    pump.stop()
    assert pump.status().state is PumpState.STOPPED
    pump.safe_state()  # idempotent on a stopped pump
    pump.safe_state()
    pump.clear_dispensed()
    assert pump.dispensed_ul() == 0.0
    flows = [r for bus, a, r in rig.flows if (bus, a) == (rig.name, 0)]
    assert flows[0] == 120.0 and flows[-1] == 0.0 and 0.5 in flows
    assert pytest.approx(0.12345, rel=1e-4) in flows


def test_two_pumps_share_one_port_and_commands_never_interleave(line: Callable[..., Line]) -> None:
    rig = line((0, 1))
    p0, p1 = rig.pump(0), rig.pump(1, syringe_diameter_mm=4.78)
    assert p0._line is p1._line  # noqa: SLF001 - the shared line is the point of this test
    p0.set_rate_ul_min(10.0)
    p1.set_rate_ul_min(1.0)
    errors: list[BaseException] = []

    def hammer(pump: NewEraPump) -> None:
        try:
            for _ in range(40):
                pump.status()
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=hammer, args=(p,)) for p in (p0, p1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert errors == []
    assert rig.firmware.snapshot(1).diameter_mm == 4.78
    with pytest.raises(AddressConflict, match="address 1"):
        rig.pump(1)
    p0.close()
    assert p1.status().state is PumpState.STOPPED  # the port stays open for the other pump


def test_absent_address_times_out_with_what_to_check(line: Callable[..., Line]) -> None:
    rig = line((0,))
    with pytest.raises(DeviceTimeout, match="address 7") as info:
        rig.pump(7)
    assert "Ad:" in str(info.value) and "baud" in str(info.value)


def test_a_freshly_powered_pump_answers_with_the_reset_alarm_and_connect_goes_on(
    line: Callable[..., Line],
) -> None:
    rig = line((0,), power_on_alarm="1")
    pump = rig.pump()
    assert pump.status().alarm is None  # expected at power-up: acknowledged, not latched
    assert rig.firmware.snapshot(0).alarm is None


def test_baud_rate_is_found_at_9600(line: Callable[..., Line]) -> None:
    rig = line((0, 3), baud="9600")
    assert rig.pump(0).baudrate == 9600
    assert rig.pump(3).baudrate == 9600


def test_a_fixed_baud_rate_that_does_not_match_is_reported(line: Callable[..., Line]) -> None:
    rig = line((0,), baud="9600")
    with pytest.raises(DeviceTimeout, match="19200 baud"):
        rig.pump(0, baudrate=19200)


def test_safe_mode_watchdog_heartbeat_and_alarm(line: Callable[..., Line]) -> None:
    rig = line()
    pump = rig.pump(safe_mode_timeout_s=2)
    assert pump.safe_mode and rig.firmware.snapshot(0).safe_timeout_s == 2
    pump.set_rate_ul_min(60.0)
    pump.run()
    for _ in range(5):  # a heartbeat every 1.5 s keeps a 2 s watchdog fed
        rig.advance(1.5)
        pump.heartbeat()
    assert pump.status().state is PumpState.INFUSING
    rig.advance(2.5)  # host silent: the pump stops and sends A?T unsolicited
    with pytest.raises(CommunicationsAlarm):
        pump.dispensed_ul()
    pump.safe_state()
    status = pump.status()
    assert (status.state, status.alarm) == (PumpState.STOPPED, "comms")
    assert rig.firmware.snapshot(0).state == "S"


def test_unsolicited_alarm_reaches_the_right_pump_object(line: Callable[..., Line]) -> None:
    rig = line((0, 1))
    p0, p1 = rig.pump(0, safe_mode_timeout_s=30), rig.pump(1, safe_mode_timeout_s=30)
    p1.set_rate_ul_min(10.0)
    p1.run()
    rig.firmware.inject(1, Fault("stall"))
    p0.status()  # only pump 0 talks; pump 1's auto-alarm packet arrives on the shared line
    with pytest.raises(StallAlarm, match="raised alarm"):
        p1.set_rate_ul_min(5.0)
    p1.safe_state()
    assert p1.status().alarm == "stall" and p0.status().alarm is None


def test_heartbeat_thread_runs_only_in_safe_mode_and_stops_on_close(line: Callable[..., Line]) -> None:
    rig = line((0, 1))
    basic, safe = rig.pump(0, heartbeat=True), rig.pump(1, heartbeat=True, safe_mode_timeout_s=10)
    assert basic._hb_thread is None  # noqa: SLF001
    thread = safe._hb_thread  # noqa: SLF001
    assert thread is not None and thread.is_alive()
    safe.close()
    assert not thread.is_alive()


def test_a_pump_left_in_safe_mode_is_returned_to_basic(line: Callable[..., Line]) -> None:
    rig = line()
    rig.pump(safe_mode_timeout_s=5).close()
    pump = rig.pump()
    assert not pump.safe_mode and rig.firmware.snapshot(0).safe_timeout_s == 0


# -- faults: each maps to its exception, and safe_state leaves the pump stopped ------------------------


def _running(rig: Line, **kwargs: object) -> NewEraPump:
    pump = rig.pump(**kwargs)
    pump.set_rate_ul_min(60.0)
    pump.run()
    return pump


def _assert_stopped(rig: Line, pump: NewEraPump) -> None:
    pump.safe_state()
    assert pump.status().state is PumpState.STOPPED
    assert rig.firmware.snapshot(pump.address).state == "S"
    assert rig.flows[-1][2] == 0.0


def test_fault_stall(line: Callable[..., Line]) -> None:
    rig = line()
    pump = _running(rig)
    rig.firmware.inject(0, Fault("stall", at_s=10.0))
    rig.advance(11.0)
    with pytest.raises(StallAlarm, match="A\\?S"):
        pump.dispensed_ul()
    _assert_stopped(rig, pump)
    assert pump.status().alarm == "stall"
    pump.run()  # the operator cleared it: resume
    assert pump.status().alarm is None


def test_fault_reset_clears_settings_which_run_sets_again(line: Callable[..., Line]) -> None:
    rig = line()
    pump = _running(rig)
    rig.firmware.inject(0, Fault("reset"))
    assert rig.firmware.snapshot(0).diameter_mm == 0.0
    with pytest.raises(PowerResetAlarm):
        pump.set_rate_ul_min(30.0)
    _assert_stopped(rig, pump)
    assert pump.status().alarm == "reset"
    pump.run()
    snap = rig.firmware.snapshot(0)
    # the rate asked for when the reset was found, not the one before it (the reset pump took nothing)
    assert (snap.state, snap.diameter_mm, snap.rate_ul_min) == ("I", 14.57, 30.0)


def test_a_reset_found_by_the_stop_of_a_unit_change_is_said_and_the_new_rate_set_again(
    line: Callable[..., Line],
) -> None:
    """Running at 60 uL/min (UM), 0.1234 uL/min needs UH, so the driver stops first; that STP met the
    reset alarm, the RAT was refused ?OOR (no diameter), and the driver restarted the pump at 60: an
    OutOfRange blaming the rig file, and the reset never said."""
    rig = line()
    pump = _running(rig)
    rig.firmware.inject(0, Fault("reset"))
    with pytest.raises(PowerResetAlarm, match="power-cycled"):
        pump.set_rate_ul_min(0.1234)
    assert rig.firmware.snapshot(0).state == "S"  # not restarted
    pump.run()
    snap = rig.firmware.snapshot(0)
    assert (snap.state, snap.diameter_mm, snap.rate_ul_min) == ("I", 14.57, pytest.approx(0.1234, rel=1e-3))


@pytest.mark.parametrize(("kind", "error"), [("no_reply", DeviceTimeout), ("garbage", ProtocolError)])
def test_fault_that_holds_for_a_while(line: Callable[..., Line], kind: str, error: type[Exception]) -> None:
    rig = line()
    pump = _running(rig)
    rig.firmware.inject(0, Fault(kind, duration_s=5.0))  # both ways: the pump hears nothing either
    with pytest.raises(error):
        pump.status()
    with pytest.raises(StopNotConfirmed, match="stop it by hand") as caught:
        pump.safe_state()
    assert isinstance(caught.value.__cause__, error) and "no watchdog" in str(caught.value)
    assert rig.firmware.snapshot(0).state == "I"  # deaf, and Basic mode has no watchdog: still pumping
    rig.advance(6.0)
    _assert_stopped(rig, pump)


@pytest.mark.parametrize("kind", ["no_reply", "garbage"])
def test_a_pump_that_still_hears_is_stopped_blind(line: Callable[..., Line], kind: str) -> None:
    """Only the way back is broken: the stop is never confirmed, but the STPs sent blind stop it."""
    rig = line()
    pump = _running(rig)
    rig.firmware.inject(0, Fault(kind, duration_s=5.0, path="reply"))
    with pytest.raises(StopNotConfirmed, match="STP sent 3 times without waiting"):
        pump.safe_state()
    assert rig.firmware.snapshot(0).state == "S" and rig.flows[-1][2] == 0.0
    rig.advance(6.0)
    _assert_stopped(rig, pump)


def test_fault_disconnect_and_reconnect(line: Callable[..., Line]) -> None:
    rig = line()
    pump = _running(rig)
    rig.firmware.inject(0, Fault("disconnect", duration_s=5.0))
    assert not rig.firmware.connected
    with pytest.raises(NotConnected, match="failed|cannot open"):
        pump.status()
    with pytest.raises(StopNotConfirmed, match="sent 0 times") as caught:
        pump.safe_state()  # the adapter is gone: not even a blind stop gets out
    assert isinstance(caught.value.__cause__, NotConnected)
    rig.advance(6.0)
    assert rig.firmware.connected
    _assert_stopped(rig, pump)  # the next command reopened the port


def test_empty_syringe_stalls_and_refill_resumes(line: Callable[..., Line]) -> None:
    rig = line(syringe_ul="10")
    pump = _running(rig)  # 60 uL/min from 10 uL: empty after 10 s
    rig.advance(20.0)
    status = pump.status()  # status() reports the alarm rather than raising it
    assert (status.state, status.alarm, status.dispensed_ul) == (PumpState.STOPPED, "stall", 10.0)
    assert rig.firmware.snapshot(0).infused_ul == pytest.approx(10.0)
    _assert_stopped(rig, pump)
    rig.firmware.refill(0)
    pump.run()
    rig.advance(5.0)
    assert pump.dispensed_ul() == pytest.approx(15.0)


# -- the Safe-mode watchdog on the world's virtual clock ----------------------------------------------


def _watched(rig: Line, **kwargs: object) -> NewEraPump:
    """A running pump in Safe mode (5 s) whose heartbeat lives on the world's virtual clock, as a rig
    builds it."""
    return _running(rig, safe_mode_timeout_s=5, heartbeat=True, clock=rig.world.clock, **kwargs)


@pytest.mark.parametrize("pace", [0.0, 1e-4])
def test_the_heartbeat_keeps_the_watchdog_fed_through_a_long_wait(
    line: Callable[..., Line], pace: float
) -> None:
    rig = line()
    rig.world.clock.pace = pace  # SDL_SIM_PACE: the same virtual seconds, some wall time spent on them
    pump = _watched(rig)
    rig.advance(600.0)  # a long equilibration: nothing but the heartbeat talks to the pump
    snap = rig.firmware.snapshot(0)
    assert (snap.state, snap.alarm, snap.safe_timeout_s) == ("I", None, 5)
    assert snap.infused_ul == pytest.approx(600.0)
    pump.stop()  # paused: the pumps stand, the heartbeat goes on
    rig.advance(600.0)
    assert rig.firmware.snapshot(0).alarm is None and pump.status().alarm is None


def test_without_the_heartbeat_the_same_wait_trips_the_watchdog(line: Callable[..., Line]) -> None:
    rig = line()
    _running(rig, safe_mode_timeout_s=5, heartbeat=False, clock=rig.world.clock)
    rig.advance(600.0)
    snap = rig.firmware.snapshot(0)
    assert (snap.state, snap.alarm) == ("S", "T") and snap.infused_ul == pytest.approx(5.0)


def test_the_watchdog_stops_a_pump_whose_line_died_and_it_is_rearmed_after(line: Callable[..., Line]) -> None:
    rig = line()
    pump = _watched(rig)
    rig.advance(10.0)
    rig.firmware.inject(0, Fault("no_reply", duration_s=60.0))  # the cable at the pump is cut
    with pytest.raises(StopNotConfirmed, match="watchdog stops it 5 s after") as caught:
        pump.safe_state()  # nothing reaches the pump, not even the blind STPs...
    assert "stop it by hand" in str(caught.value)
    assert rig.firmware.snapshot(0).state == "I"
    rig.advance(30.0)  # ...but its watchdog does, 5 s after the last packet it heard
    snap = rig.firmware.snapshot(0)
    assert (snap.state, snap.alarm) == ("S", "T") and snap.infused_ul == pytest.approx(15.0)
    rig.advance(40.0)  # the line is back; the heartbeat's next packet meets the alarm
    with pytest.raises(CommunicationsAlarm):
        pump.set_rate_ul_min(60.0)
    pump.run()  # the campaign's retry: the alarm was acknowledged, the pump runs again
    assert pump.status().alarm is None
    rig.advance(600.0)  # and the watchdog is armed and fed again
    snap = rig.firmware.snapshot(0)
    assert (snap.state, snap.alarm) == ("I", None)


def test_a_closed_driver_leaves_the_pump_to_its_watchdog(line: Callable[..., Line]) -> None:
    rig = line()
    pump = _watched(rig)
    pump.close()  # the host is gone (or crashed) with the pump running
    rig.advance(60.0)
    assert rig.firmware.snapshot(0).alarm == "T" and rig.firmware.snapshot(0).state == "S"


def test_a_stopped_pump_closed_on_purpose_does_not_sound_its_alarm(line: Callable[..., Line]) -> None:
    rig = line()
    pump = _watched(rig)
    pump.safe_state()
    pump.close()  # the campaign ended: pumps stopped, then the host lets go
    rig.advance(60.0)
    snap = rig.firmware.snapshot(0)
    assert (snap.state, snap.alarm, snap.safe_timeout_s) == ("S", None, 0)


def test_reading_a_running_pump_raises_no_warnings(line: Callable[..., Line]) -> None:
    """`sdl hw pump NAME --status` while a campaign pumps: the pump refuses the program set-up (PHN,
    FUN) while it runs, which is its right, not a fault to warn about, and it keeps pumping."""
    from structlog.testing import capture_logs

    rig = line()
    first = rig.pump()
    first.set_rate_ul_min(100.0)
    first.run()
    first.close()
    with capture_logs() as logs:
        second = rig.pump()
        status = second.status()
    assert status.state.name == "INFUSING"
    assert [e for e in logs if e["log_level"] == "warning" and "program" in e["event"]] == []
    assert any("is pumping" in e["event"] for e in logs)


@pytest.mark.parametrize("address", [0, 35, 80])
def test_safe_mode_connects_when_a_crc_byte_is_etx_and_replies_trickle_in(
    line: Callable[..., Line], address: int
) -> None:
    """A real UART hands a reply over a byte or a few at a time. The answer to SAF was read in either
    framing, and a Safe packet whose CRC holds 0x03 (ETX: `35S` -> 0x0C03, `80S` -> 0x0307) was taken
    as complete at that byte: the parse failed, the retry went out in Basic framing to a pump now in
    Safe mode, and connect() timed out, every time, for pumps at those addresses."""
    rig = line((address,), trickle="1")
    pump = rig.pump(address, safe_mode_timeout_s=5)
    assert pump.safe_mode and rig.firmware.snapshot(address).safe_timeout_s == 5
    pump.set_rate_ul_min(10.0)
    pump.run()
    assert pump.status().state is PumpState.INFUSING
    pump.safe_state()
    pump.close()
    assert rig.firmware.snapshot(address).safe_timeout_s == 0  # returned to Basic mode on close


def test_a_stall_answered_to_a_stop_is_reported_until_the_next_run(line: Callable[..., Line]) -> None:
    """The alarm in the answer to STP is the only record the host gets (the answer acknowledges it on the
    pump): status() reports it until run() starts the pump again."""
    rig = line()
    pump = rig.pump()
    pump.set_rate_ul_min(100.0)
    pump.run()
    rig.firmware.inject(0, Fault("stall", at_s=1.0))
    rig.advance(2.0)
    pump.stop()
    assert pump.status().alarm == "stall"
    pump.set_rate_ul_min(50.0)
    pump.run()
    assert pump.status().alarm is None and pump.status().state is PumpState.INFUSING
