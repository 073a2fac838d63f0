"""Firmware emulator of New Era NE-1000 family pumps on one RS-232 line (a daisy chain).

``sim://newera/<bus>?address=0&address=1&world=NAME&baud=19200&syringe_ul=10000`` builds a line
with a pump at each address. It answers with the bytes of the NE-1000 manual (Publication
#1200-01, section 10.2), written from the manual independently of ``drivers/newera.py``:

* Basic mode: ``[address]COMMAND[params]<CR>``; spaces and control characters are stripped, text
  upper-cased; replies ``<STX><aa><prompt|A?x>[data]<ETX>``. A command to an absent address gets no
  reply; one without an address is taken by every pump on the line (their replies collide, as real).
* Safe mode (``SAF n``): ``<STX><len><data><CRC hi><CRC lo><ETX>``, ``len`` = bytes after STX, CRC-16
  (CCITT, XMODEM flavour) over ``data``; a bad packet gets ``?COM``; the watchdog alarm (A?T) trips
  n seconds after the last valid packet (the manual: "If the time out elapses, a pump alarm will occur,
  stopping the pump and the Pumping Program"; the timer restarts only with the next valid packet);
  alarms are also sent unsolicited (without clearing them).
  Safe packets are accepted in Basic mode too, so ``SAF`` can be sent framed from either mode; a
  reply is framed like its request, except the reply to ``SAF n``, which comes in the mode it
  selects (the manual's SAF0 packet is answered in Basic framing). ``SAF n`` takes effect even
  while an alarm is pending (it is a communications setting; the reply still carries the alarm).
* An alarm (reset R, stall S, watchdog T) stops the pump; the next valid command is answered with
  ``A?x`` only, which acknowledges the alarm, and is not carried out.
* A Network Command Burst (``0 rat 100 * 1 rat 250 *``) is carried out by each pump named.
* Numbers: at most 4 digits and 3 decimals, else ``?OOR``. Rates outside the syringe's range:
  ``?OOR``. Diameter or rate-unit changes while pumping: ``?NA``. STP pauses a running pump (P); a
  second STP stops it (S).
* A host at another baud rate than the pump's gets nothing back (the UART sees only framing errors).
* A just-built line is a pump whose power-up reset alarm the operator already cleared at the keypad;
  ``power_on_alarm=1`` builds it freshly powered instead, with A?R pending for the first command.

Volumes integrate over the world's clock (so does the watchdog); every change of effective flow goes to
``World.pump_flow_changed``. A syringe that runs empty stalls the pump (A?S). Faults from
``simulators.faults`` are injected per address with :meth:`NewEraFirmware.inject`: ``no_reply`` and
``garbage`` on path ``both`` leave the pump deaf (nothing carried out, no valid packet for the
watchdog; a garbled command draws a garbled ``?``/``?COM``), on path ``reply`` it obeys every
command and only its replies (and auto-alarm packets) are lost or mangled.
"""

from __future__ import annotations

import binascii
import math
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from simulators.faults import PUMP_FAULTS, Fault, FaultSchedule
from simulators.serialsim import Firmware, register_protocol
from simulators.world import World, get_world

STX, ETX = 0x02, 0x03
BAUDS = (300, 1200, 2400, 9600, 19200)
DEFAULT_VERSION = "NE1000V3.928"
DEFAULT_SYRINGE_UL = 10_000.0
DEFAULT_DIAMETER_MM = 14.57  # Hamilton 1010 (10 mL), to match the default syringe volume
INTER_BYTE_TIMEOUT_S = 0.5
RATE_FACTORS = {"UM": 1.0, "MM": 1000.0, "UH": 1.0 / 60.0, "MH": 1000.0 / 60.0}  # uL/min per unit
VOLUME_FACTORS = {"UL": 1.0, "ML": 1000.0}
RUNNING = ("I", "W", "X")

# The NE-1000's plunger speed range, from its specification: 0.73 uL/h with a 4.78 mm syringe to
# 2120 mL/h with a 26.59 mm one (1 uL = 1 mm^3, so uL/h over mm^2 is mm/h).
MIN_SPEED_MM_H = 0.73 / (math.pi * (4.78 / 2) ** 2)
MAX_SPEED_MM_H = 2120e3 / (math.pi * (26.59 / 2) ** 2)


