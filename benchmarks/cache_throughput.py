"""Soft-target cache building throughput (texts/s) on 1, 2, ... processes.

    python benchmarks/cache_throughput.py --teacher runs/modes/teacher \
        --texts ../shared/data/thucnews/train.txt --processes 1 2 4 \
        --out docs/results/cache_throughput.json

Each process count is a fresh launch of this script in worker mode: plain ``python`` for
one process, ``accelerate launch --multi_gpu --num_processes N`` for more (one GPU per
process; with ``--cpu``, N CPU processes joined by gloo sharing the cores evenly). A worker
first builds a small untimed cache (teacher loading, kernel warm-up, the encode cache of
the texts), then times :func:`textdistill.distill.cache.build_soft_targets` with ``rebuild=True``
from a barrier to the finished cache: teacher loading, reading the encodings, inference
on every process, and the main process's assembly of the parts. Process start-up and
imports are not counted.

Texts: a file with one text per line; THUCNews ``title<TAB>label`` lines keep the title.
Prints a table and, with ``--out``, writes the results as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def _read_texts(path: Path, limit: int | None) -> list[str]:
    texts = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            text = line.rstrip("\n").split("\t", 1)[0].strip()
            if text:
                texts.append(text)
                if limit is not None and len(texts) >= limit:
                    break
    if not texts:
        raise SystemExit(f"{path}: no texts")
    return texts


# ------------------------------------------------------------------------------- worker


def _worker(args: argparse.Namespace) -> None:
    """One process of a timed run (launched by :func:`_launch`)."""
    from textdistill.core import distributed
    from textdistill.data.tokenization import encode_cached
    from textdistill.distill.cache import build_soft_targets
    from textdistill.models.folders import load_model

    texts = _read_texts(args.texts, args.limit)
    scratch = Path(args.scratch)
    common: dict[str, Any] = {
        "with_pooled": not args.no_pooled,
        "batch_size": args.batch_size,
        "rebuild": True,
        "progress": False,
    }
    with distributed.main_process_first():  # the encode cache, filled once
        teacher = load_model(args.teacher)
        encode_cached(teacher.tokenizer, texts, teacher.max_len)
    del teacher
    warm = texts[: max(1, min(len(texts), 2 * args.batch_size * distributed.num_processes()))]
    build_soft_targets([args.teacher], warm, cache_dir=scratch / "warm", **common)

    distributed.wait_for_everyone()
    t0 = time.perf_counter()
    targets = build_soft_targets([args.teacher], texts, cache_dir=scratch / "timed", **common)
    seconds = time.perf_counter() - t0  # build_soft_targets ends with a barrier
    if distributed.is_main_process():
        result = {
            "processes": distributed.num_processes(),
            "device": str(distributed.device()),
            "rows": len(targets),
            "batch_size": args.batch_size,
            "pooled": targets.pooled is not None,
            "seconds": round(seconds, 3),
            "texts_per_s": round(len(targets) / seconds, 1),
        }
        Path(args.result).write_text(json.dumps(result), encoding="utf-8")


# ------------------------------------------------------------------------------- driver


def _launch(args: argparse.Namespace, processes: int, scratch: Path) -> dict[str, Any]:
    result = scratch / f"result-{processes}.json"
    worker = [
        str(Path(__file__).resolve()),
        "--worker",
        "--teacher",
        str(args.teacher),
        "--texts",
        str(args.texts),
        "--batch-size",
        str(args.batch_size),
        "--scratch",
        str(scratch / f"run-{processes}"),
        "--result",
        str(result),
        *(["--limit", str(args.limit)] if args.limit is not None else []),
        *(["--no-pooled"] if args.no_pooled else []),
    ]
    # The launch the multi-process tests use (tests/launch.py; not part of the package).
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from launch import launch_command

    cmd = launch_command(processes, worker)
    env = dict(os.environ)
    if args.cpu:
        env["CUDA_VISIBLE_DEVICES"] = ""
        # The same cores in every run, shared evenly by its processes.
        env["OMP_NUM_THREADS"] = str(max(1, args.cpu_threads // processes))
    subprocess.run(cmd, env=env, check=True)
    data: dict[str, Any] = json.loads(result.read_text(encoding="utf-8"))
    return data


def _check_devices(args: argparse.Namespace) -> None:
    if args.cpu:
        return
    import torch

    available = torch.cuda.device_count()
    if available and max(args.processes) > available:
        raise SystemExit(
            f"{max(args.processes)} processes need as many GPUs, {available} found; "
            "use fewer processes or --cpu"
        )
    if not available:
        print("no GPU found: running CPU processes (as with --cpu)", file=sys.stderr)
        args.cpu = True


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--teacher", type=Path, required=True, help="Teacher folder.")
    ap.add_argument("--texts", type=Path, required=True, help="Text file (one per line).")
    ap.add_argument("--limit", type=int, help="Use the first N texts only.")
    ap.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--batch-size", type=int, default=256, help="Inference batch size.")
    ap.add_argument("--no-pooled", action="store_true", help="Cache logits only.")
    ap.add_argument("--cpu", action="store_true", help="CPU processes even with GPUs.")
    ap.add_argument(
        "--cpu-threads",
        type=int,
        default=os.cpu_count() or 1,
        help="With --cpu: threads of one run, divided between its processes.",
    )
    ap.add_argument("--out", type=Path, help="Write the results here as JSON.")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--scratch", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        _worker(args)
        return
    if any(n < 1 for n in args.processes):
        raise SystemExit("--processes: counts must be positive")
    _check_devices(args)

    results = []
    with tempfile.TemporaryDirectory(prefix="cache-throughput-") as tmp:
        for n in args.processes:
            results.append(_launch(args, n, Path(tmp)))
    base = results[0]["texts_per_s"]
    print(f"\n{'processes':>9} {'device':>8} {'rows':>9} {'seconds':>9} {'texts/s':>10} speedup")
    for r in results:
        r["speedup"] = round(r["texts_per_s"] / base, 2)
        device = r["device"].split(":")[0]
        print(
            f"{r['processes']:>9} {device:>8} {r['rows']:>9} {r['seconds']:>9.2f} "
            f"{r['texts_per_s']:>10.1f} {r['speedup']:>6.2f}x"
        )
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        payload = {"teacher": str(args.teacher), "texts": str(args.texts), "results": results}
        args.out.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
