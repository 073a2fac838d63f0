"""New Era NE-1000 family syringe pumps (NE-300/500/1000/4000; also sold as WPI Aladdin) over RS-232.

The wire protocol follows the NE-1000 user manual (Publication #1200-01), section 10.2:

* Basic mode: ``[address]COMMAND[params]<CR>`` to the pump; ``<STX><aa><status>[data]<ETX>`` back, with
  ``aa`` the two-digit address and ``status`` a prompt (I W S P T U X) or an alarm ``A?<type>``.
* Safe mode (``SAF n``, n = watchdog seconds): ``<STX><length><data><CRC-16 hi><lo><ETX>`` both ways,
  ``length`` counting every byte after STX (itself, data, CRC, ETX) and the CRC (CCITT, XMODEM
  flavour) covering the data only. The manual's own example: ``02 08 'SAF0' 55 43 03``.
* Numbers have at most 4 digits and 3 decimals; errors come back as ``?``, ``?NA``, ``?OOR``,
  ``?COM``, ``?IGN`` after the prompt; an alarm reply acknowledges the alarm and the command that
  drew it was not carried out.

Not yet checked on hardware: every byte here was checked against the manual and against the
emulator in ``simulators/newera.py`` only.
"""

from __future__ import annotations

import binascii
import math
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

import serial
import structlog

