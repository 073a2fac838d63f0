"""New Era driver: number spelling, framing, reply parsing (with hypothesis), golden transcripts
(exact bytes both ways, checked against the driver here and against the emulator too), and how every
error and alarm reply maps to an exception."""

from __future__ import annotations

import binascii
import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import simulators  # noqa: F401 - installs the sim:// URL handler
from drivers.base import PumpState
from drivers.errors import (
    CommunicationsAlarm,
    DeviceTimeout,
    OutOfRange,
    PowerResetAlarm,
    ProtocolError,
    StallAlarm,
)
from drivers.newera import (
    CommandIgnored,
    NewEraPump,
    NotApplicable,
    Reply,
    choose_rate_units,
    choose_volume_units,
    crc16_xmodem,
    encode_basic,
    encode_safe,
    format_number,
    parse_dispensed,
    parse_number,
    parse_rate,
    parse_reply,
    parse_version,
    rate_in_units,
    split_basic_frames,
    split_safe_frames,
)
from simulators.newera import NewEraFirmware
from simulators.serialsim import Firmware, register_protocol
from simulators.world import VirtualClock, World

# -- helpers that spell frames without the driver's code ------------------------------------------------


def B(text: str) -> bytes:
    """A Basic-mode reply: <STX>text<ETX>."""
    return b"\x02" + text.encode() + b"\x03"


def S(text: str) -> bytes:
    """A Safe-mode packet: <STX><len><data><CRC hi><CRC lo><ETX>, len counting every byte after STX."""
    data = text.encode()
    crc = binascii.crc_hqx(data, 0)
    return bytes([2, len(data) + 4]) + data + crc.to_bytes(2, "big") + b"\x03"


# The one packet the manual spells out byte by byte (section 10.2.2): back to Basic mode.
MANUAL_SAF0 = bytes([0x02, 0x08]) + b"SAF0" + bytes([0x55, 0x43, 0x03])

# -- CRC and framing ------------------------------------------------------------------------------------


def test_crc16_xmodem_known_vectors() -> None:
    assert crc16_xmodem(b"123456789") == 0x31C3  # the CRC-16/XMODEM check value
    assert crc16_xmodem(b"") == 0x0000
    assert crc16_xmodem(b"A") == 0x58E5
    assert crc16_xmodem(b"SAF0") == 0x5543  # the manual's packet


def test_safe_encoding_matches_the_manuals_packet() -> None:
    assert encode_safe(None, "SAF0") == MANUAL_SAF0
    assert S("SAF0") == MANUAL_SAF0


def test_basic_encoding() -> None:
    assert encode_basic(0, "DIA26.59") == b"0DIA26.59\r"
    assert encode_basic(12, "") == b"12\r"
    assert encode_basic(None, "VER") == b"VER\r"


def test_split_frames_skip_noise_and_keep_partial() -> None:
    assert split_basic_frames(b"\xff\x0200S\x03\x02\x0201I") == [b"00S"]
    assert split_basic_frames(b"\x0200S\x0201I\x03") == [b"01I"]  # a broken frame, then a whole one
    frames = split_safe_frames(b"junk" + S("00S") + S("01A?S")[:-2])
    assert [(f.data, f.crc_ok) for f in frames] == [(b"00S", True)]
    bad = bytearray(S("00S"))
    bad[3] ^= 0x01
    assert [(f.data, f.crc_ok) for f in split_safe_frames(bytes(bad))] == [(b"01S", False)]


@given(data=st.binary(min_size=0, max_size=40), flip=st.integers(0, 10_000), bit=st.integers(0, 7))
def test_safe_frames_round_trip_and_any_single_bit_error_is_caught(data: bytes, flip: int, bit: int) -> None:
    crc = crc16_xmodem(data)
    packet = bytes([2, len(data) + 4]) + data + bytes([crc >> 8, crc & 0xFF, 3])
    assert [(f.data, f.crc_ok) for f in split_safe_frames(packet)] == [(data, True)]
    corrupt = bytearray(packet)
    i = 2 + flip % (len(data) + 2)  # a bit in the data or the CRC
    corrupt[i] ^= 1 << bit
    assert all(not f.crc_ok or f.data != data for f in split_safe_frames(bytes(corrupt)))


