"""The Harvard/KDS pump driver against scripted firmware: exact bytes, framing, errors, retries, alarms."""

from __future__ import annotations

import itertools
import math
import re
import urllib.parse
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from drivers import harvard
from drivers.base import PumpState, SyringePump
from drivers.errors import (
    DeviceAlarm,
    DeviceTimeout,
    NotConnected,
    OutOfRange,
    PowerResetAlarm,
    ProtocolError,
    StallAlarm,
)
from drivers.harvard import (
    XON,
    HarvardPump,
    format_number,
    format_rate,
    parse_quantity,
    parse_reply,
    parse_status,
    raise_for_errors,
)
from simulators.serialsim import Firmware, get_bus, install_url_handler, register_protocol
from simulators.world import drop_world

GOLDEN = Path(__file__).with_name("test_harvard_golden.txt")


def load_golden(path: Path = GOLDEN) -> dict[str, tuple[dict[str, list[str]], list[tuple[bytes, bytes]]]]:
    """Sessions of the golden transcript file: name -> (sim URL query, [(request, reply)])."""

    def decode(text: str) -> bytes:
        return text.encode("ascii").decode("unicode_escape").encode("latin-1")

    sessions: dict[str, tuple[dict[str, list[str]], list[tuple[bytes, bytes]]]] = {}
    pairs: list[tuple[bytes, bytes]] = []
    for line in path.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        header = re.match(r"^\[(\S+)\]\s*(.*)$", line)
        if header:
            pairs = []
            sessions[header.group(1)] = (urllib.parse.parse_qs(header.group(2).replace(" ", "&")), pairs)
        elif line.startswith(">"):
            pairs.append((decode(line[2:]), b""))
        elif line.startswith("<"):
            pairs[-1] = (pairs[-1][0], decode(line[2:]))
        else:
            raise ValueError(f"{path}: line not understood: {line!r}")
    return sessions


# -- scripted firmware -------------------------------------------------------------------------------

Step = tuple[bytes, bytes | None] | tuple[bytes, bytes | None, bytes]


class ScriptedFirmware(Firmware):
    """Plays one side of a transcript: checks every request's exact bytes, answers the recorded reply.

    A step is ``(request, reply)`` or ``(request, reply, later)``: ``None`` is silence, ``later`` bytes
    arrive on the next read (a reply split across reads)."""

    baudrate = 115200

    def __init__(self, steps: list[Step]) -> None:
        self.steps = list(steps)
        self.received: list[bytes] = []
        self.mismatches: list[tuple[bytes, bytes]] = []
        self._buffer = b""
        self._later = b""

    def receive(self, data: bytes, baudrate: int) -> bytes:
        self._buffer += data
        out = b""
        while b"\r" in self._buffer:
            line, _, self._buffer = self._buffer.partition(b"\r")
            request = line + b"\r"
            self.received.append(request)
            if not self.steps:
                self.mismatches.append((b"<end of script>", request))
                continue
            step = self.steps.pop(0)
            if step[0] != request:
                self.mismatches.append((step[0], request))
            out += step[1] or b""
            if len(step) == 3:
                self._later += step[2]
        return out

    def pending(self) -> bytes:
        out, self._later = self._later, b""
        return out

    def assert_done(self) -> None:
        assert self.mismatches == []
        assert self.steps == [], f"the driver did not send {[s[0] for s in self.steps]}"


_scripts: dict[str, ScriptedFirmware] = {}
_bus_numbers = itertools.count()
register_protocol("harvardscript", lambda bus, query: _scripts[bus])
install_url_handler()


def scripted(steps: list[Step]) -> tuple[ScriptedFirmware, str]:
    """A scripted line and the sim:// URL that opens it."""
    bus = f"script{next(_bus_numbers)}"
    firmware = _scripts[bus] = ScriptedFirmware(steps)
    return firmware, f"sim://harvardscript/{bus}"


def prompt(address: int, char: str = ":", xon: bool = True) -> bytes:
    return b"\n" + (f"{address:02d}".encode() if address else b"") + char.encode() + (XON if xon else b"")


