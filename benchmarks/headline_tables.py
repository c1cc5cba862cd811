"""Issue 6 tables and target checks from a finished ``benchmarks/run_headline.sh`` folder.

    python benchmarks/headline_tables.py runs/headline > runs/headline/tables.md

Reads ``{a,b}/report-<split>/compare.json``, ``{a,b}/pipeline.json``, ``efficiency.json``,
``distill_cost.json`` and ``timeline.log``; prints Markdown. Every number comes from those
files; nothing is typed in by hand.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

SPLITS = ("dev", "test")


def _load(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _accuracies(run: Path) -> dict[str, dict[str, dict[str, Any]]]:
    """split -> model name -> compare row."""
    out = {}
    for split in SPLITS:
        report = _load(run / f"report-{split}" / "compare.json")
        if report is not None:
            out[split] = {row["name"]: row for row in report["rows"]}
    return out


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def _delta(x: float, ref: float) -> str:
    return f"{100 * (x - ref):+.2f}"


def _check(ok: bool) -> str:
    return "met" if ok else "**missed**"


def scenario_b(run: Path) -> list[str]:
    lines = ["## Scenario B: 4,000 labels, 36,000 unlabeled titles", ""]
    for split, rows in _accuracies(run).items():
        t, none, soft = rows["teacher"], rows["bilstm-none"], rows["bilstm-soft"]
        lines += [
            f"Accuracy on the {split} split.",
            "",
            "| model | trained on | accuracy % | vs none | macro F1 % |",
            "|---|---|---:|---:|---:|",
            f"| teacher (mini, MLM on 40k) | 4,000 labels | {_pct(t['accuracy'])} "
            f"| {_delta(t['accuracy'], none['accuracy'])} | {_pct(t['macro_f1'])} |",
            f"| bilstm-none | 4,000 labels | {_pct(none['accuracy'])} | - "
            f"| {_pct(none['macro_f1'])} |",
            f"| bilstm-soft | teacher on 40,000 texts | {_pct(soft['accuracy'])} "
            f"| {_delta(soft['accuracy'], none['accuracy'])} | {_pct(soft['macro_f1'])} |",
            "",
            f"- target: distilled >= none + 7 points: "
            f"{_delta(soft['accuracy'], none['accuracy'])} -> "
            f"{_check(soft['accuracy'] - none['accuracy'] >= 0.07)}",
            f"- target: distilled > its teacher: "
            f"{_delta(soft['accuracy'], t['accuracy'])} -> "
            f"{_check(soft['accuracy'] > t['accuracy'])}",
            "",
        ]
    return lines


def scenario_a(run: Path) -> list[str]:
    lines = ["## Scenario A: 40,000 labels", ""]
    for split, rows in _accuracies(run).items():
        lines += [
            f"Accuracy on {split}; latency and throughput at 1 thread (end to end, "
            "tokenization included).",
            "",
            "| model | accuracy % | vs its none twin | macro F1 % | params | p50 ms "
            "| texts/s (b64) |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for name, row in rows.items():
            arch = name.split("-")[0]
            twin = rows.get(f"{arch}-none")
            vs = (
                "-"
                if twin is None or name == f"{arch}-none"
                else _delta(row["accuracy"], twin["accuracy"])
            )
            params = f"{row['params'] / 1e6:.2f}M" if row.get("params") else "-"
            lines.append(
                f"| {name} | {_pct(row['accuracy'])} | {vs} | {_pct(row['macro_f1'])} "
                f"| {params} | {row['p50_ms']:.2f} | {row['texts_per_s']:,.0f} |"
            )
        none = rows["bilstm-none"]["accuracy"]
        distilled = {n: r["accuracy"] for n, r in rows.items() if n.startswith("bilstm-")}
        distilled.pop("bilstm-none")
        best = max(distilled, key=lambda n: distilled[n])
        lines += [
            "",
            f"- target: best distilled BiLSTM ({best}) >= none + 1.0: "
            f"{_delta(distilled[best], none)} -> {_check(distilled[best] - none >= 0.01)}",
        ]
        if "ensemble" not in rows or "bilstm-ensemble" not in rows:
            lines.append("")
            continue
        ens, ens_student = rows["ensemble"]["accuracy"], rows["bilstm-ensemble"]["accuracy"]
        lines.append(
            f"- target: ensemble-distilled BiLSTM within 0.5 of the ensemble or above: "
            f"{_delta(ens_student, ens)} -> {_check(ens_student - ens >= -0.005)}"
        )
        if "textcnn-ensemble" in rows:
            lines.append(
                "- (TextCNN from the ensemble vs the ensemble: "
                f"{_delta(rows['textcnn-ensemble']['accuracy'], ens)})"
            )
        lines.append("")
    return lines


def efficiency(root: Path) -> list[str]:
    eff = _load(root / "efficiency.json")
    if eff is None:
        return []
    rows = eff["rows"]
    base = rows[0]
    lines = [
        "## Efficiency (1 thread, dev titles)",
        "",
        "| model | params | % of bert-base | MB | p50 ms | p95 ms | model p50 ms "
        "| texts/s (b64) | vs bert-base | model texts/s | vs bert-base |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        # ONNX Runtime does not count parameters: an export's row says n/a.
        params = f"{r['params'] / 1e6:.2f}M" if r["params"] else "n/a"
        share = f"{100 * r['params'] / base['params']:.2f}" if r["params"] else "n/a"
        lines.append(
            f"| {r['name']} | {params} | {share} "
            f"| {r['size_mb']:.1f} | {r['e2e_p50_ms']:.2f} | {r['e2e_p95_ms']:.2f} "
            f"| {r['model_p50_ms']:.2f} | {r['e2e_texts_per_s']:,.0f} "
            f"| {r['e2e_texts_per_s'] / base['e2e_texts_per_s']:.1f}x "
            f"| {r['model_texts_per_s']:,.0f} "
            f"| {r['model_texts_per_s'] / base['model_texts_per_s']:.1f}x |"
        )
    small = next((r for r in rows if r["name"].startswith("bilstm small")), None)
    if small is not None:
        share = small["params"] / base["params"]
        e2e = small["e2e_texts_per_s"] / base["e2e_texts_per_s"]
        model = small["model_texts_per_s"] / base["model_texts_per_s"]
        lines += [
            "",
            f"- target: small BiLSTM <= 5% of the parameters: {100 * share:.2f}% -> "
            f"{_check(share <= 0.05)}",
            f"- target: >= 100x batched throughput: {e2e:.1f}x end to end -> "
            f"{_check(e2e >= 100)}; {model:.1f}x model only -> {_check(model >= 100)}",
            f"- target: p50 single-text latency < 2 ms: {small['e2e_p50_ms']:.2f} ms end to end "
            f"-> {_check(small['e2e_p50_ms'] < 2)}",
        ]
    onnx = _load(root / "a" / "exports" / "bilstm-soft-onnx-int8" / "eval_dev.json")
    if onnx is not None:
        lines.append(
            f"- int8 ONNX export of bilstm-soft: dev accuracy {_pct(onnx['metrics']['accuracy'])}"
        )
    return [*lines, ""]


def cost(root: Path) -> list[str]:
    c = _load(root / "distill_cost.json")
    if c is None:
        return []
    return [
        "## Training cost: cached soft targets vs calling the teacher on every batch",
        "",
        f"{c['steps']} BiLSTM steps at batch {c['batch_size']}, {c['threads']} threads, "
        f"median of {c['repeats']}: cached {c['cached_s_median']:.2f} s, live teacher "
        f"{c['live_teacher_s_median']:.2f} s -> {c['ratio_live_over_cached']:.2f}x.",
        "",
    ]


def timings(root: Path) -> list[str]:
    lines = ["## Stage wall times", "", "| scenario | stage | seconds |", "|---|---|---:|"]
    for scenario in ("b", "a"):
        p = _load(root / scenario / "pipeline.json") or {}
        for stage, seconds in p.get("stage_seconds", p.get("timings_s", {})).items():
            lines.append(f"| {scenario.upper()} | {stage} | {seconds:,.0f} |")
    timeline = root / "timeline.log"
    if timeline.is_file():
        lines += ["", "Timeline:", "", "```", timeline.read_text(encoding="utf-8").strip(), "```"]
    return [*lines, ""]


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/headline")
    lines = [
        *scenario_b(root / "b"),
        *scenario_a(root / "a"),
        *efficiency(root),
        *cost(root),
        *timings(root),
    ]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
