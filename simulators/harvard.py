"""Firmware emulator of Harvard Apparatus PHD ULTRA / Pump 11 Elite and KD Scientific Legato pumps.

One emulated RS-232 line with one or more pumps daisy-chained on it, speaking the manuals' "pump chain
commands" byte for byte:

* in: ``[NN[:]]command[ args]<CR>`` (LF after CR ignored, a lone LF also ends a line); no address means
  pump 0; commands may be shortened to four letters; a leading ``@`` (Legato: no screen update) is
  accepted; a line for an address nobody has gets no answer, as on a real chain.
* out: ``<LF>[NN:]text<CR>`` per text line, then ``<LF>[NN]<prompt>`` (``:`` ``>`` ``<`` ``*`` ``T*``),
  plus XON in poll mode. With poll off, a stall or a reached target sends the prompt unasked.
* errors: ``Unknown command``; ``Argument error: <arg>`` then ``   <reason>`` (``Out of range``,
  ``Invalid argument``, ``Missing argument``); ``Command error: <reason>``.

URL: ``sim://harvard/<bus>?address=0&address=1&world=NAME&baud=115200&syringe_ul=...&model=ultra``
(``model``: ultra | elite | legato; ``syringe_ul``: one value for all pumps or one per address;
``content_ul``: what the syringes hold at the start, full by default; ``diameter``: the syringe
diameter the pumps power up with). Rates are limited by the syringe diameter
as on the pump: its plunger speed range is fixed. Volumes integrate over the world's clock; every change
of a pump's effective flow is reported to ``World.pump_flow_changed``.

Faults (:meth:`HarvardFirmware.inject`, ``simulators.faults``): ``no_reply`` and ``garbage`` on path
``both`` leave the pump deaf (nothing carried out; silence, or a garbled answer to a garbled line), on
path ``reply`` it carries out every command and only what it sends back is lost or garbled. The pumps
have no communication watchdog (the PHD ULTRA / Pump 11 Elite / Legato pump chain command sets have
no time-out command): a deaf pump keeps running at its last rate.
"""

from __future__ import annotations

import math
import random
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from simulators.faults import Fault, FaultSchedule
from simulators.serialsim import Firmware, register_protocol
from simulators.world import World, get_world

XON = b"\x11"
DEFAULT_BAUDRATE = 115200
BAUDRATES = (9600, 19200, 38400, 57600, 115200)
DEFAULT_SYRINGE_UL = 50_000.0  # a 50 mL syringe: a dry-run campaign does not empty it by surprise
DEFAULT_DIAMETER_MM = 26.59  # B-D 60 mL, as a pump fresh from set-up holds it


def _area_mm2(diameter_mm: float) -> float:
    return math.pi * diameter_mm**2 / 4


@dataclass(frozen=True)
class PumpModel:
    version: str
    min_speed_mm_min: float  # plunger speed range: rate limits = barrel cross-section x speed
    max_speed_mm_min: float
    diameter_mm: tuple[float, float]
    status_ms: bool  # Legato/Elite status: time in ms and a sixth (target) flag


MODELS = {
    # PHD ULTRA: 1.5 pL/min with a 0.5 uL syringe (0.103 mm) to 216 mL/min with a 140 mL one (38.4 mm)
    "ultra": PumpModel(
        "PHD ULTRA 2.0.4", 1.5e-6 / _area_mm2(0.103), 216e3 / _area_mm2(38.4), (0.1, 50.0), False
    ),
    # Pump 11 Elite / Legato: 1.28 pL/min (0.103 mm) to 88.4 mL/min with a 60 mL syringe (26.59 mm)
    "elite": PumpModel(
        "11 ELITE I/W Single 3.0.4", 1.28e-6 / _area_mm2(0.103), 88.4e3 / _area_mm2(26.59), (0.1, 50.0), True
    ),
    "legato": PumpModel(
        "KDS LEGATO 200 1.2.0", 1.28e-6 / _area_mm2(0.103), 88.4e3 / _area_mm2(26.59), (0.1, 50.0), True
    ),
}

_VOLUME_UL = {"l": 1e6, "ml": 1e3, "ul": 1.0, "nl": 1e-3, "pl": 1e-6}
_SHORT_VOLUME = {"m": "ml", "u": "ul", "n": "nl", "p": "pl"}
_PER_MINUTE = {"h": 1 / 60, "hr": 1 / 60, "min": 1.0, "m": 1.0, "s": 60.0, "sec": 60.0}
_NUMBER = re.compile(r"^(\d+\.?\d*|\.\d+)$")
_ADDRESSED = re.compile(r"^\s*(\d{1,2})\s*:?(.*)$", re.DOTALL)


