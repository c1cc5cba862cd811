"""The ``compare`` report: one table and a few plots over any number of models.

:func:`write_report` writes into ``out_dir``:

- ``compare.md``: a Markdown table (accuracy, macro-F1, size, latency, throughput, and the
  ratios to the reference model), with the plots linked below it;
- ``compare.json``: the same rows plus every model summary, for scripts;
- ``confusion_<name>.png`` per model (row-normalized), ``accuracy_vs_latency.png``, and
  ``training_curves.png`` when at least one model has a training history.

The reference (ratios and speed-ups are relative to it) is the first model of kind
``teacher``, else the one with the most parameters, unless named explicitly.

Plots are drawn on standalone :class:`matplotlib.figure.Figure` objects with the Agg
canvas, never through ``pyplot``: no display is needed and the caller's matplotlib backend
and global figure state are left alone.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import math
import re
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import font_manager, rc_context
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from textdistill.core.io import atomic_write, write_json
from textdistill.evaluation.efficiency import EfficiencyResult

log = logging.getLogger(__name__)

REPORT_MD = "compare.md"
REPORT_JSON = "compare.json"
ACCURACY_PLOT = "accuracy_vs_latency.png"
CURVES_PLOT = "training_curves.png"

# Fonts that cover Chinese class names, tried in order when installed; without one,
# matplotlib draws empty boxes (and warns) but the report is still written.
CJK_FONTS = (
    "Noto Sans CJK SC",
    "Noto Sans SC",
    "Source Han Sans SC",
    "WenQuanYi Zen Hei",
    "WenQuanYi Micro Hei",
    "SimHei",
    "Microsoft YaHei",
    "PingFang SC",
    "Heiti SC",
)
# Cells are annotated only while the numbers still fit in them.
_MAX_ANNOTATED_CLASSES = 20


@dataclass
class ModelSummary:
    """Everything the report shows about one model.

    ``accuracy`` and ``macro_f1`` are fractions in [0, 1]. ``p50_ms``, ``p95_ms`` and
    ``texts_per_s`` are the end-to-end numbers of :func:`efficiency.measure_efficiency`
    (tokenization included); ``model_p50_ms`` / ``model_texts_per_s`` are the model-only
    ones when known. ``agreement`` is the fraction of predictions equal to the reference
    model's. ``history`` holds the records of the model's ``metrics.jsonl``.
    """

    name: str
    kind: str
    path: str
    accuracy: float
    macro_f1: float
    params: int | None
    size_mb: float
    p50_ms: float
    p95_ms: float
    texts_per_s: float
    confusion: list[list[int]]
    label_names: list[str]
    history: list[dict[str, Any]] = field(default_factory=list)
    model_p50_ms: float | None = None
    model_texts_per_s: float | None = None
    agreement: float | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_results(
        cls,
        *,
        name: str,
        kind: str,
        path: str | Path,
        metrics: dict[str, Any],
        efficiency: EfficiencyResult,
        params: int | None,
        size_mb: float,
        history: list[dict[str, Any]] | None = None,
        agreement: float | None = None,
        extras: dict[str, Any] | None = None,
    ) -> ModelSummary:
        """Combine :func:`metrics.classification_metrics` and :func:`measure_efficiency`."""
        return cls(
            name=name,
            kind=kind,
            path=str(path),
            accuracy=float(metrics["accuracy"]),
            macro_f1=float(metrics["macro_f1"]),
            params=params,
            size_mb=size_mb,
            p50_ms=efficiency.e2e_p50_ms,
            p95_ms=efficiency.e2e_p95_ms,
            texts_per_s=efficiency.e2e_texts_per_s,
            confusion=[list(map(int, row)) for row in metrics["confusion"]],
            label_names=list(metrics["label_names"]),
            history=list(history or []),
            model_p50_ms=efficiency.model_p50_ms,
            model_texts_per_s=efficiency.model_texts_per_s,
            agreement=agreement,
            extras={"efficiency": efficiency.to_dict(), **(extras or {})},
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- comparison


def _pick_reference(summaries: Sequence[ModelSummary], reference: str | None) -> ModelSummary:
    if reference is not None:
        for s in summaries:
            if s.name == reference:
                return s
        names = ", ".join(s.name for s in summaries)
        raise ValueError(f"reference model '{reference}' is not among the models: {names}")
    for s in summaries:
        if s.kind == "teacher":
            return s
    return max(summaries, key=lambda s: (s.params or 0, s.size_mb))


def _ratio(num: float | None, den: float | None) -> float | None:
    if num is None or den is None or den <= 0 or not math.isfinite(num / den):
        return None
    return num / den


def build_comparison(
    summaries: Sequence[ModelSummary], reference: str | None = None
) -> list[dict[str, Any]]:
    """One row per model, with ratios to the reference model.

    Row keys: ``name, kind, reference`` (bool), ``accuracy, macro_f1, agreement, params,
    size_mb, params_ratio, size_ratio`` (model / reference), ``p50_ms, p95_ms,
    model_p50_ms, texts_per_s, model_texts_per_s``, ``speedup_p50`` (reference p50 /
    model p50), ``speedup_model_p50`` (the same on model-only latency) and
    ``throughput_ratio`` (model texts/s / reference texts/s). A ratio that cannot be
    computed (a zero or unknown denominator) is ``None``.
    """
    if not summaries:
        raise ValueError("no models to compare")
    names = [s.name for s in summaries]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"model names must be unique, repeated: {', '.join(duplicates)}")
    ref = _pick_reference(summaries, reference)
    rows = []
    for s in summaries:
        rows.append(
            {
                "name": s.name,
                "kind": s.kind,
                "reference": s is ref,
                "accuracy": s.accuracy,
                "macro_f1": s.macro_f1,
                "agreement": s.agreement,
                "params": s.params,
                "size_mb": s.size_mb,
                "params_ratio": _ratio(s.params, ref.params),
                "size_ratio": _ratio(s.size_mb, ref.size_mb),
                "p50_ms": s.p50_ms,
                "p95_ms": s.p95_ms,
                "model_p50_ms": s.model_p50_ms,
                "texts_per_s": s.texts_per_s,
                "model_texts_per_s": s.model_texts_per_s,
                "speedup_p50": _ratio(ref.p50_ms, s.p50_ms),
                "speedup_model_p50": _ratio(ref.model_p50_ms, s.model_p50_ms),
                "throughput_ratio": _ratio(s.texts_per_s, ref.texts_per_s),
            }
        )
    return rows


# --------------------------------------------------------------------------- Markdown

_MISSING = "–"


def _fmt_percent(value: float) -> str:
    """Fractions as percent with 2 decimals: 0.9312 -> 93.12%."""
    return f"{value * 100:.2f}%"


def _fmt_ratio(value: float) -> str:
    """A size ratio: 0.02 -> 2.00%, 0.321 -> 32.1%; three significant digits up to 100%."""
    pct = value * 100
    if pct >= 100:
        return f"{pct:.0f}%"
    if pct >= 10:
        return f"{pct:.1f}%"
    return f"{pct:.2f}%"


def _fmt_speedup(value: float) -> str:
    """57.3 -> 57x, 3.24 -> 3.2x, 0.5 -> 0.50x."""
    if value >= 10:
        return f"{value:.0f}x"
    if value >= 1:
        return f"{value:.1f}x"
    return f"{value:.2f}x"


def _fmt_count(value: float) -> str:
    """Parameter counts: 110_080_000 -> 110.1M, 1_234_567 -> 1.23M, 950 -> 950."""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(value) >= scale:
            scaled = value / scale
            return f"{scaled:.1f}{unit}" if abs(scaled) >= 100 else f"{scaled:.2f}{unit}"
    return f"{value:.0f}"


def _fmt_ms(value: float) -> str:
    """About three significant digits: 12.3, 1.23, 0.123."""
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def _fmt_mb(value: float) -> str:
    return f"{value:.2f}" if value >= 1 else f"{value:.3f}"


def _fmt_rate(value: float) -> str:
    return f"{value:,.0f}"


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


# (header, row key, formatter, shown only when some row has a value)
_COLUMNS: tuple[tuple[str, str, Any, bool], ...] = (
    ("Accuracy", "accuracy", _fmt_percent, False),
    ("Macro-F1", "macro_f1", _fmt_percent, False),
    ("Agreement", "agreement", _fmt_percent, True),
    ("Params", "params", _fmt_count, False),
    ("Size (MB)", "size_mb", _fmt_mb, False),
    ("Size vs ref", "size_ratio", _fmt_ratio, False),
    ("p50 (ms)", "p50_ms", _fmt_ms, False),
    ("p95 (ms)", "p95_ms", _fmt_ms, False),
    ("Model p50 (ms)", "model_p50_ms", _fmt_ms, True),
    ("Texts/s", "texts_per_s", _fmt_rate, False),
    ("Speed-up (p50)", "speedup_p50", _fmt_speedup, False),
    ("Speed-up (texts/s)", "throughput_ratio", _fmt_speedup, False),
)


def to_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """A Markdown table of :func:`build_comparison` rows, with a note naming the reference.

    Accuracy, macro-F1 and agreement as percent (2 decimals), parameters as ``1.23M``,
    size ratios as ``2.00%``, speed-ups as ``57x``; unknown values as ``–``. Optional
    columns (agreement, model-only p50) appear only when some row has them.
    """
    columns = [c for c in _COLUMNS if not c[3] or any(r.get(c[1]) is not None for r in rows)]
    header = ["Model", "Kind", *(c[0] for c in columns)]
    aligns = [":---", ":---", *("---:" for _ in columns)]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(aligns) + " |"]
    for row in rows:
        name = _escape(str(row["name"])) + (" (ref)" if row.get("reference") else "")
        cells = [name, _escape(str(row["kind"]))]
        for _, key, fmt, _ in columns:
            value = row.get(key)
            cells.append(_MISSING if value is None else fmt(value))
        lines.append("| " + " | ".join(cells) + " |")
    ref = next((r["name"] for r in rows if r.get("reference")), None)
    if ref is not None:
        lines.append("")
        lines.append(
            f"Ratios and speed-ups are relative to `{ref}` (ref). Latencies are single-text "
            "end-to-end (tokenization included); texts/s is batched end-to-end throughput."
        )
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- plots


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


@contextlib.contextmanager
def _plot_style() -> Iterator[None]:
    available = {f.name for f in font_manager.fontManager.ttflist}
    cjk = [name for name in CJK_FONTS if name in available]
    with rc_context({"font.sans-serif": [*cjk, "DejaVu Sans"], "font.family": "sans-serif"}):
        yield


def plot_confusion(summary: ModelSummary) -> Figure:
    """The confusion matrix normalized by row (each true class sums to 1), annotated."""
    counts = np.asarray(summary.confusion, dtype=float)
    totals = counts.sum(axis=1, keepdims=True)
    # A class absent from the evaluation set has an all-zero row; leave it at 0, not NaN.
    norm = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    n = len(summary.label_names)
    side = max(4.0, 0.6 * n + 2.0)
    fig = _new_figure(side + 1.0, side)
    ax = fig.add_subplot()
    image = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(n), summary.label_names, rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(n), summary.label_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{summary.name}: accuracy {summary.accuracy:.2%}")
    if n <= _MAX_ANNOTATED_CLASSES:
        for i in range(n):
            for j in range(n):
                color = "white" if norm[i, j] > 0.5 else "black"
                ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", color=color)
    return fig


def plot_accuracy_vs_latency(summaries: Sequence[ModelSummary]) -> Figure:
    """Accuracy against single-text p50 latency (log scale), one labelled point per model."""
    fig = _new_figure(7.0, 4.5)
    ax = fig.add_subplot()
    markers = {"teacher": "s", "student": "o", "ensemble": "D", "onnx": "^"}
    for s in summaries:
        if s.p50_ms <= 0:
            log.warning(
                "%s: p50 latency %.3g ms cannot go on a log scale; skipped", s.name, s.p50_ms
            )
            continue
        ax.scatter(s.p50_ms, s.accuracy * 100, marker=markers.get(s.kind, "o"), s=60, zorder=3)
        ax.annotate(s.name, (s.p50_ms, s.accuracy * 100), textcoords="offset points", xytext=(6, 4))
    ax.set_xscale("log")
    # Plain numbers (0.2, 0.5, 1, 2) read better than 2x10^-1 and do not collide.
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("p50 latency per text (ms, log scale)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Accuracy vs latency")
    ax.grid(True, which="both", alpha=0.3)
    ax.margins(x=0.15, y=0.15)
    return fig


_DEV_METRICS = ("macro_f1", "accuracy", "loss")


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def history_series(
    history: Sequence[dict[str, Any]],
) -> tuple[list[tuple[float, float]], dict[str, list[tuple[float, float]]]]:
    """Split a ``metrics.jsonl`` history into ``(train_loss, dev)`` series of ``(step, value)``.

    The format is :mod:`textdistill.training.history`'s: a record with an ``eval`` object is
    an evaluation, whose ``macro_f1``, ``accuracy`` and ``loss`` are the dev series; any other
    record with a ``loss`` is a training step. Records without a numeric ``step`` and
    non-finite values are left out.
    """
    train: list[tuple[float, float]] = []
    dev: dict[str, list[tuple[float, float]]] = {}
    for rec in history:
        step = _number(rec.get("step"))
        if step is None:
            continue
        evaluation = rec.get("eval")
        if isinstance(evaluation, dict):
            for metric in _DEV_METRICS:
                value = _number(evaluation.get(metric))
                if value is not None:
                    dev.setdefault(metric, []).append((step, value))
        elif (loss := _number(rec.get("loss"))) is not None:
            train.append((step, loss))
    return train, dev


def plot_training_curves(summaries: Sequence[ModelSummary]) -> Figure | None:
    """Training loss and one dev metric against the step, one line per model.

    The dev metric is the first of macro-F1, accuracy, loss that some model recorded.
    Models without a history are left out; returns ``None`` when none has one.
    """
    series = {s.name: history_series(s.history) for s in summaries if s.history}
    series = {name: (t, d) for name, (t, d) in series.items() if t or d}
    if not series:
        return None
    dev_metric = next((m for m in _DEV_METRICS if any(m in d for _, d in series.values())), None)
    fig = _new_figure(11.0, 4.2)
    loss_ax, dev_ax = fig.subplots(1, 2)
    for index, (name, (train, dev)) in enumerate(series.items()):
        color = f"C{index % 10}"  # one colour per model in both panels
        if train:
            loss_ax.plot(*zip(*train, strict=True), color=color, label=name, linewidth=1.2)
        if dev_metric is not None and dev.get(dev_metric):
            dev_ax.plot(
                *zip(*dev[dev_metric], strict=True),
                color=color,
                marker="o",
                markersize=3,
                label=name,
            )
    loss_ax.set_title("training loss")
    dev_ax.set_title(f"dev {dev_metric.replace('_', '-')}" if dev_metric else "dev metric")
    for ax in (loss_ax, dev_ax):
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    return fig


# --------------------------------------------------------------------------- writing


def safe_filename(name: str) -> str:
    """A portable file name part: ASCII letters, digits, ``.``, ``_`` and ``-`` only."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")
    return cleaned or "model"


