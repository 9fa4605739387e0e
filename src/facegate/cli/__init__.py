"""The `facegate` command: ``main`` builds the Typer app; a module per command group (serve and
people in ``main``, accuracy in ``eval``, keys and encryption in ``security``)."""

from .main import main

__all__ = ["main"]