def text(address: int, *lines: str) -> bytes:
    prefix = f"{address:02d}:".encode() if address else b""
    return b"".join(b"\n" + prefix + line.encode() + b"\r" for line in lines)


def cmd(address: int, command: str) -> bytes:
    return (f"{address:02d}:" if address else "").encode() + command.encode() + b"\r"


def init_steps(
    address: int = 0, diameter: str = "14.5", limits: str = "29.7271 nl/min to 30.7983 ml/min"
) -> list[Step]:
    return [
        (cmd(address, ""), prompt(address, xon=False)),
        (cmd(address, "poll on"), prompt(address)),
        (cmd(address, "nvram none"), prompt(address)),
        (cmd(address, "ver"), text(address, "PHD ULTRA 2.0.4") + prompt(address)),
        (cmd(address, "diameter"), text(address, "26.5900 mm") + prompt(address)),
        (cmd(address, f"diameter {diameter}"), prompt(address)),
        (cmd(address, "irate lim"), text(address, limits) + prompt(address)),
    ]


def connected(steps: list[Step], address: int = 0, **kwargs: object) -> tuple[HarvardPump, ScriptedFirmware]:
    firmware, url = scripted(init_steps(address) + steps)
    options: dict[str, object] = {"timeout_s": 0.05, "retries": 0, "xon_grace_s": 0.01} | kwargs
    pump = HarvardPump("q", url, address=address, syringe_diameter_mm=14.5, **options)  # type: ignore[arg-type]
    pump.connect()
    return pump, firmware


@pytest.fixture(autouse=True)
def _close_lines():
    yield
    for url in list(harvard._lines):
        for pump in list(harvard._lines[url].pumps.values()):
            pump.close()


# -- golden transcripts ------------------------------------------------------------------------------

DRIVER_ACTIONS: dict[str, tuple[dict[str, object], Callable[[HarvardPump], None]]] = {
    "driver-address-0": (
        {"address": 0, "syringe_diameter_mm": 14.5},
        lambda p: (p.set_rate_ul_min(3.2), p.run(), p.status(), p.dispensed_ul(), p.stop()),
    ),
    "driver-address-12": (
        {"address": 12, "syringe_diameter_mm": 26.59},
        lambda p: (p.set_rate_ul_min(2500), p.run(), p.status(), p.stop(), p.safe_state()),
    ),
}


@pytest.mark.parametrize("session", sorted(DRIVER_ACTIONS))
def test_driver_sends_the_golden_bytes(session: str) -> None:
    _, pairs = load_golden()[session]
    firmware, url = scripted(list(pairs))
    kwargs, actions = DRIVER_ACTIONS[session]
    pump = HarvardPump("golden", url, timeout_s=0.2, xon_grace_s=0.01, **kwargs)  # type: ignore[arg-type]
    pump.connect()
    actions(pump)
    firmware.assert_done()


@pytest.mark.parametrize("session", sorted(load_golden()))
def test_emulator_answers_the_golden_bytes(session: str) -> None:
    """The emulator, fed the same transcript, answers byte for byte what the transcript says."""
    query, pairs = load_golden()[session]
    line = get_bus(
        "harvard", f"golden-{session}-{next(_bus_numbers)}", query | {"world": [f"golden-{session}"]}
    )
    drop_world(f"golden-{session}")  # a fresh virtual clock for the next run
    for request, reply in pairs:
        assert line.receive(request, line.baudrate) == reply, request
    assert line.pending() == b""


def test_golden_status_reads_back() -> None:
    _, pairs = load_golden()["driver-address-12"]
    firmware, url = scripted(list(pairs))
    pump = HarvardPump("golden", url, address=12, syringe_diameter_mm=26.59, xon_grace_s=0.01)
    pump.connect()
    assert pump.firmware == "11 ELITE I/W Single 3.0.4"
    assert pump.rate_limits == pytest.approx((0.0853045, 88400.0))
    pump.set_rate_ul_min(2500)
    pump.run()
    status = pump.status()
    assert status.state is PumpState.INFUSING and status.running
    assert status.rate_ul_min == pytest.approx(2500, rel=1e-9)
    assert status.dispensed_ul == 0 and status.alarm is None


