"""The torch-free runtime against the path before it (issue 16), in one run, on 1 thread.

    git worktree add /tmp/textdistill-before 84aced8        # the code before issue 16
    python benchmarks/runtime.py --student runs/students/bilstm-soft \\
        --data ../shared/data/thucnews/dev.txt --before /tmp/textdistill-before/src \\
        --out results/runtime.json

``--student`` is a PyTorch student folder; its fp32 and int8 ONNX exports are made in a
temporary folder (by the current code; both versions load the same files, the format did
not change). Every measurement runs in a fresh subprocess whose ``PYTHONPATH`` picks the
code: ``before`` (``--before``, a source tree of the old commit) or ``now`` (this checkout).

- cold start: a new ``python -c "load(DIR).predict([...])"`` process, wall time, median of 5:
  before (``from textdistill import load``), now with the full package (the same line), and
  now with the runtime (``from textdistill.runtime import load``);
- throughput and latency (:func:`textdistill.evaluation.efficiency.measure_efficiency` of
  each version): end-to-end and model-only texts/s at batch 64, p50/p95 single-text latency,
  for PyTorch, ONNX fp32 and ONNX int8;
- HTTP (``benchmarks/load_test.py``, the server started by it): the int8 export at 1 and 16
  texts per request, 16 concurrent clients, server on 1 inference thread.

Threads: ``OMP_NUM_THREADS=1``, ``TOKENIZERS_PARALLELISM=false``, torch and ONNX Runtime on
1 intra-op thread.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

NOW = Path(__file__).resolve().parents[1] / "src"
PROBE = "球队 比赛 进球"

MEASURE = """
import json, sys
import torch
torch.set_num_threads(1)
from textdistill import load
from textdistill.evaluation.efficiency import measure_efficiency
texts = [l.split("\\t", 1)[0] for l in open(sys.argv[2], encoding="utf-8") if l.strip()]
clf = load(sys.argv[1])
e = measure_efficiency(clf, texts[:4000], threads=1, n_latency=int(sys.argv[3]), n_batches=40)
print(json.dumps(e.to_dict() if hasattr(e, "to_dict") else e.__dict__))
"""


def _env(src: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PYTHONPATH=str(src),
        OMP_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
        PYTHONDONTWRITEBYTECODE="1",
    )
    return env


def _wall(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    return time.perf_counter() - t0


def cold_starts(folder: Path, before: Path, repeats: int) -> dict[str, float]:
    full = f"from textdistill import load; load({str(folder)!r}).predict([{PROBE!r}])"
    runtime = f"from textdistill.runtime import load; load({str(folder)!r}).predict([{PROBE!r}])"
    cases = {
        "before: textdistill.load": (full, before),
        "now: textdistill.load (full package)": (full, NOW),
        "now: textdistill.runtime.load": (runtime, NOW),
    }
    out = {}
    for name, (code, src) in cases.items():
        _wall([sys.executable, "-c", code], _env(src))  # warm the page cache
        times = [_wall([sys.executable, "-c", code], _env(src)) for _ in range(repeats)]
        out[name] = statistics.median(times)
    return out


def efficiency(folder: Path, data: Path, src: Path, n_latency: int) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, str(folder), str(data), str(n_latency)],
        env=_env(src),
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def http(
    folder: Path, data: Path, src: Path, texts_per_request: int, requests: int, pin: bool
) -> Any:
    # Pinned: the server (event loop + inference thread) on CPU 0, the client on CPU 1, so
    # the client's own work is not counted against the server.
    pinning = ["--server-cpus", "0", "--client-cpus", "1"] if pin else []
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        subprocess.run(
            [
                sys.executable,
                str(Path(__file__).with_name("load_test.py")),
                *pinning,
                "--model",
                str(folder),
                "--threads",
                "1",
                "--concurrency",
                "16",
                "--requests",
                str(requests),
                "--texts-per-request",
                str(texts_per_request),
                "--data",
                str(data),
                "--out",
                out.name,
            ],
            env=_env(src),
            check=True,
            capture_output=True,
        )
        return json.loads(Path(out.name).read_text(encoding="utf-8"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--student", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True, help="THUCNews dev.txt (title<TAB>label)")
    ap.add_argument("--before", type=Path, required=True, help="src/ of the code before")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--latency-texts", type=int, default=300)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--out", type=Path)
    ap.add_argument(
        "--stages",
        default="cold,efficiency,http",
        help="Comma-separated subset of cold, efficiency, http.",
    )
    ap.add_argument(
        "--no-pin",
        dest="pin",
        action="store_false",
        help="Let the HTTP server and the load-test client share every CPU "
        "(default: server on CPU 0, client on CPU 1, when there are 2 or more).",
    )
    args = ap.parse_args()
    stages = set(args.stages.split(","))
    pin = args.pin and (os.cpu_count() or 1) >= 2
    sys.path.insert(0, str(NOW))
    from textdistill.deploy.export import export_model

    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{os.cpu_count()} CPUs, {platform.machine()}, "
        f"Python {platform.python_version()}",
        "student": str(args.student),
    }
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_model(args.student, Path(tmp) / "onnx", fmt="onnx").out
        int8 = export_model(args.student, Path(tmp) / "int8", fmt="onnx", quantize="int8").out
        models = {"pytorch": args.student, "onnx fp32": fp32, "onnx int8": int8}
        if "cold" in stages:
            results["cold_start_s"] = cold_starts(int8, args.before, args.repeats)
            print(json.dumps(results["cold_start_s"], indent=1), flush=True)
        if "efficiency" in stages:
            results["efficiency"] = {
                f"{version}: {name}": efficiency(path, args.data, src, args.latency_texts)
                for name, path in models.items()
                for version, src in (("before", args.before), ("now", NOW))
            }
            for key, e in results["efficiency"].items():
                rates = {k: e.get(k) for k in ("model_texts_per_s", "e2e_texts_per_s")}
                print(key, rates, flush=True)
        if "http" in stages:
            results["http_pinned"] = pin
            results["http"] = {
                f"{version}: {n} texts/request": http(int8, args.data, src, n, args.requests, pin)
                for n in (1, 16)
                for version, src in (("before", args.before), ("now", NOW))
            }
    text = json.dumps(results, indent=2, ensure_ascii=False)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
