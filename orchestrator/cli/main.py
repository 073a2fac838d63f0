"""Entry point of ``sdl``. Each command group lives in its own module with ``register(subparsers)``;
a registered handler is ``func(args) -> int`` (the exit code)."""

from __future__ import annotations

import argparse
import importlib
import os
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


def importable_from_working_directory() -> None:
    """Let ``--chemistry mymodel:Class`` (and a rig's ``chemistry.model``) find ``mymodel.py`` in the
    directory ``sdl`` runs from, as ``python -m`` would. Appended, so it never shadows an installed package."""
    cwd = os.getcwd()
    if "" not in sys.path and cwd not in sys.path:
        sys.path.append(cwd)


def main(argv: list[str] | None = None) -> int:
    importable_from_working_directory()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
