"""A serial line over ``serial.serial_for_url``: /dev/ttyUSB0, socket://host:port, sim://..., pty paths.

Framing belongs to each protocol (the driver passes a function that says when a reply is complete);
timeouts come from the operation; only idempotent commands are retried, with backoff.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import serial
import structlog

from drivers.errors import DeviceTimeout, NotConnected

log = structlog.get_logger("drivers.wire")

ReplyComplete = Callable[[bytes], bool]


class SerialLine:
    """One serial port shared by every device addressed on it."""

    def __init__(self, url: str, *, baudrate: int = 19200, name: str | None = None) -> None:
        self.url = url
        self.baudrate = baudrate
        self.name = name or url
        self._port: serial.SerialBase | None = None

    @property
    def is_open(self) -> bool:
        return self._port is not None and self._port.is_open

    def open(self) -> None:
        if self.is_open:
            return
        try:
            self._port = serial.serial_for_url(self.url, baudrate=self.baudrate, timeout=0.05, write_timeout=1.0)
        except (serial.SerialException, ValueError, OSError) as exc:
            raise NotConnected(f"cannot open port {self.url!r} ({exc})", device=self.name) from exc

    def set_baudrate(self, baudrate: int) -> None:
        self.baudrate = baudrate
        if self._port is not None:
            self._port.baudrate = baudrate

    def close(self) -> None:
        if self._port is not None:
            try:
                self._port.close()
            finally:
                self._port = None

    def _require(self) -> serial.SerialBase:
        if not self.is_open:
            raise NotConnected(f"port {self.url!r} is not open", device=self.name)
        assert self._port is not None
        return self._port

    def write(self, payload: bytes) -> None:
        port = self._require()
        log.debug("tx", port=self.url, data=payload)
        try:
            port.write(payload)
            port.flush()
        except (serial.SerialException, OSError) as exc:
            self.close()
            raise NotConnected(f"write to {self.url!r} failed ({exc})", device=self.name) from exc

    def send_blind(self, payload: bytes, times: int, gap_s: float = 0.05) -> int:
        """Write ``payload`` ``times`` times without waiting for any reply, (re)opening the port if it
        can: the last resort of a safe state when replies no longer come back but the device may still
        hear. Replies that do come are left for the next exchange to drain. Returns the writes sent."""
        sent = 0
        for attempt in range(times):
            if attempt:
                time.sleep(gap_s)
            try:
                self.open()
                self.write(payload)
            except NotConnected as exc:
                log.warning("blind write failed", port=self.url, error=str(exc))
                continue
            sent += 1
        return sent

    def read_until(self, complete: ReplyComplete, timeout_s: float) -> bytes:
        """Read until ``complete(buffer)`` or the deadline; raise DeviceTimeout with what arrived."""
        port = self._require()
        buf = bytearray()
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                chunk = port.read(max(1, port.in_waiting))
            except (serial.SerialException, OSError) as exc:
                self.close()
                raise NotConnected(f"read from {self.url!r} failed ({exc})", device=self.name) from exc
            if chunk:
                buf += chunk
                if complete(bytes(buf)):
                    log.debug("rx", port=self.url, data=bytes(buf))
                    return bytes(buf)
            elif time.monotonic() > deadline:
                log.debug("rx-timeout", port=self.url, data=bytes(buf))
                got = f"; got {bytes(buf)!r}" if buf else ""
                raise DeviceTimeout(f"no complete reply on {self.url} within {timeout_s:.2f} s{got}", device=self.name)

    def read_available(self) -> bytes:
        port = self._require()
        try:
            data = port.read(port.in_waiting) if port.in_waiting else b""
        except (serial.SerialException, OSError) as exc:  # an adapter pulled between two exchanges
            self.close()
            raise NotConnected(f"read from {self.url!r} failed ({exc})", device=self.name) from exc
        if data:
            log.debug("rx-unsolicited", port=self.url, data=data)
        return data

    def transact(
        self,
        payload: bytes,
        complete: ReplyComplete,
        *,
        timeout_s: float,
        idempotent: bool,
        retries: int = 2,
        backoff_s: float = 0.05,
        on_stale: Callable[[bytes], None] | None = None,
    ) -> bytes:
        """Send one command and return its framed reply.

        Non-idempotent commands (run, a volume target) are sent once: a lost reply must not make
        the pump move twice. Stale bytes waiting before the command go to ``on_stale`` (unsolicited
        alarm frames), never into the reply.
        """
        attempts = 1 + (retries if idempotent else 0)
        last: DeviceTimeout | None = None
        for attempt in range(attempts):
            stale = self.read_available()
            if stale and on_stale is not None:
                on_stale(stale)
            self.write(payload)
            try:
                return self.read_until(complete, timeout_s)
            except DeviceTimeout as exc:
                last = exc
                if attempt + 1 < attempts:
                    time.sleep(backoff_s * (2**attempt))
        assert last is not None
        raise last


def send_blind_anywhere(payload: bytes, times: int, *, held: tuple[SerialLine, threading.RLock] | None,
                        url: str, baudrate: int, name: str) -> int:
    """``payload`` written ``times`` times without waiting for replies (a stop that must get through):
    on the line a driver still holds, under its lock so no exchange is cut in half, else on the port
    opened for this alone and closed again. Returns the writes sent."""
    if held is not None:
        line, lock = held
        with lock:
            return line.send_blind(payload, times)
    alone = SerialLine(url, baudrate=baudrate, name=name)
    try:
        return alone.send_blind(payload, times)
    finally:
        alone.close()
