"""The New Era driver over a real pseudo-terminal: the emulator served by PtyServer (as for other
programs) and by ``sdl sim pump`` (orchestrator.cli.sim). The only waiting is the pty's own
millisecond polling inside pyserial and PtyServer."""

from __future__ import annotations

import argparse
import threading
from collections.abc import Iterator

import pytest

import simulators  # noqa: F401 - installs the sim:// URL handler
from drivers.base import PumpState
from drivers.errors import StallAlarm
from drivers.newera import NewEraPump
from orchestrator.cli import sim as sim_cli
from simulators.faults import Fault
from simulators.newera import NewEraFirmware
from simulators.serialsim import KNOWN_PROTOCOLS, PtyServer
from simulators.world import VirtualClock, World


@pytest.fixture
def served() -> Iterator[tuple[PtyServer, NewEraFirmware, World]]:
    world = World(clock=VirtualClock())
    firmware = NewEraFirmware("pty-test", [0, 2], world=world)
    server = PtyServer(firmware).start()
    yield server, firmware, world
    server.stop()


def test_every_command_over_a_pty(served: tuple[PtyServer, NewEraFirmware, World]) -> None:
    server, firmware, world = served
    p0 = NewEraPump("p0", server.path, address=0, syringe_diameter_mm=14.57, reply_timeout_s=0.3)
    p2 = NewEraPump("p2", server.path, address=2, syringe_diameter_mm=4.78, reply_timeout_s=0.3)
    try:
        p0.connect()
        p2.connect()
        assert (p0.model, p0.baudrate) == ("NE-1000", 19200)
        assert p2.syringe_diameter_mm == 4.78
        p0.set_syringe_diameter_mm(23.03)
        p0.set_rate_ul_min(250.0)
        p2.set_rate_ul_min(2.5)
        p0.run()
        p2.run()
        world.clock.sleep(12.0)
        assert p0.dispensed_ul() == pytest.approx(50.0)
        status = p2.status()
        assert (status.state, status.rate_ul_min, status.dispensed_ul) == (PumpState.INFUSING, 2.5, 0.5)
        firmware.inject(2, Fault("stall"))
        with pytest.raises(StallAlarm):
            p2.dispensed_ul()
        for pump in (p0, p2):
            pump.safe_state()
            assert pump.status().state is PumpState.STOPPED
    finally:
        p0.close()
        p2.close()


def test_safe_mode_over_a_pty(served: tuple[PtyServer, NewEraFirmware, World]) -> None:
    server, firmware, _ = served
    pump = NewEraPump("p0", server.path, safe_mode_timeout_s=20, reply_timeout_s=0.3, heartbeat=False)
    try:
        pump.connect()
        assert pump.safe_mode and firmware.snapshot(0).safe_timeout_s == 20
        pump.set_rate_ul_min(5.0)
        pump.run()
        pump.safe_state()
        assert pump.status().state is PumpState.STOPPED
    finally:
        pump.close()


def test_sdl_sim_pump_serves_a_pty_the_driver_can_open() -> None:
    ready = threading.Event()
    stop = threading.Event()
    paths: list[str] = []

    def on_ready(path: str) -> None:
        paths.append(path)
        ready.set()

    server = threading.Thread(
        target=sim_cli.serve_pump,
        args=("newera", [0, 1]),
        kwargs={"baud": 9600, "bus": "cli-test", "world_name": "cli-test", "stop": stop, "ready": on_ready},
        daemon=True,
    )
    server.start()
    try:
        assert ready.wait(10), "the pty server did not start"
        pump = NewEraPump("p1", paths[0], address=1, reply_timeout_s=0.3)
        try:
            pump.connect()
            # a pty has no line speed: PtyServer hands the firmware its own baud, so any baud answers
            assert pump.baudrate in (19200, 9600)
            pump.set_rate_ul_min(1.0)
            pump.run()
            pump.safe_state()
            assert pump.status().state is PumpState.STOPPED
        finally:
            pump.close()
    finally:
        stop.set()
        server.join(timeout=5)
    assert not server.is_alive()


def test_sim_command_line_takes_its_protocols_from_the_registry() -> None:
    parser = argparse.ArgumentParser(prog="sdl")
    sim_cli.register(parser.add_subparsers(dest="command"))
    argv = ["sim", "pump", "--protocol", "newera", "--address", "0", "--address", "3", "--baud", "9600"]
    args = parser.parse_args(argv)
    assert (args.protocol, args.address, args.baud) == ("newera", [0, 3], 9600)
    assert args.func is sim_cli._run_pump  # noqa: SLF001
    for protocol in KNOWN_PROTOCOLS:  # every registered protocol is offered, e.g. harvard
        assert parser.parse_args(["sim", "pump", "--protocol", protocol]).protocol == protocol
    with pytest.raises(SystemExit):
        parser.parse_args(["sim", "pump", "--protocol", "nosuch"])
    with pytest.raises(ValueError, match="known"):
        sim_cli.serve_pump("nosuch", [0])
