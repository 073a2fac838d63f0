"""``sdl sim pump``: each pump family is served at its factory baud rate unless told otherwise."""

from __future__ import annotations

import queue
import threading

import pytest

from drivers.harvard import HarvardPump
from orchestrator.cli.sim import serve_pump
from simulators.serialsim import get_bus


def _served_baud(
    protocol: str, bus: str, baud: int | None
) -> tuple[int, str, threading.Event, threading.Thread]:
    stop = threading.Event()
    ready: queue.Queue[str] = queue.Queue()
    kwargs = {"bus": bus, "world_name": bus, "stop": stop, "ready": ready.put}
    if baud is not None:
        kwargs["baud"] = baud
    server = threading.Thread(target=serve_pump, args=(protocol, [0]), kwargs=kwargs, daemon=True)
    server.start()
    path = ready.get(timeout=5)
    return get_bus(protocol, bus).baudrate, path, stop, server


@pytest.mark.parametrize(
    ("protocol", "baud", "expected"),
    [("harvard", None, 115200), ("newera", None, 19200), ("harvard", 9600, 9600), ("newera", 9600, 9600)],
)
def test_default_baud_is_the_factory_setting(protocol: str, baud: int | None, expected: int) -> None:
    served, _, stop, server = _served_baud(protocol, f"baud-{protocol}-{baud}", baud)
    stop.set()
    server.join(timeout=5)
    assert served == expected


def test_a_harvard_pump_at_its_default_baud_answers_on_the_pty() -> None:
    _, path, stop, server = _served_baud("harvard", "baud-harvard-driver", None)
    try:
        pump = HarvardPump("p", path, address=0, syringe_diameter_mm=14.57)  # driver default: 115200
        pump.connect()
        try:
            assert pump.status().rate_ul_min >= 0.0
        finally:
            pump.close()
    finally:
        stop.set()
        server.join(timeout=5)


def test_an_emulator_refusing_its_settings_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    """`sdl sim pump --protocol harvard --baud 1234` printed a traceback."""
    from orchestrator.cli.main import main

    assert main(["sim", "pump", "--protocol", "harvard", "--baud", "1234"]) == 2
    err = capsys.readouterr().err
    assert "error: sim://harvard/pty: baud must be one of" in " ".join(err.split()) and "Traceback" not in err
