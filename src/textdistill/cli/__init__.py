"""The ``textdistill`` command line: thin wrappers over the library.

Every command group lives in its own module; this file wires them together explicitly.
"""

from __future__ import annotations

import typer

from textdistill.cli import (
    config_cmd,
    data_cmd,
    deploy_cmd,
    distill_cmd,
    ensemble_cmd,
    pipeline_cmd,
    teacher_cmd,
    use_cmd,
)

app = typer.Typer(
    name="textdistill",
    help="Distill a fine-tuned BERT text classifier into a tiny, fast student.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _global_options(
    allow_modified: bool = typer.Option(
        False,
        "--allow-modified",
        help="Load model folders whose files changed since they were saved (with a warning); "
        "without it such a folder is an error. Also: TEXTDISTILL_ALLOW_MODIFIED=1.",
    ),
) -> None:
    """Distill a fine-tuned BERT text classifier into a tiny, fast student."""
    from textdistill.core.folder import set_allow_modified

    # Set on every invocation (None: the environment decides), so one command's flag never
    # carries over to the next in the same process.
    set_allow_modified(True if allow_modified else None)


app.add_typer(config_cmd.app, name="config")
app.add_typer(data_cmd.app, name="data")
app.add_typer(teacher_cmd.app, name="teacher")
app.command("distill")(distill_cmd.distill)
app.command("ensemble")(ensemble_cmd.ensemble)
app.command("evaluate")(use_cmd.evaluate)
app.command("compare")(use_cmd.compare)
app.command("predict")(use_cmd.predict)
app.command("export")(deploy_cmd.export)
app.command("serve")(deploy_cmd.serve)
app.command("run")(pipeline_cmd.run)
app.command("demo")(pipeline_cmd.demo)


def main() -> None:
    app()