class _Refused(Exception):
    """A command the firmware answers with error lines."""

    def __init__(self, *lines: str) -> None:
        super().__init__(lines[0])
        self.lines = list(lines)


def _argument_error(argument: str, reason: str) -> _Refused:
    return _Refused(f"Argument error: {argument}".rstrip(), f"   {reason}")


def _show(value: float, units: tuple[tuple[str, float], ...]) -> str:
    """The pump's display: the unit that puts the number in [1, 1000), four decimals (zero in uL)."""
    if value == 0:
        name, factor = units[1]
    else:
        name, factor = next(((n, f) for n, f in units if abs(value) >= f), units[-1])
    return f"{value / factor:.4f} {name}"


_RATE_SHOW = (("ml/min", 1e3), ("ul/min", 1.0), ("nl/min", 1e-3), ("pl/min", 1e-6))
_VOLUME_SHOW = (("ml", 1e3), ("ul", 1.0), ("nl", 1e-3), ("pl", 1e-6))


def _show_rate(rate_ul_min: float) -> str:
    return _show(rate_ul_min, _RATE_SHOW)


def _show_volume(volume_ul: float) -> str:
    return _show(volume_ul, _VOLUME_SHOW)


def _number(text: str) -> float:
    if not _NUMBER.match(text):
        raise _argument_error(text, "Invalid argument")
    return float(text)


def _rate_units(text: str) -> float:
    volume, slash, time = text.partition("/")
    volume = _SHORT_VOLUME.get(volume, volume)
    if not slash or volume not in _VOLUME_UL or time not in _PER_MINUTE:
        raise _argument_error(text, "Invalid units")
    return _VOLUME_UL[volume] * _PER_MINUTE[time]


@dataclass
class _Settings:
    """What the pump keeps in NVRAM: what it powers up with."""

    diameter_mm: float
    irate_ul_min: float
    wrate_ul_min: float
    force: int = 50


@dataclass
class _Pump:
    address: int
    model: PumpModel
    capacity_ul: float
    content_ul: float
    stored: _Settings
    created_s: float
    faults: FaultSchedule = field(default_factory=FaultSchedule)
    diameter_mm: float = 0.0
    irate_ul_min: float = 0.0
    wrate_ul_min: float = 0.0
    force: int = 50
    direction: str = "i"
    running: bool = False
    stalled: bool = False
    target_reached: bool = False
    infused_ul: float = 0.0
    withdrawn_ul: float = 0.0
    infuse_time_s: float = 0.0
    withdraw_time_s: float = 0.0
    target_ul: float | None = None
    svolume_ul: float | None = None
    poll: str = "off"
    echo: bool = False
    nvram: str = "on"
    nvram_writes: int = 0
    reported_flow: float = 0.0

    def power_up(self) -> None:
        """State after power-on: stopped, counters cleared, settings from NVRAM, poll and echo off."""
        self.diameter_mm = self.stored.diameter_mm
        self.irate_ul_min = self.stored.irate_ul_min
        self.wrate_ul_min = self.stored.wrate_ul_min
        self.force = self.stored.force
        self.direction, self.running, self.stalled, self.target_reached = "i", False, False, False
        self.infused_ul = self.withdrawn_ul = self.infuse_time_s = self.withdraw_time_s = 0.0
        self.target_ul = None
        self.poll, self.echo, self.nvram = "off", False, "on"

    def limits_ul_min(self, diameter_mm: float | None = None) -> tuple[float, float]:
        area = _area_mm2(self.diameter_mm if diameter_mm is None else diameter_mm)
        return area * self.model.min_speed_mm_min, area * self.model.max_speed_mm_min

    @property
    def prompt(self) -> str:
        if self.stalled:
            return "*"
        if self.target_reached:
            return "T*"
        if self.running:
            return ">" if self.direction == "i" else "<"
        return ":"

    @property
    def flow_ul_min(self) -> float:
        """The flow this pump pushes into the chip (withdrawing pushes none)."""
        return self.irate_ul_min if self.running and self.direction == "i" else 0.0


