"""Harvard Apparatus PHD ULTRA / Pump 11 Elite and KD Scientific Legato 100/200 syringe pumps.

The three share one RS-232/USB command set, the manuals' "pump chain commands":

* host -> pump: ``[NN:]command[ arguments]<CR>``; the address prefix ``NN:`` only for a nonzero address
  (0-99; the pump wired to the computer is 0). Commands may be shortened to their first four letters;
  this driver always sends them in full.
* pump -> host: every text line as ``<LF>[NN:]text<CR>``, then the prompt ``<LF>[NN]<prompt>`` (no colon
  between a nonzero address and the prompt). Prompts: ``:`` idle, ``>`` infusing, ``<`` withdrawing,
  ``*`` stalled, ``T*`` target reached.
* ``poll on``: the pump sends no prompt of its own when an event happens, and appends XON (0x11) to
  the prompt when it is ready for the next command. The driver runs in that mode: XON ends a reply
  unambiguously (a nonzero address's idle prompt ``NN:`` looks like the start of a text line), and an
  XON that stops coming means the pump has left poll mode: it was power-cycled.
* errors are text lines: ``Command error``, ``Unknown command``, ``Argument error: <arg>`` followed
  by the reason (``Out of range``...).
* ``status``: ``<rate fL/s> <time> <volume fL> <flags>`` (PHD ULTRA: time in s, five flags; Legato and
  Elite: time in ms, six flags, the first in upper case while the motor runs).

Not yet checked on hardware: the byte framing follows the manuals and public drivers used with real
pumps, and the driver accepts the variants those show (CR LF before a prompt, ``00`` prefixes).
"""

from __future__ import annotations

import math
import re
import threading
from collections import deque
from dataclasses import dataclass, field
from decimal import ROUND_DOWN, ROUND_HALF_EVEN, ROUND_UP, Decimal

import serial
import structlog

from drivers.base import PumpState, PumpStatus, StopNotConfirmed, warn_unverified_once
from drivers.errors import (
    DeviceAlarm,
    DeviceError,
    DeviceTimeout,
    NotConnected,
    OutOfRange,
    PowerResetAlarm,
    ProtocolError,
    StallAlarm,
)
from drivers.transport import SerialLine, send_blind_anywhere

log = structlog.get_logger("drivers.harvard")

XON = b"\x11"
CR = "\r"
DEFAULT_BAUDRATE = 115200  # factory setting of the PHD ULTRA, Pump 11 Elite and Legato
VALID_BAUDRATES = (9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600)
DIAMETER_RANGE_MM = (0.1, 50.0)
# ``stp`` sent without waiting for a reply when the line fails. These pumps have no communication
# watchdog (no time-out in the PHD ULTRA / Pump 11 Elite / Legato pump chain commands): a pump that
# still hears is stopped only by this; one that hears nothing keeps running until stopped by hand.
BLIND_STOPS = 3

# A plunger's speed range is fixed, so the rate a syringe gives scales with its cross-section.
# From the Pump 11 Elite specifications (the narrower range of the family): 1.28 pL/min with a 0.5 uL
# syringe (0.103 mm) and 88.4 mL/min with a 60 mL syringe (26.59 mm).
_MIN_SPEED_MM_MIN = 1.28e-6 / (math.pi * 0.103**2 / 4)
_MAX_SPEED_MM_MIN = 88.4e3 / (math.pi * 26.59**2 / 4)

_PROMPT_END = re.compile(r"\n(\d{2})?(:?T\*|[:<>*])\Z")
_PROMPT_END_BYTES = re.compile(rb"\n(\d{2})?(:?T\*|[:<>*])\Z")
_STATUS_LINE = re.compile(r"^\s*(\d+)\s+(\d+)\s+(\d+)\s+([A-Za-z.]{5,6})\s*$")
_QUANTITY = re.compile(r"^\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*([A-Za-z\u00b5/]+)\s*$")
_LIMITS = re.compile(r"^\s*(\S+\s*\S+)\s+to\s+(\S+\s*\S+)\s*$", re.IGNORECASE)
_UNSOLICITED = re.compile(rb"\n(\d{2})?(:?T\*|\*)")

