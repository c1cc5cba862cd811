"""``textdistill run CONFIG`` and ``textdistill demo``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from textdistill.cli.common import (
    DataOpt,
    LabelsOpt,
    VerboseOpt,
    console,
    data_overrides,
    setup_logging,
    user_errors,
)

if TYPE_CHECKING:
    from textdistill.pipeline import PipelineResult


def _finish(result: PipelineResult) -> None:
    for split, report in result.reports.items():
        console.rule(f"{split} split")
        console.print(report.read_text(encoding="utf-8"), highlight=False, markup=False)
        console.print(f"report: {report.parent}")
    if result.skipped:
        console.print(f"up to date, skipped: {', '.join(result.skipped)}")
    spent = ", ".join(f"{k} {v:.0f}s" for k, v in result.timings.items())
    if spent:
        console.print(f"stage times: {spent}")


@user_errors
def run(
    config: Path = typer.Argument(..., help="Pipeline config (YAML)."),
    out: Path = typer.Option(Path("runs/pipeline"), "--out", "-o", help="Output folder."),
    data: Path | None = DataOpt,
    labels: Path | None = LabelsOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """Run data -> teacher -> soft targets -> students -> report from one config file.

    Stages whose inputs are unchanged since the last run are skipped.
    """
    from textdistill.core.config import apply_overrides, load_config
    from textdistill.pipeline import run_pipeline

    setup_logging(verbose)
    cfg = apply_overrides(load_config(config), data_overrides(data, labels))
    _finish(run_pipeline(cfg, out))


@user_errors
def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", "-o", help="Output folder."),
    quick: bool = typer.Option(False, "--quick", help="A smoke run of about two minutes."),
    data: Path | None = DataOpt,
    labels: Path | None = LabelsOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """The whole job on the built-in THUCNews sample with CPU-sized defaults.

    Fetches the sample, trains a scratch BERT teacher (`mini`, 6M parameters), caches its
    soft targets, trains a BiLSTM and a static student from it (mode soft) and without it
    (mode none), and compares them all on the test split: accuracy, size and speed. Running
    it again skips finished stages.
    """
    from textdistill.core.config import apply_overrides
    from textdistill.pipeline import demo_config, run_pipeline

    setup_logging(verbose)
    cfg = apply_overrides(demo_config(quick), data_overrides(data, labels))
    _finish(run_pipeline(cfg, out))
