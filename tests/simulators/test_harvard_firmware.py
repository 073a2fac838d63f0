"""The Harvard/KDS firmware emulator: its bytes, its physics, its faults, and the driver against it
over sim:// and over a pty."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from drivers import harvard
from drivers.base import PumpState, StopNotConfirmed
from drivers.errors import (
    DeviceError,
    DeviceTimeout,
    NotConnected,
    OutOfRange,
    PowerResetAlarm,
    ProtocolError,
    StallAlarm,
)
from drivers.harvard import HarvardPump
from simulators.faults import Fault
from simulators.harvard import MODELS, XON, HarvardFirmware
from simulators.serialsim import KNOWN_PROTOCOLS, PtyServer, get_bus, install_url_handler
from simulators.world import World, drop_world, set_world

install_url_handler()
_numbers = itertools.count()


@dataclass
class RecordingWorld(World):
    """A world that remembers every flow change the emulator reports."""

    calls: list[tuple[str, int, float]] = field(default_factory=list)

    def pump_flow_changed(self, bus: str, address: int, rate_ul_min: float) -> None:
        self.calls.append((bus, address, rate_ul_min))
        super().pump_flow_changed(bus, address, rate_ul_min)


@dataclass
class Line:
    bus: str
    world: RecordingWorld
    url: str
    firmware: HarvardFirmware

    def send(self, request: bytes) -> bytes:
        return self.firmware.receive(request, self.firmware.baudrate)

    def pump(self, address: int = 0, **kwargs: object) -> HarvardPump:
        options: dict[str, object] = {"timeout_s": 0.1, "retries": 0, "xon_grace_s": 0.01}
        options |= {"syringe_diameter_mm": 14.5} | kwargs
        pump = HarvardPump(f"pump{address}", self.url, address=address, **options)  # type: ignore[arg-type]
        pump.connect()
        return pump

    def sleep(self, seconds: float) -> None:
        self.world.clock.sleep(seconds)


@pytest.fixture
def make_line() -> Iterator:
    names: list[str] = []

    def make(query: str = "address=0") -> Line:
        number = next(_numbers)
        bus, world_name = f"hv{number}", f"hv-world{number}"
        world = set_world(world_name, RecordingWorld())
        url = f"sim://harvard/{bus}?{query}&world={world_name}"
        firmware = get_bus("harvard", bus, _query(query, world_name))
        assert isinstance(firmware, HarvardFirmware)
        names.append(world_name)
        return Line(bus, world, url, firmware)

    yield make
    for url in list(harvard._lines):
        for pump in list(harvard._lines[url].pumps.values()):
            pump.close()
    for name in names:
        drop_world(name)


def _query(query: str, world: str) -> dict[str, list[str]]:
    parsed: dict[str, list[str]] = {"world": [world]}
    for part in query.split("&"):
        key, _, value = part.partition("=")
        parsed.setdefault(key, []).append(value)
    return parsed


# -- the factory -------------------------------------------------------------------------------------


def test_registered_and_built_from_the_url(make_line) -> None:
    assert KNOWN_PROTOCOLS["harvard"] == "simulators.harvard"
    line = make_line(
        "address=0&address=7&baud=38400&syringe_ul=1000&syringe_ul=2000&model=legato&diameter=4.78"
    )
    assert line.firmware.addresses == [0, 7] and line.firmware.baudrate == 38400
    assert line.firmware.snapshot(7).content_ul == 2000 and line.firmware.snapshot(0).diameter_mm == 4.78
    assert line.firmware.receive(b"07:ver\r", 115200) == b""  # not the line's baud rate: silence
    assert (
        line.firmware.receive(b"07:ver\r", 38400) == b"\n07:" + MODELS["legato"].version.encode() + b"\r\n07:"
    )


@pytest.mark.parametrize(
    "query",
    [
        "address=100",
        "address=1&address=1",
        "baud=1234",
        "model=phd2000",
        "syringe_ul=-5",
        "diameter=80",
        "address=x",
    ],
)
def test_bad_urls_are_refused(query: str) -> None:
    with pytest.raises(ValueError):
        get_bus("harvard", f"bad{next(_numbers)}", _query(query, "bad"))


def test_a_bad_url_is_a_connection_error_for_the_driver() -> None:
    with pytest.raises(NotConnected):
        HarvardPump("q", f"sim://harvard/bad{next(_numbers)}?address=150").connect()


# -- the bytes ---------------------------------------------------------------------------------------


def test_abbreviations_and_address_forms(make_line) -> None:
    line = make_line("address=0&address=3")
    assert line.send(b"3:diam\r") == b"\n03:26.5900 mm\r\n03:"
    assert line.send(b"03 stat\r").startswith(b"\n03:")
    assert line.send(b"stp\r\n") == b"\n:"  # CR LF is one line end
    assert line.send(b"\n") == b"\n:"  # a lone LF is one too
    assert line.send(b"ir") == b"" and line.send(b"un\r") == b"\n>"  # a line split across writes
    assert line.send(b"xyzzy\r") == b"\nUnknown command\r\n>"
    assert line.send(b"cvo\r") == b"\nUnknown command\r\n>"  # three letters are not enough


def test_echo_and_remote_poll(make_line) -> None:
    line = make_line()
    line.send(b"echo on\r")
    assert line.send(b"ver\r") == b"ver\r\nPHD ULTRA 2.0.4\r\n:"
    line.send(b"poll remote\r")
    assert line.send(b"ver\r") == b"\nPHD ULTRA 2.0.4\r"  # no prompt and no echo
    assert line.send(b"echo on\r") == b"\nCommand error: echo is off in remote poll mode\r"


def test_changing_the_address(make_line) -> None:
    line = make_line("address=0&address=3")
    assert line.send(b"3:address 7\r") == b"\n07:"
    assert line.send(b"3:ver\r") == b"" and line.send(b"7:addr\r") == b"\n07:Pump address is 7\r\n07:"
    assert line.send(b"7:address 0\r") == b"\n07:Command error: address 0 is in use\r\n07:"


def test_rate_limits_follow_the_syringe_diameter(make_line) -> None:
    line = make_line()
    model = MODELS["ultra"]
    for diameter in (1.0, 4.78, 26.59):
        assert line.send(f"diameter {diameter}\r".encode()) == b"\n:"
        area = math.pi * diameter**2 / 4
        low, high = area * model.min_speed_mm_min, area * model.max_speed_mm_min
        assert line.send(f"irate {high * 0.999 / 1000:.6f} ml/min\r".encode()) == b"\n:"
        assert b"Out of range" in line.send(f"irate {high * 1.001 / 1000:.6f} ml/min\r".encode())
        assert line.send(f"irate {low * 1.001 * 1000:.6f} nl/min\r".encode()) == b"\n:"
        assert b"Out of range" in line.send(f"irate {low * 0.999 * 1000:.6f} nl/min\r".encode())
        assert line.send(b"irate max\r") == b"\n:"
        assert line.firmware.snapshot(0).rate_ul_min == pytest.approx(high)
    assert line.send(b"diameter 0.05\r") == b"\nArgument error: 0.05\r\n   Out of range\r\n:"
    assert line.send(b"diameter wide\r") == b"\nArgument error: wide\r\n   Invalid argument\r\n:"
    line.send(b"irate max\r")
    line.send(b"diameter 1\r")  # a narrower barrel clamps the rate into its range
    assert line.firmware.snapshot(0).rate_ul_min == pytest.approx(math.pi / 4 * model.max_speed_mm_min)


def test_nvram_wears_only_when_on_and_power_up_restores_what_it_holds(make_line) -> None:
    line = make_line()
    line.send(b"irate 7 ul/min\r")
    assert line.firmware.snapshot(0).nvram_writes == 1
    line.send(b"nvram none\r")
    line.send(b"irate 9 ul/min\r")
    line.send(b"diameter 10\r")
    line.send(b"poll on\r")
    assert line.firmware.snapshot(0).nvram_writes == 1
    line.firmware.inject(0, Fault("reset", at_s=line.world.clock.now()))
    after = line.firmware.snapshot(0)
    assert (after.rate_ul_min, after.diameter_mm, after.poll, after.nvram) == (7.0, 26.59, "off", "on")


def test_the_driver_does_not_wear_the_nvram(make_line) -> None:
    line = make_line()
    pump = line.pump()
    for rate in range(1, 30):
        pump.set_rate_ul_min(float(rate))
    snapshot = line.firmware.snapshot(0)
    assert snapshot.nvram == "none" and snapshot.nvram_writes == 0 and snapshot.rate_ul_min == 29


def test_unsolicited_prompts_outside_poll_mode(make_line) -> None:
    line = make_line("address=0&address=5&content_ul=1")
    line.send(b"irate 60 ul/min\r")
    assert line.send(b"irun\r") == b"\n>"
    line.send(b"5:irate 60 ul/min\r")
    line.send(b"5:tvolume 0.5 ul\r")
    line.send(b"5:irun\r")
    line.sleep(2)
    assert line.firmware.pending() == b"\n*\n05T*"
    assert line.send(b"\r") == b"\n*" and line.send(b"5:\r") == b"\n05T*"
    assert line.send(b"5:ivolume\r") == b"\n05:500.0000 nl\r\n05T*"
    line.send(b"poll on\r")
    line.firmware.refill(0, 1)
    line.send(b"irun\r")
    line.sleep(2)
    assert line.firmware.pending() == b""  # poll mode: events are not announced
    assert line.send(b"\r") == b"\n*" + XON


def test_an_empty_syringe_stalls_at_once(make_line) -> None:
    line = make_line("content_ul=0")
    assert line.send(b"irun\r") == b"\n*"
    assert line.firmware.pending() == b""
    assert line.send(b"status\r").split(b"\r")[0].endswith(b"i.S.I")


# -- the driver over sim:// --------------------------------------------------------------------------


def test_every_driver_command_against_the_emulator(make_line) -> None:
    line = make_line("address=0&address=1")
    pump = line.pump(1, syringe_diameter_mm=26.59)
    assert pump.firmware == MODELS["ultra"].version and pump.syringe_diameter_mm == 26.59
    low, high = pump.rate_limits or (0, 0)
    assert high == pytest.approx(math.pi * 26.59**2 / 4 * MODELS["ultra"].max_speed_mm_min, rel=1e-4)
    pump.set_syringe_diameter_mm(14.5)
    assert line.firmware.snapshot(1).diameter_mm == 14.5 and pump.syringe_diameter_mm == 14.5
    pump.set_rate_ul_min(12.5)
    pump.run()
    pump.run()  # idempotent
    line.sleep(60)
    assert pump.dispensed_ul() == pytest.approx(12.5, rel=1e-4)
    status = pump.status()
    assert status.state is PumpState.INFUSING and status.rate_ul_min == pytest.approx(12.5)
    assert status.dispensed_ul == pytest.approx(12.5) and status.alarm is None
    pump.set_rate_ul_min(25.0)  # changed on the fly
    line.sleep(30)
    assert pump.dispensed_ul() == pytest.approx(25.0, rel=1e-4)
    pump.stop()
    line.sleep(30)
    assert pump.status().state is PumpState.STOPPED and pump.dispensed_ul() == pytest.approx(25.0, rel=1e-4)
    pump.safe_state()
    pump.safe_state()
    pump.clear_volumes()
    assert pump.dispensed_ul() == 0
    assert pump.version() == MODELS["ultra"].version
    with pytest.raises(OutOfRange):
        pump.set_rate_ul_min(high * 2)
    assert line.firmware.snapshot(0).infused_ul == 0  # pump 0 on the same line was never addressed
    pump.close()
    pump.close()


def test_flow_changes_reach_the_world(make_line) -> None:
    line = make_line("address=0&address=1&content_ul=100")
    first, second = line.pump(0), line.pump(1)
    assert harvard.open_lines()[line.url] == 2
    first.set_rate_ul_min(10)
    second.set_rate_ul_min(20)
    first.run()
    second.run()
    first.set_rate_ul_min(15)
    first.stop()
    line.sleep(6 * 60)  # pump 1 empties its 100 uL after 5 min and stalls
    with pytest.raises(StallAlarm):
        second.dispensed_ul()
    assert line.world.calls == [
        (line.bus, 0, 10.0),
        (line.bus, 1, 20.0),
        (line.bus, 0, 15.0),
        (line.bus, 0, 0.0),
        (line.bus, 1, 0.0),
    ]
    assert line.firmware.snapshot(1).infused_ul == pytest.approx(100)


def test_an_emptied_syringe_raises_a_stall_until_refilled(make_line) -> None:
    line = make_line("content_ul=10")
    pump = line.pump()
    pump.set_rate_ul_min(10)
    pump.run()
    line.sleep(61)
    with pytest.raises(StallAlarm) as caught:
        pump.dispensed_ul()
    assert "syringe" in str(caught.value)
    assert pump.status().alarm == "stall" and not line.firmware.snapshot(0).running
    with pytest.raises(StallAlarm):
        pump.run()  # still empty
    pump.safe_state()
    line.firmware.refill(0, 5)
    pump.run()
    line.sleep(60)
    assert line.firmware.snapshot(0).content_ul == 0 and line.firmware.snapshot(0).stalled


def test_a_wrong_baud_rate_times_out_with_a_hint(make_line) -> None:
    line = make_line()
    with pytest.raises(DeviceTimeout) as caught:
        HarvardPump("q", line.url, baudrate=9600, timeout_s=0.05, retries=0).connect()
    assert "baud rate" in str(caught.value)


# -- faults ------------------------------------------------------------------------------------------

FAULTS = {
    "no_reply": DeviceTimeout,
    "garbage": ProtocolError,
    "stall": StallAlarm,
    "reset": PowerResetAlarm,
    "disconnect": NotConnected,
}


@pytest.mark.parametrize("kind", sorted(FAULTS))
def test_every_fault_raises_its_exception_and_the_pump_ends_stopped(make_line, kind: str) -> None:
    line = make_line("address=0&address=2")
    pump = line.pump(2)
    pump.set_rate_ul_min(30)
    pump.run()
    line.sleep(5)
    line.firmware.inject(2, Fault(kind, at_s=line.world.clock.now() + 1, duration_s=10))
    line.sleep(2)
    with pytest.raises(FAULTS[kind]) as caught:
        pump.dispensed_ul()
    assert caught.value.device == "pump2" and caught.value.hint
    line.sleep(10)  # the lasting faults are over
    pump.safe_state()
    assert not line.firmware.snapshot(2).running
    assert line.world.calls[-1] == (line.bus, 2, 0.0)
    pump.set_rate_ul_min(30)  # and it works again, in poll mode, with our syringe
    pump.run()
    assert line.firmware.snapshot(2).poll == "on" and line.firmware.snapshot(2).diameter_mm == 14.5
    pump.safe_state()


@pytest.mark.parametrize("kind", ["no_reply", "garbage"])
def test_a_pump_that_still_hears_is_stopped_blind(make_line, kind: str) -> None:
    """Only the pump's way back is broken: every command is still carried out, so the 'stp' sent
    blindly by safe_state stops it, though nothing confirms it (StopNotConfirmed)."""
    line = make_line("address=0&address=2")
    pump = line.pump(2)
    pump.set_rate_ul_min(30)
    pump.run()
    line.firmware.inject(2, Fault(kind, at_s=line.world.clock.now(), duration_s=10, path="reply"))
    answer = line.firmware.receive(b"02:ver\r", 115200)
    assert answer == b"" if kind == "no_reply" else all(b >= 0x80 for b in answer)
    with pytest.raises(StopNotConfirmed, match="'stp' sent 3 times without waiting") as caught:
        pump.safe_state()
    assert "stop it by hand" in str(caught.value) and "no watchdog" in str(caught.value)
    assert not line.firmware.snapshot(2).running
    assert line.world.calls[-1] == (line.bus, 2, 0.0)


@pytest.mark.parametrize("kind", ["no_reply", "garbage"])
def test_a_deaf_pump_keeps_running_and_safe_state_says_so(make_line, kind: str) -> None:
    """Both ways: the pump hears nothing usable and has no watchdog. Nothing stops it but a hand;
    safe_state says so instead of pretending."""
    line = make_line()
    pump = line.pump()
    pump.set_rate_ul_min(30)
    pump.run()
    line.firmware.inject(0, Fault(kind, at_s=line.world.clock.now(), duration_s=10))
    with pytest.raises(StopNotConfirmed, match="stop it by hand"):
        pump.safe_state()
    assert line.firmware.snapshot(0).running


def test_a_never_connected_pump_sends_nothing_blind(make_line) -> None:
    line = make_line()
    pump = line.pump()
    pump.close()
    fresh = HarvardPump("fresh", line.url, timeout_s=0.05, retries=0)
    with pytest.raises(NotConnected):
        fresh.safe_state()  # never reached by this driver, so never started by it


def test_a_reset_pump_gets_its_setup_back_before_it_runs_again(make_line) -> None:
    line = make_line()
    pump = line.pump(syringe_diameter_mm=4.78)
    pump.set_rate_ul_min(3.3)
    line.firmware.inject(0, Fault("reset", at_s=line.world.clock.now()))
    pump.safe_state()  # a stopped pump: no alarm here...
    with pytest.raises(PowerResetAlarm):
        pump.status()  # ...but the next command reports it
    snapshot = line.firmware.snapshot(0)
    assert (snapshot.diameter_mm, snapshot.rate_ul_min, snapshot.nvram, snapshot.poll) == (
        4.78,
        3.3,
        "none",
        "on",
    )
    pump.run()
    assert pump.status().state is PumpState.INFUSING


def test_faults_on_one_pump_leave_its_neighbour_alone(make_line) -> None:
    line = make_line("address=0&address=1")
    sick, well = line.pump(0), line.pump(1)
    line.firmware.inject(0, Fault("no_reply", at_s=line.world.clock.now()))
    with pytest.raises(DeviceError):
        sick.status()
    assert well.status().state is PumpState.STOPPED


# -- over a pty --------------------------------------------------------------------------------------


def test_the_driver_over_a_pty(make_line) -> None:
    line = make_line("address=0&address=4")
    server = PtyServer(line.firmware).start()
    try:
        pump = HarvardPump("pty", server.path, address=4, syringe_diameter_mm=14.5, timeout_s=0.5)
        pump.connect()
        assert pump.firmware == MODELS["ultra"].version == pump.version()
        pump.set_syringe_diameter_mm(10.3)
        pump.set_rate_ul_min(6.0)
        pump.run()
        line.sleep(60)
        assert pump.dispensed_ul() == pytest.approx(6.0, rel=1e-4)
        assert pump.status().state is PumpState.INFUSING
        pump.stop()
        pump.safe_state()
        assert pump.status().state is PumpState.STOPPED and not line.firmware.snapshot(4).running
        pump.clear_volumes()
        assert pump.dispensed_ul() == 0 and pump.syringe_diameter_mm == 10.3
        line.firmware.inject(4, Fault("stall", at_s=0))
        pump.run()
        line.sleep(1)
        with pytest.raises(StallAlarm):
            pump.dispensed_ul()
        pump.close()
    finally:
        server.stop()


def test_connecting_to_a_pump_that_still_runs_leaves_it_running(make_line) -> None:
    """A restarted process takes over a running pump; it changes no syringe under a moving plunger."""
    line = make_line()
    line.send(b"irate 5 ul/min\r")
    line.send(b"irun\r")
    pump = line.pump(syringe_diameter_mm=26.59)
    assert pump.status().state is PumpState.INFUSING and line.firmware.snapshot(0).running
    pump.close()
    with pytest.raises(ProtocolError) as caught:
        line.pump(syringe_diameter_mm=10.0)
    assert "stop it first" in str(caught.value) and line.firmware.snapshot(0).running


def test_connecting_to_a_stalled_pump_reports_the_stall(make_line) -> None:
    line = make_line("content_ul=0")
    line.send(b"irun\r")
    pump = line.pump()
    assert pump.status().alarm == "stall"
    pump.safe_state()
    assert pump.status().alarm is None


def test_a_host_at_the_wrong_baud_rate_meets_silence_over_a_pty(make_line) -> None:
    """The pty hears the speed the program set (termios): a rig file at 9600 baud against a pump at
    115200 fails as on the bench, naming the address and baud, where it used to work."""
    line = make_line("address=0")
    server = PtyServer(line.firmware).start()
    try:
        wrong = HarvardPump("seed", server.path, address=0, syringe_diameter_mm=14.5, timeout_s=0.2,
                            retries=0, baudrate=9600)
        with pytest.raises(DeviceTimeout, match="no Harvard pump answered at address 0 .* at 9600 baud"):
            wrong.connect()
        right = HarvardPump("seed", server.path, address=0, syringe_diameter_mm=14.5, timeout_s=0.5)
        right.connect()
        assert right.status().state is PumpState.STOPPED
        right.close()
    finally:
        server.stop()