_VOLUME_UL = {"l": 1e6, "ml": 1e3, "ul": 1.0, "nl": 1e-3, "pl": 1e-6}
_ABBREVIATED_VOLUME = {"m": "ml", "u": "ul", "n": "nl", "p": "pl"}
_PER_MINUTE = {"h": 1 / 60, "hr": 1 / 60, "hour": 1 / 60, "min": 1.0, "m": 1.0, "s": 60.0, "sec": 60.0}

# rate units the driver sends, largest first: the first whose value is >= 1 keeps the mantissa in
# [1, 1000), so five significant digits never need more than four decimals
_SEND_RATE_UNITS = (("ml/min", 1e3), ("ul/min", 1.0), ("nl/min", 1e-3), ("pl/min", 1e-6))
SIGNIFICANT_DIGITS = 5

_PROMPT_STATES = {
    ":": PumpState.STOPPED,
    ">": PumpState.INFUSING,
    "<": PumpState.WITHDRAWING,
    "*": PumpState.STOPPED,
    "T*": PumpState.STOPPED,
}
_PROMPT_ALARMS = {"*": "stall", "T*": "target_reached"}


def rate_limits_ul_min(diameter_mm: float) -> tuple[float, float]:
    """(min, max) rate in uL/min that every pump of the family reaches with this syringe."""
    area_mm2 = math.pi * float(diameter_mm) ** 2 / 4
    return area_mm2 * _MIN_SPEED_MM_MIN, area_mm2 * _MAX_SPEED_MM_MIN


# -- number formatting -------------------------------------------------------------------------------


def format_number(
    value: float, significant: int = SIGNIFICANT_DIGITS, rounding: str = ROUND_HALF_EVEN
) -> str:
    """A plain decimal the firmware reads: no exponent, no sign, at most ``significant`` digits."""
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"cannot send {value!r} to the pump: only finite, non-negative numbers")
    number = Decimal(repr(value))
    if number == 0:
        return "0"
    quantum = Decimal(1).scaleb(number.adjusted() - (significant - 1))
    text = format(number.quantize(quantum, rounding=rounding), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def format_rate(rate_ul_min: float, limits_ul_min: tuple[float, float] | None = None) -> tuple[str, str]:
    """(number, units) for ``irate``; rounds toward the inside of ``limits`` when the rate lies in them."""
    units, factor = next(((u, f) for u, f in _SEND_RATE_UNITS if rate_ul_min >= f), _SEND_RATE_UNITS[-1])
    value = rate_ul_min / factor
    text = format_number(value)
    if limits_ul_min is not None:
        low, high = limits_ul_min
        sent = parse_quantity(f"{text} {units}")  # what the pump will run, read as the driver reads it back
        if sent > high >= rate_ul_min:
            text = format_number(value, rounding=ROUND_DOWN)
        elif sent < low <= rate_ul_min:
            text = format_number(value, rounding=ROUND_UP)
    return text, units


# -- reply parsing -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """One parsed reply: its text lines (address prefixes removed), the prompt, and whether XON ended it."""

    lines: tuple[str, ...]
    prompt: str
    xon: bool


@dataclass(frozen=True)
class StatusReport:
    """The ``status`` line. ``time`` is in the firmware's unit (s on PHD ULTRA, ms on Legato/Elite)."""

    rate_ul_min: float
    time: int
    volume_ul: float
    direction: str  # "i" infuse or "w" withdraw (Allegro's f/r map to i/w)
    motor_running: bool | None  # only the six-flag form tells
    stalled: bool
    target_reached: bool


def parse_reply(raw: bytes, address: int, sent: str | None = None) -> Reply:
    """Split a complete reply into lines and prompt; ``sent`` (the framed command) drops an echo."""
    xon = raw.endswith(XON)
    try:
        text = raw.replace(XON, b"").decode("ascii")
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"reply is not ASCII: {raw!r}") from exc
    match = _PROMPT_END.search(text)
    if match is None:
        raise ProtocolError(f"reply does not end with a prompt: {raw!r}")
    digits, prompt = match.group(1), match.group(2)
    if prompt.endswith("T*"):
        prompt = "T*"
    expected = f"{address:02d}"
    if (digits or "00") != expected:
        who = f"pump {int(digits)}" if digits else "pump 0"
        raise ProtocolError(
            f"reply came from {who}, not pump {address}: {raw!r}",
            hint="Check that every pump on the line has its own address (pump Settings menu) and the rig file matches.",
        )
    lines: list[str] = []
    for part in text[: match.start()].split("\n"):
        part = part.strip("\r")
        # a daisy-chained pump starts its text lines with its address and its present prompt: "01:"
        # when idle, "01>" while infusing, "01*" after a stall (flowchem's Elite 11 driver reads them so)
        for lead in ("T*", ":", ">", "<", "*"):
            if part.startswith(expected + lead):
                part = part[len(expected) + len(lead):]
                break
        if part.strip():
            lines.append(part)
    if sent is not None and lines and lines[0].strip() == sent.strip():
        lines.pop(0)  # the pump's echo of the command
    return Reply(tuple(lines), prompt, xon)