def test_lenient_reading_of_peers_that_count_or_spell_differently() -> None:
    assert parse_reply(b"0S") == Reply(0, PumpState.STOPPED, None, "")  # one address digit
    assert parse_rate("1.5 UM") == (1.5, "UM")
    for slack in (1, -1):  # a length byte off by one, proven by the CRC
        data = b"00S"
        crc = crc16_xmodem(data)
        packet = bytes([2, len(data) + 4 + slack]) + data + bytes([crc >> 8, crc & 0xFF, 3])
        assert [(f.data, f.crc_ok) for f in split_safe_frames(packet)] == [(data, True)]


# -- numbers --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "text"),
    [(1234, "1234"), (123.4, "123.4"), (12.34, "12.34"), (1.234, "1.234"), (0.123, "0.123"), (26.59, "26.59"),
     (0.5, "0.5"), (100.0, "100"), (9999.4, "9999"), (9.9996, "10"), (0.0004, "0"), (12.345, "12.35")],
)  # fmt: skip
def test_format_number_examples(value: float, text: str) -> None:
    assert format_number(value) == text


@pytest.mark.parametrize("value", [-1.0, 9999.5, 12345.0, math.inf, math.nan])
def test_format_number_refuses_what_four_digits_cannot_hold(value: float) -> None:
    with pytest.raises(OutOfRange, match="4"):
        format_number(value)


@given(st.floats(min_value=0.0, max_value=9999.49, allow_nan=False))
def test_format_number_keeps_four_digits_and_rounds_to_the_last_place(value: float) -> None:
    text = format_number(value)
    assert parse_number(text) == float(text)  # within 4 digits, 3 decimals
    int_digits = len(str(int(value))) if value >= 1 else 1
    decimals = min(3, max(0, 4 - int_digits))
    assert abs(float(text) - value) <= 0.5 * 10**-decimals + 1e-9


@given(st.from_regex(r"\A[0-9]{0,6}(\.[0-9]{0,5})?\Z"))
def test_parse_number_takes_exactly_four_digits_three_decimals(text: str) -> None:
    whole, _, frac = text.partition(".")
    ok = bool(whole or frac) and len(whole) + len(frac) <= 4 and len(frac) <= 3
    if ok:
        assert parse_number(text) == float(text)
    else:
        with pytest.raises(ValueError):
            parse_number(text)


@pytest.mark.parametrize(
    ("rate", "expected"),
    [(50.0, ("50", "UM")), (0.5, ("0.5", "UM")), (0.0125, ("0.75", "UH")), (1.2345, ("74.07", "UH")), (2000.0, ("2000", "UM")),
     (12345.0, ("740.7", "MH")), (0.001, ("0.001", "UM")), (0.0012345, ("0.074", "UH")), (1e6, ("1000", "MM"))],
)  # fmt: skip
def test_choose_rate_units_examples(rate: float, expected: tuple[str, str]) -> None:
    assert choose_rate_units(rate) == expected


@pytest.mark.parametrize("rate", [0.0, -1.0, math.nan, math.inf, 1e-6, 1.7e7])
def test_rates_no_unit_can_carry_are_refused_before_sending(rate: float) -> None:
    with pytest.raises(OutOfRange):
        choose_rate_units(rate)


@given(st.floats(min_value=1 / 60, max_value=1.6e5, allow_nan=False))
def test_rate_units_keep_four_significant_digits_across_the_pumps_range(rate: float) -> None:
    text, units = choose_rate_units(rate)
    parse_number(text)
    _, err = rate_in_units(rate, units)  # type: ignore[misc]
    assert err <= 5e-4 + 1e-12
    # no other unit spells it more precisely
    others = [rate_in_units(rate, u) for u in ("UM", "UH", "MM", "MH")]
    assert err <= min(o[1] for o in others if o is not None) + 1e-15


@given(st.floats(min_value=1e-3, max_value=9e6, allow_nan=False))
def test_volume_units(volume: float) -> None:
    text, units = choose_volume_units(volume)
    back = parse_number(text) * (1000.0 if units == "ML" else 1.0)
    assert back == pytest.approx(volume, rel=5e-3, abs=5e-4)


# -- reply parsing --------------------------------------------------------------------------------------

printable = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=20)


@given(address=st.integers(0, 99), prompt=st.sampled_from("IWSPTUX"), data=printable)
def test_parse_reply_round_trip(address: int, prompt: str, data: str) -> None:
    reply = parse_reply(f"{address:02d}{prompt}{data}".encode())
    assert reply == Reply(address, PumpState(prompt), None, data)


