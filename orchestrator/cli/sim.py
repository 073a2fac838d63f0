"""``sdl sim``: serve simulated instruments to other programs.

``sdl sim pump --protocol newera --address 0 --address 1`` emulates a line of pumps on a
pseudo-terminal, prints its /dev/pts path and serves until Ctrl-C; point any serial program (or a
rig file's ``port:``) at that path. The protocols are those of ``simulators.serialsim.KNOWN_PROTOCOLS``.
"""

from __future__ import annotations

import argparse
import signal
import threading
from collections.abc import Callable, Sequence

from rich.console import Console

from orchestrator.cli import fail
from simulators.serialsim import KNOWN_PROTOCOLS, PtyServer, drop_bus, get_bus
from simulators.world import WallClock, World, set_world


def register(subparsers: argparse._SubParsersAction) -> None:
    sim = subparsers.add_parser("sim", help="serve simulated instruments on pseudo-terminals")
    devices = sim.add_subparsers(dest="sim_device", metavar="DEVICE")
    devices.required = True
    pump = devices.add_parser(
        "pump",
        help="emulate a line of syringe pumps on a pty",
        description="Emulate syringe-pump firmware on a pseudo-terminal until Ctrl-C.",
    )
    pump.add_argument("--protocol", choices=sorted(KNOWN_PROTOCOLS), default="newera", help="pump firmware")
    pump.add_argument(
        "--address",
        type=int,
        action="append",
        help="pump address on the line (repeat for a chain; default 0)",
    )
    pump.add_argument(
        "--baud",
        type=int,
        default=None,
        help="the emulated pumps' baud rate (default: the family's factory setting, newera 19200, harvard 115200)",
    )
    pump.add_argument("--bus", default="pty", help="bus name the pumps report their flows under")
    pump.add_argument("--world", default="pty", help="name of the (wall-clock) simulated world")
    pump.set_defaults(func=_run_pump)


# factory baud rates: New Era NE-1000 family 19200, Harvard PHD ULTRA / Pump 11 Elite / Legato 115200
DEFAULT_BAUD = {"newera": 19200, "harvard": 115200}


def serve_pump(
    protocol: str,
    addresses: Sequence[int],
    *,
    baud: int | None = None,
    bus: str = "pty",
    world_name: str = "pty",
    stop: threading.Event | None = None,
    ready: Callable[[str], None] | None = None,
) -> int:
    """Serve the pumps on a pty until ``stop`` is set (or Ctrl-C); ``ready(path)`` once it listens."""
    if protocol not in KNOWN_PROTOCOLS:
        raise ValueError(f"unknown pump protocol {protocol!r}; known: {', '.join(sorted(KNOWN_PROTOCOLS))}")
    baud = baud if baud is not None else DEFAULT_BAUD.get(protocol, 19200)
    set_world(world_name, World(clock=WallClock()))  # other programs talk in real time
    drop_bus(protocol, bus)
    query = {"address": [str(a) for a in addresses], "baud": [str(baud)], "world": [world_name]}
    firmware = get_bus(protocol, bus, query)
    server = PtyServer(firmware, baudrate=baud).start()
    stop = stop or threading.Event()
    try:
        if ready is not None:
            ready(server.path)
        while not stop.wait(0.2):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        drop_bus(protocol, bus)
    return 0


def _run_pump(args: argparse.Namespace) -> int:
    console = Console()
    addresses = args.address or [0]
    baud = args.baud if args.baud is not None else DEFAULT_BAUD.get(args.protocol, 19200)

    def announce(path: str) -> None:
        console.print(path, highlight=False, soft_wrap=True)
        console.print(
            f"[dim]{args.protocol} pumps at address {', '.join(map(str, addresses))}, {baud} baud; "
            "Ctrl-C to stop[/dim]",
        )

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())  # systemd and docker stop with SIGTERM
    try:
        return serve_pump(
            args.protocol,
            addresses,
            baud=baud,
            bus=args.bus,
            world_name=args.world,
            stop=stop,
            ready=announce,
        )
    except ValueError as exc:  # the emulator refuses what its pump would not take (a baud rate, an address)
        return fail(str(exc), 2)