def parse_quantity(text: str) -> float:
    """``"1.234 ml"`` -> 1234.0 (uL), ``"2 ml/min"`` -> 2000.0 (uL/min): a volume, or a rate if a slash is in it."""
    match = _QUANTITY.match(text)
    if match is None:
        raise ProtocolError(f"expected a number and units, got {text!r}")
    value, unit = match.group(1), match.group(2)
    factor = rate_unit_factor(unit) if "/" in unit else volume_unit_factor(unit)
    # in decimal, then rounded once: "9 nl/min" is 0.009 uL/min, not 9 * 0.001 = 0.009000000000000001
    return float(Decimal(value) * Decimal(repr(factor)))


def volume_unit_factor(unit: str) -> float:
    """uL per unit of a volume unit (``ml``, ``ul``, ``nl``, ``pl``, ``l``)."""
    key = unit.lower().replace("\u00b5", "u")
    if key not in _VOLUME_UL:
        raise ProtocolError(f"unknown volume units {unit!r}")
    return _VOLUME_UL[key]


def rate_unit_factor(unit: str) -> float:
    """uL/min per unit of a rate unit: ``ul/min``, ``ml/h``, ``nl/s``, and the short ``u/m`` forms."""
    key = unit.lower().replace("\u00b5", "u")
    volume, _, time = key.partition("/")
    volume = _ABBREVIATED_VOLUME.get(volume, volume)
    if volume not in _VOLUME_UL or time not in _PER_MINUTE:
        raise ProtocolError(f"unknown rate units {unit!r}")
    return _VOLUME_UL[volume] * _PER_MINUTE[time]


def parse_status(line: str) -> StatusReport:
    match = _STATUS_LINE.match(line)
    if match is None:
        raise ProtocolError(f"status line not understood: {line!r}")
    rate_fl_s, time, volume_fl, flags = (
        int(match.group(1)),
        int(match.group(2)),
        int(match.group(3)),
        match.group(4),
    )
    direction = {"i": "i", "w": "w", "f": "i", "r": "w"}.get(flags[0].lower())
    if direction is None:
        raise ProtocolError(f"status direction flag {flags[0]!r} not understood in {line!r}")
    six = len(flags) == 6
    return StatusReport(
        rate_ul_min=rate_fl_s * 60 / 1e9,
        time=time,
        volume_ul=volume_fl / 1e9,
        direction=direction,
        motor_running=flags[0].isupper() if six else None,
        stalled=flags[2] == "S",
        target_reached=six and flags[5] == "T",
    )


def raise_for_errors(lines: tuple[str, ...], command: str, device: str) -> None:
    """Map the firmware's error lines to exceptions; the most specific one wins."""
    text = " / ".join(line.strip() for line in lines)
    lowered = text.lower()
    if "out of range" in lowered:
        raise OutOfRange(f"{command!r} refused: {text}", device=device)
    if "unknown command" in lowered:
        raise ProtocolError(
            f"{command!r} refused: {text}",
            device=device,
            hint="The pump does not know this command: check the model in the rig file (an infuse-only "
            "pump has no withdraw commands) and that the pump is in Quick Start mode.",
        )
    if "argument error" in lowered:
        raise ProtocolError(f"{command!r} refused: {text}", device=device)
    if "command error" in lowered:
        raise ProtocolError(
            f"{command!r} refused: {text}",
            device=device,
            hint="The pump cannot do this now: stop it first, leave its touch screen on the Quick Start "
            "run screen, and clear any alarm on its display.",
        )


