"""The New Era firmware emulator, byte for byte: addressing, number parsing, baud mismatch, Safe mode
framing and CRC, alarms, volume integration on the world's clock, flow reports, faults, refill.
Replies are spelled here without the driver's code (see B and S)."""

from __future__ import annotations

import binascii

import pytest
import serial
from hypothesis import assume, given
from hypothesis import strategies as st

import simulators  # noqa: F401 - installs the sim:// URL handler
from simulators.faults import Fault
from simulators.newera import NewEraFirmware, from_url, rate_limits_ul_min
from simulators.serialsim import drop_bus
from simulators.world import VirtualClock, World, drop_world, set_world


def B(text: str) -> bytes:
    return b"\x02" + text.encode() + b"\x03"


def S(text: str) -> bytes:
    data = text.encode()
    return bytes([2, len(data) + 4]) + data + binascii.crc_hqx(data, 0).to_bytes(2, "big") + b"\x03"


class Bench:
    """A fresh line (pumps at ``addresses``, power-up alarms already acknowledged) and its clock."""

    def __init__(self, addresses: tuple[int, ...] = (0,), **kwargs: object) -> None:
        self.world = World(clock=VirtualClock())
        self.flows: list[tuple[int, float]] = []
        self.world.pump_flow_changed = lambda bus, a, r: self.flows.append((a, r))  # type: ignore[method-assign]
        self.fw = NewEraFirmware("bench", addresses, world=self.world, power_on_alarm=False, **kwargs)  # type: ignore[arg-type]

    def __call__(self, text: str | bytes, baud: int = 19200) -> bytes:
        return self.fw.receive(text if isinstance(text, bytes) else text.encode() + b"\r", baud)

    def advance(self, seconds: float) -> None:
        self.world.clock.sleep(seconds)


@pytest.fixture
def bench() -> Bench:
    return Bench()


def test_power_up_reset_alarm_is_answered_once() -> None:
    fw = NewEraFirmware("b", [0], world=World(clock=VirtualClock()), power_on_alarm=True)
    assert fw.receive(b"0DIA20\r", 19200) == B("00A?R")  # the command is not carried out
    assert fw.receive(b"0DIA\r", 19200) == B("00S14.57")
    cleared = NewEraFirmware(
        "b", [0], world=World(clock=VirtualClock())
    )  # the default: cleared at the keypad
    assert cleared.receive(b"0DIA\r", 19200) == B("00S14.57")


def test_addressing() -> None:
    bench = Bench((0, 12))
    assert bench("12VER") == B("12SNE1000V3.928")
    assert bench("5VER") == b""  # nobody there: silence
    assert bench("VER") == B("00SNE1000V3.928") + B("12SNE1000V3.928")  # everyone answers, colliding
    assert bench("*STP") == B("00S") + B("12S")


def test_network_command_burst() -> None:
    bench = Bench((0, 1, 2))
    assert bench("0 rat 100 um * 1 rat 250 um *") == B("00S") + B("01S")  # colliding replies
    assert [bench.fw.snapshot(a).rate_ul_min for a in (0, 1, 2)] == [100.0, 250.0, 0.0]


def test_spaces_control_characters_and_case_are_ignored(bench: Bench) -> None:
    assert bench(b" 0 dia\t 26.59 \x07\r") == B("00S")
    assert bench("0dia") == B("00S26.59")


def test_replies_and_errors(bench: Bench) -> None:
    assert bench("0XYZ") == B("00S?")
    assert bench("0DIA0.05") == B("00S?OOR")
    assert bench("0DIA1.2.3") == B("00S?OOR")
    assert bench("0RAT5XX") == B("00S?OOR")
    assert bench("0DIR") == B("00SINF")
    assert bench("0SAF") == B("00S0")
    assert bench("0PHN") == B("00S01")
    assert bench("0FUNRAT") == B("00S")
    assert bench("0FUN!") == B("00S?")
    assert bench("0CLD") == B("00S?OOR")