@given(address=st.integers(0, 99), kind=st.sampled_from("RSTEO"))
def test_parse_alarm_round_trip(address: int, kind: str) -> None:
    assert parse_reply(f"{address:02d}A?{kind}".encode()) == Reply(address, None, kind, "")


@given(st.binary(max_size=30))
def test_parse_reply_never_fails_other_than_with_protocol_error(raw: bytes) -> None:
    try:
        parse_reply(raw)
    except ProtocolError:
        pass


@pytest.mark.parametrize(
    ("data", "expected"),
    [("I1.234W0.000ML", (1234.0, 0.0)), ("I50.00W0.000UL", (50.0, 0.0)), ("I0W2UL", (0.0, 2.0)),
     ("I9999.W12.5UL", (9999.0, 12.5))],
)  # fmt: skip
def test_parse_dispensed(data: str, expected: tuple[float, float]) -> None:
    assert parse_dispensed(data) == pytest.approx(expected)


@given(inf=st.floats(0, 9999), wdr=st.floats(0, 9999), units=st.sampled_from(["UL", "ML"]))
def test_parse_dispensed_any_spelling(inf: float, wdr: float, units: str) -> None:
    got = parse_dispensed(f"I{format_number(inf)}W{format_number(wdr)}{units}")
    factor = 1000.0 if units == "ML" else 1.0
    assert got == pytest.approx((float(format_number(inf)) * factor, float(format_number(wdr)) * factor))


def test_parse_rate_and_version() -> None:
    assert parse_rate("1.500UM") == (1.5, "UM")
    assert parse_rate("30MH") == (500.0, "MH")
    assert parse_version("NE1000V3.928") == ("NE-1000", "3.928")
    assert parse_version("NE1000X2V3.928") == ("NE-1000X2", "3.928")
    assert parse_version("NE500V3.919") == ("NE-500", "3.919")
    for bad, fn in [("1.5", parse_rate), ("I1W2", parse_dispensed), ("PHD2000", parse_version)]:
        with pytest.raises(ProtocolError):
            fn(bad)


# -- golden transcripts: exact bytes both ways ----------------------------------------------------------
#
# Built from the manual's syntax (section 10.2): requests "[address]COMMAND[params]<CR>", replies
# "<STX><2-digit address><prompt|A?x>[data]<ETX>", Safe packets as S() above. Steps are
# (request, reply) or ("advance", seconds) for the emulator's clock. Each session starts from a
# freshly powered pump at address 0 (reset alarm pending, 14.57 mm syringe, basic mode, 19200 baud).

CONNECT_BASIC = [
    (b"0\r", B("00A?R")),  # power-up reset alarm, acknowledged by this reply
    (b"0VER\r", B("00SNE1000V3.928")),
    (b"0PHN1\r", B("00S")),  # program phase 1 ...
    (b"0FUNRAT\r", B("00S")),  # ... as a plain rate phase
    (b"0DIRINF\r", B("00S")),
    (b"0RAT\r", B("00S0.000UM")),
    (b"0DIA\r", B("00S14.57")),
    (b"0VOLUL\r", B("00S")),
    (b"0VOL0\r", B("00S")),
]
INFUSE = [
    (b"0RAT50UM\r", B("00S")),
    (b"0RUN\r", B("00I")),
    ("advance", 60.0),
    (b"0\r", B("00I")),
    (b"0RAT\r", B("00I50.00UM")),
    (b"0DIS\r", B("00II50.00W0.000UL")),
    (b"0RAT30UH\r", B("00I?NA")),  # units cannot change while pumping (driver never sends this)
    (b"0RAT60\r", B("00I")),
    (b"0STP\r", B("00P")),  # STP pauses a running program
    (b"0STP\r", B("00S")),  # a second STP stops it
]
ERRORS = [
    (b"0RAT12.345UM\r", B("00S?OOR")),  # 5 digits
    (b"0RAT1.2345UM\r", B("00S?OOR")),  # 4 decimals
    (b"0DIA99\r", B("00S?OOR")),
    (b"0XYZ\r", B("00S?")),
    (b"7VER\r", b""),  # nobody at address 7
]
CONNECT_SAFE = [
    (b"0\r", B("00A?R")),
    (b"0SAF5\r", S("00S")),  # the reply already comes framed in Safe mode
    (S("0VER"), S("00SNE1000V3.928")),
    (S("0PHN1"), S("00S")),
    (S("0FUNRAT"), S("00S")),
    (S("0DIRINF"), S("00S")),
    (S("0RAT"), S("00S0.000UM")),
    (S("0DIA"), S("00S14.57")),
    (S("0VOLUL"), S("00S")),
    (S("0VOL0"), S("00S")),
]
SAFE_WATCHDOG = [
    (S("0RAT50UM"), S("00S")),
    (S("0RUN"), S("00I")),
    ("advance", 6.0),  # > 5 s without a valid packet: the pump stops with A?T, sent unsolicited too
    (S("0"), S("00A?T")),
    (S("0"), S("00S")),
]
LEAVE_SAFE = [
    (b"0\r", b""),  # a pump in Safe mode ignores Basic text
    (S("0"), S("00S")),
    (S("0SAF0"), B("00S")),  # the reply comes in Basic framing already
]


