"""Entry point of ``sdl``. Each command group lives in its own module with ``register(subparsers)``;
a registered handler is ``func(args) -> int`` (the exit code)."""

from __future__ import annotations

import argparse
import importlib
import sys

# command modules under orchestrator.cli, each adding its sub-commands
COMMAND_MODULES = ["hw", "sim", "serve", "users", "report", "run", "sila", "campaign_control", "agent"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sdl",
        description="sdl-orchestrator: run self-driving microfluidic campaigns on real or simulated rigs.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(f"orchestrator.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