def test_run_needs_a_rate(bench: Bench) -> None:
    assert bench("0RUN") == B("00S?NA")
    assert bench("0RAT10UM") == B("00S")
    assert bench("0RUN") == B("00I")
    assert bench("0DIA20") == B("00I?NA")  # not while pumping
    assert bench("0RAT10UH") == B("00I?NA")  # no change of rate units while pumping
    assert bench("0RAT20") == B("00I")  # a new rate in the same units is fine
    assert bench("0RAT") == B("00I20.00UM")


@given(st.from_regex(r"\A[0-9]{0,6}(\.[0-9]{0,5})?\Z"))
def test_numbers_are_taken_only_with_four_digits_and_three_decimals(text: str) -> None:
    assume(text != "")  # "VOL" alone is the query
    whole, _, frac = text.partition(".")
    valid = bool(whole or frac) and len(whole) + len(frac) <= 4 and len(frac) <= 3
    reply = Bench()(f"0VOL{text}")
    assert reply == (B("00S") if valid else B("00S?OOR"))


def test_rates_outside_the_syringes_range_are_refused(bench: Bench) -> None:
    low, high = rate_limits_ul_min(14.57)
    assert low == pytest.approx(0.113, rel=0.01) and high == pytest.approx(10_640, rel=0.01)
    assert bench("0RAT0.1UM") == B("00S?OOR")
    assert bench("0RAT0.12UM") == B("00S")
    assert bench("0RAT11MM") == B("00S?OOR")
    assert bench("0RAT10MM") == B("00S")


def test_wrong_baud_gets_nothing_and_garbles_nothing(bench: Bench) -> None:
    assert bench("0VER", baud=9600) == b""
    assert bench.fw.receive(b"0DI", 9600) == b""
    assert bench("0VER") == B("00SNE1000V3.928")
    slow = Bench(baudrate=9600)
    assert slow("0VER") == b""
    assert slow("0VER", baud=9600) == B("00SNE1000V3.928")
    with pytest.raises(ValueError, match="baud"):
        Bench(baudrate=4800)


# -- volumes, flows and the world's clock ---------------------------------------------------------------


def test_volume_integrates_over_the_world_clock_and_flows_are_reported(bench: Bench) -> None:
    bench("0VOLUL")
    bench("0RAT100UM")
    assert bench.flows == []  # a rate set while stopped changes no flow
    bench("0RUN")
    bench.advance(90.0)
    assert bench("0DIS") == B("00II150.0W0.000UL")
    bench("0RAT50")
    bench.advance(60.0)
    assert bench("0DIS") == B("00II200.0W0.000UL")
    bench("0STP")  # pause
    bench.advance(60.0)
    assert bench("0DIS") == B("00PI200.0W0.000UL")
    bench("0DIRWDR")
    bench("0RUN")
    bench.advance(60.0)
    assert bench("0DIS") == B("00WI200.0W50.00UL")
    bench("0STP")
    bench("0STP")
    assert bench.flows == [(0, 100.0), (0, 50.0), (0, 0.0), (0, -50.0), (0, 0.0)]
    assert bench("0CLDINF") == B("00S")
    assert bench("0DIS") == B("00SI0.000W50.00UL")


def test_volume_units_follow_the_diameter_and_dis_switches_to_ml_when_ul_overflow() -> None:
    bench = Bench(syringe_ul=60_000.0)
    assert bench("0DIA4.78") == B("00S")
    assert bench("0VOL") == B("00S0.000UL")  # at or below 14.00 mm: uL
    assert bench("0DIA26.59") == B("00S")
    assert bench("0VOL") == B("00S0.000ML")  # above: mL
    bench("0VOLUL")
    bench("0RAT10MM")
    bench("0RUN")
    bench.advance(60.0)
    assert bench("0DIS") == B("00II10.00W0.000ML")  # 10000 uL no longer fits 4 digits of uL