def test_pump_satisfies_protocol() -> None:
    assert isinstance(HarvardPump("p", "sim://harvard/x"), SyringePump)


# -- number formatting -------------------------------------------------------------------------------


@given(st.floats(min_value=1e-9, max_value=1e9, allow_nan=False, allow_infinity=False))
def test_format_number_is_plain_and_close(value: float) -> None:
    text = format_number(value)
    assert re.fullmatch(r"\d+(\.\d+)?", text), text
    assert len(text.replace(".", "").lstrip("0").rstrip("0")) <= harvard.SIGNIFICANT_DIGITS
    assert math.isclose(float(text), value, rel_tol=5.01e-5)


@given(st.floats(min_value=1e-6, max_value=3e5, allow_nan=False, allow_infinity=False))
def test_format_rate_keeps_precision_in_few_decimals(rate: float) -> None:
    number, units = format_rate(rate)
    assert units in {"ml/min", "ul/min", "nl/min", "pl/min"}
    assert re.fullmatch(r"\d+(\.\d{1,4})?", number), number
    assert math.isclose(parse_quantity(f"{number} {units}"), rate, rel_tol=5.01e-5)
    assert 1 <= float(number) <= 1000


@given(st.floats(min_value=1e-3, max_value=1e5), st.sampled_from([-1, 1]))
@example(0.009, 1)  # "9 nl/min" read back as 9 * 0.001 = 0.009000000000000001 once broke the upper limit
def test_format_rate_stays_inside_the_pumps_limits(limit: float, side: int) -> None:
    low, high = (limit, limit * 7.77777) if side < 0 else (limit / 7.77777, limit)
    rate = low if side < 0 else high
    number, units = format_rate(rate, (low, high))
    assert low <= parse_quantity(f"{number} {units}") <= high


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -1.0])
def test_format_number_refuses_what_the_pump_cannot_read(bad: float) -> None:
    with pytest.raises(ValueError):
        format_number(bad)


# -- reply parsing -----------------------------------------------------------------------------------

_line_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=30).filter(
    lambda s: s.strip() != ""
)


@settings(max_examples=200)
@given(
    address=st.integers(0, 99),
    lines=st.lists(_line_text, max_size=4),
    char=st.sampled_from([":", ">", "<", "*", "T*"]),
    xon=st.booleans(),
    crlf=st.booleans(),
)
def test_parse_reply_inverts_the_manuals_framing(
    address: int, lines: list[str], char: str, xon: bool, crlf: bool
) -> None:
    raw = text(address, *lines) + (b"\r" if crlf and not lines else b"") + prompt(address, char, xon)
    reply = parse_reply(raw, address)
    assert reply.lines == tuple(lines) and reply.prompt == char and reply.xon == xon


def test_parse_reply_drops_an_echo_and_accepts_00_prefixes() -> None:
    assert parse_reply(b"irate\r\n5.0000 ul/min\r\n:", 0, sent="irate").lines == ("5.0000 ul/min",)
    assert parse_reply(b"\n00:5.0000 ul/min\r\n00:T*\x11", 0) == harvard.Reply(("5.0000 ul/min",), "T*", True)
    assert parse_reply(b"\n07:T*", 7).prompt == "T*"


def test_parse_reply_drops_the_address_and_present_prompt_that_lead_each_line() -> None:
    """A chained Elite 11 leads each text line with its address and its prompt of the moment (flowchem's
    driver, written against real pumps, reads them so): "01>" while infusing was read as part of the
    status line ("status line not understood"), "01*" after a stall hid the stall behind that error."""
    infusing = parse_reply(b"\n01>1666666667 0 0 i...I\r\n01>\x11", 1)
    assert infusing == harvard.Reply(("1666666667 0 0 i...I",), ">", True)
    assert parse_reply(b"\n02*10 0 0 i.S.I\r\n02*", 2).lines == ("10 0 0 i.S.I",)
    assert parse_reply(b"\n03T*1.0000 ml\r\n03T*", 3).lines == ("1.0000 ml",)
    assert parse_reply(b"\n00<0.5000 ul\r\n<", 0).lines == ("0.5000 ul",)
    assert parse_reply(b"\n0.5000 ul\r\n:", 0).lines == ("0.5000 ul",)  # address 0 without a prefix