# -- one serial line shared by the pumps daisy-chained on it -----------------------------------------


@dataclass
class _SharedLine:
    line: SerialLine
    lock: threading.RLock = field(default_factory=threading.RLock)
    pumps: dict[int, HarvardPump] = field(default_factory=dict)

    def dispatch_unsolicited(self, data: bytes) -> None:
        """Prompts a pump sent on its own (outside poll mode) go to the driver of that address."""
        for match in _UNSOLICITED.finditer(data):
            address = int(match.group(1)) if match.group(1) else 0
            pump = self.pumps.get(address)
            if pump is not None:
                pump._note_event("T*" if match.group(2).endswith(b"T*") else "*")


_lines: dict[str, _SharedLine] = {}
_lines_lock = threading.Lock()


def _attach(url: str, baudrate: int, pump: HarvardPump) -> _SharedLine:
    with _lines_lock:
        shared = _lines.get(url)
        if shared is None:
            shared = _lines[url] = _SharedLine(SerialLine(url, baudrate=baudrate, name=url))
        elif shared.line.baudrate != baudrate:
            raise NotConnected(
                f"{url} is already open at {shared.line.baudrate} baud, not {baudrate}",
                device=pump.name,
                hint="Every pump on one daisy chain talks at the same baud rate: give them all the same "
                "baudrate in the rig file and in each pump's Settings menu.",
            )
        other = shared.pumps.get(pump.address)
        if other is not None and other is not pump:
            raise NotConnected(
                f"address {pump.address} on {url} is already used by {other.name}",
                device=pump.name,
                hint="Give each pump on a daisy chain its own address, in the rig file and the pump's Settings menu.",
            )
        shared.pumps[pump.address] = pump
    return shared


def _detach(url: str, pump: HarvardPump) -> None:
    with _lines_lock:
        shared = _lines.get(url)
        if shared is None or shared.pumps.get(pump.address) is not pump:
            return
        del shared.pumps[pump.address]
        if not shared.pumps:
            del _lines[url]
            with shared.lock:
                shared.line.close()


def open_lines() -> dict[str, int]:
    """URL -> number of pumps attached (diagnostics and tests)."""
    with _lines_lock:
        return {url: len(shared.pumps) for url, shared in _lines.items()}


# -- the driver --------------------------------------------------------------------------------------


