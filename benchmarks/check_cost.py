"""What the integrity checks of issue 15 cost, and what the per-text character cap saves.

    python benchmarks/check_cost.py --model runs/modes/teacher --out docs/results/check_cost.json

Each timing is the median of ``--repeats`` runs in this one process (files in the page
cache, so a cold disk adds its read time to the hashing rows):

- soft-target cache verification (sha256 of every array, shape, dtype, finite values) of
  THUCNews-train-sized arrays: 45,000 x 10 logits, and the same plus 45,000 x 768 float16
  pooled vectors (what mode ``hidden`` caches for a BERT-base teacher);
- reading one encode cache entry of 45,000 x 32 ids with its checks (checksum, id range,
  lengths, padding);
- loading the model folder ``--model`` (``load_model``), and the two checks it now runs on
  every load: the file hashes of the fingerprint and the finite-weights scan;
- encoding one 1,000,000-character text with and without the cap (``clip_text``).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def _median_s(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm: page cache, lazy imports
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _cache_rows(tmp: Path, repeats: int) -> dict[str, float]:
    from textdistill.distill import cache

    rows, classes, width = 45_000, 10, 768
    rng = np.random.default_rng(0)
    out: dict[str, float] = {}
    for name, with_pooled in (("logits", False), ("logits+pooled", True)):
        folder = tmp / name
        folder.mkdir()
        np.save(folder / "logits.npy", rng.standard_normal((rows, classes), np.float32))
        if with_pooled:
            pooled = rng.standard_normal((rows, width), np.float32).astype(np.float16)
            np.save(folder / "pooled.npy", pooled)
        manifest = {"rows": rows, "arrays": cache._array_records(folder)}
        expected = {"rows": rows, "classes": [str(c) for c in range(classes)]}
        out[f"soft-target cache verify, {name}"] = _median_s(
            lambda f=folder, m=manifest, e=expected: cache._verify_arrays(f, m, e), repeats
        )
    return out


def _encode_rows(model: Path, tmp: Path, repeats: int) -> dict[str, float]:
    from textdistill.core.text import MAX_TEXT_CHARS
    from textdistill.data import tokenization
    from textdistill.data.tokenization import encode, encode_cached, load_tokenizer

    tok = load_tokenizer(model)
    texts = [f"第{i}条新闻标题 球队 比赛 股市 上涨" for i in range(45_000)]
    encode_cached(tok, texts, 32, cache_dir=tmp / "enc")
    path = tokenization.encode_cache_path(tok, texts, 32, cache_dir=tmp / "enc")
    out = {
        "encode cache entry read + checks, 45,000 x 32": _median_s(
            lambda: tokenization._load_entry(path, len(texts), 32, tok), repeats
        )
    }
    huge = "球队比赛" * 250_000
    backend = tokenization._truncating_backend(tok, 32)
    out["encode one 1,000,000-char text, capped"] = _median_s(
        lambda: encode(tok, [huge], 32), repeats
    )
    out["encode one 1,000,000-char text, uncapped"] = _median_s(
        lambda: backend.encode_batch([huge], add_special_tokens=True), max(1, repeats // 2)
    )
    out["max_text_chars"] = MAX_TEXT_CHARS
    return out


def _load_rows(model: Path, repeats: int) -> dict[str, float]:
    from textdistill.models import folders

    loaded = folders.load_model(model)
    return {
        "load_model (all checks)": _median_s(lambda: folders.load_model(model), repeats),
        "fingerprint file hashes": _median_s(lambda: folders.file_hashes(model), repeats),
        "finite-weights scan": _median_s(
            lambda: folders.check_finite(model, loaded.model), repeats
        ),
        "weights_mb": folders.size_on_disk_mb(model),
        "num_parameters": folders.count_parameters(loaded.model),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True, help="a teacher or student folder")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        results: dict[str, Any] = {
            "machine": f"{platform.processor() or platform.machine()}, torch threads 1",
            "date": time.strftime("%Y-%m-%d"),
            "model": str(args.model),
            "repeats": args.repeats,
            **_cache_rows(tmp, args.repeats),
            **_encode_rows(args.model, tmp, args.repeats),
            **_load_rows(args.model, args.repeats),
        }
    for key, value in results.items():
        shown = f"{value:.4f} s" if isinstance(value, float) and "mb" not in key else value
        print(f"{key:48s} {shown}")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