def _unique_filenames(names: Sequence[str]) -> dict[str, str]:
    taken: set[str] = set()
    result = {}
    for name in names:
        base = safe_filename(name)
        candidate, i = base, 2
        while candidate.lower() in taken:  # case-insensitive file systems
            candidate, i = f"{base}-{i}", i + 1
        taken.add(candidate.lower())
        result[name] = candidate
    return result


def _write_bytes_atomic(path: Path, data: bytes) -> None:
    with atomic_write(path) as f:
        f.write(data)


_GLYPH_WARNING = re.compile(r"Glyph \d+ .*missing from")


def _save_figure(fig: Figure, path: Path) -> bool:
    """Write ``fig`` as PNG; returns whether some characters had no glyph in the fonts."""
    buffer = io.BytesIO()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fig.savefig(buffer, format="png", dpi=120)
    missing_glyphs = False
    for w in caught:
        if _GLYPH_WARNING.search(str(w.message)):
            missing_glyphs = True
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    _write_bytes_atomic(path, buffer.getvalue())
    return missing_glyphs


def _summary_json(summary: ModelSummary) -> dict[str, Any]:
    # The history stays in the model's own metrics.jsonl; copying every step of every
    # model would make compare.json mostly training logs.
    data = summary.to_dict()
    data["history_records"] = len(data.pop("history"))
    return data