@pytest.mark.parametrize(
    "raw",
    [b"\n01:", b"\n:\x11", b"garbage", b"\n\xfe:", b""],
    ids=["other pump", "pump 0 for pump 5", "no prompt", "not ascii", "empty"],
)
def test_parse_reply_rejects(raw: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse_reply(raw, 5 if raw != b"\n01:" else 2)


@given(
    rate=st.integers(0, 10**13),
    time=st.integers(0, 10**9),
    volume=st.integers(0, 10**15),
    direction=st.sampled_from("iwIW"),
    stall=st.booleans(),
    target=st.sampled_from(["", ".", "T"]),
)
def test_parse_status(rate: int, time: int, volume: int, direction: str, stall: bool, target: str) -> None:
    flags = direction + "." + ("S" if stall else ".") + "." + "I" + target
    report = parse_status(f"{rate} {time} {volume} {flags}")
    assert report.rate_ul_min == pytest.approx(rate * 60 / 1e9)
    assert report.volume_ul == pytest.approx(volume / 1e9)
    assert report.time == time and report.direction == direction.lower() and report.stalled == stall
    assert report.target_reached == (target == "T")
    assert report.motor_running == (direction.isupper() if target else None)


@pytest.mark.parametrize("line", ["", "1 2 3", "1 2 3 x....", "a 2 3 i....", "1 2 3 i...."[:-2]])
def test_parse_status_rejects(line: str) -> None:
    with pytest.raises(ProtocolError):
        parse_status(line)


@pytest.mark.parametrize(
    ("quantity", "ul"),
    [
        ("1.5 ml", 1500),
        ("2 ul", 2),
        ("250 nl", 0.25),
        ("3 pl", 3e-6),
        ("12.5 ul/min", 12.5),
        ("1 ml/h", 1000 / 60),
        ("2 nl/s", 0.12),
        ("3.2 u/m", 3.2),
        ("1 m/h", 1000 / 60),
        ("4 \u00b5l/min", 4),
    ],
)
def test_parse_quantity(quantity: str, ul: float) -> None:
    assert parse_quantity(quantity) == pytest.approx(ul)


@pytest.mark.parametrize("quantity", ["ml", "1.5", "1 gallon", "1 ul/fortnight", "1.2.3 ml"])
def test_parse_quantity_rejects(quantity: str) -> None:
    with pytest.raises(ProtocolError):
        parse_quantity(quantity)


@pytest.mark.parametrize(
    ("lines", "error"),
    [
        (("Argument error: 300 ml/min", "   Out of range"), OutOfRange),
        (("Out of range",), OutOfRange),
        (("Argument error: x",), ProtocolError),
        (("Unknown command",), ProtocolError),
        (("Command error: pump is running",), ProtocolError),
    ],
)
def test_error_lines_map_to_exceptions(lines: tuple[str, ...], error: type[Exception]) -> None:
    with pytest.raises(error) as caught:
        raise_for_errors(lines, "irate 300 ml/min", "q")
    assert type(caught.value) is error and caught.value.hint
    raise_for_errors(("5.0000 ul/min",), "irate", "q")


# -- bad input never reaches the pump ----------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"address": 100},
        {"address": -1},
        {"address": True},
        {"baudrate": 12345},
        {"syringe_diameter_mm": 80.0},
    ],
)
def test_constructor_refuses_bad_settings(kwargs: dict[str, object]) -> None:
    with pytest.raises(OutOfRange):
        HarvardPump("q", "sim://harvard/x", **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("rate", [0.0, -5.0, float("nan"), float("inf"), 1e-6, 5e7])
def test_rates_outside_the_syringes_range_are_refused_before_sending(rate: float) -> None:
    pump, firmware = connected([])
    sent = len(firmware.received)
    with pytest.raises(OutOfRange) as caught:
        pump.set_rate_ul_min(rate)
    assert len(firmware.received) == sent
    if rate == 5e7:
        assert "30.8" in str(caught.value) or "3.08e+04" in str(caught.value)


@pytest.mark.parametrize("diameter", [0.0, 50.01, float("nan")])
def test_diameters_outside_the_pumps_range_are_refused_before_sending(diameter: float) -> None:
    pump, firmware = connected([])
    sent = len(firmware.received)
    with pytest.raises(OutOfRange):
        pump.set_syringe_diameter_mm(diameter)
    assert len(firmware.received) == sent


def test_use_before_connect() -> None:
    pump = HarvardPump("q", "sim://harvard/x")
    with pytest.raises(NotConnected):
        pump.run()
    assert math.isnan(pump.syringe_diameter_mm)


# -- behaviour on the wire ---------------------------------------------------------------------------


def test_idempotent_commands_are_retried_but_irun_never() -> None:
    pump, firmware = connected(
        [
            (b"status\r", None),
            (b"status\r", text(0, "1 0 0 i...I") + prompt(0)),
            (b"irun\r", None),
        ],
        retries=2,
    )
    assert pump.status().state is PumpState.STOPPED
    with pytest.raises(DeviceTimeout):
        pump.run()
    assert firmware.received.count(b"irun\r") == 1
    firmware.assert_done()


def test_a_reply_split_before_xon_is_joined() -> None:
    pump, firmware = connected([(b"irun\r", prompt(0, ">", xon=False), XON), (b"stp\r", prompt(0))])
    pump.run()
    pump.stop()
    firmware.assert_done()


def test_a_text_line_split_after_its_address_is_not_taken_for_the_prompt() -> None:
    steps = [(cmd(4, "ivolume"), b"\n04:", b"1.5000 ml\r" + prompt(4))]
    firmware, url = scripted(init_steps(4) + steps)
    pump = HarvardPump("q", url, address=4, syringe_diameter_mm=14.5, timeout_s=0.05, xon_grace_s=0.05)
    pump.connect()
    assert pump.dispensed_ul() == pytest.approx(1500)
    firmware.assert_done()


def test_an_echoing_pump_is_understood() -> None:
    pump, _ = connected([(b"ivolume\r", b"ivolume\r" + text(0, "2.0000 ul") + prompt(0))])
    assert pump.dispensed_ul() == pytest.approx(2.0)


def test_noise_is_a_protocol_error_with_a_baud_hint() -> None:
    pump, _ = connected([(b"ivolume\r", b"\xf3\x9e\xa0\xc1")])
    with pytest.raises(ProtocolError) as caught:
        pump.dispensed_ul()
    assert "baud" in str(caught.value)


def test_a_pump_that_never_answers_is_named_with_its_address_and_baud() -> None:
    """Wrong address, wrong baud rate or a pump switched off: nothing answers the first command."""
    firmware, url = scripted([(cmd(7, ""), None)])
    pump = HarvardPump("seed", url, address=7, syringe_diameter_mm=14.5, timeout_s=0.05, retries=0)
    with pytest.raises(DeviceTimeout) as caught:
        pump.connect()
    message = str(caught.value)
    assert message.startswith("seed: no Harvard pump answered at address 7 on sim://harvardscript/")
    assert "at 115200 baud" in message and "address (pump Settings menu) is 7" in message


def test_silence_is_a_timeout() -> None:
    pump, _ = connected([(b"ivolume\r", None)])
    with pytest.raises(DeviceTimeout) as caught:
        pump.dispensed_ul()
    assert caught.value.device == "q"


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (text(0, "Argument error: 5 ul/min", "   Out of range"), OutOfRange),
        (text(0, "Unknown command"), ProtocolError),
        (text(0, "Command error: pump is running"), ProtocolError),
    ],
)
def test_firmware_errors_raise(reply: bytes, error: type[Exception]) -> None:
    pump, _ = connected([(b"irate 5 ul/min\r", reply + prompt(0))])
    with pytest.raises(error):
        pump.set_rate_ul_min(5)