@dataclass(frozen=True)
class PumpSnapshot:
    """What a test may look at on an emulated pump."""

    address: int
    running: bool
    direction: str
    stalled: bool
    target_reached: bool
    prompt: str
    diameter_mm: float
    rate_ul_min: float
    infused_ul: float
    content_ul: float
    poll: str
    nvram: str
    nvram_writes: int


class HarvardFirmware(Firmware):
    """The pumps on one emulated line. Thread-safe: a pty server and a test may use it at once."""

    def __init__(
        self,
        bus: str,
        addresses: list[int],
        *,
        world: str = "default",
        baudrate: int = DEFAULT_BAUDRATE,
        syringe_ul: list[float] | None = None,
        content_ul: float | None = None,
        model: str = "ultra",
        diameter_mm: float = DEFAULT_DIAMETER_MM,
    ) -> None:
        if not addresses or len(set(addresses)) != len(addresses) or not all(0 <= a <= 99 for a in addresses):
            raise ValueError(f"sim://harvard/{bus}: addresses must be distinct, 0-99; got {addresses}")
        if baudrate not in BAUDRATES:
            raise ValueError(f"sim://harvard/{bus}: baud must be one of {BAUDRATES}; got {baudrate}")
        if model not in MODELS:
            raise ValueError(f"sim://harvard/{bus}: model must be one of {sorted(MODELS)}; got {model!r}")
        spec = MODELS[model]
        if not spec.diameter_mm[0] <= diameter_mm <= spec.diameter_mm[1]:
            raise ValueError(f"sim://harvard/{bus}: diameter {diameter_mm} mm outside {spec.diameter_mm}")
        volumes = list(syringe_ul) if syringe_ul else [DEFAULT_SYRINGE_UL]
        if len(volumes) == 1:
            volumes *= len(addresses)
        if len(volumes) != len(addresses) or not all(v > 0 for v in volumes):
            raise ValueError(f"sim://harvard/{bus}: give one positive syringe_ul, or one per address")
        if content_ul is not None and not 0 <= content_ul <= min(volumes):
            raise ValueError(f"sim://harvard/{bus}: content_ul must lie in 0-syringe_ul; got {content_ul}")
        self.bus = bus
        self.baudrate = baudrate
        self.world: World = get_world(world)
        self._lock = threading.RLock()
        self._rx = bytearray()
        self._after_cr = False
        self._unsolicited = bytearray()
        self._rng = random.Random(f"harvard/{bus}")
        now = self.world.clock.now()
        self._pumps: dict[int, _Pump] = {}
        for address, volume in zip(addresses, volumes, strict=True):
            area = _area_mm2(diameter_mm)
            rate = min(max(100.0, area * spec.min_speed_mm_min), area * spec.max_speed_mm_min)
            content = volume if content_ul is None else content_ul
            pump = _Pump(address, spec, volume, content, _Settings(diameter_mm, rate, rate), created_s=now)
            pump.power_up()
            self._pumps[address] = pump
        self._last_s = now
        self._commands: dict[str, Callable[[_Pump, list[str]], list[str]]] = {
            "address": self._cmd_address,
            "baud": self._cmd_baud,
            "echo": self._cmd_echo,
            "poll": self._cmd_poll,
            "nvram": self._cmd_nvram,
            "ver": self._cmd_ver,
            "version": self._cmd_version,
            "diameter": self._cmd_diameter,
            "irate": lambda p, a: self._cmd_rate(p, a, "i"),
            "wrate": lambda p, a: self._cmd_rate(p, a, "w"),
            "crate": self._cmd_crate,
            "irun": lambda p, a: self._cmd_run(p, "i"),
            "wrun": lambda p, a: self._cmd_run(p, "w"),
            "run": lambda p, a: self._cmd_run(p, p.direction),
            "rrun": lambda p, a: self._cmd_run(p, "w" if p.direction == "i" else "i"),
            "stp": self._cmd_stop,
            "stop": self._cmd_stop,
            "status": self._cmd_status,
            "ivolume": lambda p, a: [_show_volume(p.infused_ul)],
            "wvolume": lambda p, a: [_show_volume(p.withdrawn_ul)],
            "cvolume": lambda p, a: self._clear(p, infused=True, withdrawn=True),
            "civolume": lambda p, a: self._clear(p, infused=True),
            "cwvolume": lambda p, a: self._clear(p, withdrawn=True),
            "ctime": lambda p, a: self._clear(p, times=True),
            "citime": lambda p, a: self._clear(p, times=True),
            "cwtime": lambda p, a: self._clear(p, times=True),
            "tvolume": self._cmd_tvolume,
            "ctvolume": self._cmd_ctvolume,
            "svolume": self._cmd_svolume,
            "force": self._cmd_force,
        }

    # -- the serial seam ---------------------------------------------------------------------------

    def receive(self, data: bytes, baudrate: int) -> bytes:
        with self._lock:
            self._tick()
            if baudrate != self.baudrate:
                return b""  # at the wrong baud rate the pump hears framing errors and stays silent
            out = bytearray()
            for value in data:
                char = bytes([value])
                if char == b"\r" or (char == b"\n" and not self._after_cr):
                    line = bytes(self._rx)
                    self._rx.clear()
                    self._after_cr = char == b"\r"
                    out += self._line(line)
                elif char == b"\n":
                    self._after_cr = False
                else:
                    self._after_cr = False
                    self._rx += char
            return bytes(out)

    def pending(self) -> bytes:
        with self._lock:
            self._tick()
            out = bytes(self._unsolicited)
            self._unsolicited.clear()
            return out

    @property
    def connected(self) -> bool:
        with self._lock:
            self._tick()
            now = self.world.clock.now()
            return not any(p.faults.holds("disconnect", now - p.created_s) for p in self._pumps.values())

    # -- for tests and rigs ------------------------------------------------------------------------

    def inject(self, address: int, fault: Fault) -> None:
        """Schedule ``fault`` on the pump at ``address`` (``at_s`` counts from the pump's creation)."""
        with self._lock:
            self._pump(address).faults.add(fault)
            self._tick()

    def refill(self, address: int, volume_ul: float) -> None:
        """Put ``volume_ul`` more liquid into the pump's syringe (up to its capacity)."""
        if not volume_ul >= 0:
            raise ValueError(f"refill volume must be >= 0 uL, got {volume_ul!r}")
        with self._lock:
            self._tick()
            pump = self._pump(address)
            pump.content_ul = min(pump.capacity_ul, pump.content_ul + volume_ul)

    def snapshot(self, address: int) -> PumpSnapshot:
        with self._lock:
            self._tick()
            p = self._pump(address)
            return PumpSnapshot(
                address=p.address,
                running=p.running,
                direction=p.direction,
                stalled=p.stalled,
                target_reached=p.target_reached,
                prompt=p.prompt,
                diameter_mm=p.diameter_mm,
                rate_ul_min=p.irate_ul_min,
                infused_ul=p.infused_ul,
                content_ul=p.content_ul,
                poll=p.poll,
                nvram=p.nvram,
                nvram_writes=p.nvram_writes,
            )

    @property
    def addresses(self) -> list[int]:
        with self._lock:
            return sorted(self._pumps)

    def _pump(self, address: int) -> _Pump:
        if address not in self._pumps:
            raise KeyError(
                f"sim://harvard/{self.bus} has no pump at address {address}; it has {self.addresses}"
            )
        return self._pumps[address]

    # -- time --------------------------------------------------------------------------------------

    def _tick(self) -> None:
        """Move every pump's plunger up to the world's now, then fire the faults that are due."""
        now = self.world.clock.now()
        dt = max(0.0, now - self._last_s)
        self._last_s = now
        for pump in list(self._pumps.values()):
            if pump.running:
                self._advance(pump, dt)
            elapsed = now - pump.created_s
            if pump.running and pump.faults.fire("stall", elapsed):
                self._halt(pump, "*")
            if pump.faults.fire("reset", elapsed):
                self._rx.clear()
                pump.power_up()
                self._report_flow(pump)

    def _advance(self, pump: _Pump, dt: float) -> None:
        rate = pump.irate_ul_min if pump.direction == "i" else pump.wrate_ul_min
        wanted = rate * dt / 60.0
        if pump.direction == "i":
            room, stop = pump.content_ul, "*"  # an empty syringe stalls the motor
            if pump.target_ul is not None and pump.target_ul - pump.infused_ul < room:
                room, stop = max(0.0, pump.target_ul - pump.infused_ul), "T*"
        else:
            room, stop = pump.capacity_ul - pump.content_ul, "*"
            if pump.target_ul is not None and pump.target_ul - pump.withdrawn_ul < room:
                room, stop = max(0.0, pump.target_ul - pump.withdrawn_ul), "T*"
        moved = min(wanted, room)
        moving_s = dt if wanted <= 0 else dt * moved / wanted
        if pump.direction == "i":
            pump.content_ul -= moved
            pump.infused_ul += moved
            pump.infuse_time_s += moving_s
        else:
            pump.content_ul += moved
            pump.withdrawn_ul += moved
            pump.withdraw_time_s += moving_s
        if wanted >= room:
            self._halt(pump, stop)

    def _halt(self, pump: _Pump, prompt: str, *, announce: bool = True) -> None:
        """The motor stops by itself; outside poll mode the pump says so with a prompt of its own."""
        pump.running = False
        pump.stalled = prompt == "*"
        pump.target_reached = prompt == "T*"
        self._report_flow(pump)
        if announce and pump.poll == "off":
            elapsed = self.world.clock.now() - pump.created_s
            self._unsolicited += self._sent(
                pump, b"\n" + self._prompt_prefix(pump) + prompt.encode(), elapsed
            )

    def _report_flow(self, pump: _Pump) -> None:
        flow = pump.flow_ul_min
        if flow != pump.reported_flow:
            pump.reported_flow = flow
            self.world.pump_flow_changed(self.bus, pump.address, flow)

    # -- one command line --------------------------------------------------------------------------

    def _line(self, raw: bytes) -> bytes:
        text = raw.decode("ascii", errors="replace")
        match = _ADDRESSED.match(text)
        address, body = (int(match.group(1)), match.group(2)) if match else (0, text)
        pump = self._pumps.get(address)
        if pump is None:
            return b""  # nobody on the chain has that address
        elapsed = self.world.clock.now() - pump.created_s
        if pump.faults.holds("no_reply", elapsed, "both"):
            return b""  # the pump hears nothing: nothing is carried out
        if pump.faults.holds("garbage", elapsed, "both"):
            return self._garbled(8 + len(raw))  # a garbled line: no command, a garbled answer
        lines = self._execute(pump, body)
        out = bytearray(raw + b"\r" if pump.echo and pump.poll != "remote" else b"")
        text_prefix = f"{pump.address:02d}:".encode() if pump.address else b""
        for line in lines:
            out += b"\n" + text_prefix + line.encode("ascii") + b"\r"
        if pump.poll != "remote":
            out += b"\n" + self._prompt_prefix(pump) + pump.prompt.encode()
            if pump.poll == "on":
                out += XON
        return self._sent(pump, bytes(out), elapsed)

    def _sent(self, pump: _Pump, data: bytes, elapsed: float) -> bytes:
        """What reaches the host of bytes the pump sends: nothing through a dead return line, noise
        through a noisy one (the command itself was carried out)."""
        if not data or pump.faults.holds("no_reply", elapsed):
            return b""
        if pump.faults.holds("garbage", elapsed):
            return self._garbled(len(data))
        return data

    def _garbled(self, size: int) -> bytes:
        return bytes(self._rng.randrange(0x80, 0xFF) for _ in range(size))

    @staticmethod
    def _prompt_prefix(pump: _Pump) -> bytes:
        return f"{pump.address:02d}".encode() if pump.address else b""

    def _execute(self, pump: _Pump, body: str) -> list[str]:
        body = body.strip()
        if body.startswith("@"):
            body = body[1:].strip()
        if not body:
            return []
        word, *args = body.split()
        name = self._resolve(word.lower())
        if name is None:
            return ["Unknown command"]
        try:
            return self._commands[name](pump, [a.lower() for a in args])
        except _Refused as refused:
            return refused.lines

    def _resolve(self, word: str) -> str | None:
        if word in self._commands:
            return word
        if len(word) < 4:
            return None
        matches = [name for name in self._commands if name.startswith(word)]
        return matches[0] if len(matches) == 1 else None

    def _store(self, pump: _Pump, **settings: float) -> None:
        """Settings changed over the line go to NVRAM unless ``nvram`` is off or none."""
        if pump.nvram == "on":
            for key, value in settings.items():
                setattr(pump.stored, key, value)
            pump.nvram_writes += 1

    # -- commands ----------------------------------------------------------------------------------

    def _cmd_address(self, pump: _Pump, args: list[str]) -> list[str]:
        if not args:
            return [f"Pump address is {pump.address}"]
        if not args[0].isdigit() or not 0 <= int(args[0]) <= 99:
            raise _argument_error(args[0], "Out of range")
        new = int(args[0])
        if new != pump.address:
            if new in self._pumps:
                raise _Refused(f"Command error: address {new} is in use")
            del self._pumps[pump.address]
            pump.address = new
            self._pumps[new] = pump
        return []

    def _cmd_baud(self, pump: _Pump, args: list[str]) -> list[str]:
        if not args:
            return [str(self.baudrate)]
        if not args[0].isdigit() or int(args[0]) not in BAUDRATES:
            raise _argument_error(args[0], "Out of range")
        self.baudrate = int(args[0])
        return []

    def _cmd_echo(self, pump: _Pump, args: list[str]) -> list[str]:
        if not args:
            return ["On" if pump.echo else "Off"]
        if args[0] not in ("on", "off"):
            raise _argument_error(args[0], "Invalid argument")
        if pump.poll == "remote":
            raise _Refused("Command error: echo is off in remote poll mode")
        pump.echo = args[0] == "on"
        return []

    def _cmd_poll(self, pump: _Pump, args: list[str]) -> list[str]:
        if not args:
            return [pump.poll.capitalize()]
        if args[0] not in ("on", "off", "remote"):
            raise _argument_error(args[0], "Invalid argument")
        pump.poll = args[0]
        if pump.poll == "remote":
            pump.echo = False
        return []

    def _cmd_nvram(self, pump: _Pump, args: list[str]) -> list[str]:
        if not args:
            return [pump.nvram.capitalize()]
        if args[0] not in ("on", "off", "none"):
            raise _argument_error(args[0], "Invalid argument")
        pump.nvram = args[0]
        return []

    def _cmd_ver(self, pump: _Pump, args: list[str]) -> list[str]:
        return [pump.model.version]

    def _cmd_version(self, pump: _Pump, args: list[str]) -> list[str]:
        return [
            f"Firmware:      {pump.model.version}",
            f"Pump address:  {pump.address}",
            "Serial number: E000000",
        ]

    def _cmd_diameter(self, pump: _Pump, args: list[str]) -> list[str]:
        if not args:
            return [f"{pump.diameter_mm:.4f} mm"]
        if len(args) > 1 and args[1] != "mm":
            raise _argument_error(args[1], "Invalid units")
        diameter = _number(args[0])
        low, high = pump.model.diameter_mm
        if not low <= diameter <= high:
            raise _argument_error(args[0], "Out of range")
        if pump.running:
            raise _Refused("Command error: pump is running")
        pump.diameter_mm = diameter
        low_rate, high_rate = pump.limits_ul_min()
        pump.irate_ul_min = min(max(pump.irate_ul_min, low_rate), high_rate)
        pump.wrate_ul_min = min(max(pump.wrate_ul_min, low_rate), high_rate)
        self._store(
            pump, diameter_mm=diameter, irate_ul_min=pump.irate_ul_min, wrate_ul_min=pump.wrate_ul_min
        )
        return []

    def _cmd_rate(self, pump: _Pump, args: list[str], direction: str) -> list[str]:
        attribute = "irate_ul_min" if direction == "i" else "wrate_ul_min"
        low, high = pump.limits_ul_min()
        if not args:
            return [_show_rate(getattr(pump, attribute))]
        if args[0] == "lim":
            return [f"{_show_rate(low)} to {_show_rate(high)}"]
        if args[0] in ("max", "min"):
            rate = high if args[0] == "max" else low
        else:
            if len(args) < 2:
                raise _argument_error("", "Missing argument")
            rate = _number(args[0]) * _rate_units(args[1])
            # the pump compares what it can represent: allow the last digit of rounding
            if not low * (1 - 1e-9) <= rate <= high * (1 + 1e-9):
                raise _argument_error(" ".join(args[:2]), "Out of range")
            rate = min(max(rate, low), high)
        setattr(pump, attribute, rate)
        self._store(pump, **{attribute: rate})
        self._report_flow(pump)
        return []

    def _cmd_crate(self, pump: _Pump, args: list[str]) -> list[str]:
        rate = (pump.irate_ul_min if pump.direction == "i" else pump.wrate_ul_min) if pump.running else 0.0
        return [_show_rate(rate)]

    def _cmd_run(self, pump: _Pump, direction: str) -> list[str]:
        pump.direction = direction
        pump.stalled = pump.target_reached = False
        pump.running = True
        self._report_flow(pump)
        # the prompt of this very reply tells a stall or target at once, so no prompt of its own
        if direction == "i" and pump.content_ul <= 0:
            self._halt(pump, "*", announce=False)  # an empty syringe: the motor stalls at once
        elif direction == "w" and pump.content_ul >= pump.capacity_ul:
            self._halt(pump, "*", announce=False)
        elif pump.target_ul is not None:
            done = pump.infused_ul if direction == "i" else pump.withdrawn_ul
            if done >= pump.target_ul:
                self._halt(pump, "T*", announce=False)
        return []

    def _cmd_stop(self, pump: _Pump, args: list[str]) -> list[str]:
        pump.running = pump.stalled = pump.target_reached = False
        self._report_flow(pump)
        return []

    def _cmd_status(self, pump: _Pump, args: list[str]) -> list[str]:
        infusing = pump.direction == "i"
        rate = pump.irate_ul_min if infusing else pump.wrate_ul_min
        seconds = pump.infuse_time_s if infusing else pump.withdraw_time_s
        volume = pump.infused_ul if infusing else pump.withdrawn_ul
        flags = pump.direction.upper() if pump.running and pump.model.status_ms else pump.direction
        flags += "." + ("S" if pump.stalled else ".") + "." + ("I" if infusing else "W")
        if pump.model.status_ms:
            flags += "T" if pump.target_reached else "."
        time = round(seconds * 1000) if pump.model.status_ms else int(seconds)
        return [f"{round(rate * 1e9 / 60)} {time} {round(volume * 1e9)} {flags}"]

    def _clear(
        self, pump: _Pump, *, infused: bool = False, withdrawn: bool = False, times: bool = False
    ) -> list[str]:
        if infused:
            pump.infused_ul = 0.0
        if withdrawn:
            pump.withdrawn_ul = 0.0
        if times or infused:
            pump.infuse_time_s = 0.0
        if times or withdrawn:
            pump.withdraw_time_s = 0.0
        return []

    def _volume_argument(self, args: list[str]) -> float:
        if len(args) < 2:
            raise _argument_error("", "Missing argument")
        units = _SHORT_VOLUME.get(args[1], args[1])
        if units not in _VOLUME_UL:
            raise _argument_error(args[1], "Invalid units")
        return _number(args[0]) * _VOLUME_UL[units]

    def _cmd_tvolume(self, pump: _Pump, args: list[str]) -> list[str]:
        if not args:
            return ["Target volume not set" if pump.target_ul is None else _show_volume(pump.target_ul)]
        volume = self._volume_argument(args)
        if volume <= 0:
            raise _argument_error(" ".join(args[:2]), "Out of range")
        pump.target_ul = volume
        return []

    def _cmd_ctvolume(self, pump: _Pump, args: list[str]) -> list[str]:
        pump.target_ul = None
        pump.target_reached = False
        return []

    def _cmd_svolume(self, pump: _Pump, args: list[str]) -> list[str]:
        if not args:
            return ["Syringe volume not set" if pump.svolume_ul is None else _show_volume(pump.svolume_ul)]
        pump.svolume_ul = self._volume_argument(args)
        return []

    def _cmd_force(self, pump: _Pump, args: list[str]) -> list[str]:
        if not args:
            return [f"{pump.force}%"]
        if not args[0].isdigit() or not 1 <= int(args[0]) <= 100:
            raise _argument_error(args[0], "Out of range")
        pump.force = int(args[0])
        self._store(pump, force=pump.force)
        return []


def _from_url(bus: str, query: dict[str, list[str]]) -> HarvardFirmware:
    """``register_protocol`` factory: the line of ``sim://harvard/<bus>?...``."""

    def last(key: str, default: str) -> str:
        values = query.get(key) or [default]
        return values[-1]

    try:
        addresses = [int(a) for a in query.get("address") or ["0"]]
        syringes = [float(v) for v in query.get("syringe_ul") or []]
        content = float(last("content_ul", "nan"))
        baudrate = int(last("baud", str(DEFAULT_BAUDRATE)))
        diameter = float(last("diameter", str(DEFAULT_DIAMETER_MM)))
    except ValueError as exc:
        raise ValueError(f"sim://harvard/{bus}: a number in the URL query is not one ({exc})") from exc
    return HarvardFirmware(
        bus,
        addresses,
        world=last("world", "default"),
        baudrate=baudrate,
        syringe_ul=syringes,
        content_ul=None if math.isnan(content) else content,
        model=last("model", "ultra"),
        diameter_mm=diameter,
    )


register_protocol("harvard", _from_url)
