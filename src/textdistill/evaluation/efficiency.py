"""Model size and speed, measured the same way for every model.

Teacher, students, ensembles and the ONNX export are all timed by :func:`measure_efficiency`
through the small :class:`TextClassifier` protocol, so their numbers are comparable: the
same texts, the same thread count, the same warm-up, the same percentiles.

What is measured:

- **single-text latency** (batch size 1), reported as p50 / p95 / mean in milliseconds,
  twice: *model* time (``forward_batch`` on input encoded beforehand) and *end-to-end*
  time (``encode`` + ``forward_batch``, what a caller of ``predict`` waits for);
- **batched throughput** in texts per second at ``batch_size``, again model-only and
  end-to-end (tokenization included), as the median over ``repeats`` passes.

Percentiles use NumPy's default linear interpolation.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

log = logging.getLogger(__name__)


#: File name patterns that count as weights in a model folder (top level only, so the
#: ``checkpoints/`` a training run leaves behind are not counted).
@runtime_checkable
class TextClassifier(Protocol):
    """What :func:`measure_efficiency` needs from a model: any
    :class:`~textdistill.runtime.classifier.Classifier` has it."""

    label_names: list[str]

    def encode(self, texts: Sequence[str]) -> dict[str, Any]:
        """Tokenize: ``input_ids`` and ``attention_mask`` (B, T), padded to the batch max."""
        ...

    def forward_batch(self, batch: dict[str, Any]) -> np.ndarray:
        """Run the model only, without gradients: logits (B, C)."""
        ...


@dataclass(frozen=True)
class EfficiencyResult:
    """Speed of one model; all latencies in milliseconds, throughputs in texts per second.

    ``model_*`` times cover ``forward_batch`` only; ``e2e_*`` times cover ``encode`` +
    ``forward_batch``. Latencies are at batch size 1 over ``n_latency`` texts; throughputs
    are the median of ``repeats`` passes over ``n_texts`` texts in batches of
    ``batch_size``.
    """

    model_p50_ms: float
    model_p95_ms: float
    model_mean_ms: float
    e2e_p50_ms: float
    e2e_p95_ms: float
    e2e_mean_ms: float
    model_texts_per_s: float
    e2e_texts_per_s: float
    threads: int
    n_latency: int
    warmup: int
    batch_size: int
    n_texts: int
    repeats: int
    device: str
    torch_version: str
    platform: str
    processor: str
    cpu_count: int | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _cpu_name() -> str:
    # platform.processor() is empty on most Linux systems; /proc/cpuinfo names the model.
    name = platform.processor()
    if name and name not in {"x86_64", "aarch64", "arm64", "i386"}:
        return name
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.lower().startswith(("model name", "hardware")):
                return line.split(":", 1)[1].strip()
    return name or platform.machine()


@contextlib.contextmanager
def _num_threads(threads: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    # A collection pause inside a timed call shows up as a fake latency outlier; like
    # timeit, collect once up front and keep the collector off while timing.
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


# forward_batch returns numpy logits: a GPU model's call has waited for its kernels when it
# returns, so no explicit synchronisation is needed around the timers.


def _time_calls(fn: Callable[[int], object], n: int, warmup: int) -> list[float]:
    """Call ``fn(i)`` for ``warmup`` untimed then ``n`` timed indices; seconds per call."""
    for i in range(warmup):
        fn(i)
    times = []
    for i in range(warmup, warmup + n):
        start = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - start)
    return times


def _latency_stats(seconds: list[float]) -> tuple[float, float, float]:
    ms = np.asarray(seconds) * 1000.0
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 95)), float(ms.mean())


def _make_batches(texts: Sequence[str], batch_size: int, n_batches: int | None) -> list[list[str]]:
    if n_batches is None:
        return [list(texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)]
    return [
        [texts[(b * batch_size + j) % len(texts)] for j in range(batch_size)]
        for b in range(n_batches)
    ]


def _throughput(
    run_batch: Callable[[int], object], n_batches: int, n_texts: int, repeats: int
) -> float:
    """Median texts/s over ``repeats`` timed passes of ``run_batch(0..n_batches-1)``."""
    run_batch(0)  # warm up the batched shapes (allocator, oneDNN kernels)
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for b in range(n_batches):
            run_batch(b)
        rates.append(n_texts / (time.perf_counter() - start))
    return float(statistics.median(rates))


def _check_args(
    texts: Sequence[str],
    threads: int,
    n_latency: int,
    warmup: int,
    batch_size: int,
    n_batches: int | None,
    repeats: int,
) -> None:
    if len(texts) == 0:
        raise ValueError("measure_efficiency needs at least one text")
    for name, value, low in (
        ("threads", threads, 1),
        ("n_latency", n_latency, 1),
        ("warmup", warmup, 0),
        ("batch_size", batch_size, 1),
        ("repeats", repeats, 1),
    ):
        if value < low:
            raise ValueError(f"{name} must be >= {low}, got {value}")
    if n_batches is not None and n_batches < 1:
        raise ValueError(f"n_batches must be >= 1 or None, got {n_batches}")


def measure_efficiency(
    clf: TextClassifier,
    texts: Sequence[str],
    *,
    threads: int = 1,
    n_latency: int = 200,
    warmup: int = 20,
    batch_size: int = 64,
    n_batches: int | None = None,
    repeats: int = 3,
) -> EfficiencyResult:
    """Time ``clf`` on ``texts``: single-text latency and batched throughput.

    ``torch.set_num_threads(threads)`` is in force during the measurement and the previous
    setting is restored afterwards (also on error). Latency uses ``warmup`` untimed calls,
    then ``n_latency`` timed ones at batch size 1, cycling through ``texts`` when there are
    fewer. Throughput passes over ``texts`` once in batches of ``batch_size`` (or over
    exactly ``n_batches`` full batches, cycling through ``texts``), after one untimed batch.
    """
    _check_args(texts, threads, n_latency, warmup, batch_size, n_batches, repeats)
    if not isinstance(clf, TextClassifier):
        raise TypeError(f"{type(clf).__name__} lacks label_names / encode / forward_batch")

    def text_at(i: int) -> list[str]:
        return [texts[i % len(texts)]]

    batches = _make_batches(texts, batch_size, n_batches)
    n_texts = sum(len(b) for b in batches)
    with _num_threads(threads), torch.inference_mode():
        single = [clf.encode(text_at(i)) for i in range(warmup + n_latency)]
        encoded = [clf.encode(b) for b in batches]
        clf.forward_batch(single[0])  # warm, and fail early
        device = str(getattr(clf, "device", "cpu"))
        with _gc_paused():
            model_times = _time_calls(lambda i: clf.forward_batch(single[i]), n_latency, warmup)
            e2e_times = _time_calls(
                lambda i: clf.forward_batch(clf.encode(text_at(i))), n_latency, warmup
            )
            model_rate = _throughput(
                lambda b: clf.forward_batch(encoded[b]), len(batches), n_texts, repeats
            )
            e2e_rate = _throughput(
                lambda b: clf.forward_batch(clf.encode(batches[b])), len(batches), n_texts, repeats
            )

    m50, m95, mmean = _latency_stats(model_times)
    e50, e95, emean = _latency_stats(e2e_times)
    result = EfficiencyResult(
        model_p50_ms=m50,
        model_p95_ms=m95,
        model_mean_ms=mmean,
        e2e_p50_ms=e50,
        e2e_p95_ms=e95,
        e2e_mean_ms=emean,
        model_texts_per_s=model_rate,
        e2e_texts_per_s=e2e_rate,
        threads=threads,
        n_latency=n_latency,
        warmup=warmup,
        batch_size=batch_size,
        n_texts=n_texts,
        repeats=repeats,
        device=device,
        torch_version=torch.__version__,
        platform=platform.platform(),
        processor=_cpu_name(),
        cpu_count=os.cpu_count(),
    )
    log.info(
        "latency p50 %.3f ms (model %.3f ms), p95 %.3f ms; %.0f texts/s at batch %d "
        "(model %.0f); %d thread(s)",
        e50,
        m50,
        e95,
        e2e_rate,
        batch_size,
        model_rate,
        threads,
    )
    return result