def test_a_stall_raises_but_status_and_safe_state_report_it() -> None:
    pump, firmware = connected(
        [
            (b"ivolume\r", text(0, "3.0000 ml") + prompt(0, "*")),
            (b"status\r", text(0, "1666666 0 3000000000000 i.S.I") + prompt(0, "*")),
            (b"stp\r", prompt(0, "*")),
            (b"stp\r", prompt(0)),
        ]
    )
    with pytest.raises(StallAlarm):
        pump.dispensed_ul()
    status = pump.status()
    assert status.alarm == "stall" and status.state is PumpState.STOPPED and status.dispensed_ul == 3000
    pump.safe_state()
    pump.safe_state()
    firmware.assert_done()


def test_a_stall_answered_to_a_stop_is_reported_until_the_next_run() -> None:
    """A pump that stalled after it was last checked answers the next `stp` with `*`, and `stp` clears
    the prompt: status() reported a plain stop, and the campaign started the pump again unawares."""
    pump, firmware = connected(
        [
            (b"stp\r", prompt(0, "*")),
            (b"status\r", text(0, "1666666 0 3000000000000 i...I") + prompt(0)),
            (b"irun\r", prompt(0, ">")),
            (b"status\r", text(0, "1666666 0 3000000000000 i...I") + prompt(0, ">")),
        ]
    )
    pump.stop()
    assert pump.status().alarm == "stall"
    pump.run()
    assert pump.status().alarm is None
    firmware.assert_done()


