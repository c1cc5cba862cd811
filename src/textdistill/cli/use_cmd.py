"""``textdistill evaluate | compare | predict``: use trained model folders."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.table import Table

from textdistill.cli.common import (
    ConfigOpt,
    DataOpt,
    LabelsOpt,
    VerboseOpt,
    console,
    data_overrides,
    resolve_config,
    setup_logging,
    user_errors,
)
from textdistill.core.config import Config
from textdistill.core.errors import UserError
from textdistill.data.corpus import Corpus, Split

SplitOpt = typer.Option("test", "--split", "-s", help="Split to evaluate on.")
ThreadsOpt = typer.Option(None, "--threads", help="CPU threads for latency measurements.")


def _split(
    data: Path | None,
    config: Path | None,
    split: str,
    threads: int | None,
    labels: Path | None = None,
) -> tuple[Config, Corpus, Split]:
    from textdistill.data.splits import open_corpus

    cfg = resolve_config(config, {**data_overrides(data, labels), "eval.threads": threads})
    corpus = open_corpus(cfg, also=[split])
    return cfg, corpus, corpus.split(split)


@user_errors
def evaluate(
    model: Path = typer.Option(..., "--model", "-m", help="Model folder (teacher or student)."),
    data: Path | None = DataOpt,
    labels: Path | None = LabelsOpt,
    split: str = SplitOpt,
    teacher: Path | None = typer.Option(
        None, "--teacher", "-t", help="Teacher folder for the agreement rate."
    ),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Folder for eval_<split>.json (default: the model folder)."
    ),
    no_efficiency: bool = typer.Option(
        False, "--no-efficiency", help="Skip latency and throughput."
    ),
    threads: int | None = ThreadsOpt,
    config: Path | None = ConfigOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """Accuracy, P/R/F1, per-class report, confusion matrix, teacher agreement, speed."""
    from textdistill.evaluation.evaluate import evaluate_model, save_evaluation
    from textdistill.evaluation.metrics import format_report
    from textdistill.inference.load import load

    setup_logging(verbose)
    cfg, corpus, sp = _split(data, config, split, threads, labels)
    ev = evaluate_model(
        load(model),
        sp,
        teacher=teacher,
        efficiency=not no_efficiency,
        eval_cfg=cfg.eval,
        label_names=corpus.label_names,
    )
    path = save_evaluation(ev, out or model)
    console.print(f"[bold]{model}[/] on {split} ({ev.metrics['n']:,} texts)")
    console.print(format_report(ev.metrics), highlight=False, markup=False)
    if ev.agreement is not None:
        console.print(f"agreement with teacher {ev.teacher}: {ev.agreement:.4f}")
    if ev.efficiency is not None:
        e = ev.efficiency
        console.print(
            f"latency (batch 1, {e.threads} thread(s)): model p50 {e.model_p50_ms:.3f} ms, "
            f"p95 {e.model_p95_ms:.3f} ms; end-to-end p50 {e.e2e_p50_ms:.3f} ms, "
            f"p95 {e.e2e_p95_ms:.3f} ms; throughput {e.e2e_texts_per_s:,.0f} texts/s "
            f"(batch {e.batch_size})"
        )
    console.print(f"written to {path}")


@user_errors
def compare(
    models: list[Path] = typer.Option(..., "--models", "-m", help="Model folders (repeat)."),
    data: Path | None = DataOpt,
    labels: Path | None = LabelsOpt,
    split: str = SplitOpt,
    out: Path = typer.Option(..., "--out", "-o", help="Report folder."),
    reference: str | None = typer.Option(
        None, "--reference", help="Model name the ratios refer to (default: the teacher)."
    ),
    threads: int | None = ThreadsOpt,
    config: Path | None = ConfigOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """Evaluate several models the same way; write a Markdown/JSON table and PNG plots."""
    from textdistill.evaluation.evaluate import compare_models

    setup_logging(verbose)
    cfg, corpus, sp = _split(data, config, split, threads, labels)
    report, _ = compare_models(
        models, sp, out, eval_cfg=cfg.eval, reference=reference, label_names=corpus.label_names
    )
    console.print(report.read_text(encoding="utf-8"), highlight=False, markup=False)
    console.print(f"report: {report.parent}")


def _read_input(path: Path) -> list[str]:
    """Lines of ``path`` (``-``: stdin); a UTF-8 byte-order mark is dropped."""
    if str(path) == "-":
        return sys.stdin.read().splitlines()
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    try:
        return path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 text ({err})") from None


@user_errors
def predict(
    texts: list[str] | None = typer.Argument(None, help="Texts to classify."),
    model: Path = typer.Option(..., "--model", "-m", help="Model folder."),
    input: Path | None = typer.Option(
        None, "--input", "-i", help="File with one text per line ('-': stdin)."
    ),
    fmt: str = typer.Option("table", "--format", "-f", help="table, json or jsonl."),
    top_k: int = typer.Option(
        1, "--top-k", "-k", min=1, help="Also show the k most likely labels."
    ),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="Texts per model call."),
    verbose: bool = VerboseOpt,
) -> None:
    """Classify texts given as arguments, in a file, or on stdin (one per line).

    Every input line gets one result, in order; an empty line gets no label and a reason.
    """
    from textdistill.inference.load import load

    setup_logging(verbose)
    if fmt not in ("table", "json", "jsonl"):
        raise UserError(f"unknown --format {fmt!r}; valid: table, json, jsonl")
    items = list(texts or [])
    if input is not None:
        items += _read_input(input)
    elif not items:
        if sys.stdin.isatty():
            # Nothing piped in: waiting on the terminal would look like a hang.
            raise UserError("no texts: give them as arguments, with --input FILE, or on stdin")
        items = sys.stdin.read().splitlines()
    if not items:
        raise UserError("no texts: give them as arguments, with --input FILE, or on stdin")
    clf = load(model)
    results = clf.predict(items, top_k=top_k, batch_size=batch_size)
    # allow_nan=False: JSON has no NaN, and the classifier refuses non-finite outputs
    # already (a clean error, exit 2); this guard keeps any slip from writing invalid JSON.
    if fmt == "json":
        records = [r.to_dict() for r in results]
        print(json.dumps(records, ensure_ascii=False, indent=2, allow_nan=False))
    elif fmt == "jsonl":
        for r in results:
            print(json.dumps(r.to_dict(), ensure_ascii=False, allow_nan=False))
    else:
        table = Table(
            "text", "label", "probability", "latency ms", *(["top-k"] if top_k > 1 else [])
        )
        for r in results:
            topk = [", ".join(f"{t['label']} {t['probability']:.3f}" for t in r.top_k)]
            table.add_row(
                r.text[:40],
                r.label if r.label is not None else f"– ({r.reason})",
                f"{r.probability:.4f}" if r.probability is not None else "–",
                f"{r.latency_ms:.2f}" if r.latency_ms is not None else "–",
                *(topk if top_k > 1 else []),
            )
        console.print(table)
