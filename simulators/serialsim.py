"""The serial seam of the simulators: firmware emulators behind a ``sim://`` pyserial URL or a pty.

``sim://<protocol>[/<bus>]?address=N[&address=M...][&world=NAME][&...]``: every open of the same
protocol and bus in one process reaches the same emulated pumps, as a daisy chain on one RS-232 line
does. Protocol modules register a factory with :func:`register_protocol`.
"""

from __future__ import annotations

import importlib
import os
import select
import termios
import threading
import time
import tty
import urllib.parse
from abc import ABC, abstractmethod
from collections.abc import Callable

import serial
from serial.serialutil import PortNotOpenError, SerialBase, SerialException

# protocol name -> "module" that calls register_protocol() on import
KNOWN_PROTOCOLS = {"newera": "simulators.newera", "harvard": "simulators.harvard"}


class Firmware(ABC):
    """A stateful emulation of one serial line's worth of instrument firmware."""

    baudrate: int = 19200

    @abstractmethod
    def receive(self, data: bytes, baudrate: int) -> bytes:
        """Bytes from the host (at the host's baud rate) in, reply bytes out (maybe none)."""

    def pending(self) -> bytes:
        """Unsolicited bytes (alarm frames, prompts) the firmware has queued since the last call."""
        return b""

    @property
    def connected(self) -> bool:
        """False while an injected disconnect lasts: the port then fails like an unplugged adapter."""
        return True

    def empty(self) -> set[int]:
        """The addresses on this line whose syringe has run empty. For pump lines, whose emulators keep
        their pumps in ``_pumps`` (each with ``capacity_ul``) and offer ``snapshot(address)`` (with
        ``content_ul``, brought up to the world's clock)."""
        return {
            address for address, pump in list(getattr(self, "_pumps", {}).items())
            if self.snapshot(address).content_ul <= 1e-6 * float(pump.capacity_ul)  # type: ignore[attr-defined]
        }

    def refill_empty(self) -> dict[int, float]:
        """Fill every syringe on this line that has run empty back to its capacity, as the operator
        would (a dry run has none); returns {address: uL filled} (``refill(address, uL)``)."""
        filled: dict[int, float] = {}
        for address in sorted(self.empty()):
            capacity = float(self._pumps[address].capacity_ul)  # type: ignore[attr-defined]
            self.refill(address, capacity)  # type: ignore[attr-defined]
            filled[address] = capacity
        return filled


FirmwareFactory = Callable[[str, dict[str, list[str]]], Firmware]
_factories: dict[str, FirmwareFactory] = {}
_buses: dict[tuple[str, str], Firmware] = {}
_lock = threading.Lock()


def register_protocol(name: str, factory: FirmwareFactory) -> None:
    """``factory(bus_name, query)`` builds the firmware of a new bus from the URL's query."""
    _factories[name] = factory


def get_bus(protocol: str, bus: str = "default", query: dict[str, list[str]] | None = None) -> Firmware:
    """The emulated line of that protocol and name, built on first use."""
    with _lock:
        key = (protocol, bus)
        if key not in _buses:
            if protocol not in _factories and protocol in KNOWN_PROTOCOLS:
                importlib.import_module(KNOWN_PROTOCOLS[protocol])
            if protocol not in _factories:
                raise SerialException(
                    f"sim://{protocol}: unknown simulated protocol; known: {', '.join(sorted(KNOWN_PROTOCOLS))}"
                )
            _buses[key] = _factories[protocol](bus, query or {})
        return _buses[key]


def reset_buses() -> None:
    """Forget every emulated line (tests, and a fresh dry run in the same process)."""
    with _lock:
        _buses.clear()


def drop_bus(protocol: str, bus: str = "default") -> None:
    """Forget one emulated line, so that the next open builds it afresh (a new simulated rig)."""
    with _lock:
        _buses.pop((protocol, bus), None)


def parse_sim_url(url: str) -> tuple[str, str, dict[str, list[str]]]:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "sim" or not parts.netloc:
        raise SerialException(f"expected sim://<protocol>[/<bus>]?address=N..., got {url!r}")
    bus = parts.path.strip("/") or "default"
    return parts.netloc, bus, urllib.parse.parse_qs(parts.query, keep_blank_values=True)


