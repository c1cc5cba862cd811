"""``textdistill ensemble``: combine trained models into one ensemble folder."""

from __future__ import annotations

from pathlib import Path

import typer

from textdistill.cli.common import (
    ConfigOpt,
    LabelMapOpt,
    VerboseOpt,
    console,
    resolve_config,
    setup_logging,
    user_errors,
)


@user_errors
def ensemble(
    member: list[Path] = typer.Option(
        ...,
        "--member",
        "--teacher",
        "-t",
        help="Model folder (or Hugging Face classifier, with --data); repeat for every member.",
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
    data: Path | None = typer.Option(
        None,
        "--data",
        "-d",
        help="Data folder whose classes Hugging Face members are matched to (they are imported).",
    ),
    label_map: Path | None = LabelMapOpt,
    config: Path | None = ConfigOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """Make an ensemble folder that evaluate, compare, predict, serve and distill accept.

    The folder stores no weights, only the members' paths and fingerprints: it stops
    loading (with a clear message) when a member is moved away or retrained. Members that
    are Hugging Face classifiers are imported first (give --data for their classes).
    """
    from textdistill.data.splits import open_corpus
    from textdistill.distill.teachers import is_textdistill_folder, read_label_map, resolve_teacher
    from textdistill.models.ensemble import make_ensemble
    from textdistill.models.folders import read_meta

    setup_logging(verbose)
    members = [str(m) for m in member]
    if not all(is_textdistill_folder(m) for m in members) and data is not None:
        cfg = resolve_config(config, {"data.dir": str(data)})
        corpus = open_corpus(cfg)
        labels = read_label_map(label_map) if label_map else None
        members = [resolve_teacher(m, cfg, corpus, labels) for m in members]
    path = make_ensemble(members, out, weights=weight or None, combine=combine)
    meta = read_meta(path)
    console.print(
        f"ensemble of {len(member)} models saved to [bold]{path}[/] "
        f"({meta['num_parameters']:,} parameters in all, {combine})"
    )