class HarvardPump:
    """One Harvard/KDS pump on a (possibly daisy-chained) serial line. Implements ``SyringePump``."""

    def __init__(
        self,
        name: str,
        port: str,
        *,
        address: int = 0,
        syringe_diameter_mm: float | None = None,
        baudrate: int = DEFAULT_BAUDRATE,
        timeout_s: float = 0.5,
        retries: int = 2,
        xon_grace_s: float = 0.05,
    ) -> None:
        if isinstance(address, bool) or not isinstance(address, int) or not 0 <= address <= 99:
            raise OutOfRange(
                f"pump address {address!r} is not 0-99",
                device=name,
                hint="Use the address shown in the pump's Settings menu (0 for the pump wired to the computer).",
            )
        if baudrate not in VALID_BAUDRATES:
            raise OutOfRange(
                f"baud rate {baudrate!r} is not one the pumps offer ({', '.join(map(str, VALID_BAUDRATES))})",
                device=name,
                hint="Use the baud rate shown in the pump's Settings menu (factory setting 115200).",
            )
        if syringe_diameter_mm is not None:
            self._check_diameter(syringe_diameter_mm, name)
        if not timeout_s > 0 or retries < 0 or not xon_grace_s > 0:
            raise ValueError("timeout_s and xon_grace_s must be > 0 and retries >= 0")
        self.name = name
        self.port = port
        self.address = address
        self.baudrate = baudrate
        self.timeout_s = float(timeout_s)
        self.retries = int(retries)
        self.xon_grace_s = float(xon_grace_s)
        self.firmware: str | None = None
        self._stopped_by: str | None = None  # an alarm a stop was answered with, until the next run()
        self._diameter_mm = float(syringe_diameter_mm) if syringe_diameter_mm is not None else None
        self._rate_ul_min: float | None = None
        self._limits_ul_min: tuple[float, float] | None = None
        self._shared: _SharedLine | None = None
        self._poll = False  # the pump answers with XON
        self._needs_init = True
        self._initialising = False
        self._reset_pending = False
        self._events: deque[str] = deque(maxlen=32)  # prompts the pump sent unasked, newest last

    # -- SyringePump -------------------------------------------------------------------------------

    def connect(self) -> None:
        if self._shared is not None:
            return
        shared = _attach(self.port, self.baudrate, self)
        try:
            with shared.lock:
                shared.line.open()
            self._shared = shared
            self._needs_init = True
            with shared.lock:
                try:
                    self._initialise()
                except DeviceTimeout as exc:  # nothing answered at all: say which pump was asked for
                    raise DeviceTimeout(
                        f"no Harvard pump answered at address {self.address} on {self.port} at {self.baudrate} "
                        f"baud ({exc.detail})",
                        device=self.name,
                        hint=f"Check that the pump is on, that its address (pump Settings menu) is {self.address} "
                        f"(the pump wired to the computer is usually 0), that its baud rate (Settings menu) is "
                        f"{self.baudrate} as in the rig file, and the RS-232 cable and daisy-chain links",
                    ) from exc
        except BaseException:
            self._shared = None
            _detach(self.port, self)
            raise
        log.info(
            "pump connected", pump=self.name, port=self.port, address=self.address, firmware=self.firmware
        )
        warn_unverified_once("drivers.harvard", self.port)

    def close(self) -> None:
        if self._shared is None:
            return
        self._shared = None
        _detach(self.port, self)

    @property
    def syringe_diameter_mm(self) -> float:
        """The diameter set on the pump; NaN while unknown (no diameter given, not yet connected)."""
        return math.nan if self._diameter_mm is None else self._diameter_mm

    @property
    def rate_limits(self) -> tuple[float, float] | None:
        """(min, max) uL/min the pump reported for the current syringe, if it did."""
        return self._limits_ul_min

    def set_syringe_diameter_mm(self, diameter_mm: float) -> None:
        self._check_diameter(diameter_mm, self.name)
        self._apply_diameter(float(diameter_mm))

    def set_rate_ul_min(self, rate_ul_min: float) -> None:
        rate = float(rate_ul_min)
        if not math.isfinite(rate) or rate <= 0:
            raise OutOfRange(
                f"rate {rate_ul_min!r} uL/min is not a positive number",
                device=self.name,
                hint="Give a rate above zero; call stop() for no flow.",
            )
        limits = self._limits_ul_min
        if limits is not None and not limits[0] <= rate <= limits[1]:
            raise OutOfRange(
                f"rate {rate:g} uL/min is outside {limits[0]:.4g}-{limits[1]:.4g} uL/min, what this pump "
                f"delivers with a {self._diameter_mm:g} mm syringe",
                device=self.name,
            )
        self._apply_rate(rate)

    def run(self) -> None:
        reply = self._command("irun", idempotent=False)
        if reply.prompt != ">":
            raise ProtocolError(
                f"irun did not start the pump (prompt {reply.prompt!r})",
                device=self.name,
                hint="Check that the pump's touch screen is on the Quick Start run screen and that a rate is set.",
            )
        self._stopped_by = None

    def acknowledge_alarm(self) -> None:
        """Forget an alarm a stop was answered with (the pump's prompt was cleared by that stop)."""
        self._stopped_by = None

    def _latch(self, reply: Reply) -> None:
        """Keep an alarm a stop was answered with (``*`` stalled, ``T*`` target reached) for status()."""
        self._stopped_by = _PROMPT_ALARMS.get(reply.prompt) or self._stopped_by

    def stop(self) -> None:
        """Stop. A pump that had stalled answers with ``*``, which ``stp`` clears on the pump: the stall
        is kept here and reported by status() until the next run(), or nobody would ever hear of it."""
        self._latch(self._command("stp", idempotent=True, allow_stall=True))

    def dispensed_ul(self) -> float:
        reply = self._command("ivolume", idempotent=True)
        return parse_quantity(self._single_line(reply, "ivolume"))

    def status(self) -> PumpStatus:
        reply = self._command("status", idempotent=True, allow_stall=True, allow_target=True)
        report = parse_status(self._single_line(reply, "status"))
        state = _PROMPT_STATES[reply.prompt]
        if report.direction == "w" and state is PumpState.INFUSING:
            state = PumpState.WITHDRAWING
        alarm = _PROMPT_ALARMS.get(reply.prompt) or self._stopped_by
        if alarm is None and report.stalled:
            alarm = "stall"
        if alarm is None and report.target_reached:
            alarm = "target_reached"
        dispensed = report.volume_ul if report.direction == "i" else self.dispensed_ul()
        return PumpStatus(state=state, rate_ul_min=report.rate_ul_min, dispensed_ul=dispensed, alarm=alarm)

    def safe_state(self) -> None:
        """Stop; a stalled or freshly power-cycled pump is already stopped, which is no error here.

        When the line fails (no reply, an unreadable one, the port gone) ``stp`` is still sent a few
        times without waiting for a reply - a pump whose way back is broken still hears it - and
        StopNotConfirmed says that nobody knows whether it stopped."""
        try:
            self._latch(self._command("stp", idempotent=True, allow_stall=True, allow_reset=True))
        except (DeviceTimeout, ProtocolError, NotConnected) as exc:
            if self.firmware is None:
                raise  # never reached by this driver, so never started by it: nothing to stop blindly
            sent = self._blind_stop()
            cause = exc.detail if self._shared is not None else "not connected: reconnecting to it failed"
            raise StopNotConfirmed(
                f"stop not confirmed ({cause}); 'stp' sent {sent} times without waiting for a reply, "
                "and the pump has no watchdog of its own",
                device=self.name,
            ) from exc

    def _blind_stop(self) -> int:
        """``stp`` written BLIND_STOPS times on the shared line if it is still held, else on the port
        opened for this alone; no set-up first (a pump that must be stopped needs nothing else)."""
        payload = (self._frame("stp") + CR).encode("ascii")
        with _lines_lock:
            shared = self._shared or _lines.get(self.port)
        held = (shared.line, shared.lock) if shared is not None else None
        return send_blind_anywhere(payload, BLIND_STOPS, held=held, url=self.port, baudrate=self.baudrate, name=self.port)

    # -- beyond the protocol -----------------------------------------------------------------------

    def clear_volumes(self) -> None:
        """Zero the infused and withdrawn volume counters (``cvolume``)."""
        self._command("cvolume", idempotent=True)

    def version(self) -> str:
        reply = self._command("ver", idempotent=True)
        return self._single_line(reply, "ver", first=True)

    # -- internals ---------------------------------------------------------------------------------

    @staticmethod
    def _check_diameter(diameter_mm: float, name: str) -> None:
        low, high = DIAMETER_RANGE_MM
        value = float(diameter_mm)
        if not math.isfinite(value) or not low <= value <= high:
            raise OutOfRange(
                f"syringe diameter {diameter_mm!r} mm is outside {low:g}-{high:g} mm",
                device=name,
                hint="Give the syringe's inside diameter in mm (a B-D 10 mL syringe is 14.5 mm), not its volume or radius.",
            )

    def _apply_diameter(self, diameter_mm: float) -> None:
        try:
            self._command(f"diameter {format_number(diameter_mm)}", idempotent=True, timeout_s=2 * self.timeout_s)
        except PowerResetAlarm:
            self._diameter_mm = diameter_mm  # the one the re-initialisation sets, not the one before
            raise
        self._diameter_mm = diameter_mm
        self._limits_ul_min = self._query_limits()
        if self._limits_ul_min is not None and self._rate_ul_min is not None:
            low, high = self._limits_ul_min
            if not low <= self._rate_ul_min <= high:
                self._rate_ul_min = None  # the pump clamped it; what it runs at now is not ours

    def _apply_rate(self, rate_ul_min: float) -> None:
        number, units = format_rate(rate_ul_min, self._limits_ul_min)
        try:
            self._command(f"irate {number} {units}", idempotent=True)
        except PowerResetAlarm:
            # a power-cycled pump blocks nothing: it took this rate, and the re-initialisation that
            # follows must set this one again, not the one before the reset
            self._rate_ul_min = rate_ul_min
            raise
        self._rate_ul_min = rate_ul_min

    def _query_limits(self) -> tuple[float, float] | None:
        try:
            reply = self._command("irate lim", idempotent=True)
            match = _LIMITS.match(self._single_line(reply, "irate lim"))
            if match is None:
                raise ProtocolError(f"irate lim reply not understood: {reply.lines!r}")
            return parse_quantity(match.group(1)), parse_quantity(match.group(2))
        except ProtocolError as exc:
            # older firmware: the pump itself still refuses an impossible rate with "Out of range"
            log.warning("rate limits unknown", pump=self.name, error=str(exc))
            return None

    def _single_line(self, reply: Reply, command: str, first: bool = False) -> str:
        if not reply.lines or (len(reply.lines) != 1 and not first):
            raise ProtocolError(
                f"{command!r}: expected one line of reply, got {list(reply.lines)!r}", device=self.name
            )
        return reply.lines[0]

    def _initialise(self) -> None:
        """Bring the pump to the driver's working set-up: poll mode, no NVRAM writes, our syringe."""
        self._needs_init = False
        self._initialising = True
        try:
            self._set_up()
        except BaseException:
            self._needs_init = True  # half set up: start again with the next command
            raise
        finally:
            self._initialising = False

    def _set_up(self) -> None:
        self._poll = False
        try:
            self._command("", idempotent=True)  # a bare CR flushes a half-received line
        except ProtocolError as exc:
            # the line it completed was noise or a half-sent command: the pump's refusal is expected
            log.info("flushed a half-received line", pump=self.name, reply=str(exc.detail))
        try:
            reply = self._command("poll on", idempotent=True)
            self._poll = reply.xon
            if not reply.xon:
                log.warning("pump sends no XON in poll mode; replies are framed by timing", pump=self.name)
        except ProtocolError as exc:
            log.warning("pump has no poll mode", pump=self.name, error=str(exc))
        self._disable_nvram_writes()
        self.firmware = self._single_line(self._command("ver", idempotent=True), "ver", first=True)
        # set the syringe only if it differs: a pump still running from before a restart refuses it
        current = _parse_mm(self._single_line(self._command("diameter", idempotent=True), "diameter"))
        wanted = self._diameter_mm
        if wanted is None or abs(current - wanted) < 0.5e-4:  # the pump shows four decimals
            self._diameter_mm = current if wanted is None else wanted
            self._limits_ul_min = self._query_limits()
        else:
            self._apply_diameter(wanted)
        if self._rate_ul_min is not None:
            self._apply_rate(self._rate_ul_min)

    def _disable_nvram_writes(self) -> None:
        # 'none' in the PHD ULTRA manual, 'off' in the Legato's: rate changes must not wear the NVRAM
        for setting in ("none", "off"):
            try:
                self._command(f"nvram {setting}", idempotent=True)
                return
            except ProtocolError as exc:
                last = exc
        log.warning(
            "cannot switch NVRAM writes off; rate changes wear the pump's memory",
            pump=self.name,
            error=str(last),
        )

    def _note_event(self, prompt: str) -> None:
        log.warning("pump event", pump=self.name, prompt=prompt)
        self._events.append(prompt)

    def _frame(self, command: str) -> str:
        return f"{self.address:02d}:{command}" if self.address else command

    def _command(
        self,
        command: str,
        *,
        idempotent: bool,
        timeout_s: float | None = None,
        allow_stall: bool = False,
        allow_target: bool = False,
        allow_reset: bool = False,
    ) -> Reply:
        shared = self._shared
        if shared is None:
            raise NotConnected("the pump was used before connect()", device=self.name)
        with shared.lock:
            try:
                if not shared.line.is_open:
                    shared.line.open()  # after a dropped adapter came back
                if self._needs_init and not self._initialising:
                    self._initialise()
                reply = self._transact(shared, command, idempotent, timeout_s or self.timeout_s)
            except DeviceError as exc:
                if exc.device == self.name:
                    raise
                raise type(exc)(exc.detail, device=self.name, hint=exc.hint) from exc
            except (serial.SerialException, OSError) as exc:
                # an adapter unplugged between two reads: the port fails outside SerialLine's guards
                shared.line.close()
                raise NotConnected(f"the port {self.port!r} failed ({exc})", device=self.name) from exc
        raise_for_errors(reply.lines, command, self.name)
        if self._initialising:
            return reply  # the set-up sorts out poll mode and reports nothing of its own
        if self._poll and not reply.xon:
            # only a power-up leaves poll mode by itself: settings are back to what the NVRAM holds
            self._poll = False
            self._needs_init = True
            self._reset_pending = True
        if self._reset_pending and not (allow_reset and reply.prompt in (":", "*", "T*")):
            self._reset_pending = False
            raise PowerResetAlarm(
                f"the pump left poll mode while {command!r} was sent: it was power-cycled", device=self.name
            )
        if reply.prompt == "*" and not allow_stall:
            raise StallAlarm(f"the pump reports a stall (prompt '*') after {command!r}", device=self.name)
        if reply.prompt == "T*" and not (allow_target or allow_stall):
            raise DeviceAlarm(
                f"the pump reached a target volume or time after {command!r}",
                device=self.name,
                hint="Clear the target on the pump (ctvolume) or its display; this driver sets no targets.",
            )
        return reply

    def _transact(self, shared: _SharedLine, command: str, idempotent: bool, timeout_s: float) -> Reply:
        framed = self._frame(command)
        payload = (framed + CR).encode("ascii")
        byte_time_s = 10.0 / self.baudrate
        captured = bytearray()

        def complete(buf: bytes) -> bool:
            captured[:] = buf
            return buf.endswith(XON) or _PROMPT_END_BYTES.search(buf) is not None

        try:
            raw = shared.line.transact(
                payload,
                complete,
                timeout_s=timeout_s + 200 * byte_time_s,
                idempotent=idempotent,
                retries=self.retries,
                on_stale=shared.dispatch_unsolicited,
            )
        except DeviceTimeout as exc:
            if captured:
                raise ProtocolError(
                    f"unreadable reply to {framed!r}: {bytes(captured)!r}",
                    device=self.name,
                    hint="Check that the baud rate in the rig file matches the pump's Settings menu, and the "
                    "cable: noise on a long RS-232 line garbles replies. A pump of another family on this "
                    "port (a New Era pump answers in binary frames) reads the same: check the rig file's "
                    "driver for this port.",
                ) from exc
            raise
        if not raw.endswith(XON):
            raw = self._settle(shared.line, raw)
        reply = parse_reply(raw, self.address, sent=framed)
        log.debug(
            "reply", pump=self.name, command=framed, lines=reply.lines, prompt=reply.prompt, xon=reply.xon
        )
        return reply

    def _settle(self, line: SerialLine, raw: bytes) -> bytes:
        """A reply that ended without XON: take what follows until XON or a quiet spell.

        In poll mode the XON may just be in the next read; outside it, ``NN:`` at the end may have been
        the start of another text line rather than the idle prompt."""
        buf = bytearray(raw)
        more = bytearray()

        def until_xon(data: bytes) -> bool:
            more[:] = data
            return data.endswith(XON)

        while not buf.endswith(XON):
            more.clear()
            try:
                line.read_until(until_xon, self.xon_grace_s)
            except DeviceTimeout:
                pass
            if not more:
                break
            buf += more
        return bytes(buf)


def _parse_mm(text: str) -> float:
    """The ``diameter`` query reply, ``14.5000 mm`` (units optional)."""
    match = re.match(r"^\s*(\d+\.?\d*|\.\d+)\s*(mm)?\s*$", text, re.IGNORECASE)
    if match is None:
        raise ProtocolError(f"diameter reply not understood: {text!r}")
    return float(match.group(1))