class _Reject(Exception):
    """A command the firmware answers with ``?<code>`` ('' for a bare '?')."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


def _crc(data: bytes) -> int:
    return binascii.crc_hqx(data, 0)


def _frame_safe(text: str) -> bytes:
    data = text.encode("ascii")
    crc = _crc(data)
    return bytes([STX, len(data) + 4]) + data + bytes([crc >> 8, crc & 0xFF, ETX])


def _frame_basic(text: str) -> bytes:
    return bytes([STX]) + text.encode("ascii") + bytes([ETX])


def _number(text: str) -> float:
    """The firmware's float: digits with at most one point, <= 4 digits, <= 3 decimals."""
    m = re.fullmatch(r"(\d*)(?:\.(\d*))?", text)
    if not m or not (m.group(1) or m.group(2)):
        raise _Reject("OOR")
    whole, frac = m.group(1), m.group(2) or ""
    if len(whole) + len(frac) > 4 or len(frac) > 3:
        raise _Reject("OOR")
    return float(text)


def _sets_mode(command: str) -> bool:
    """``SAF n``: the command that switches between Basic and Safe mode."""
    return re.fullmatch(r"SAF\d{1,3}", command) is not None and int(command[3:]) <= 255


def _display(value: float) -> str:
    """A value as the pump shows it: 4 digits with the point placed, e.g. 1.500, 14.57, 1234."""
    for decimals in (3, 2, 1, 0):
        text = f"{value:.{decimals}f}"
        if sum(c.isdigit() for c in text) <= 4:
            return text if decimals else text + "."
    return "9999."


def rate_limits_ul_min(diameter_mm: float) -> tuple[float, float]:
    area_mm2 = math.pi * (diameter_mm / 2) ** 2
    return MIN_SPEED_MM_H * area_mm2 / 60.0, MAX_SPEED_MM_H * area_mm2 / 60.0


@dataclass
class PumpSnapshot:
    """What an operator could read off one emulated pump (for tests and the console)."""

    address: int
    state: str
    alarm: str | None
    diameter_mm: float
    rate_ul_min: float
    infused_ul: float
    withdrawn_ul: float
    content_ul: float
    safe_timeout_s: int


@dataclass
class _Phase:
    """One program phase. Only RAT phases pump; reaching any other function ends the program."""

    fun: str = "RAT"
    rate_value: float = 0.0
    rate_units: str = "UM"
    direction: str = "INF"
    target_value: float = 0.0  # volume to be dispensed, in the pump's volume units; 0 = no end


@dataclass
class _Pump:
    address: int
    diameter_mm: float
    capacity_ul: float
    content_ul: float
    t_last: float
    state: str = "S"
    alarm: str | None = None
    phases: dict[int, _Phase] = field(default_factory=lambda: {1: _Phase()})
    selected: int = 1  # the phase commands act on; while a program runs, the running phase
    volume_units: str = "UL"
    infused_ul: float = 0.0
    withdrawn_ul: float = 0.0
    run_progress_ul: float = 0.0
    safe_timeout_s: int = 0
    watchdog_armed: bool = False
    last_packet_t: float = 0.0
    reported_flow: float = 0.0
    faults: FaultSchedule = field(default_factory=FaultSchedule)

    @property
    def phase(self) -> _Phase:
        return self.phases.setdefault(self.selected, _Phase())

    @property
    def rate_ul_min(self) -> float:
        return self.phase.rate_value * RATE_FACTORS[self.phase.rate_units]

    @property
    def target_ul(self) -> float:
        return self.phase.target_value * VOLUME_FACTORS[self.volume_units]

    @property
    def safe(self) -> bool:
        return self.safe_timeout_s > 0