def test_target_reached_is_an_alarm() -> None:
    pump, _ = connected(
        [
            (b"ivolume\r", text(0, "1.0000 ml") + prompt(0, "T*")),
            (b"status\r", text(0, "1 2 3 i...I") + prompt(0, "T*")),
        ]
    )
    with pytest.raises(DeviceAlarm):
        pump.dispensed_ul()
    assert pump.status().alarm == "target_reached"


def test_missing_xon_means_a_power_reset_and_the_driver_restores_its_setup() -> None:
    steps: list[Step] = [
        (b"irate 5 ul/min\r", prompt(0)),
        (b"status\r", text(0, "1 0 0 i...I") + prompt(0, xon=False)),  # poll mode is gone
        *init_steps(0),
        (b"irate 5 ul/min\r", prompt(0)),
        (b"irun\r", prompt(0, ">")),
    ]
    pump, firmware = connected(steps)
    pump.set_rate_ul_min(5)
    with pytest.raises(PowerResetAlarm):
        pump.status()
    pump.run()
    firmware.assert_done()


def test_a_rate_sent_as_the_pump_was_power_cycled_is_the_one_set_again() -> None:
    """The power-cycled pump took 7 uL/min (it blocks nothing) and the driver raised; its
    re-initialisation used to put back the rate before (5): it sets 7 again."""
    steps: list[Step] = [
        (b"irate 5 ul/min\r", prompt(0)),
        (b"irate 7 ul/min\r", prompt(0, xon=False)),  # poll mode gone: it was power-cycled
        *init_steps(0),
        (b"irate 7 ul/min\r", prompt(0)),
        (b"irun\r", prompt(0, ">")),
    ]
    pump, firmware = connected(steps)
    pump.set_rate_ul_min(5)
    with pytest.raises(PowerResetAlarm):
        pump.set_rate_ul_min(7)
    pump.run()
    firmware.assert_done()


def test_safe_state_after_a_power_reset_does_not_raise_but_the_next_command_does() -> None:
    steps: list[Step] = [
        (b"stp\r", prompt(0, xon=False)),
        *init_steps(0),
        (b"ivolume\r", text(0, "0.0000 ul") + prompt(0)),
        (b"ivolume\r", text(0, "0.0000 ul") + prompt(0)),
    ]
    pump, firmware = connected(steps)
    pump.safe_state()
    with pytest.raises(PowerResetAlarm):
        pump.dispensed_ul()
    assert pump.dispensed_ul() == 0
    firmware.assert_done()


