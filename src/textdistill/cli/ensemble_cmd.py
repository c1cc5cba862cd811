"""``textdistill ensemble``: combine trained models into one ensemble folder."""

from __future__ import annotations

from pathlib import Path

import typer

from textdistill.cli.common import VerboseOpt, console, setup_logging, user_errors


@user_errors
def ensemble(
    member: list[Path] = typer.Option(
        ..., "--member", "--teacher", "-t", help="Model folder; repeat for every member."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Ensemble folder to write."),
    weight: list[float] | None = typer.Option(
        None, "--weight", help="Member weight, one per --member (default: equal)."
    ),
    combine: str = typer.Option(
        "logprob",
        "--combine",
        help="logprob (weighted mean of log-probabilities) or prob (of probabilities).",
    ),
    verbose: bool = VerboseOpt,
) -> None:
    """Make an ensemble folder that evaluate, compare, predict, serve and distill accept.

    The folder stores no weights, only the members' paths and fingerprints: it stops
    loading (with a clear message) when a member is moved away or retrained.
    """
    from textdistill.models.ensemble import make_ensemble
    from textdistill.models.folders import read_meta

    setup_logging(verbose)
    path = make_ensemble(member, out, weights=weight or None, combine=combine)
    meta = read_meta(path)
    console.print(
        f"ensemble of {len(member)} models saved to [bold]{path}[/] "
        f"({meta['num_parameters']:,} parameters in all, {combine})"
    )