def _emulator(power_on_alarm: bool = True) -> tuple[NewEraFirmware, World]:
    world = World(clock=VirtualClock())
    return NewEraFirmware("golden", [0], world=world, power_on_alarm=power_on_alarm), world


def _play(fw: NewEraFirmware, world: World, steps: list) -> None:
    for request, reply in steps:
        if request == "advance":
            world.clock.sleep(reply)
            continue
        got = fw.receive(request, 19200)
        assert got == reply, f"{request!r}: expected {reply!r}, got {got!r}"


@pytest.mark.parametrize(
    "session",
    [CONNECT_BASIC + INFUSE, CONNECT_BASIC + ERRORS, CONNECT_SAFE + SAFE_WATCHDOG, CONNECT_SAFE + LEAVE_SAFE],
    ids=["infuse", "errors", "safe-watchdog", "leave-safe"],
)
def test_golden_transcripts_against_the_emulator(session: list) -> None:
    fw, world = _emulator()
    _play(fw, world, session)


def test_the_manuals_saf0_packet_returns_the_emulator_to_basic_mode() -> None:
    fw, world = _emulator()
    _play(fw, world, CONNECT_SAFE)
    assert fw.receive(MANUAL_SAF0, 19200) == B("00S")  # no address: every pump takes it
    assert fw.receive(b"0\r", 19200) == B("00S")


def test_the_watchdog_alarm_is_also_sent_unsolicited_and_not_cleared_by_that() -> None:
    fw, world = _emulator()
    _play(fw, world, CONNECT_SAFE + SAFE_WATCHDOG[:2])
    world.clock.sleep(6.0)
    assert fw.pending() == S("00A?T")
    assert fw.receive(S("0"), 19200) == S("00A?T")


class ScriptedFirmware(Firmware):
    """Replays a transcript: each expected request gets its reply; anything else gets silence."""

    def __init__(self, steps: list, baudrate: int = 19200) -> None:
        self.steps = [s for s in steps if s[0] != "advance"]
        self.baudrate = baudrate
        self.unexpected: list[bytes] = []

    def receive(self, data: bytes, baudrate: int) -> bytes:
        if baudrate != self.baudrate:
            return b""
        if not self.steps or self.steps[0][0] != data:
            self.unexpected.append(data)
            return b""
        return self.steps.pop(0)[1]


_scripts: dict[str, ScriptedFirmware] = {}
register_protocol("neweragolden", lambda bus, query: _scripts[bus])
_bus_ids = itertools.count()


def scripted_pump(steps: list, **kwargs: object) -> tuple[NewEraPump, ScriptedFirmware]:
    bus = f"golden{next(_bus_ids)}"
    fw = _scripts[bus] = ScriptedFirmware(steps, int(kwargs.pop("firmware_baud", 19200)))  # type: ignore[call-overload]
    kwargs.setdefault("reply_timeout_s", 0.05)
    kwargs.setdefault("heartbeat", False)
    return NewEraPump("golden", f"sim://neweragolden/{bus}", **kwargs), fw  # type: ignore[arg-type]


def test_golden_connect_infuse_status_stop() -> None:
    session = CONNECT_BASIC + [s for s in INFUSE if s[0] not in (b"0RAT30UH\r",)]
    pump, fw = scripted_pump(session)
    try:
        pump.connect()
        assert (pump.model, pump.firmware, pump.baudrate) == ("NE-1000", "3.928", 19200)
        pump.set_rate_ul_min(50.0)
        pump.run()
        status = pump.status()
        assert (status.state, status.rate_ul_min, status.dispensed_ul, status.alarm) == (
            PumpState.INFUSING, 50.0, 50.0, None,
        )  # fmt: skip
        pump.set_rate_ul_min(60.0)  # same units while pumping: units left out, as the manual asks
        pump.stop()
        assert fw.unexpected == [] and fw.steps == []
    finally:
        pump.close()