from drivers.base import Clock, MonotonicClock, PumpState, PumpStatus, StopNotConfirmed, warn_unverified_once
from drivers.errors import (
    CommunicationsAlarm,
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

log = structlog.get_logger("drivers.newera")

STX = 0x02
ETX = 0x03
CR = b"\r"
MAX_DIGITS = 4
MAX_DECIMALS = 3
BAUDRATES = (19200, 9600)
MIN_DIAMETER_MM = 0.1
MAX_DIAMETER_MM = 80.0
MAX_SAFE_TIMEOUT_S = 255
# what a rig file arms unless it says otherwise: the pump stops itself this long after the host falls
# silent; the heartbeat talks every third of it, so a busy line or a slow host has two chances to spare
DEFAULT_SAFE_TIMEOUT_S = 5
BLIND_STOPS = 3  # STP sent without waiting for a reply when the line fails (I -> P -> S, and one more)
# while pumping, a rate is spelled in the present units if that rounds it by at most this much;
# otherwise the units change, which needs a stop
UNIT_CHANGE_TOLERANCE = 1e-3

# uL/min per unit as (numerator, denominator), kept apart so that 30 MH is exactly 500 uL/min;
# the order breaks ties between equally precise spellings
RATE_UNITS: dict[str, tuple[int, int]] = {"UM": (1, 1), "UH": (1, 60), "MM": (1000, 1), "MH": (1000, 60)}
VOLUME_UNITS: dict[str, float] = {"UL": 1.0, "ML": 1000.0}
PROMPTS: dict[str, PumpState] = {s.value: s for s in PumpState}
RUNNING = (PumpState.INFUSING, PumpState.WITHDRAWING, PumpState.PURGING)

# NE-1000 specification: 0.73 uL/h with a B-D 1 mL syringe (4.78 mm) to 2120 mL/h with a B-D 60 mL
# syringe (26.59 mm); both ends scale with the plunger area.
_SPEC_MIN = (0.73 / 60.0, 4.78)
_SPEC_MAX = (2120e3 / 60.0, 26.59)


def rate_limits_ul_min(diameter_mm: float) -> tuple[float, float]:
    """(min, max) pumping rate in uL/min of an NE-1000 with a syringe of this inside diameter."""
    (low, d_low), (high, d_high) = _SPEC_MIN, _SPEC_MAX
    return low * (diameter_mm / d_low) ** 2, high * (diameter_mm / d_high) ** 2


# -- errors that only this family reports ------------------------------------------------------------


class NotApplicable(DeviceError):
    """``?NA``: the command is valid but not now (e.g. the diameter while pumping)."""

    hint_default = (
        "The pump refused the command in its present state: stop the pump (or finish its pumping "
        "program) before changing the syringe diameter or the rate units, and check the pump's display"
    )


class CommandIgnored(DeviceError):
    """``?IGN``: the pump ignored the command because a new program phase started at that moment."""

    hint_default = (
        "The pump ignored the command while starting a new program phase: check that no multi-phase "
        "pumping program is loaded on the pump (the driver expects a single continuous phase), then retry"
    )


class AddressConflict(DeviceError):
    hint_default = "Give each pump on one port its own address (Setup menu 'Ad:') and its own rig entry"


class ProgramErrorAlarm(DeviceAlarm):
    kind = "program"
    hint_default = (
        "The pump's pumping program is faulty: clear the program on the pump (single phase, RAT function)"
    )


class PhaseOutOfRangeAlarm(DeviceAlarm):
    kind = "phase"
    hint_default = "The pump's program jumped to a phase out of range: clear the program on the pump"


ALARMS: dict[str, type[DeviceAlarm]] = {
    "R": PowerResetAlarm,
    "S": StallAlarm,
    "T": CommunicationsAlarm,
    "E": ProgramErrorAlarm,
    "O": PhaseOutOfRangeAlarm,
}


# -- numbers -----------------------------------------------------------------------------------------


def _fit(value: float) -> Decimal | None:
    """``value`` rounded to the most decimals that keep within 4 digits and 3 decimals, or None."""
    if not math.isfinite(value) or value < 0 or value >= 10**MAX_DIGITS:
        return None
    exact = Decimal(repr(float(value)))
    for decimals in range(MAX_DECIMALS, -1, -1):
        q = exact.quantize(Decimal(1).scaleb(-decimals), rounding=ROUND_HALF_UP)
        if len(str(int(q))) + decimals <= MAX_DIGITS:
            return q
    return None


def _text(q: Decimal) -> str:
    s = format(q, "f")
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    return s or "0"


def format_number(value: float, what: str = "value") -> str:
    """The pump's spelling of ``value`` (at most 4 digits, 3 of them decimals), e.g. 12.34, 0.123.

    Raises OutOfRange when no such spelling exists (negative, not finite, 10000 or more)."""
    q = _fit(value)
    if q is None:
        raise OutOfRange(
            f"{what} {value!r} cannot be sent to a New Era pump, which takes 0 to 9999 with at most 4 "
            "digits and 3 decimals",
        )
    return _text(q)


def parse_number(text: str) -> float:
    """Strictly parse a number as the firmware does (<= 4 digits, <= 3 decimals). ValueError otherwise."""
    m = re.fullmatch(r"(\d*)(?:\.(\d*))?", text)
    if not m or not (m.group(1) or m.group(2)):
        raise ValueError(f"{text!r} is not a number")
    whole, frac = m.group(1), m.group(2) or ""
    if len(whole) + len(frac) > MAX_DIGITS or len(frac) > MAX_DECIMALS:
        raise ValueError(f"{text!r} has more than {MAX_DIGITS} digits or {MAX_DECIMALS} decimals")
    return float(text)


def rate_in_units(rate_ul_min: float, units: str) -> tuple[str, float] | None:
    """The spelling of a rate in ``units`` and its relative rounding error, or None if it cannot be."""
    num, den = RATE_UNITS[units]
    value = rate_ul_min * den / num
    q = _fit(value)
    if q is None or q == 0:
        return None
    return _text(q), abs(float(q) - value) / value


def choose_rate_units(rate_ul_min: float) -> tuple[str, str]:
    """(number, units) that carry ``rate_ul_min`` with the least rounding, e.g. 0.5 -> ("30", "UH")."""
    if not math.isfinite(rate_ul_min) or rate_ul_min <= 0:
        raise OutOfRange(
            f"rate {rate_ul_min!r} uL/min: a New Era pump takes only positive rates",
            hint="To stop a stream call stop(); check the protocol's lower flow bounds",
        )
    best: tuple[float, str, str] | None = None
    for units in RATE_UNITS:
        spelled = rate_in_units(rate_ul_min, units)
        if spelled is not None and (best is None or spelled[1] < best[0]):
            best = (spelled[1], spelled[0], units)
    if best is None:
        raise OutOfRange(
            f"rate {rate_ul_min!r} uL/min cannot be written in any New Era rate unit (UM, MM, UH, MH) with "
            "4 digits: the pump family spans 0.001 uL/h to 9999 mL/min",
        )
    return best[1], best[2]


def choose_volume_units(volume_ul: float) -> tuple[str, str]:
    """(number, units) that carry a volume in uL with the least rounding (UL or ML)."""
    best: tuple[float, str, str] | None = None
    for units, factor in VOLUME_UNITS.items():
        value = volume_ul / factor
        q = _fit(value)
        if q is None:
            continue
        err = abs(float(q) - value) / value if value else 0.0
        if best is None or err < best[0]:
            best = (err, _text(q), units)
    if best is None:
        raise OutOfRange(f"volume {volume_ul!r} uL cannot be written in UL or ML with 4 digits")
    return best[1], best[2]


# -- framing -----------------------------------------------------------------------------------------


def crc16_xmodem(data: bytes) -> int:
    """CRC-16/XMODEM (the manual's '16 bit CCITT CRC'): poly 0x1021, init 0, no reflection."""
    return binascii.crc_hqx(data, 0)


def encode_basic(address: int | None, command: str) -> bytes:
    prefix = "" if address is None else str(address)
    return (prefix + command).encode("ascii") + CR


def encode_safe(address: int | None, command: str) -> bytes:
    data = (("" if address is None else str(address)) + command).encode("ascii")
    crc = crc16_xmodem(data)
    return bytes([STX, len(data) + 4]) + data + bytes([crc >> 8, crc & 0xFF, ETX])


@dataclass(frozen=True)
class SafeFrame:
    data: bytes
    crc_ok: bool


def _safe_packet_at(buf: bytes, j: int) -> tuple[SafeFrame, int] | None:
    """The packet starting at ``buf[j]`` (an STX) and the index after it, or None.

    The length byte counts itself, the data, the CRC and ETX (the manual's reading); a packet whose
    length is off by one either way is taken too when its CRC proves it, for peers that count
    differently."""
    length = buf[j + 1]
    strict: tuple[SafeFrame, int] | None = None
    for slack in (0, 1, -1):
        end = j + 1 + length + slack
        if length + slack < 4 or end > len(buf) or buf[end - 1] != ETX:
            continue
        data = buf[j + 2 : end - 3]
        ok = ((buf[end - 3] << 8) | buf[end - 2]) == crc16_xmodem(data)
        if ok:
            return SafeFrame(data, True), end
        if slack == 0:
            strict = (SafeFrame(data, False), end)
    return strict


def split_safe_frames(buf: bytes) -> list[SafeFrame]:
    """Every complete safe-mode packet in ``buf``; bytes that do not frame are skipped to the next STX."""
    frames: list[SafeFrame] = []
    i = 0
    while True:
        j = buf.find(STX, i)
        if j < 0 or j + 1 >= len(buf):
            return frames
        found = _safe_packet_at(buf, j)
        if found is None:
            if j + 1 + buf[j + 1] > len(buf):
                return frames  # not all here yet
            i = j + 1
            continue
        frames.append(found[0])
        i = found[1]


def split_basic_frames(buf: bytes) -> list[bytes]:
    """The contents of every complete ``<STX>...<ETX>`` in ``buf``."""
    frames: list[bytes] = []
    i = 0
    while True:
        j = buf.find(STX, i)
        if j < 0:
            return frames
        k = buf.find(ETX, j + 1)
        if k < 0:
            return frames
        nxt = buf.find(STX, j + 1)
        if 0 <= nxt < k:  # a broken frame: resynchronise on the later STX
            i = nxt
            continue
        frames.append(buf[j + 1 : k])
        i = k + 1


@dataclass(frozen=True)
class Reply:
    """One parsed ``<response data>``: the address, then a prompt or an alarm, then data."""

    address: int
    state: PumpState | None
    alarm: str | None
    data: str

    @property
    def error(self) -> str | None:
        """The error code after a prompt ('' for a bare '?'), or None."""
        return self.data[1:] if self.data.startswith("?") else None


# The pump sends two address digits; one is taken too (the manual's grammar allows it).
_REPLY = re.compile(r"(\d\d?)(?:A\?([A-Z])|([IWSPTUX]))([\x20-\x7e]*)")


def parse_reply(data: bytes) -> Reply:
    """Parse ``<address><status>[data]``; ProtocolError for anything else."""
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise ProtocolError(f"reply {data!r} is not ASCII (garbled line, wrong baud rate, or a pump of another family on this port: check the rig file's driver)") from None
    m = _REPLY.fullmatch(text)
    if not m:
        raise ProtocolError(f"reply {text!r} is not <address><status>[data] as a New Era pump sends")
    alarm = m.group(2)
    return Reply(int(m.group(1)), None if alarm else PROMPTS[m.group(3)], alarm, m.group(4))


_FLOAT = r"(\d+\.?\d*|\.\d+)"
_RATE_REPLY = re.compile(_FLOAT + r"(UM|MM|UH|MH)")
_DIS_REPLY = re.compile("I" + _FLOAT + "W" + _FLOAT + "(UL|ML)")
_VER_REPLY = re.compile(r"NE(\d+)([A-Z0-9]*?)V(\d+(?:\.\d+)?)")


def parse_rate(data: str) -> tuple[float, str]:
    """``RAT`` query data -> (uL/min, units)."""
    m = _RATE_REPLY.fullmatch(data.replace(" ", ""))
    if not m:
        raise ProtocolError(f"rate reply {data!r} is not <number><UM|MM|UH|MH>")
    num, den = RATE_UNITS[m.group(2)]
    return float(m.group(1)) * num / den, m.group(2)


def parse_dispensed(data: str) -> tuple[float, float]:
    """``DIS`` data ``I<float>W<float><UL|ML>`` -> (infused uL, withdrawn uL)."""
    m = _DIS_REPLY.fullmatch(data.replace(" ", ""))
    if not m:
        raise ProtocolError(f"dispensed-volume reply {data!r} is not I<number>W<number><UL|ML>")
    factor = VOLUME_UNITS[m.group(3)]
    return float(m.group(1)) * factor, float(m.group(2)) * factor


def parse_version(data: str) -> tuple[str, str]:
    """``VER`` data, e.g. ``NE1000V3.928`` or ``NE1000X2V3.928`` -> ("NE-1000X2", "3.928")."""
    m = _VER_REPLY.fullmatch(data.replace(" ", ""))
    if not m:
        raise ProtocolError(f"version reply {data!r} is not NE<model>V<version>: is this a New Era pump?")
    return f"NE-{m.group(1)}{m.group(2)}", m.group(3)


# -- the shared port ---------------------------------------------------------------------------------


class _SharedLine:
    """One port and the pumps addressed on it; the lock makes each command-reply exchange atomic."""

    def __init__(self, url: str) -> None:
        self.serial = SerialLine(url, name=f"New Era line {url}")
        self.lock = threading.RLock()
        self.pumps: dict[int, NewEraPump] = {}
        self.baud_confirmed = False


_lines: dict[str, _SharedLine] = {}
_lines_lock = threading.Lock()


def _acquire_line(url: str, pump: NewEraPump) -> _SharedLine:
    with _lines_lock:
        line = _lines.setdefault(url, _SharedLine(url))
        other = line.pumps.get(pump.address)
        if other is not None and other is not pump:
            raise AddressConflict(
                f"address {pump.address} on {url} is already used by pump {other.name!r}", device=pump.name
            )
        line.pumps[pump.address] = pump
        return line


def _release_line(line: _SharedLine, pump: NewEraPump) -> None:
    with _lines_lock:
        if line.pumps.get(pump.address) is pump:
            del line.pumps[pump.address]
        if not line.pumps:
            with line.lock:
                line.serial.close()
            if _lines.get(line.serial.url) is line:
                del _lines[line.serial.url]


# -- the driver --------------------------------------------------------------------------------------


class NewEraPump:
    """One New Era pump at ``address`` on ``port`` (a device path or any pyserial URL).

    Pumps given the same port share one serial line. ``safe_mode_timeout_s`` > 0 puts the pump in
    Safe mode with that watchdog (1-255 s) and keeps it fed from a heartbeat every third of it; after
    close() (or a crash of this process, or a dead line) nothing feeds it, so the pump stops itself
    with A?T. The heartbeat runs on ``clock``: a background thread on the wall clock, or the clock's
    own timers when it has ``every()`` (the simulators' virtual clock, whose emulated watchdog counts
    the same virtual seconds). safe_state() that cannot confirm the stop sends STP blindly.
    Alarms are raised once, by the command whose reply carried them (or, when a heartbeat or an
    unsolicited Safe-mode packet saw them, by the next command), and stay in status().alarm until
    the next successful run().
    """

    def __init__(
        self,
        name: str,
        port: str,
        *,
        address: int = 0,
        syringe_diameter_mm: float | None = None,
        baudrate: int | None = None,
        safe_mode_timeout_s: int = 0,
        reply_timeout_s: float = 0.5,
        retries: int = 2,
        backoff_s: float = 0.05,
        heartbeat: bool = True,
        clock: Clock | None = None,
    ) -> None:
        if not 0 <= int(address) <= 99 or int(address) != address:
            raise OutOfRange(
                f"address {address!r} is not 0-99",
                device=name,
                hint="Set the pump's address (Setup menu 'Ad:') and the rig file to the same 0-99 value",
            )
        if (
            not 0 <= safe_mode_timeout_s <= MAX_SAFE_TIMEOUT_S
            or int(safe_mode_timeout_s) != safe_mode_timeout_s
        ):
            raise OutOfRange(
                f"safe-mode timeout {safe_mode_timeout_s!r} s is not a whole 0-255",
                device=name,
                hint="Use 0 for Basic mode or 1-255 seconds",
            )
        if syringe_diameter_mm is not None:
            _check_diameter(syringe_diameter_mm, name)
        self.name = name
        self.port = port
        self.address = int(address)
        self._baudrates: tuple[int, ...] = (baudrate,) if baudrate else BAUDRATES
        self._safe_timeout_s = int(safe_mode_timeout_s)
        self._reply_timeout_s = reply_timeout_s
        self._retries = retries
        self._backoff_s = backoff_s
        self._want_heartbeat = heartbeat
        self._clock: Clock = clock or MonotonicClock()
        self._line: _SharedLine | None = None
        self._last_baud: int | None = None
        self._last_safe: bool | None = None  # the framing the pump last answered in
        self._safe = False
        self.model: str | None = None
        self.firmware: str | None = None
        self._diameter_mm = syringe_diameter_mm
        self._want_diameter = syringe_diameter_mm
        self._rate_ul_min: float | None = None
        self._rate_units: str | None = None
        self._state: PumpState | None = None
        self._alarm: str | None = None
        self._alarm_reported = True
        self._needs_restore = False
        self._hb_stop = threading.Event()
        self._hb_thread: threading.Thread | None = None
        self._hb_cancel: Callable[[], None] | None = None
        self._last_contact = 0.0

    # -- connection ----------------------------------------------------------------------------------

    @property
    def baudrate(self) -> int | None:
        return self._line.serial.baudrate if self._line and self._line.baud_confirmed else None

    @property
    def safe_mode(self) -> bool:
        return self._safe

    def connect(self) -> None:
        """Open the port (shared with the other pumps on it), find the baud rate and mode, identify
        the pump, and set it up for continuous infusion (DIR INF, VOL 0)."""
        if self._line is not None:
            return
        line = _acquire_line(self.port, self)
        self._line = line
        try:
            with line.lock:
                self._ensure_open()
                self._detect()
                self._set_mode()
                self.model, self.firmware = parse_version(self._command("VER", idempotent=True).data)
                self._single_rate_phase()
                self._command("DIR INF", idempotent=True)
                self._rate_ul_min, self._rate_units = parse_rate(self._command("RAT", idempotent=True).data)
                self._diameter_mm = _parse_float(self._command("DIA", idempotent=True).data, "diameter")
                if self._want_diameter is not None and self._want_diameter != self._diameter_mm:
                    self.set_syringe_diameter_mm(self._want_diameter)
                else:
                    self._set_volume_mode()
        except BaseException:
            self._line = None
            _release_line(line, self)
            raise
        log.info(
            "pump connected",
            pump=self.name,
            port=self.port,
            address=self.address,
            model=self.model,
            firmware=self.firmware,
            baud=line.serial.baudrate,
            safe_mode=self._safe,
        )
        warn_unverified_once("drivers.newera", self.port)
        if self._safe and self._want_heartbeat:
            self._start_heartbeat()

    def close(self) -> None:
        """Release the port (closed when its last pump lets go). Does not stop the pump: call safe_state().

        A pump in Safe mode that is known to stand still is first returned to Basic mode (SAF0): the
        host leaving on purpose must not sound its alarm. A running one keeps its watchdog, which
        stops it once the heartbeat is gone."""
        self._stop_heartbeat()
        if self._line is not None and self._safe and self._state is not None and self._state not in RUNNING:
            try:
                self._exchange("SAF0", idempotent=True, retries=0, parse_retries=0, any_framing=True)
            except DeviceError as exc:
                log.warning("could not leave Safe mode at close", pump=self.name, error=str(exc))
        line, self._line = self._line, None
        if line is not None:
            _release_line(line, self)

    def _detect(self) -> None:
        """Find the line's baud rate (once per line) and whether this pump talks Basic or Safe mode.

        A pump that was just powered answers its first command with the reset alarm (A?R); at
        connect that is expected: it is logged and connect carries on (the reply acknowledged it)."""
        line = self._require_line()
        bauds = (line.serial.baudrate,) if line.baud_confirmed else self._baudrates
        for baud in bauds:
            line.serial.set_baudrate(baud)
            for safe in (False, True):
                self._safe = safe
                try:
                    reply = self._exchange("", idempotent=True, retries=0, parse_retries=0)
                except (DeviceTimeout, ProtocolError):
                    continue
                line.baud_confirmed = True
                self._last_baud, self._last_safe = baud, safe
                if reply.alarm == "R":
                    log.info("pump reports power-up reset; acknowledged", pump=self.name)
                elif reply.alarm:  # an alarm from before we connected: keep it for status(), do not fail
                    log.warning(
                        "pump reports an alarm at connect; acknowledged", pump=self.name, alarm=reply.alarm
                    )
                    self._latch(reply.alarm, background=False)
                return
        raise DeviceTimeout(
            f"no New Era pump answered at address {self.address} on {self.port} "
            f"at {' or '.join(str(b) for b in bauds)} baud, in Basic or Safe mode",
            device=self.name,
            hint=(
                f"Check that the pump is on, that its address (Setup menu 'Ad:') is {self.address}, that its "
                "baud rate (Setup menu) matches the rig file, and that the cable is New Era's PC-to-pump cable "
                "in the 'To Computer' jack"
            ),
        )

    def _set_mode(self) -> None:
        want_safe = self._safe_timeout_s > 0
        if want_safe or self._safe:
            # The reply comes in the framing of the mode the command selects.
            reply = self._exchange(f"SAF{self._safe_timeout_s}", idempotent=True, any_framing=True)
            if reply.alarm:  # acknowledged by this reply; the command was not carried out
                self._latch(reply.alarm, background=False)
                reply = self._exchange(f"SAF{self._safe_timeout_s}", idempotent=True, any_framing=True)
            self._raise_for(reply, "SAF")
            self._safe = self._last_safe = want_safe

    # -- the SyringePump protocol --------------------------------------------------------------------

    @property
    def syringe_diameter_mm(self) -> float:
        """The diameter the pump holds (asked while connected); NaN while unknown. Never raises before
        connect(): ``isinstance(pump, SyringePump)`` reads every property of the protocol."""
        if self._line is not None:
            self._diameter_mm = _parse_float(self._query("DIA").data, "diameter")
        return math.nan if self._diameter_mm is None else self._diameter_mm

    def set_syringe_diameter_mm(self, diameter_mm: float) -> None:
        text = _check_diameter(diameter_mm, self.name)
        self._command(f"DIA{text}", idempotent=True)
        self._diameter_mm = self._want_diameter = float(text)
        self._set_volume_mode()  # setting the diameter resets the volume units to its default

    def set_rate_ul_min(self, rate_ul_min: float) -> None:
        """Set the infusion rate, in whichever unit carries it most precisely.

        While pumping the firmware refuses a change of rate units; the new rate is then spelled in
        the present units when that costs at most 0.1 %, else the pump is stopped, the units changed
        and the pump restarted (logged)."""
        try:
            text, units = choose_rate_units(rate_ul_min)
        except OutOfRange as exc:
            raise OutOfRange(exc.detail, device=self.name, hint=exc.hint) from None
        try:
            self._set_rate(rate_ul_min, text, units)
        except PowerResetAlarm:
            # the reset pump answered with its alarm and took nothing (the manual: an alarm is acknowledged
            # before any data changes): the rate asked for now is what run() sets again, not the one before
            self._rate_ul_min, self._rate_units = rate_ul_min, None
            raise

    def _set_rate(self, rate_ul_min: float, text: str, units: str) -> None:
        self._raise_pending_alarm()
        if self._needs_restore:  # a power reset cleared the diameter: no rate is taken without it
            self._restore(rate=False)
        if self._state is None:
            self._state = self._query_state()
        running = self._state in RUNNING
        if running and self._rate_units is not None and units != self._rate_units:
            same = rate_in_units(rate_ul_min, self._rate_units)
            if same is not None and same[1] <= UNIT_CHANGE_TOLERANCE:
                self._command(f"RAT{same[0]}", idempotent=True)
                self._rate_ul_min = rate_ul_min
                return
            log.info("rate units change needs a stop", pump=self.name, old=self._rate_units, new=units)
            self.stop()
            if self._needs_restore:  # the stop found it power-cycled: stopped, its diameter gone, nothing taken
                raise PowerResetAlarm(
                    "the pump was power-cycled (its reply to STP carried the reset alarm); diameter and rate are set "
                    "again at run()", device=self.name)
            try:
                self._command(f"RAT{text}{units}", idempotent=True)
            except DeviceError:
                self.run()  # the old rate still stands: keep pumping it, and report why not the new
                raise
            self._rate_ul_min, self._rate_units = rate_ul_min, units
            self.run()
            return
        # While pumping the units are left out: the manual forbids changing them then.
        self._command(f"RAT{text}" if running else f"RAT{text}{units}", idempotent=True)
        self._rate_ul_min, self._rate_units = rate_ul_min, units

    def run(self) -> None:
        """Start infusing. After a power reset the last diameter and rate are set again first.

        RUN is never re-sent blindly: after a lost reply the pump is asked whether it runs."""
        self._raise_pending_alarm()
        if self._needs_restore:
            self._restore()
        try:
            reply = self._command("RUN", idempotent=False)
        except NotApplicable:
            # Some firmware answers RUN while pumping with ?NA: that is success for an idempotent run().
            state = self._query_state()
            if state not in RUNNING:
                raise
            reply = Reply(self.address, state, None, "")
        except (DeviceTimeout, ProtocolError) as lost:
            try:
                state = self._query_state()
            except DeviceError:
                raise lost from None
            if state not in RUNNING:
                log.warning("RUN reply lost and pump not running; sending RUN once more", pump=self.name)
                reply = self._command("RUN", idempotent=False)
            else:
                reply = Reply(self.address, state, None, "")
        if reply.state not in RUNNING:
            raise DeviceError(
                f"pump answered RUN with state {reply.state.name if reply.state else '?'} instead of infusing",
                device=self.name,
                hint="Check the pump's display for a finished program or a volume target, and that rate and diameter are set",
            )
        self._alarm, self._alarm_reported = None, True

    def stop(self) -> None:
        """Stop (not pause) the pump. An alarm in the reply is latched for status(), not raised."""
        for _ in range(4):
            reply = self._exchange("STP", idempotent=True)
            if reply.alarm:  # alarms stop the pump; this reply acknowledged it, so ask again
                self._latch(reply.alarm, background=False)
                continue
            if reply.error is not None:
                raise self._command_error(reply.error, "STP")
            # STP pauses a running program (P); a second STP stops it (S).
            if reply.state not in (PumpState.PAUSED, *RUNNING):
                return
        raise DeviceError(
            "pump did not report stopped after 4 STP commands",
            device=self.name,
            hint="Stop the pump at its keypad and check for a pumping program with pause phases",
        )

    def safe_state(self) -> None:
        """Stop the pump. Idempotent; alarms are expected here and only latched.

        When the line fails (no reply, an unreadable one, the port gone) STP is still sent a few
        times without waiting for a reply - a pump whose way back is broken still hears it - and
        StopNotConfirmed says that nobody knows whether it stopped."""
        try:
            self.stop()
        except (DeviceTimeout, ProtocolError, NotConnected) as exc:
            if self._last_safe is None:
                raise  # never reached by this driver, so never started by it: nothing to stop blindly
            sent = self._blind_stop()
            watchdog = (
                f"; its Safe-mode watchdog stops it {self._safe_timeout_s} s after the last command it heard"
                if self._safe_timeout_s
                else "; it has no watchdog armed (safe_mode_timeout_s: 0)"
            )
            cause = exc.detail if self._line is not None else "not connected: reconnecting to it failed"
            raise StopNotConfirmed(
                f"stop not confirmed ({cause}); STP sent {sent} times without waiting for a reply" + watchdog,
                device=self.name,
            ) from exc

    def dispensed_ul(self) -> float:
        """Volume infused since the pump's counter was last cleared (see clear_dispensed)."""
        infused, _ = parse_dispensed(self._command("DIS", idempotent=True).data)
        return infused

    def clear_dispensed(self) -> None:
        self._command("CLD INF", idempotent=True)
        self._command("CLD WDR", idempotent=True)

    def status(self) -> PumpStatus:
        """State from the prompt, rate from RAT, volume from DIS; a latched alarm is reported, not raised."""
        state = self._query_state()
        rate, units = parse_rate(self._query("RAT").data)
        self._rate_units = units
        infused, _ = parse_dispensed(self._query("DIS").data)
        self._alarm_reported = True
        alarm = ALARMS.get(self._alarm, DeviceAlarm).kind if self._alarm else None
        return PumpStatus(state=state, rate_ul_min=rate, dispensed_ul=infused, alarm=alarm)

    def acknowledge_alarm(self) -> None:
        """Forget the latched alarm (the pump itself acknowledged it when it reported it)."""
        self._alarm, self._alarm_reported = None, True

    def heartbeat(self) -> None:
        """One keep-alive status query (the Safe-mode watchdog restarts on every valid packet); one
        try, since the next beat comes soon and a busy line must not be held."""
        try:
            reply = self._exchange("", idempotent=True, retries=0, parse_retries=0)
        except DeviceError as exc:
            log.warning("heartbeat failed", pump=self.name, error=str(exc))
            return
        if reply.alarm:
            self._latch(reply.alarm, background=True)

    # -- internals -----------------------------------------------------------------------------------

    def _require_line(self) -> _SharedLine:
        if self._line is None:
            raise NotConnected("pump used before connect()", device=self.name, hint="Call connect() first")
        return self._line

    def _ensure_open(self) -> None:
        """(Re)open the shared port: after an unplugged adapter comes back the next command reconnects."""
        line = self._require_line()
        if not line.serial.is_open:
            line.serial.open()

    def _timeout_for(self, payload: bytes) -> float:
        baud = self._require_line().serial.baudrate or 9600
        # request + the longest reply (~24 bytes), 10 bits a byte, twice for margin
        return self._reply_timeout_s + 2 * (len(payload) + 24) * 10 / baud

    def _complete(self, any_framing: bool) -> Callable[[bytes], bool]:
        def safe_done(buf: bytes) -> bool:
            for frame in split_safe_frames(buf):
                if not frame.crc_ok:
                    return True
                try:
                    if parse_reply(frame.data).address == self.address:
                        return True
                except ProtocolError:
                    return True  # complete, and _parse will say what is wrong with it
            return False

        def basic_done(buf: bytes) -> bool:
            return bool(split_basic_frames(buf))

        def reply_done(buf: bytes) -> bool:
            # either framing (SAF answers in the mode it switches to): a Basic reply starts with the
            # address's digits; a Safe packet with its length byte, and its CRC bytes may be 0x03 (ETX),
            # so a Safe packet is complete only by its length, never by the first ETX in it
            return safe_done(buf) or any(frame[:1].isdigit() for frame in split_basic_frames(buf))

        if any_framing:
            return reply_done
        return safe_done if self._safe else basic_done

    def _parse(self, raw: bytes, any_framing: bool) -> Reply:
        """The reply for this address in ``raw``; other frames go to their pumps as unsolicited."""
        candidates: list[bytes] = []
        if self._safe or any_framing:
            frames = split_safe_frames(raw)
            if frames:
                if not any(f.crc_ok for f in frames):
                    raise ProtocolError(f"reply {raw!r} failed its CRC check (noise on the line?)")
                candidates = [f.data for f in frames if f.crc_ok]
        if not candidates and (not self._safe or any_framing):
            candidates = split_basic_frames(raw)
        mine: Reply | None = None
        for data in candidates:
            reply = parse_reply(data)
            if reply.address == self.address and mine is None:
                mine = reply
            else:
                self._dispatch_unsolicited(reply)
        if mine is None:
            raise ProtocolError(f"no reply from address {self.address} in {raw!r}")
        return mine

    def _on_stale(self, data: bytes) -> None:
        for frame in split_safe_frames(data):
            if frame.crc_ok:
                try:
                    self._dispatch_unsolicited(parse_reply(frame.data))
                except ProtocolError:
                    log.debug("unparseable stale frame", pump=self.name, data=frame.data)

    def _dispatch_unsolicited(self, reply: Reply) -> None:
        if not reply.alarm:
            return
        line = self._line
        pump = line.pumps.get(reply.address) if line else None
        if pump is not None:
            log.warning("unsolicited alarm", pump=pump.name, alarm=reply.alarm)
            pump._latch(reply.alarm, background=True)

    def _exchange(
        self,
        command: str,
        *,
        idempotent: bool,
        retries: int | None = None,
        parse_retries: int | None = None,
        any_framing: bool = False,
    ) -> Reply:
        """Send one command and return the parsed reply (alarms and errors not yet interpreted)."""
        line = self._require_line()
        encode = encode_safe if self._safe else encode_basic
        payload = encode(self.address, command.replace(" ", ""))
        retries = self._retries if retries is None else retries
        attempts = 1 + ((self._retries if parse_retries is None else parse_retries) if idempotent else 0)
        with line.lock:
            timeout = self._timeout_for(payload)
            for attempt in range(attempts):
                self._ensure_open()
                try:
                    raw = line.serial.transact(
                        payload,
                        self._complete(any_framing),
                        timeout_s=timeout,
                        idempotent=idempotent,
                        retries=retries if idempotent else 0,
                        backoff_s=self._backoff_s,
                        on_stale=self._on_stale,
                    )
                except DeviceTimeout as exc:
                    raise DeviceTimeout(
                        f"no reply from the pump at address {self.address} to {command or 'status query'!r} "
                        f"({exc.detail})",
                        device=self.name,
                    ) from exc
                except (serial.SerialException, OSError) as exc:
                    line.serial.close()
                    raise NotConnected(f"port {self.port} failed ({exc})", device=self.name) from exc
                try:
                    reply = self._parse(raw, any_framing)
                except ProtocolError as exc:
                    if attempt + 1 < attempts:
                        time.sleep(self._backoff_s * (2**attempt))
                        continue
                    raise ProtocolError(
                        f"{command or 'status query'!r}: {exc.detail}", device=self.name
                    ) from exc
                if reply.error == "COM" and attempt + 1 < attempts:
                    continue  # the pump saw a corrupted packet and did nothing: send it again
                break
            self._last_contact = self._clock.now()
            self._last_safe = self._safe
            if any_framing and command.startswith("SAF"):
                self._safe = split_safe_frames(raw) != []
        if reply.state is not None:
            self._state = reply.state
        elif reply.alarm:
            self._state = PumpState.STOPPED
        return reply

    def _command(self, command: str, *, idempotent: bool) -> Reply:
        self._raise_pending_alarm()
        return self._raise_for(self._exchange(command, idempotent=idempotent), command)

    def _query(self, command: str) -> Reply:
        """A query that reports rather than raises an alarm: latch it, then ask again."""
        reply = self._exchange(command, idempotent=True)
        if reply.alarm:
            self._latch(reply.alarm, background=False)
            reply = self._exchange(command, idempotent=True)
        return self._raise_for(reply, command)

    def _raise_for(self, reply: Reply, command: str) -> Reply:
        if reply.alarm:
            self._latch(reply.alarm, background=False)
            self._alarm_reported = True
            cls = ALARMS.get(reply.alarm, DeviceAlarm)
            raise cls(
                f"pump answered {command or 'status query'!r} with alarm A?{reply.alarm} ({cls.kind}); "
                "the command was not carried out and the alarm is now acknowledged",
                device=self.name,
            )
        if reply.error is not None:
            raise self._command_error(reply.error, command)
        return reply

    def _command_error(self, code: str, command: str) -> DeviceError:
        what = f"pump answered {command!r} with ?{code}"
        if code == "OOR":
            return OutOfRange(f"{what} (data out of range)", device=self.name)
        if code == "NA":
            return NotApplicable(f"{what} (not applicable now)", device=self.name)
        if code == "IGN":
            return CommandIgnored(f"{what} (ignored: a new phase started)", device=self.name)
        if code == "COM":
            return ProtocolError(f"{what} (the pump received a corrupted packet)", device=self.name)
        return ProtocolError(f"{what} (command not recognised)", device=self.name)

    def _latch(self, alarm: str, *, background: bool) -> None:
        self._alarm = alarm
        self._alarm_reported = not background
        self._state = PumpState.STOPPED
        if alarm == "R":
            self._needs_restore = True

    def _raise_pending_alarm(self) -> None:
        """An alarm seen in the background (heartbeat, unsolicited frame) is raised at the next command."""
        if self._alarm and not self._alarm_reported:
            self._alarm_reported = True
            cls = ALARMS.get(self._alarm, DeviceAlarm)
            raise cls(f"pump raised alarm A?{self._alarm} ({cls.kind}) and stopped", device=self.name)

    def _single_rate_phase(self) -> None:
        """Select program phase 1 as a plain rate phase: RAT, VOL and DIR act on the selected phase,
        and a pump left on another phase by a keypad program would otherwise get them there."""
        for command in ("PHN 1", "FUN RAT"):
            try:
                self._command(command, idempotent=True)
            except NotApplicable:  # refused while it pumps (a status read of a running pump): not a fault
                log.info("pump is pumping: its program phase is left as it is", pump=self.name, command=command)
                return
            except (OutOfRange, ProtocolError) as exc:  # a model without programs
                log.warning("pump refused program set-up", pump=self.name, command=command, error=str(exc))

    def _set_volume_mode(self) -> None:
        """Volume units uL (DIS then reports 0.001 uL steps instead of 0.001 mL), and no volume
        target: VOL 0 makes the pump run until stopped."""
        try:
            self._command("VOL UL", idempotent=True)
        except (OutOfRange, NotApplicable, ProtocolError) as exc:  # precision only: carry on in mL
            log.warning("pump refused volume units uL", pump=self.name, error=str(exc))
        self._command("VOL 0", idempotent=True)

    def _query_state(self) -> PumpState:
        reply = self._exchange("", idempotent=True)
        if reply.alarm:
            self._latch(reply.alarm, background=False)
            return PumpState.STOPPED
        if reply.error is not None:
            raise self._command_error(reply.error, "status query")
        assert reply.state is not None
        return reply.state

    def _restore(self, *, rate: bool = True) -> None:
        """Set again what a power reset cleared: diameter, direction, continuous mode and (unless a new
        rate is on its way) the rate."""
        if self._want_diameter is None or (rate and self._rate_ul_min is None):
            raise PowerResetAlarm(
                "pump was reset and the driver does not know the diameter and rate to set again",
                device=self.name,
                hint="Set the syringe diameter and the rate again before run()",
            )
        log.info("restoring settings after power reset", pump=self.name)
        self._needs_restore = False
        self.set_syringe_diameter_mm(self._want_diameter)
        self._command("DIR INF", idempotent=True)
        if not rate or self._rate_ul_min is None:
            return
        text, units = choose_rate_units(self._rate_ul_min)
        self._command(f"RAT{text}{units}", idempotent=True)
        self._rate_units = units

    def _start_heartbeat(self) -> None:
        interval = max(0.1, self._safe_timeout_s / 3.0)

        def beat() -> None:
            # a command in the last half interval fed the watchdog already: the longest silence
            # is then 1.5 intervals, half the time out
            if self._line is not None and self._clock.now() - self._last_contact >= interval / 2:
                self.heartbeat()

        every = getattr(self._clock, "every", None)
        if callable(every):
            self._hb_cancel = every(interval, beat)
            return
        self._hb_stop.clear()

        def loop() -> None:
            while not self._hb_stop.wait(interval):
                beat()

        self._hb_thread = threading.Thread(target=loop, name=f"newera-heartbeat-{self.name}", daemon=True)
        self._hb_thread.start()

    def _blind_stop(self) -> int:
        """STP written BLIND_STOPS times in the framing the pump last answered in, on the shared line
        if it is still held, else on the port opened for this alone."""
        payload = (encode_safe if self._last_safe else encode_basic)(self.address, "STP")
        with _lines_lock:
            line = self._line or _lines.get(self.port)
        held = (line.serial, line.lock) if line is not None else None
        return send_blind_anywhere(payload, BLIND_STOPS, held=held, url=self.port,
                                   baudrate=self._last_baud or self._baudrates[0], name=f"New Era line {self.port}")

    def _stop_heartbeat(self) -> None:
        if self._hb_cancel is not None:
            self._hb_cancel()
            self._hb_cancel = None
        self._hb_stop.set()
        if self._hb_thread is not None:
            self._hb_thread.join(timeout=2)
            self._hb_thread = None


def _parse_float(data: str, what: str) -> float:
    data = data.replace(" ", "")
    if not re.fullmatch(_FLOAT, data):
        raise ProtocolError(f"{what} reply {data!r} is not a number")
    return float(data)


def _check_diameter(diameter_mm: float, name: str) -> str:
    if not (math.isfinite(diameter_mm) and MIN_DIAMETER_MM <= diameter_mm <= MAX_DIAMETER_MM):
        raise OutOfRange(
            f"syringe diameter {diameter_mm!r} mm is outside {MIN_DIAMETER_MM}-{MAX_DIAMETER_MM} mm",
            device=name,
            hint="Check the syringe's inside diameter (mm, from the syringe maker's table) in the rig file",
        )
    return format_number(diameter_mm, "syringe diameter (mm)")
