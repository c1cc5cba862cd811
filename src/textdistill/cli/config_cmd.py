"""``textdistill config ...``"""

from __future__ import annotations

from pathlib import Path

import typer

from textdistill.cli.common import ConfigOpt, console, resolve_config, user_errors

app = typer.Typer(help="Show and check configuration.", no_args_is_help=True)


@app.command("show")
@user_errors
def show(config: Path | None = ConfigOpt) -> None:
    """Print the resolved configuration (defaults, then the file) as YAML."""
    cfg = resolve_config(config, {})
    console.print(cfg.to_yaml(), end="", highlight=False, markup=False)