def test_golden_safe_mode_connect_and_watchdog_alarm() -> None:
    pump, fw = scripted_pump(CONNECT_SAFE + SAFE_WATCHDOG[:2] + [(S("0"), S("00A?T")), (S("0RAT"), S("00S50.00UM")),
                             (S("0DIS"), S("00SI0.000W0.000UL"))], safe_mode_timeout_s=5)  # fmt: skip
    try:
        pump.connect()
        assert pump.safe_mode
        pump.set_rate_ul_min(50.0)
        pump.run()
        status = pump.status()
        assert (status.state, status.alarm) == (PumpState.STOPPED, "comms")
        assert fw.unexpected == [] and fw.steps == []
    finally:
        pump.close()


def test_golden_leaving_safe_mode_when_the_rig_wants_basic() -> None:
    steps = LEAVE_SAFE + [s for s in CONNECT_BASIC if s[0] != b"0\r"]
    pump, fw = scripted_pump(steps)
    try:
        pump.connect()
        assert not pump.safe_mode
        assert fw.unexpected == [] and fw.steps == []  # the Basic probe went unanswered, as scripted
    finally:
        pump.close()


def test_golden_baud_fallback_to_9600() -> None:
    pump, fw = scripted_pump(CONNECT_BASIC, firmware_baud=9600)
    try:
        pump.connect()
        assert pump.baudrate == 9600
        assert fw.steps == []
    finally:
        pump.close()


def test_golden_model_variant_version() -> None:
    steps = [(b"0\r", B("00S")), (b"0VER\r", B("00SNE1000X2V3.928"))] + CONNECT_BASIC[2:]
    pump, _ = scripted_pump(steps)
    try:
        pump.connect()
        assert (pump.model, pump.firmware) == ("NE-1000X2", "3.928")
    finally:
        pump.close()


# -- every error and alarm reply maps to its exception --------------------------------------------------


# (reply, exception, times sent): an idempotent command whose reply does not parse is sent 3 times
@pytest.mark.parametrize(
    ("reply", "error", "attempts"),
    [(B("00S?OOR"), OutOfRange, 1), (B("00I?NA"), NotApplicable, 1), (B("00S?IGN"), CommandIgnored, 1),
     (B("00S?"), ProtocolError, 1), (B("00A?S"), StallAlarm, 1), (B("00A?R"), PowerResetAlarm, 1),
     (B("00A?T"), CommunicationsAlarm, 1), (B("00Z"), ProtocolError, 3), (B("01S"), ProtocolError, 3),
     (b"\x02\xb0\xb0\xd3\x03", ProtocolError, 3)],
)  # fmt: skip
def test_reply_to_exception(reply: bytes, error: type[Exception], attempts: int) -> None:
    pump, fw = scripted_pump(CONNECT_BASIC + [(b"0DIA20\r", reply)] * attempts)
    try:
        pump.connect()
        with pytest.raises(error) as info:
            pump.set_syringe_diameter_mm(20.0)
        assert "golden" in str(info.value) and info.value.hint  # names the pump, says what to check
        assert fw.steps == []
    finally:
        pump.close()


def test_an_alarm_is_reported_by_status_and_stop_absorbs_it() -> None:
    steps = CONNECT_BASIC + [
        (b"0RAT10UM\r", B("00A?S")),
        (b"0\r", B("00S")),
        (b"0RAT\r", B("00S0.000UM")),
        (b"0DIS\r", B("00SI0.000W0.000UL")),
        (b"0STP\r", B("00A?S")),  # a second stall, acknowledged by stop(), which asks again
        (b"0STP\r", B("00S")),
    ]
    pump, fw = scripted_pump(steps)
    try:
        pump.connect()
        with pytest.raises(StallAlarm, match="not carried out"):
            pump.set_rate_ul_min(10.0)
        assert pump.status().alarm == "stall"
        pump.safe_state()
        assert fw.steps == []
    finally:
        pump.close()


def test_a_corrupted_packet_reply_is_sent_again() -> None:
    steps = CONNECT_BASIC + [(b"0DIA20\r", B("00S?COM")), (b"0DIA20\r", B("00S")), (b"0VOLUL\r", B("00S")),
                             (b"0VOL0\r", B("00S"))]  # fmt: skip
    pump, fw = scripted_pump(steps)
    try:
        pump.connect()
        pump.set_syringe_diameter_mm(20.0)
        assert fw.steps == []
    finally:
        pump.close()


