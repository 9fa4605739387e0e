"""What every `facegate` sub-command module shares: the error console, the common options, settings."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn, Optional

import typer
from rich.console import Console
from rich.markup import escape

from facegate.config import Settings, load_settings

# soft_wrap: a message is one line however long (a terminal folds it itself); rich's hard wrap at 80
# columns split "is not a folder" across lines when stderr was a pipe and the path was long.
console = Console(stderr=True, soft_wrap=True)

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", help="TOML settings file (else $FACEGATE_CONFIG).")]
DataOpt = Annotated[Optional[Path], typer.Option("--data", help="Data directory (else $FACEGATE_DATA_DIR).")]


def fail(message: str, code: int = 1) -> NoReturn:
    """Say what went wrong, in one line, and exit with ``code`` (2: bad usage or input, 1: refused)."""
    console.print(f"[red]error:[/red] {escape(message)}")
    raise typer.Exit(code)


def settings(config: Path | None, **overrides) -> Settings:
    """Settings from flags (``overrides``; None = not given), environment and config file; a bad one exits 2."""
    try:
        return load_settings(config, **overrides)
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc), 2)