def test_a_program_runs_its_rate_phases_in_turn_and_ends_at_a_stop_phase(bench: Bench) -> None:
    # what a client written from the manual sends to dispense 10 uL, then 5 uL slower, then stop
    for command in ["PHN1", "FUNRAT", "VOLUL", "RAT60UM", "VOL10", "DIRINF", "PHN2", "FUNRAT", "RAT30UM",
                    "VOL5", "PHN3", "FUNSTP"]:  # fmt: skip
        assert bench("0" + command) == B("00S"), command
    assert bench("0PHN") == B("00S03")
    assert bench("0RUN") == B("00I")  # from phase 1
    assert bench("0PHN") == B("00I01")
    assert bench("0PHN2") == B("00I?NA")  # not while the program runs
    bench.advance(15.0)  # 10 uL at 60 uL/min take 10 s; then 5 s of phase 2
    assert bench("0PHN") == B("00I02")
    assert bench("0RAT") == B("00I30.00UM")
    bench.advance(60.0)
    assert bench("0") == B("00S")
    assert bench("0DIS") == B("00SI15.00W0.000UL")
    assert bench.flows == [(0, 60.0), (0, 30.0), (0, 0.0)]
    assert bench("0RUN2") == B("00I")  # RUN <phase> starts there
    assert bench("0PHN") == B("00I02")
    assert bench("0RUN42") == B("00I")  # already running: nothing to do
    bench("0STP")
    bench("0STP")
    assert bench("0RUN3") == B("00S?NA")  # a stop phase cannot be run


def test_volume_target_ends_the_program(bench: Bench) -> None:
    bench("0VOLUL")
    bench("0VOL25")
    bench("0RAT10UM")
    bench("0RUN")
    bench.advance(120.0)
    assert bench("0") == B("00I")  # 20 of 25 uL
    bench.advance(60.0)
    assert bench("0") == B("00S")
    assert bench("0DIS") == B("00SI25.00W0.000UL")
    assert bench.flows == [(0, 10.0), (0, 0.0)]


def test_empty_syringe_stalls_exactly_when_empty_and_refill_lets_it_go_on() -> None:
    bench = Bench(syringe_ul=30.0)
    bench("0VOLUL")
    bench("0RAT60UM")
    bench("0RUN")
    bench.advance(60.0)
    assert bench("0DIS") == B("00A?S")  # the alarm answers first, and is acknowledged by it
    assert bench("0DIS") == B("00SI30.00W0.000UL")
    assert bench.fw.snapshot(0).content_ul == 0.0
    assert bench.fw.refill_empty() == {0: 30.0}  # a dry run's operator: full again ...
    assert bench.fw.snapshot(0).content_ul == 30.0 and bench.fw.refill_empty() == {}  # ... and only when empty
    bench.fw.refill(0, 100.0)
    assert bench("0RUN") == B("00I")
    bench.advance(10.0)
    assert bench.fw.snapshot(0).content_ul == pytest.approx(90.0)
    with pytest.raises(ValueError):
        bench.fw.refill(0, -1.0)
    with pytest.raises(KeyError, match="address 5"):
        bench.fw.refill(5)


# -- Safe mode ------------------------------------------------------------------------------------------


def test_safe_mode_framing_crc_and_watchdog(bench: Bench) -> None:
    assert bench("0SAF3") == S("00S")
    assert bench("0VER") == b""  # Basic text is ignored in Safe mode
    assert bench(S("0VER")) == S("00SNE1000V3.928")
    corrupt = bytearray(S("0VER"))
    corrupt[4] ^= 0x20
    assert bench(bytes(corrupt)) == S("00S?COM")
    assert bench(S("0RAT10UM")) == S("00S")
    assert bench(S("0RUN")) == S("00I")
    bench.advance(2.0)
    assert bench.fw.pending() == b""
    assert bench(S("0")) == S("00I")  # a valid packet restarts the watchdog
    bench.advance(3.5)
    assert bench.fw.pending() == S("00A?T")  # auto-alarm, sent once
    assert bench.fw.pending() == b""
    assert bench(S("0RUN")) == S("00A?T")  # still pending: this reply acknowledges it
    assert bench(S("0")) == S("00S")
    assert bench.flows[-1] == (0, 0.0)


