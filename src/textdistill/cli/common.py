"""Helpers shared by the CLI commands: config loading with overrides, logging, errors."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.logging import RichHandler

from textdistill.config import Config, ConfigError, apply_overrides, load_config

P = ParamSpec("P")
R = TypeVar("R")

console = Console()
err_console = Console(stderr=True)

ConfigOpt = typer.Option(None, "--config", "-c", help="YAML config file; flags override it.")
VerboseOpt = typer.Option(False, "--verbose", "-v", help="Debug logging.")


def setup_logging(verbose: bool = False) -> None:
    root = logging.getLogger("textdistill")
    if not any(isinstance(h, RichHandler) for h in root.handlers):
        root.addHandler(RichHandler(console=err_console, show_path=False, show_time=False))
    root.setLevel(logging.DEBUG if verbose else logging.INFO)


def resolve_config(path: Path | None, overrides: dict[str, Any]) -> Config:
    """Load ``path`` (or defaults) and apply the explicitly given CLI flags."""
    return apply_overrides(load_config(path), overrides)


def user_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn expected user errors into a clear message and exit code 2, not a traceback."""

    @wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        from textdistill.errors import UserError

        try:
            return fn(*args, **kwargs)
        except (ConfigError, UserError) as err:
            err_console.print(f"[bold red]error:[/] {err}", highlight=False, markup=True)
            sys.exit(2)

    return wrapper
