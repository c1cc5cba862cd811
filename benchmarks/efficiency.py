"""Efficiency table: parameters, size, single-text latency and batched throughput, measured
the same way (``textdistill.evaluation.efficiency.measure_efficiency``) for every model in one run.

Besides trained model folders it builds, for timing only, a bert-base-shaped teacher
(12 x 768, 21,128-token vocabulary, random weights) and the seed-sized BiLSTM preset, with
the tokenizer of the first given model, so that ratios to bert-base are measured here.

    python benchmarks/efficiency.py --data ../shared/data/thucnews --split dev \
        --model mini=runs/modes/teacher --model bilstm=runs/modes/students/bilstm-soft \
        --threads 1 --out docs/results/efficiency.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from textdistill.data.corpus import load_corpus
from textdistill.evaluation.efficiency import measure_efficiency
from textdistill.inference.load import load
from textdistill.models.folders import (
    count_parameters,
    load_model,
    save_student,
    save_teacher,
    size_on_disk_mb,
)
from textdistill.models.students import build_student
from textdistill.models.teacher import TeacherModel, new_scratch_classifier, scratch_bert_config


def _synthetic(first: Path, tmp: Path, seed_bilstm: bool = True) -> dict[str, Path]:
    ref = load_model(first)
    labels = ref.label_names
    bert = TeacherModel(
        new_scratch_classifier(
            scratch_bert_config("base", vocab_size=21128, num_labels=len(labels)), labels
        )
    ).eval()
    base_dir = tmp / "bert-base-shaped"
    save_teacher(base_dir, bert, ref.tokenizer, labels, max_len=ref.max_len)
    if not seed_bilstm:
        return {"bert-base-shaped (random)": base_dir}
    seed = build_student("bilstm", "seed", vocab_size=21128, num_labels=len(labels))
    seed_dir = tmp / "bilstm-seed"
    save_student(seed_dir, seed.eval(), ref.tokenizer, labels, max_len=ref.max_len)
    return {"bert-base-shaped (random)": base_dir, "bilstm-seed (random)": seed_dir}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default="dev")
    ap.add_argument("--model", action="append", default=[], help="NAME=DIR (repeat)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--latency-texts", type=int, default=300)
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--out", type=Path)
    ap.add_argument(
        "--no-seed", action="store_true", help="Leave out the seed-sized BiLSTM (random)."
    )
    args = ap.parse_args()
    named = dict(m.split("=", 1) for m in args.model)
    texts = load_corpus(args.data, required=(args.split,), optional=()).split(args.split).texts
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        synthetic = _synthetic(Path(next(iter(named.values()))), Path(tmp), not args.no_seed)
        models = {**synthetic, **named}
        for name, path in models.items():
            clf = load(path)
            # Exports have no torch module: their count is the source's, from the folder.
            params = clf.num_parameters
            if params is None and hasattr(clf, "model"):
                params = count_parameters(clf.model)
            eff = measure_efficiency(
                clf,
                texts,
                threads=args.threads,
                n_latency=args.latency_texts,
                n_batches=args.batches,
            )
            rows.append(
                {
                    "name": name,
                    "params": params,
                    "size_mb": size_on_disk_mb(path),
                    **eff.to_dict(),
                }
            )
            print(name, params, f"{eff.model_p50_ms:.3f} ms", flush=True)
    base = rows[0]
    for r in rows:
        r["params_vs_base"] = (r["params"] or 0) / base["params"]
        r["throughput_vs_base"] = r["e2e_texts_per_s"] / base["e2e_texts_per_s"]
        r["p50_speedup_vs_base"] = base["e2e_p50_ms"] / r["e2e_p50_ms"]
    print(
        "| model | params | vs base | MB | p50 ms | p95 ms | model p50 ms | texts/s (b64) "
        "| throughput vs base |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['name']} | {(r['params'] or 0) / 1e6:.2f}M | {100 * r['params_vs_base']:.2f}% "
            f"| {r['size_mb']:.1f} | {r['e2e_p50_ms']:.3f} | {r['e2e_p95_ms']:.3f} "
            f"| {r['model_p50_ms']:.3f} | {r['e2e_texts_per_s']:,.0f} "
            f"| {r['throughput_vs_base']:.1f}x |"
        )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"torch": torch.__version__, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