def test_safe_packets_are_taken_in_basic_mode_and_bad_ones_skipped(bench: Bench) -> None:
    assert bench(S("0VER")) == S("00SNE1000V3.928")  # framed like the request
    assert bench(S("0SAF7")) == S("00S")  # into Safe mode: the new mode's framing
    assert bench(S("0SAF0")) == B("00S")  # out of it: Basic framing
    assert bench(b"\x02\x01") == b""  # too short for a packet: not one
    assert bench(b"0VER\r") == B("00SNE1000V3.928")  # the stray control bytes are stripped


def test_saf_is_taken_while_an_alarm_is_pending_and_answered_in_the_mode_it_selects() -> None:
    fw = NewEraFirmware("b", [0], world=World(clock=VirtualClock()), power_on_alarm=True)
    assert fw.receive(S("0SAF0"), 19200) == B("00A?R")  # Basic, as selected; the alarm reported
    fw = NewEraFirmware("b", [0], world=World(clock=VirtualClock()), power_on_alarm=True)
    assert fw.receive(S("0SAF5"), 19200) == S("00A?R")
    assert fw.receive(S("0SAF"), 19200) == S("00S5")


def test_an_interrupted_packet_is_dropped_after_half_a_second(bench: Bench) -> None:
    packet = S("0VER")
    assert bench(packet[:4]) == b""
    bench.advance(0.6)
    assert bench(packet[4:]) == b""  # the first half was dropped; the rest is not a packet
    assert bench(packet) == S("00SNE1000V3.928")


def test_stall_in_safe_mode_sends_an_auto_alarm(bench: Bench) -> None:
    bench("0SAF30")
    bench(S("0RAT10UM"))
    bench(S("0RUN"))
    bench.fw.inject(0, Fault("stall"))
    assert bench.fw.pending() == S("00A?S")


# -- faults ---------------------------------------------------------------------------------------------


def test_fault_no_reply_holds_for_its_duration_and_commands_are_not_carried_out(bench: Bench) -> None:
    bench.fw.inject(0, Fault("no_reply", at_s=1.0, duration_s=2.0))
    assert bench("0VER") != b""
    bench.advance(1.5)
    assert bench("0DIA20") == b""
    bench.advance(2.0)
    assert bench("0DIA") == B("00S14.57")


def test_fault_garbage_both_ways_garbles_the_command_too(bench: Bench) -> None:
    bench.fw.inject(0, Fault("garbage", duration_s=1.0))  # the default path: both ways
    reply = bench("0DIA20")
    assert reply[0] == 2 and reply[-1] == 3 and all(b >= 0x80 for b in reply[1:-1])
    bench.advance(2.0)
    assert bench("0DIA") == B("00S14.57")  # the garbled command was not carried out


def test_fault_garbage_on_the_reply_path_mangles_replies_but_the_pump_acts(bench: Bench) -> None:
    bench.fw.inject(0, Fault("garbage", duration_s=1.0, path="reply"))
    reply = bench("0DIA20")
    assert reply[0] == 2 and reply[-1] == 3 and all(b >= 0x80 for b in reply[1:-1])
    bench.advance(2.0)
    assert bench("0DIA") == B("00S20.00")


def test_fault_no_reply_on_the_reply_path_obeys_in_silence(bench: Bench) -> None:
    bench("0RAT10UM")
    bench("0RUN")
    bench.fw.inject(0, Fault("no_reply", duration_s=1.0, path="reply"))
    assert bench("0STP") == b"" and bench("0STP") == b""  # a dead transmit wire: silence...
    assert bench.fw.snapshot(0).state == "S"  # ...but the pump heard and stopped