def _markdown_document(rows: list[dict[str, Any]], plots: list[str]) -> str:
    parts = ["# Model comparison", "", to_markdown(rows)]
    for plot in plots:
        title = Path(plot).stem.replace("_", " ")
        parts.append(f"![{title}]({plot})\n")
    return "\n".join(parts)


def write_report(
    summaries: Sequence[ModelSummary], out_dir: str | Path, *, reference: str | None = None
) -> Path:
    """Write ``compare.md``, ``compare.json`` and the PNG plots; returns ``compare.md``'s path."""
    rows = build_comparison(summaries, reference)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    filenames = _unique_filenames([s.name for s in summaries])
    plots: list[str] = []
    missing_glyphs = False
    with _plot_style():
        # Drawn one at a time, so only one figure is alive at once.
        figures: list[tuple[str, Callable[[], Figure | None]]] = [
            (ACCURACY_PLOT, lambda: plot_accuracy_vs_latency(summaries)),
            (CURVES_PLOT, lambda: plot_training_curves(summaries)),
        ]
        figures += [
            (f"confusion_{filenames[s.name]}.png", functools.partial(plot_confusion, s))
            for s in summaries
        ]
        for filename, draw in figures:
            fig = draw()
            if fig is None:
                # Do not leave a previous run's curves next to a report that has none.
                (out / filename).unlink(missing_ok=True)
                log.info("no model has a training history; %s not written", filename)
                continue
            missing_glyphs |= _save_figure(fig, out / filename)
            plots.append(filename)
    if missing_glyphs:
        # Matplotlib warns once per missing character; one line is enough to act on.
        log.warning("no installed font covers some labels (e.g. Chinese); install a CJK font")

    reference_name = next(r["name"] for r in rows if r["reference"])
    write_json(
        out / REPORT_JSON,
        {
            "reference": reference_name,
            "rows": rows,
            "plots": plots,
            "models": [_summary_json(s) for s in summaries],
        },
    )
    md_path = out / REPORT_MD
    _write_bytes_atomic(md_path, _markdown_document(rows, plots).encode("utf-8"))
    log.info("wrote %s (%d models, %d plots)", md_path, len(summaries), len(plots))
    return md_path
