"""The ``textdistill`` command line: thin wrappers over the library.

Every command group lives in its own module; this file wires them together explicitly.
"""

from __future__ import annotations

import typer

from textdistill.cli import config_cmd

app = typer.Typer(
    name="textdistill",
    help="Distill a fine-tuned BERT text classifier into a tiny, fast student.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(config_cmd.app, name="config")


def main() -> None:
    app()