def test_run_answered_not_applicable_while_pumping_is_success() -> None:
    steps = CONNECT_BASIC + [
        (b"0RUN\r", B("00I?NA")),
        (b"0\r", B("00I")),
        (b"0RUN\r", B("00S?NA")),
        (b"0\r", B("00S")),
    ]
    pump, fw = scripted_pump(steps)
    try:
        pump.connect()
        pump.run()  # already pumping: some firmware says ?NA, which run() takes as done
        with pytest.raises(NotApplicable):
            pump.run()  # stopped and still ?NA: a real refusal
        assert fw.steps == []
    finally:
        pump.close()


def test_a_model_without_programs_still_connects() -> None:
    steps = list(CONNECT_BASIC)
    steps[2] = (b"0PHN1\r", B("00S?"))
    steps[3] = (b"0FUNRAT\r", B("00S?"))
    pump, fw = scripted_pump(steps)
    try:
        pump.connect()
        assert fw.steps == []
    finally:
        pump.close()


def test_run_is_not_resent_when_the_pump_is_running_after_a_lost_reply() -> None:
    steps = CONNECT_BASIC + [(b"0RUN\r", b""), (b"0\r", B("00I"))]
    pump, fw = scripted_pump(steps)
    try:
        pump.connect()
        pump.run()
        assert fw.steps == [] and fw.unexpected == []
    finally:
        pump.close()


def test_run_is_resent_once_when_the_pump_is_known_stopped() -> None:
    steps = CONNECT_BASIC + [(b"0RUN\r", b""), (b"0\r", B("00S")), (b"0RUN\r", B("00I"))]
    pump, fw = scripted_pump(steps)
    try:
        pump.connect()
        pump.run()
        assert fw.steps == []
    finally:
        pump.close()


def test_run_lost_and_pump_silent_raises_the_timeout_without_resending() -> None:
    pump, fw = scripted_pump(CONNECT_BASIC)
    try:
        pump.connect()
        with pytest.raises(DeviceTimeout, match="RUN"):
            pump.run()
        assert fw.unexpected.count(b"0RUN\r") == 1  # sent once, then only status queries
    finally:
        pump.close()


def test_rate_unit_change_while_pumping_stops_changes_and_restarts() -> None:
    steps = CONNECT_BASIC + [
        (b"0RAT50UM\r", B("00S")),
        (b"0RUN\r", B("00I")),
        (b"0STP\r", B("00P")),
        (b"0STP\r", B("00S")),
        (b"0RAT0.074UH\r", B("00S")),
        (b"0RUN\r", B("00I")),
    ]
    pump, fw = scripted_pump(steps)
    try:
        pump.connect()
        pump.set_rate_ul_min(50.0)
        pump.run()
        pump.set_rate_ul_min(0.0012345)  # 0.001 UM is 19 % off; 0.074 UH is 0.1 % off
        assert fw.steps == [] and fw.unexpected == []
    finally:
        pump.close()


@settings(max_examples=30, deadline=None)
@given(st.floats(min_value=0.38, max_value=35_000.0))  # the NE-1000's range with a 26.59 mm syringe
def test_every_rate_the_driver_spells_is_accepted_by_the_emulator(rate: float) -> None:
    fw, _ = _emulator(power_on_alarm=False)
    fw.receive(b"0DIA26.59\r", 19200)
    text, units = choose_rate_units(rate)
    assert fw.receive(f"0RAT{text}{units}\r".encode(), 19200) == B("00S")
    assert fw.snapshot(0).rate_ul_min == pytest.approx(rate, rel=5e-4)


def test_bad_inputs_never_reach_the_port() -> None:
    pump, fw = scripted_pump(CONNECT_BASIC)
    try:
        pump.connect()
        for bad in (0.0, -5.0, math.nan, 2e7):
            with pytest.raises(OutOfRange, match="^golden: rate"):
                pump.set_rate_ul_min(bad)
        for bad in (0.05, 90.0, math.inf):
            with pytest.raises(OutOfRange, match="diameter"):
                pump.set_syringe_diameter_mm(bad)
        assert fw.unexpected == []
    finally:
        pump.close()
    with pytest.raises(OutOfRange, match="address"):
        NewEraPump("x", "sim://newera/none", address=100)
    with pytest.raises(OutOfRange, match="safe-mode"):
        NewEraPump("x", "sim://newera/none", safe_mode_timeout_s=300)
