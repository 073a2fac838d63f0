"""``sdl sila serve --rig RIG --port N``: serve the rig's pumps and spectrometer over SiLA 2.

One server per instrument on consecutive ports from N (pumps in the rig file's order, then the
spectrometer), on 127.0.0.1 unless ``--host`` says otherwise. ``--insecure`` serves without TLS
(tests, loopback); ``--cert``/``--key`` use the site's certificate; otherwise every server makes a
self-signed certificate and writes it to ``--ca-dir`` for its clients. Runs until Ctrl-C or SIGTERM,
then stops every pump.
"""

from __future__ import annotations

import argparse
import signal
import socket
import threading
from collections.abc import Callable
from pathlib import Path

import structlog
from rich.console import Console

from drivers.errors import DeviceError
from orchestrator.cli.agent import json_logs_to_stderr
from orchestrator.cli.hw import EXIT_CONFIG, EXIT_DEVICE
from orchestrator.config_errors import ConfigError
from orchestrator.rig import build_rig, load_rig


def register(subparsers: argparse._SubParsersAction) -> None:
    sila = subparsers.add_parser("sila", help="SiLA 2: serve the rig's instruments to other lab software")
    sub = sila.add_subparsers(dest="sila_command", metavar="SUBCOMMAND")
    sub.required = True
    serve = sub.add_parser(
        "serve",
        help="serve each pump and the spectrometer as a SiLA 2 server",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("--rig", required=True, help="rig file (YAML)")
    serve.add_argument("--port", type=int, default=50052, help="port of the first server (default 50052)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument(
        "--insecure", action="store_true", help="no TLS (violates SiLA 2; tests and loopback only)"
    )
    serve.add_argument("--cert", type=Path, help="PEM certificate chain for TLS")
    serve.add_argument("--key", type=Path, help="PEM private key for TLS")
    serve.add_argument(
        "--ca-dir",
        type=Path,
        default=Path("runs/sila-ca"),
        help="where self-signed certificates go, one PORT.pem per server (default runs/sila-ca)",
    )
    serve.add_argument(
        "--discovery", action="store_true", help="announce the servers by mDNS (SiLA discovery)"
    )
    serve.set_defaults(func=_serve)


def serve_rig(
    rig_path: str | Path,
    *,
    port: int,
    host: str = "127.0.0.1",
    insecure: bool = False,
    cert: Path | None = None,
    key: Path | None = None,
    ca_dir: Path | None = None,
    discovery: bool = False,
    stop: threading.Event | None = None,
    ready: Callable[[list[tuple[str, int]]], None] | None = None,
) -> int:
    """Serve until ``stop`` is set; ``ready([(label, port), ...])`` once every server listens."""
    from orchestrator.sila.server import (
        TlsFiles,
        build_servers,
        services_for_rig,
        start_servers,
        stop_servers,
    )

    if (cert is None) != (key is None):
        raise SystemExit("sdl sila serve: give both --cert and --key, or neither")
    if insecure and cert is not None:
        raise SystemExit("sdl sila serve: --insecure serves without encryption; give it or --cert/--key, not both")
    if insecure and host not in _LOOPBACK:
        raise SystemExit(f"sdl sila serve: --insecure serves without encryption, so only on loopback "
                         f"({', '.join(_LOOPBACK)}), not on {host}: give --cert/--key (or none: self-signed)")
    for path in (cert, key):
        if path is not None and not path.is_file():
            raise SystemExit(f"sdl sila serve: no file {path}")
    tls = TlsFiles(key.read_bytes(), cert.read_bytes()) if cert is not None and key is not None else None
    cfg = load_rig(rig_path)
    _check_ports(host, port, len(cfg.pumps) + (cfg.spectrometer is not None))
    rig = build_rig(cfg)
    rig.connect()
    stop = stop or threading.Event()
    try:
        pumps, spectrometer = services_for_rig(cfg, rig)
        served = build_servers(cfg.name, pumps, spectrometer, first_port=port, discovery=discovery)
        start_servers(served, host=host, insecure=insecure, tls=tls, discovery=discovery, ca_dir=ca_dir)
        try:
            if ready is not None:
                ready([(s.label, s.port) for s in served])
            while not stop.wait(0.2):
                pass
        finally:
            stop_servers(served)
    finally:
        rig.safe_state()
        rig.close()
    return 0


_LOOPBACK = ("127.0.0.1", "::1", "localhost")


def _check_ports(host: str, first: int, count: int) -> None:
    """Each server's port is valid and free. gRPC listens with SO_REUSEPORT, so a second `sdl sila serve`
    on the same ports started without a word and took the clients over: two masters of one rig."""
    last = first + count - 1
    if first < 1 or last > 65535:
        raise SystemExit(f"sdl sila serve: ports {first}-{last} ({count} servers) are not all in 1-65535")
    for port in range(first, last + 1):
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            try:
                probe.bind((host, port))
            except OSError as exc:
                raise SystemExit(
                    f"sdl sila serve: port {port} on {host} is in use ({exc.strerror}): another `sdl sila serve` "
                    "of this rig, or another program; stop it, or give --port"
                ) from None


def _serve(args: argparse.Namespace) -> int:
    console = Console()
    stop = threading.Event()
    previous_handler = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    previous_logging = structlog.get_config()
    json_logs_to_stderr()
    ca_dir = args.ca_dir.resolve()
    scheme_note = "?insecure=1" if args.insecure else ("" if args.cert else f"?ca={ca_dir}/PORT.pem")

    def announce(servers: list[tuple[str, int]]) -> None:
        for label, port in servers:
            console.print(
                f"{label}: sila://{args.host}:{port}{scheme_note.replace('PORT', str(port))}", highlight=False
            )
        console.print("serving until Ctrl-C", style="dim")

    try:
        return _guard(
            serve_rig,
            args.rig,
            port=args.port,
            host=args.host,
            insecure=args.insecure,
            cert=args.cert,
            key=args.key,
            ca_dir=ca_dir,
            discovery=args.discovery,
            stop=stop,
            ready=announce,
        )
    except KeyboardInterrupt:
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
        structlog.configure(**previous_logging)


def _guard(func: Callable[..., int], *args: object, **kwargs: object) -> int:
    """Operator errors as one message and an exit code, never a traceback."""
    try:
        return func(*args, **kwargs)
    except ConfigError as exc:
        Console(stderr=True).print(f"[bold red]error:[/] {exc}", highlight=False)
        return EXIT_CONFIG
    except DeviceError as exc:
        Console(stderr=True).print(f"[bold red]error:[/] {exc}", highlight=False)
        return EXIT_DEVICE
