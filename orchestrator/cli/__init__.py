"""The ``sdl`` command: one module per command group, each with ``register(subparsers)``."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape


def fail(message: str, code: int) -> int:
    """Print ``error: message`` on stderr (the message as written: brackets in a path or a hint such as
    ``pip install sdl-orchestrator[ocean]`` are not markup) and return the exit code."""
    Console(stderr=True, highlight=False, soft_wrap=True).print(f"[bold red]error:[/] {escape(message)}")
    return code
