"""The serial line's last resort: writes that wait for no reply, on a held line or a port of their own."""

from __future__ import annotations

import threading

import serial

from drivers.transport import SerialLine, send_blind_anywhere


def test_blind_writes_go_on_the_held_line_under_its_lock() -> None:
    line = SerialLine("loop://", name="loop")
    line.open()
    lock = threading.RLock()
    sent = send_blind_anywhere(b"stp\r", 3, held=(line, lock), url="loop://", baudrate=9600, name="loop")
    assert sent == 3
    assert line.read_until(lambda buf: buf.count(b"stp\r") == 3, timeout_s=1.0) == b"stp\r" * 3
    assert line.is_open  # the held line stays open for its owner


def test_blind_writes_without_a_held_line_open_a_port_for_themselves_and_close_it(monkeypatch) -> None:
    opened: list[serial.SerialBase] = []
    real = serial.serial_for_url

    def spy(url: str, **kwargs: object) -> serial.SerialBase:
        port = real(url, **kwargs)
        opened.append(port)
        return port

    monkeypatch.setattr(serial, "serial_for_url", spy)
    sent = send_blind_anywhere(b"STP\r", 2, held=None, url="loop://", baudrate=19200, name="alone")
    assert sent == 2
    assert len(opened) == 1 and opened[0].baudrate == 19200 and not opened[0].is_open


def test_blind_writes_count_only_what_was_sent() -> None:
    sent = send_blind_anywhere(b"STP\r", 2, held=None, url="/dev/no-such-port", baudrate=9600, name="gone")
    assert sent == 0


def test_a_port_that_fails_between_exchanges_is_a_device_error(monkeypatch) -> None:
    """transact() drains stale bytes first; a port pulled then raised pyserial's own SerialException,
    which is no DeviceError: it escaped the runner's retry and reconnect."""
    import pytest

    from drivers.errors import NotConnected

    line = SerialLine("loop://", name="pulled")
    line.open()
    port = line._require()

    class Gone:
        is_open = True

        @property
        def in_waiting(self) -> int:
            raise serial.SerialException("device reports readiness to read but returned no data")

        def close(self) -> None:
            self.is_open = False

    monkeypatch.setattr(line, "_port", Gone())
    with pytest.raises(NotConnected, match="read from 'loop://' failed") as info:
        line.transact(b"x\r", lambda buf: True, timeout_s=0.1, idempotent=True)
    assert info.value.device == "pulled" and not line.is_open
    port.close()
