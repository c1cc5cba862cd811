"""Training cost of a distillation epoch: cached soft targets versus calling the teacher.

The reference design runs the teacher on every batch of every epoch. textdistill runs it
once and reads cached logits. This script times, in one process and one run, the same
student training steps both ways and prints the ratio.

    python benchmarks/distill_cost.py --teacher runs/modes/teacher \
        --data ../shared/data/thucnews --steps 100 --out docs/results/distill_cost.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from textdistill.data.batching import TextDataset, make_collate
from textdistill.data.corpus import load_corpus
from textdistill.data.tokenization import encode_cached
from textdistill.distill.cache import run_teacher
from textdistill.distill.losses import distillation_loss
from textdistill.models.folders import load_model
from textdistill.models.students import build_student


def _steps(student, loader, teacher, n_steps: int) -> float:  # type: ignore[no-untyped-def]
    opt = torch.optim.AdamW(student.parameters(), lr=1e-3)
    student.train()
    it = iter(loader)
    t0 = time.perf_counter()
    for _ in range(n_steps):
        batch = next(it)
        if teacher is not None:
            with torch.inference_mode():
                ids, mask = batch["input_ids"], batch["attention_mask"]
                out_t = teacher(input_ids=ids, attention_mask=mask)
            batch["teacher_logits"] = out_t.logits.clone()
        out = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        loss = distillation_loss(out, batch, mode="soft", T=2.0, alpha=0.7, beta=0.0).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    teacher = load_model(args.teacher)
    corpus = load_corpus(args.data)
    texts = corpus.split("train").texts[: args.steps * args.batch_size]
    enc = encode_cached(teacher.tokenizer, texts, teacher.max_len, cache_dir=None)
    logits, _ = run_teacher(teacher, enc, with_pooled=False, progress=False)
    ds = TextDataset(enc, np.full(len(texts), -1), teacher_logits=logits)
    loader = torch.utils.data.DataLoader(
        ds, batch_size=args.batch_size, shuffle=False, collate_fn=make_collate(0)
    )
    vocab = len(teacher.tokenizer)
    n_labels = len(teacher.label_names)
    cached, live = [], []
    for _ in range(args.repeats):
        student = build_student("bilstm", "small", vocab_size=vocab, num_labels=n_labels)
        cached.append(_steps(student, loader, None, args.steps))
        student = build_student("bilstm", "small", vocab_size=vocab, num_labels=n_labels)
        live.append(_steps(student, loader, teacher.model, args.steps))
    result = {
        "teacher": str(args.teacher),
        "teacher_parameters": sum(p.numel() for p in teacher.model.parameters()),
        "steps": args.steps,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "repeats": args.repeats,
        "cached_s_median": statistics.median(cached),
        "live_teacher_s_median": statistics.median(live),
        "ratio_live_over_cached": statistics.median(live) / statistics.median(cached),
        "cached_s": cached,
        "live_teacher_s": live,
    }
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