def test_nvram_falls_back_to_the_legato_spelling_and_poll_is_optional() -> None:
    steps: list[Step] = [
        (b"\r", prompt(0, xon=False)),
        (b"poll on\r", text(0, "Unknown command") + prompt(0, xon=False)),
        (b"nvram none\r", text(0, "Argument error: none", "   Invalid argument") + prompt(0, xon=False)),
        (b"nvram off\r", prompt(0, xon=False)),
        (b"ver\r", text(0, "KDS LEGATO 100 1.0") + prompt(0, xon=False)),
        (b"diameter\r", text(0, "4.7800 mm") + prompt(0, xon=False)),
        (b"irate lim\r", text(0, "Unknown command") + prompt(0, xon=False)),
        (b"irun\r", prompt(0, ">", xon=False)),
    ]
    firmware, url = scripted(steps)
    pump = HarvardPump("q", url, timeout_s=0.05, xon_grace_s=0.01)
    pump.connect()
    assert pump.syringe_diameter_mm == 4.78 and pump.rate_limits is None
    pump.run()  # no XON expected, so no reset suspected
    firmware.assert_done()


def test_a_reply_from_another_address_is_refused() -> None:
    pump, _ = connected([(cmd(3, "ivolume"), text(4, "1 ul") + prompt(4))], address=3)
    with pytest.raises(ProtocolError) as caught:
        pump.dispensed_ul()
    assert "pump 4" in str(caught.value)


def test_unsolicited_prompts_reach_the_pump_they_belong_to() -> None:
    firmware, url = scripted(init_steps(0) + [(b"ivolume\r", text(0, "1 ul") + prompt(0))])
    pump = HarvardPump("q", url, syringe_diameter_mm=14.5, timeout_s=0.05, xon_grace_s=0.01)
    pump.connect()
    firmware._later = b"\n*\n05T*"  # pump 0 stalled, pump 5 (no driver) reached a target
    pump.dispensed_ul()
    assert list(pump._events) == ["*"]


# -- one line per URL --------------------------------------------------------------------------------


def test_pumps_on_one_url_share_one_line() -> None:
    firmware, url = scripted(init_steps(1) + init_steps(2))
    first = HarvardPump("a", url, address=1, syringe_diameter_mm=14.5, xon_grace_s=0.01)
    second = HarvardPump("b", url, address=2, syringe_diameter_mm=14.5, xon_grace_s=0.01)
    first.connect()
    second.connect()
    assert harvard.open_lines()[url] == 2
    assert first._shared is second._shared
    with pytest.raises(NotConnected):
        HarvardPump("c", url, address=3, baudrate=9600).connect()
    with pytest.raises(NotConnected):
        HarvardPump("d", url, address=1).connect()
    first.close()
    assert harvard.open_lines()[url] == 1 and second._shared is not None and second._shared.line.is_open
    second.close()
    assert url not in harvard.open_lines()
    firmware.assert_done()


def test_an_unopenable_port_is_not_connected() -> None:
    with pytest.raises(NotConnected):
        HarvardPump("q", "/dev/nonexistent-harvard-port").connect()
    assert "/dev/nonexistent-harvard-port" not in harvard.open_lines()


def test_family_rate_limits_scale_with_the_barrel() -> None:
    low, high = harvard.rate_limits_ul_min(26.59)
    assert high == pytest.approx(88.4e3) and low == pytest.approx(1.28e-6 * (26.59 / 0.103) ** 2)
    assert harvard.rate_limits_ul_min(13.295)[1] == pytest.approx(88.4e3 / 4)


def test_connect_survives_a_half_command_left_in_the_pump() -> None:
    """Noise or a half-sent command sat in the pump's buffer: the flushing CR completes it and the pump
    answers 'Unknown command'. That refusal is what the flush is for, not a reason to fail connect."""
    steps = init_steps(0)
    steps[0] = (cmd(0, ""), text(0, "Unknown command") + prompt(0, xon=False))
    firmware, url = scripted(steps)
    pump = HarvardPump("q", url, syringe_diameter_mm=14.5, timeout_s=0.05, retries=0, xon_grace_s=0.01)
    pump.connect()
    assert pump.firmware == "PHD ULTRA 2.0.4"
    firmware.assert_done()