class SimSerial(SerialBase):
    """A pyserial port whose other end is a firmware emulator in this process."""

    def __init__(self, *args, **kwargs) -> None:
        self._firmware: Firmware | None = None
        self._rx = bytearray()
        self._trickle = False  # ?trickle=1: replies arrive one byte per read, as from a real UART
        super().__init__(*args, **kwargs)

    def open(self) -> None:
        if self.is_open:
            raise SerialException("Port is already open.")
        if self._port is None:
            raise SerialException("Port must be configured before it can be used.")
        protocol, bus, query = parse_sim_url(self._port)
        self._firmware = get_bus(protocol, bus, query)
        self._trickle = query.get("trickle", ["0"])[0] not in ("0", "false", "no")
        if not self._firmware.connected:
            raise SerialException(f"{self._port}: device not present (simulated disconnect)")
        self._rx.clear()
        self.is_open = True

    def close(self) -> None:
        self.is_open = False
        self._firmware = None
        super().close()

    def _reconfigure_port(self) -> None:
        pass

    def _fw(self) -> Firmware:
        if not self.is_open or self._firmware is None:
            raise PortNotOpenError()
        if not self._firmware.connected:
            raise SerialException(f"{self._port}: device disconnected (simulated)")
        return self._firmware

    @property
    def in_waiting(self) -> int:
        fw = self._fw()
        self._rx += fw.pending()
        return min(len(self._rx), 1) if self._trickle else len(self._rx)

    def read(self, size: int = 1) -> bytes:
        fw = self._fw()
        deadline = None if self._timeout is None else time.monotonic() + self._timeout
        while True:
            self._rx += fw.pending()
            if self._rx:
                size = 1 if self._trickle else size
                out = bytes(self._rx[:size])
                del self._rx[:size]
                return out
            if deadline is not None and time.monotonic() >= deadline:
                return b""
            time.sleep(0.001)

    def write(self, data: bytes) -> int:
        fw = self._fw()
        data = bytes(data)
        self._rx += fw.receive(data, int(self._baudrate))
        return len(data)

    def reset_input_buffer(self) -> None:
        self._fw()
        self._rx.clear()

    def reset_output_buffer(self) -> None:
        self._fw()

    def _update_rts_state(self) -> None:
        pass

    def _update_dtr_state(self) -> None:
        pass

    def _update_break_state(self) -> None:
        pass

    @property
    def cts(self) -> bool:
        return True

    @property
    def dsr(self) -> bool:
        return True

    @property
    def ri(self) -> bool:
        return False

    @property
    def cd(self) -> bool:
        return True


def install_url_handler() -> None:
    """Let ``serial.serial_for_url`` open ``sim://`` URLs (idempotent)."""
    if "simulators.urlhandler" not in serial.protocol_handler_packages:
        serial.protocol_handler_packages.append("simulators.urlhandler")


# termios speed constants -> bits per second, for the rates serial pumps use
_TERMIOS_BAUD = {
    getattr(termios, f"B{rate}"): rate
    for rate in (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200, 230400)
    if hasattr(termios, f"B{rate}")
}


class PtyServer:
    """Serve one firmware on a pseudo-terminal so that any program can open it as a serial port."""

    def __init__(self, firmware: Firmware, baudrate: int | None = None) -> None:
        self.firmware = firmware
        # the host's speed when the pty cannot say (no one has set it yet): the firmware's own
        self.baudrate = baudrate or firmware.baudrate
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)
        self.path = os.ttyname(self._slave)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name=f"pty-{self.path}", daemon=True)

    def start(self) -> PtyServer:
        self._thread.start()
        return self

    def _serve(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self._master], [], [], 0.02)
            out = self.firmware.pending()
            if ready:
                try:
                    data = os.read(self._master, 4096)
                except OSError:
                    data = b""
                if data:
                    out += self.firmware.receive(data, self.host_baudrate())
            if out:
                os.write(self._master, out)

    def host_baudrate(self) -> int:
        """The speed the program on the other end set on the port (``termios``): a rig file with the
        wrong baud rate then meets a pump that hears framing errors, as on the bench."""
        try:
            speed = termios.tcgetattr(self._slave)[5]  # ospeed: what the host sends at
        except termios.error:
            return self.baudrate
        return _TERMIOS_BAUD.get(speed, self.baudrate)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=1)
        for fd in (self._master, self._slave):
            try:
                os.close(fd)
            except OSError:
                pass