def test_the_watchdog_stops_a_pump_whose_line_went_deaf_at_its_time_out(bench: Bench) -> None:
    """Safe mode, then the line dies both ways: nothing valid reaches the pump, so its watchdog stops
    it timeout seconds after the last valid packet, not when someone looks; its auto-alarm packet is
    lost on the dead line; once the line is back the next packet reports A?T and re-arms the timer."""
    bench("0SAF5")
    bench(S("0RAT60UM"))  # 1 uL/s
    bench(S("0RUN"))
    bench.fw.inject(0, Fault("no_reply", at_s=1.0, duration_s=20.0))
    bench.advance(3.0)
    assert bench(S("0")) == b""  # deaf: this packet does not feed the watchdog
    bench.advance(27.0)
    snap = bench.fw.snapshot(0)
    assert (snap.state, snap.alarm) == ("S", "T")
    assert snap.infused_ul == pytest.approx(5.0)  # it ran until 5 s after the last valid packet
    assert bench.fw.pending() == b""  # the auto-alarm went out while the line was dead
    assert bench(S("0")) == S("00A?T")  # acknowledged by this reply
    assert bench(S("0RUN")) == S("00I")
    bench.advance(4.0)
    assert bench(S("0")) == S("00I")  # fed again: the timer restarted with the first valid packet
    bench.advance(5.5)
    assert bench.fw.snapshot(0).alarm == "T"


def test_fault_stall_waits_for_the_pump_to_run(bench: Bench) -> None:
    bench.fw.inject(0, Fault("stall"))
    assert bench("0") == B("00S")  # nothing to stall while stopped
    bench("0RAT10UM")
    bench("0RUN")
    bench.advance(0.1)
    assert bench("0") == B("00A?S")
    assert bench("0") == B("00S")
    assert bench.flows == [(0, 10.0), (0, 0.0)]


def test_fault_reset_clears_rate_and_diameter_and_keeps_safe_mode(bench: Bench) -> None:
    bench("0SAF30")
    bench(S("0RAT10UM"))
    bench(S("0RUN"))
    bench.fw.inject(0, Fault("reset", at_s=5.0))
    bench.advance(5.0)
    assert bench.fw.pending() == S("00A?R")
    assert bench(S("0")) == S("00A?R")
    assert bench(S("0DIA")) == S("00S0.000")
    assert bench(S("0RAT")) == S("00S0.000UM")
    assert bench(S("0RUN")) == S("00S?NA")
    assert bench.fw.snapshot(0).safe_timeout_s == 30


def test_fault_disconnect_unplugs_the_line() -> None:
    world = set_world("newera-disconnect", World(clock=VirtualClock()))
    try:
        url = "sim://newera/disconnect-bus?address=0&world=newera-disconnect&power_on_alarm=0"
        port = serial.serial_for_url(url, baudrate=19200, timeout=0.01)
        firmware = port._firmware  # noqa: SLF001 - the emulated line behind this port
        firmware.inject(0, Fault("disconnect", duration_s=10.0))
        assert not firmware.connected
        with pytest.raises(serial.SerialException, match="disconnected"):
            port.write(b"0VER\r")
        port.close()
        with pytest.raises(serial.SerialException, match="not present"):
            serial.serial_for_url(url, baudrate=19200)
        world.clock.sleep(11.0)
        port = serial.serial_for_url(url, baudrate=19200, timeout=0.01)
        port.write(b"0VER\r")
        assert port.read(100) == B("00SNE1000V3.928")
        port.close()
    finally:
        drop_bus("newera", "disconnect-bus")
        drop_world("newera-disconnect")


def test_unknown_fault_kind_is_refused(bench: Bench) -> None:
    with pytest.raises(ValueError, match="known"):
        bench.fw.inject(0, Fault("fire"))


# -- the sim:// factory ---------------------------------------------------------------------------------


def test_factory_reads_the_query() -> None:
    fw = from_url("q", {"address": ["0", "4"], "syringe_ul": ["5000", "25000"], "baud": ["9600"],
                        "version": ["NE1000X2V3.928"], "power_on_alarm": ["1"]})  # fmt: skip
    assert fw.baudrate == 9600
    assert fw.snapshot(4).content_ul == 25000.0 and fw.snapshot(0).content_ul == 5000.0
    assert fw.receive(b"4VER\r", 9600) == B("04A?R")
    assert fw.receive(b"4VER\r", 9600) == B("04SNE1000X2V3.928")
    for bad in ({"address": ["0", "0"]}, {"address": ["100"]}, {"baud": ["fast"]}, {"syringe_ul": ["-1"]},
                {"address": ["0", "1"], "syringe_ul": ["1", "2", "3"]}):  # fmt: skip
        with pytest.raises(ValueError):
            from_url("q", bad)
