"""The operator console: web page and API over the campaign store (``sdl serve``)."""

from orchestrator.console.app import create_app

__all__ = ["create_app"]
