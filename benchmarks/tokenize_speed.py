"""Tokenization speed: today's Hugging Face path vs the runtime's ``FastEncoder`` (texts/s).

    python benchmarks/tokenize_speed.py                       # 1 tokenizer thread
    python benchmarks/tokenize_speed.py --threads 2 --batch-sizes 64 256

Times, as the median of ``--repeats`` passes over all the texts (in batches of each size):

- ``hf``: ``AutoTokenizer.from_pretrained(folder)(texts, truncation=True, max_length=L,
  padding=True, return_tensors="pt")``, exactly ``TorchClassifier.encode``;
- ``fast``: ``textdistill.runtime.tokenize.FastEncoder.encode`` (clips, encodes, builds the
  int64 ids and mask);
- the ways of building the arrays that ``FastEncoder`` chose between, on a private
  ``tokenizers.Tokenizer`` of the same folder: ``rust-pad+fromiter`` (Rust pads every row;
  ids and attention mask flattened with ``np.fromiter``), ``rust-pad+np.array`` (the same
  rows through ``np.array``), ``scatter`` (Rust does not pad; the real ids are flattened
  once and scattered into a pad-filled array through ``arange(T) < length``, what
  ``FastEncoder`` does), and ``encode-only`` (``encode_batch_fast`` without any array: the
  tokenizer's own floor).

The clock: process CPU time by default for one thread (other jobs on a shared machine do not
count; `--clock wall` for elapsed time), elapsed time for more threads.

Before timing, every batch of ``fast`` is checked against ``hf`` (same ids and mask).

Threads: the Rust tokenizer runs a batch on the Rayon thread pool unless
``TOKENIZERS_PARALLELISM`` is false-like (``false``, ``0``, ``off``, ``no``, ``f``, ``n`` or
empty; the variable is read on every ``encode_batch`` call); ``RAYON_NUM_THREADS`` sizes that
pool once, when it is first used. ``--threads 1`` (the default) sets
``TOKENIZERS_PARALLELISM=false`` (serial, no pool) and ``RAYON_NUM_THREADS=1``; ``--threads
N`` sets ``TOKENIZERS_PARALLELISM=true`` and ``RAYON_NUM_THREADS=N``. Both are set before
``tokenizers`` is imported. Torch's own threads do not matter here (no model runs).

Tokenizer: ``--folder`` (default: the THUCNews student
``/work/bench/modes-new/students/bilstm-soft`` when it exists, else one built from the texts
with ``textdistill.data.tokenization.build_tokenizer``). Texts: THUCNews ``title<TAB>label``
lines (default ``../shared/data/thucnews/dev.txt`` next to the repository); ``max_len``: the
folder's ``textdistill.json`` ``max_len`` unless ``--max-len``.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from operator import attrgetter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_TEXTS = REPO.parent / "shared" / "data" / "thucnews" / "dev.txt"
DEFAULT_FOLDER = Path("/work/bench/modes-new/students/bilstm-soft")


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--folder", type=Path, default=None, help="tokenizer folder (save_pretrained)")
    p.add_argument("--texts", type=Path, default=DEFAULT_TEXTS, help="title<TAB>label lines")
    p.add_argument("--max-len", type=int, default=None)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 1])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--limit", type=int, default=None, help="use the first N texts only")
    p.add_argument("--threads", type=int, default=1, help="tokenizer (Rayon) threads")
    p.add_argument(
        "--clock",
        choices=["auto", "cpu", "wall"],
        default="auto",
        help="cpu: process CPU time, robust to other load on a shared machine (right for 1 "
        "thread only); wall: elapsed time; auto (default): cpu for 1 thread, else wall",
    )
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    return p.parse_args()


def _set_threads(n: int) -> None:
    if "tokenizers" in sys.modules:
        raise RuntimeError("set the tokenizer threads before importing tokenizers")
    os.environ["TOKENIZERS_PARALLELISM"] = "false" if n == 1 else "true"
    os.environ["RAYON_NUM_THREADS"] = str(n)


def _read_titles(path: Path, limit: int | None) -> list[str]:
    titles = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            title = line.rstrip("\n").split("\t", 1)[0]
            if title.strip():
                titles.append(title)
    if not titles:
        raise SystemExit(f"{path}: no titles")
    return titles[:limit] if limit else titles


def _folder(arg: Path | None, titles: list[str], scratch: Path) -> Path:
    if arg is not None:
        return arg
    if (DEFAULT_FOLDER / "tokenizer.json").is_file():
        return DEFAULT_FOLDER
    from textdistill.data.tokenization import build_tokenizer

    print(f"{DEFAULT_FOLDER} not found: building a tokenizer from the texts", file=sys.stderr)
    build_tokenizer(titles).save_pretrained(scratch)
    return scratch


def _max_len(arg: int | None, folder: Path) -> int:
    if arg is not None:
        return arg
    meta = folder / "textdistill.json"
    if meta.is_file():
        return int(json.loads(meta.read_text(encoding="utf-8"))["max_len"])
    return 64


class _Variants:
    """The ways of building (B, T) int64 ids and mask that FastEncoder chose between.

    ``builders`` turn one batch's encodings (``padded`` or ``unpadded`` ones, as each needs)
    into the arrays; ``end_to_end`` adds the encoding, and ``encode-only`` is the floor.
    """

    def __init__(self, folder: Path, max_len: int, pad_id: int) -> None:
        import numpy as np
        from tokenizers import Tokenizer

        flatten, ids_of, mask_of = (
            itertools.chain.from_iterable,
            attrgetter("ids"),
            attrgetter("attention_mask"),
        )
        text = (folder / "tokenizer.json").read_text(encoding="utf-8")
        self.padded, self.unpadded = Tokenizer.from_str(text), Tokenizer.from_str(text)
        for tok in (self.padded, self.unpadded):
            tok.enable_truncation(max_len)
        self.padded.enable_padding(pad_id=pad_id, pad_token=self.padded.id_to_token(pad_id))
        self.unpadded.no_padding()

        def rust_pad_fromiter(encs: list[Any]) -> Any:
            b, t = len(encs), len(encs[0])
            ids = np.fromiter(flatten(map(ids_of, encs)), np.int64, count=b * t).reshape(b, t)
            mask = np.fromiter(flatten(map(mask_of, encs)), np.int64, count=b * t).reshape(b, t)
            return ids, mask

        def rust_pad_array(encs: list[Any]) -> Any:
            ids = np.array(list(map(ids_of, encs)), dtype=np.int64)
            return ids, np.array(list(map(mask_of, encs)), dtype=np.int64)

        def scatter(encs: list[Any]) -> Any:
            rows = list(map(ids_of, encs))
            lengths = np.fromiter(map(len, rows), np.int64, count=len(rows))
            real = np.arange(int(lengths.max()))[None, :] < lengths[:, None]
            ids = np.full(real.shape, pad_id, dtype=np.int64)
            ids[real] = np.fromiter(flatten(rows), np.int64, count=int(lengths.sum()))
            return ids, real.astype(np.int64)

        self.builders: dict[str, tuple[Callable[[list[Any]], Any], bool]] = {
            "rust-pad+fromiter": (rust_pad_fromiter, True),
            "rust-pad+np.array": (rust_pad_array, True),
            "scatter": (scatter, False),
        }

    def encoder(self, padded: bool) -> Any:
        return (self.padded if padded else self.unpadded).encode_batch_fast

    def end_to_end(self) -> dict[str, Callable[[list[str]], Any]]:
        out: dict[str, Callable[[list[str]], Any]] = {}
        for name, (build, padded) in self.builders.items():
            out[name] = _compose(build, self.encoder(padded))
        out["encode-only"] = self.encoder(False)
        return out


def _compose(build: Callable[[list[Any]], Any], encode: Any) -> Callable[[list[str]], Any]:
    def run(texts: list[str]) -> Any:
        return build(encode(texts))

    return run


def _time(
    fn: Callable[[list[str]], Any], batches: Sequence[list[str]], clock: Callable[[], float]
) -> float:
    """Seconds for ``fn`` over all ``batches``, garbage collection off (as ``timeit`` does)."""
    gc.collect()
    gc.disable()
    try:
        start = clock()
        for batch in batches:
            fn(batch)
        return clock() - start
    finally:
        gc.enable()


def main() -> None:
    args = _args()
    _set_threads(args.threads)
    import numpy as np
    import tokenizers
    from transformers import AutoTokenizer

    from textdistill.runtime.tokenize import FastEncoder

    titles = _read_titles(args.texts, args.limit)
    clock_name = args.clock if args.clock != "auto" else ("cpu" if args.threads == 1 else "wall")
    clock = time.process_time if clock_name == "cpu" else time.perf_counter
    with tempfile.TemporaryDirectory() as scratch:
        folder = _folder(args.folder, titles, Path(scratch))
        max_len = _max_len(args.max_len, folder)
        hf_tok = AutoTokenizer.from_pretrained(folder)
        fast = FastEncoder.from_folder(folder, max_len)

        def hf(texts: list[str]) -> Any:  # TorchClassifier.encode
            enc = hf_tok(
                list(texts), truncation=True, max_length=max_len, padding=True, return_tensors="pt"
            )
            return enc["input_ids"], enc["attention_mask"]

        methods: dict[str, Callable[[list[str]], Any]] = {"hf": hf, "fast": fast.encode}
        variants = _Variants(folder, max_len, fast.pad_id)
        methods.update(variants.end_to_end())
        print(
            f"tokenizer {folder} ({fast.vocab_size} tokens), max_len {max_len}, "
            f"{len(titles)} titles from {args.texts}\n"
            f"tokenizers {tokenizers.__version__}, threads {args.threads} "
            f"(TOKENIZERS_PARALLELISM={os.environ['TOKENIZERS_PARALLELISM']}, "
            f"RAYON_NUM_THREADS={os.environ['RAYON_NUM_THREADS']}), "
            f"median of {args.repeats}, {clock_name} clock"
        )
        results: list[dict[str, Any]] = []
        for size in args.batch_sizes:
            batches = [titles[i : i + size] for i in range(0, len(titles), size)]
            for batch in batches:  # the same ids and mask as today's path; also a warm-up
                want, got = hf(batch), fast.encode(batch)
                if not (np.array_equal(want[0].numpy(), got[0])):
                    raise SystemExit(f"batch size {size}: FastEncoder ids differ from hf")
                if not (np.array_equal(want[1].numpy(), got[1])):
                    raise SystemExit(f"batch size {size}: FastEncoder mask differs from hf")
            runs: dict[str, list[float]] = {name: [] for name in methods}
            names = list(methods)
            for rep in range(args.repeats):
                # Interleaved, and in a rotating order, so that load changes and the
                # leftovers of the method before hit all alike.
                for name in names[rep % len(names) :] + names[: rep % len(names)]:
                    runs[name].append(_time(methods[name], batches, clock))
            rate = {name: len(titles) / statistics.median(t) for name, t in runs.items()}
            print(f"\nbatch size {size}: texts/s (x hf)")
            for name, r in rate.items():
                print(f"  {name:<20} {r:>10,.0f}  x{r / rate['hf']:.2f}")
            # The array building alone, on encodings made beforehand: the part the builders
            # differ in, without the tokenizer's (much larger, noisier) time around it.
            encoded = {p: [variants.encoder(p)(b) for b in batches] for p in (True, False)}
            build_runs: dict[str, list[float]] = {name: [] for name in variants.builders}
            for _ in range(args.repeats):
                for name, (build, padded) in variants.builders.items():
                    build_runs[name].append(_time(build, encoded[padded], clock))
            build_us = {
                name: 1e6 * statistics.median(t) / len(batches) for name, t in build_runs.items()
            }
            print("  arrays only (us per batch, encodings made beforehand):")
            for name, us in build_us.items():
                print(f"    {name:<18} {us:>10.1f}")
            results.append(
                {"batch_size": size, "texts_per_s": rate, "arrays_us_per_batch": build_us}
            )
        print(
            "\nfast / hf: "
            + ", ".join(
                f"batch {r['batch_size']}: x{r['texts_per_s']['fast'] / r['texts_per_s']['hf']:.2f}"
                for r in results
            )
        )
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    "folder": str(folder),
                    "max_len": max_len,
                    "texts": len(titles),
                    "threads": args.threads,
                    "repeats": args.repeats,
                    "clock": clock_name,
                    "results": results,
                },
                indent=2,
            )
            + "\n",
            encoding="utf-8",
        )


if __name__ == "__main__":
    main()