class NewEraFirmware(Firmware):
    """One RS-232 line with New Era pumps at ``addresses``."""

    def __init__(
        self,
        bus: str,
        addresses: Iterable[int],
        *,
        world: World,
        baudrate: int = 19200,
        syringe_ul: float | dict[int, float] = DEFAULT_SYRINGE_UL,
        diameter_mm: float = DEFAULT_DIAMETER_MM,
        version: str = DEFAULT_VERSION,
        power_on_alarm: bool = False,
    ) -> None:
        addresses = list(addresses)
        if not addresses or len(set(addresses)) != len(addresses) or not all(0 <= a <= 99 for a in addresses):
            raise ValueError(f"New Era line {bus!r}: addresses must be distinct 0-99, got {addresses}")
        if not 0.1 <= diameter_mm <= 80.0:
            raise ValueError(f"New Era line {bus!r}: diameter {diameter_mm} mm is not 0.1-80")
        if baudrate not in BAUDS:
            raise ValueError(f"New Era line {bus!r}: baud {baudrate} is not one of {BAUDS}")
        self.bus = bus
        self.world = world
        self.baudrate = baudrate
        self.version = version
        self._lock = threading.RLock()
        self._rx = bytearray()
        self._rx_t = 0.0
        self._unsolicited = bytearray()
        now = world.clock.now()
        self._t0 = now
        volumes = syringe_ul if isinstance(syringe_ul, dict) else dict.fromkeys(addresses, syringe_ul)
        self._pumps: dict[int, _Pump] = {}
        for a in addresses:
            cap = float(volumes.get(a, DEFAULT_SYRINGE_UL))
            pump = _Pump(a, diameter_mm, cap, cap, now, alarm="R" if power_on_alarm else None)
            pump.volume_units = "UL" if diameter_mm <= 14.0 else "ML"
            self._pumps[a] = pump

    # -- the Firmware seam ---------------------------------------------------------------------------

    def receive(self, data: bytes, baudrate: int) -> bytes:
        with self._lock:
            now = self.world.clock.now()
            self._advance(now)
            if int(baudrate) != self.baudrate:
                self._rx.clear()  # framing errors: nothing a command can be made of
                return b""
            if self._rx and self._rx[0] == STX and now - self._rx_t > INTER_BYTE_TIMEOUT_S:
                self._rx.clear()  # the manual's 0.5 s inter-byte timeout drops a stalled packet
            self._rx += data
            self._rx_t = now
            out = bytearray()
            for kind, packet in self._take_packets():
                out += self._handle(kind, packet, now)
            return bytes(out)

    def pending(self) -> bytes:
        with self._lock:
            self._advance(self.world.clock.now())
            out = bytes(self._unsolicited)
            self._unsolicited.clear()
            return out

    @property
    def connected(self) -> bool:
        with self._lock:
            elapsed = self.world.clock.now() - self._t0
            return not any(p.faults.holds("disconnect", elapsed) for p in self._pumps.values())

    # -- operator and test hooks ---------------------------------------------------------------------

    def inject(self, address: int, fault: Fault) -> None:
        """Add a fault to the pump at ``address``; ``fault.at_s`` counts from now (world clock)."""
        if fault.kind not in PUMP_FAULTS:
            raise ValueError(f"unknown pump fault {fault.kind!r}; known: {', '.join(PUMP_FAULTS)}")
        with self._lock:
            now = self.world.clock.now()
            self._advance(now)
            pump = self._pump(address)
            pump.faults.add(replace(fault, at_s=fault.at_s + (now - self._t0), fired=False))
            self._advance(now)

    def refill(self, address: int, volume_ul: float | None = None) -> None:
        """Fill the syringe at ``address`` to ``volume_ul`` (default: its capacity)."""
        with self._lock:
            self._advance(self.world.clock.now())
            pump = self._pump(address)
            volume = pump.capacity_ul if volume_ul is None else float(volume_ul)
            if volume < 0:
                raise ValueError(f"refill volume {volume_ul} uL is negative")
            pump.capacity_ul = max(pump.capacity_ul, volume)
            pump.content_ul = volume

    def snapshot(self, address: int) -> PumpSnapshot:
        with self._lock:
            self._advance(self.world.clock.now())
            p = self._pump(address)
            return PumpSnapshot(
                p.address,
                p.state,
                p.alarm,
                p.diameter_mm,
                p.rate_ul_min,
                p.infused_ul,
                p.withdrawn_ul,
                p.content_ul,
                p.safe_timeout_s,
            )

    def _pump(self, address: int) -> _Pump:
        if address not in self._pumps:
            raise KeyError(f"no pump at address {address} on New Era line {self.bus!r}")
        return self._pumps[address]

    # -- packets -------------------------------------------------------------------------------------

    def _take_packets(self) -> Iterable[tuple[str, bytes]]:
        while self._rx:
            if self._rx[0] == STX:
                if len(self._rx) < 2:
                    return
                length = self._rx[1]
                if length < 4:
                    del self._rx[0]  # not a packet start: resynchronise
                    continue
                if len(self._rx) < 1 + length:
                    return
                packet = bytes(self._rx[: 1 + length])
                del self._rx[: 1 + length]
                yield "safe", packet
                continue
            cr = self._rx.find(b"\r")
            stx = self._rx.find(bytes([STX]))
            if stx != -1 and (cr == -1 or stx < cr):
                del self._rx[:stx]  # a safe packet interrupts unterminated text
                continue
            if cr == -1:
                return
            line = bytes(self._rx[:cr])
            del self._rx[: cr + 1]
            yield "basic", line

    @staticmethod
    def _clean(raw: bytes) -> str:
        # Basic mode strips spaces and control characters and upper-cases the rest.
        return "".join(chr(b) for b in raw if 0x20 < b < 0x7F).upper()

    @staticmethod
    def _split_address(text: str) -> tuple[int | None, bool, str]:
        """(address or None, system '*', command) of ``[address|*][command]``."""
        if text.startswith("*"):
            return None, True, text[1:]
        m = re.match(r"(\d{1,2})(.*)", text, re.S)
        if m:
            return int(m.group(1)), False, m.group(2)
        return None, False, text

    def _targets(self, address: int | None, system: bool, *, basic: bool, elapsed: float) -> list[_Pump]:
        pumps = list(self._pumps.values()) if address is None or system else [self._pumps.get(address)]
        return [
            p
            for p in pumps
            if p is not None and not (basic and p.safe) and not p.faults.holds("no_reply", elapsed, "both")
        ]

    def _handle(self, kind: str, packet: bytes, now: float) -> bytes:
        elapsed = now - self._t0
        safe_in = kind == "safe"
        raw = packet[2:-3] if safe_in else packet
        valid = not safe_in or (packet[-1] == ETX and _crc(raw) == (packet[-3] << 8 | packet[-2]))
        text = self._clean(raw)
        if valid and re.fullmatch(r"(\d[^*]*\*)+", text):
            # Network Command Burst "<n><command>*...": each pump takes its part; the replies
            # collide on the line, as the manual warns.
            return b"".join(self._handle_one(part, safe_in, now, elapsed) for part in text.split("*")[:-1])
        return self._handle_one(text, safe_in, now, elapsed, valid=valid)

    def _handle_one(
        self, text: str, safe_in: bool, now: float, elapsed: float, *, valid: bool = True
    ) -> bytes:
        address, system, command = self._split_address(text)
        out = bytearray()
        for p in self._targets(address, system, basic=not safe_in, elapsed=elapsed):
            if p.faults.holds("garbage", elapsed, "both"):
                # the command arrives garbled: in Safe mode its CRC fails, in Basic mode it is no command
                error = "?COM" if safe_in else "?"
                out += self._reply(p, f"{p.address:02d}{p.state}{error}", safe_in, elapsed)
                continue
            if not valid:
                out += self._reply(p, f"{p.address:02d}{p.state}?COM", safe_in, elapsed)
                continue
            if safe_in:
                p.last_packet_t, p.watchdog_armed = now, p.safe
            reply = self._execute(p, command, now)
            # Replies are framed like the request, except SAF's, which come in the mode it selects.
            out += self._reply(p, reply, p.safe if _sets_mode(command) else safe_in, elapsed)
        return bytes(out)

    def _reply(self, pump: _Pump, text: str, safe: bool, elapsed: float) -> bytes:
        """What the host receives of one packet the pump sends (nothing, through a dead return line)."""
        framed = _frame_safe(text) if safe else _frame_basic(text)
        if pump.faults.holds("no_reply", elapsed):
            return b""
        if pump.faults.holds("garbage", elapsed):
            # noise on the return line: framing bytes survive, the rest is mangled
            return framed[:1] + bytes(0x80 | b for b in framed[1:-1]) + framed[-1:]
        return framed

    # -- commands ------------------------------------------------------------------------------------

    def _execute(self, pump: _Pump, command: str, now: float) -> str:
        prefix = f"{pump.address:02d}"
        if pump.alarm is not None:
            alarm, pump.alarm = pump.alarm, None
            if _sets_mode(command):  # a communications setting, not pumping data: taken all the same
                self._cmd_saf(pump, command[3:], now)
            return f"{prefix}A?{alarm}"
        try:
            data = self._dispatch(pump, command[:3], command[3:], now)
        except _Reject as rejected:
            data = "?" + rejected.code
        return f"{prefix}{pump.state}{data}"

    def _dispatch(self, pump: _Pump, name: str, arg: str, now: float) -> str:
        if name == "":
            return ""
        handler = getattr(self, f"_cmd_{name.lower()}", None) if name.isalpha() else None
        if handler is None:
            raise _Reject("")
        return handler(pump, arg, now)

    def _cmd_dia(self, pump: _Pump, arg: str, now: float) -> str:
        if not arg:
            return _display(pump.diameter_mm)
        value = _number(arg)
        if not 0.1 <= value <= 80.0:
            raise _Reject("OOR")
        if pump.state in RUNNING:
            raise _Reject("NA")
        pump.diameter_mm = value
        pump.volume_units = "UL" if value <= 14.0 else "ML"  # the manual's default volume units
        return ""

    def _cmd_rat(self, pump: _Pump, arg: str, now: float) -> str:
        phase = pump.phase
        if not arg:
            return _display(phase.rate_value) + phase.rate_units
        m = re.fullmatch(r"([0-9.]+)(UM|MM|UH|MH)?", arg)
        if not m:
            raise _Reject("OOR")
        value = _number(m.group(1))
        units = m.group(2) or phase.rate_units
        rate = value * RATE_FACTORS[units]
        low, high = rate_limits_ul_min(pump.diameter_mm)
        if pump.diameter_mm <= 0 or not low <= rate <= high:
            raise _Reject("OOR")
        if pump.state in RUNNING and units != phase.rate_units:
            raise _Reject("NA")  # rate units cannot be changed while pumping
        phase.rate_value, phase.rate_units = value, units
        self._flow_changed(pump)
        return ""

    def _cmd_vol(self, pump: _Pump, arg: str, now: float) -> str:
        if not arg:
            return _display(pump.phase.target_value) + pump.volume_units
        if arg in VOLUME_FACTORS:
            pump.volume_units = arg
            return ""
        pump.phase.target_value = _number(arg)
        return ""

    def _cmd_dir(self, pump: _Pump, arg: str, now: float) -> str:
        if not arg:
            return pump.phase.direction
        flip = {"INF": "WDR", "WDR": "INF"}
        if arg == "REV":
            arg = flip[pump.phase.direction]
        if arg not in flip:
            raise _Reject("OOR")
        pump.phase.direction = arg
        if pump.state in ("I", "W"):
            pump.state = "I" if arg == "INF" else "W"
            self._flow_changed(pump)
        return ""

    def _cmd_run(self, pump: _Pump, arg: str, now: float) -> str:
        """RUN [phase]: start the program (at phase 1 unless given), or resume a paused one."""
        if pump.state in RUNNING:
            return ""
        if pump.state == "S":
            start = int(_number(arg)) if arg else 1
            if not 1 <= start <= 41 or "." in arg:
                raise _Reject("OOR")
            if pump.diameter_mm <= 0 or not self._runnable(pump.phases.get(start)):
                raise _Reject("NA")
            pump.selected, pump.run_progress_ul = start, 0.0
        pump.state = "I" if pump.phase.direction == "INF" else "W"
        self._flow_changed(pump)
        return ""

    @staticmethod
    def _runnable(phase: _Phase | None) -> bool:
        return phase is not None and phase.fun == "RAT" and phase.rate_value > 0

    def _cmd_pur(self, pump: _Pump, arg: str, now: float) -> str:
        if pump.diameter_mm <= 0:
            raise _Reject("NA")
        pump.state = "X"
        self._flow_changed(pump)
        return ""

    def _cmd_stp(self, pump: _Pump, arg: str, now: float) -> str:
        if pump.state in RUNNING:
            pump.state = "P"
        elif pump.state == "P":
            self._end_program(pump)
        self._flow_changed(pump)
        return ""

    def _end_program(self, pump: _Pump) -> None:
        pump.state, pump.selected, pump.run_progress_ul = "S", 1, 0.0

    def _cmd_dis(self, pump: _Pump, arg: str, now: float) -> str:
        units = pump.volume_units
        factor = VOLUME_FACTORS[units]
        if units == "UL" and max(pump.infused_ul, pump.withdrawn_ul) >= 9999.5:
            units, factor = "ML", 1000.0  # four digits of uL no longer hold it
        return f"I{_display(pump.infused_ul / factor)}W{_display(pump.withdrawn_ul / factor)}{units}"

    def _cmd_cld(self, pump: _Pump, arg: str, now: float) -> str:
        if arg == "INF":
            pump.infused_ul = 0.0
        elif arg == "WDR":
            pump.withdrawn_ul = 0.0
        else:
            raise _Reject("OOR")
        return ""

    def _cmd_ver(self, pump: _Pump, arg: str, now: float) -> str:
        return self.version

    def _cmd_saf(self, pump: _Pump, arg: str, now: float) -> str:
        if not arg:
            return str(pump.safe_timeout_s)
        if not re.fullmatch(r"\d{1,3}", arg) or int(arg) > 255:
            raise _Reject("OOR")
        pump.safe_timeout_s = int(arg)
        pump.watchdog_armed = False  # the watchdog starts with the next valid packet
        return ""

    def _cmd_phn(self, pump: _Pump, arg: str, now: float) -> str:
        if not arg:
            return f"{pump.selected:02d}"
        if not re.fullmatch(r"\d{1,2}", arg) or not 1 <= int(arg) <= 41:
            raise _Reject("OOR")
        if pump.state != "S":
            raise _Reject("NA")  # the program is running or paused
        pump.selected = int(arg)
        pump.phases.setdefault(pump.selected, _Phase())
        return ""

    def _cmd_fun(self, pump: _Pump, arg: str, now: float) -> str:
        # Any function is stored; RAT pumps, every other one ends the program when it is reached.
        if not arg:
            return pump.phase.fun
        if not re.fullmatch(r"[A-Z]{2,3}[0-9.]*", arg):
            raise _Reject("")
        if pump.state != "S":
            raise _Reject("NA")
        pump.phase.fun = re.match(r"[A-Z]+", arg).group(0)  # type: ignore[union-attr]
        return ""

    # -- time ----------------------------------------------------------------------------------------

    def _effective_flow(self, pump: _Pump) -> float:
        if pump.state == "X":
            return rate_limits_ul_min(pump.diameter_mm)[1] * (1 if pump.phase.direction == "INF" else -1)
        if pump.state == "I":
            return pump.rate_ul_min
        if pump.state == "W":
            return -pump.rate_ul_min
        return 0.0

    def _flow_changed(self, pump: _Pump) -> None:
        flow = self._effective_flow(pump)
        if flow != pump.reported_flow:
            pump.reported_flow = flow
            self.world.pump_flow_changed(self.bus, pump.address, flow)

    def _alarm(self, pump: _Pump, kind: str, at: float | None = None) -> None:
        """The pump stops with an alarm, at ``at`` (world clock; default now)."""
        pump.state = "S"
        pump.alarm = kind
        self._flow_changed(pump)
        if pump.safe:  # the auto-alarm packet, through the same return line as replies
            elapsed = (self.world.clock.now() if at is None else at) - self._t0
            self._unsolicited += self._reply(pump, f"{pump.address:02d}A?{kind}", True, elapsed)

    def _advance(self, now: float) -> None:
        elapsed = now - self._t0
        for pump in self._pumps.values():
            if pump.safe and pump.watchdog_armed and now - pump.last_packet_t > pump.safe_timeout_s:
                # the pump stopped when its time out elapsed, not when someone looked
                due = max(pump.t_last, pump.last_packet_t + pump.safe_timeout_s)
                self._integrate(pump, due)
                pump.watchdog_armed = False  # not restarted until the next valid packet
                self._alarm(pump, "T", at=due)
            self._integrate(pump, now)
            if pump.faults.fire("reset", elapsed):
                self._power_reset(pump)
            if pump.state in RUNNING and pump.faults.fire("stall", elapsed):
                self._alarm(pump, "S")

    def _integrate(self, pump: _Pump, now: float) -> None:
        """Move the plunger from the last update to ``now``, through phase ends, to an empty syringe."""
        dt, pump.t_last = now - pump.t_last, now
        while dt > 0:
            flow = self._effective_flow(pump)
            if flow == 0:
                return
            volume = abs(flow) * dt / 60.0
            room = pump.content_ul if flow > 0 else pump.capacity_ul - pump.content_ul
            target = pump.target_ul if pump.state != "X" else 0.0
            left = target - pump.run_progress_ul if target > 0 else math.inf
            moved = min(volume, room, left)
            pump.run_progress_ul += moved
            pump.content_ul -= math.copysign(moved, flow)
            if flow > 0:
                pump.infused_ul += moved
            else:
                pump.withdrawn_ul += moved
            if moved < volume and room < left:
                self._alarm(pump, "S")  # plunger at the end of the syringe: the motor stalls
                return
            if moved < left:
                return
            dt -= moved / abs(flow) * 60.0  # this phase's volume is dispensed: on to the next
            self._next_phase(pump)

    def _next_phase(self, pump: _Pump) -> None:
        following = pump.phases.get(pump.selected + 1)
        if pump.selected < 41 and self._runnable(following):
            pump.selected, pump.run_progress_ul = pump.selected + 1, 0.0
            pump.state = "I" if pump.phase.direction == "INF" else "W"
        else:
            self._end_program(pump)
        self._flow_changed(pump)

    def _power_reset(self, pump: _Pump) -> None:
        # Power lost and back: motion stops, rate and diameter are cleared, Safe mode (stored in
        # non-volatile memory) persists with its watchdog idle, and the reset alarm is pending.
        pump.phases, pump.selected, pump.diameter_mm = {1: _Phase()}, 1, 0.0
        pump.infused_ul = pump.withdrawn_ul = pump.run_progress_ul = 0.0
        pump.watchdog_armed = False
        self._rx.clear()
        self._alarm(pump, "R")


