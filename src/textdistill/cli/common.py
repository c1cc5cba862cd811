"""Helpers shared by the CLI commands: config loading with overrides, logging, errors."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape

from textdistill.core.config import Config, ConfigError, apply_overrides, load_config

P = ParamSpec("P")
R = TypeVar("R")

console = Console()
err_console = Console(stderr=True)

ConfigOpt = typer.Option(None, "--config", "-c", help="YAML config file; flags override it.")
VerboseOpt = typer.Option(False, "--verbose", "-v", help="Debug logging.")


def setup_logging(verbose: bool = False) -> None:
    """Rich logging; under a multi-process launcher only the main process talks.

    The other processes log warnings and errors only and print no results, so a run on N
    processes reads like a run on one.
    """
    from textdistill.core.distributed import launched_rank

    main = launched_rank() == 0
    root = logging.getLogger("textdistill")
    if not err_console.is_terminal:
        # Hugging Face's own bars (weights loading, downloads) would fill a log with
        # carriage-return redraws too; read by transformers and huggingface_hub at import.
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if not any(isinstance(h, RichHandler | PlainStderrHandler) for h in root.handlers):
        root.addHandler(
            RichHandler(console=err_console, show_path=False, show_time=False)
            if err_console.is_terminal
            else PlainStderrHandler()
        )
    root.setLevel((logging.DEBUG if verbose else logging.INFO) if main else logging.WARNING)
    console.quiet = not main


class PlainStderrHandler(logging.StreamHandler):
    """One unwrapped, timestamped line per record, for logs that are not terminals.

    Under ``nohup``, in CI or behind a pipe, Rich would wrap every record at 80 columns and
    pad it; a plain line stays greppable. It writes to whatever ``sys.stderr`` is at the
    time of the record (test runners swap it per command).
    """

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", "%Y-%m-%d %H:%M:%S")
        )

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def resolve_config(path: Path | None, overrides: dict[str, Any]) -> Config:
    """Load ``path`` (or defaults) and apply the explicitly given CLI flags."""
    return apply_overrides(load_config(path), overrides)


def user_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn expected user errors into a clear message and exit code 2, not a traceback."""

    @wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        from textdistill.core.errors import RESUME_HINT, UserError
        from textdistill.core.io import as_write_error, write_error

        try:
            try:
                return fn(*args, **kwargs)
            except Exception as err:
                # The last net for a full disk or a read-only folder anywhere: every write is
                # atomic, so whatever was being written is simply absent.
                if isinstance(err, ConfigError | UserError) or as_write_error(err) is None:
                    raise
                raise write_error(
                    "a file", err, kept="nothing partial was left", hint=RESUME_HINT
                ) from err
        except (ConfigError, UserError) as err:
            # Escaped: messages quote user text (e.g. "[图]" in a title), which is not markup.
            # Soft wrap: a "file:line:" prefix must stay on one line for editors and grep.
            msg = escape(str(err))
            err_console.print(f"[bold red]error:[/] {msg}", highlight=False, soft_wrap=True)
            sys.exit(2)

    return wrapper


DataOpt = typer.Option(
    None, "--data", "-d", help="Data folder (THUCNews layout); default: the built-in sample."
)
LabelsOpt = typer.Option(
    None,
    "--labels",
    help="Class list (one name per line, like class.txt); JSONL labels not in it are errors.",
)
EpochsOpt = typer.Option(None, "--epochs", help="Training epochs.")
BatchOpt = typer.Option(
    None, "--batch-size", help="Rows per batch, all processes together (split between them)."
)
LrOpt = typer.Option(None, "--lr", help="Peak learning rate.")
SeedOpt = typer.Option(None, "--seed", help="Random seed.")
MaxLenOpt = typer.Option(None, "--max-len", help="Maximum tokens per text.")
ResumeOpt = typer.Option(
    False, "--resume", help="Continue an interrupted run from its last checkpoint."
)
QuietOpt = typer.Option(False, "--quiet", "-q", help="No progress bars.")
LabelMapOpt = typer.Option(
    None,
    "--label-map",
    help="File of 'teacher label<TAB>data label' lines, for teachers with other class names.",
)


def data_overrides(data: Path | None, labels: Path | None) -> dict[str, Any]:
    """``--data`` and ``--labels`` as config overrides (unset flags keep the file's values)."""
    return {
        "data.dir": str(data) if data else None,
        "data.labels": str(labels) if labels else None,
    }


def train_overrides(
    prefix: str,
    *,
    epochs: int | None,
    batch_size: int | None,
    lr: float | None,
    seed: int | None,
    resume: bool,
    quiet: bool,
) -> dict[str, Any]:
    """The common training flags as config overrides under ``prefix`` (e.g. teacher.train)."""
    return {
        f"{prefix}.epochs": epochs,
        f"{prefix}.batch_size": batch_size,
        f"{prefix}.lr": lr,
        f"{prefix}.seed": seed,
        f"{prefix}.resume": True if resume else None,
        f"{prefix}.progress": False if quiet else None,
    }