def _one(query: dict[str, list[str]], key: str, default: str) -> str:
    values = query.get(key)
    return values[-1] if values else default


def from_url(bus: str, query: dict[str, list[str]]) -> NewEraFirmware:
    """The ``sim://newera/<bus>?...`` factory; ``syringe_ul`` may be one value or one per address."""
    try:
        addresses = [int(a) for a in query.get("address", ["0"])]
        volumes = [float(v) for v in query.get("syringe_ul", [str(DEFAULT_SYRINGE_UL)])]
        baud = int(_one(query, "baud", "19200"))
        diameter = float(_one(query, "diameter_mm", str(DEFAULT_DIAMETER_MM)))
    except ValueError as exc:
        raise ValueError(f"sim://newera/{bus}: bad query value ({exc})") from exc
    if len(volumes) not in (1, len(addresses)) or any(v <= 0 for v in volumes):
        raise ValueError(f"sim://newera/{bus}: give one positive syringe_ul, or one per address")
    per_address = dict(zip(addresses, volumes if len(volumes) > 1 else volumes * len(addresses), strict=True))
    return NewEraFirmware(
        bus,
        addresses,
        world=get_world(_one(query, "world", "default")),
        baudrate=baud,
        syringe_ul=per_address,
        diameter_mm=diameter,
        version=_one(query, "version", DEFAULT_VERSION),
        power_on_alarm=_one(query, "power_on_alarm", "0") not in ("0", "false", "no"),
    )


register_protocol("newera", from_url)
