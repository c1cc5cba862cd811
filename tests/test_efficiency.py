"""Efficiency measurement with toy classifiers whose cost is known."""

from __future__ import annotations

import time
from collections.abc import Sequence

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from textdistill.evaluation.efficiency import EfficiencyResult, TextClassifier, measure_efficiency
from textdistill.models.folders import count_parameters, size_on_disk_mb

MODEL_SLEEP = 0.002
ENCODE_SLEEP = 0.0005


def _char_ids(texts: Sequence[str], vocab: int) -> dict[str, torch.Tensor]:
    width = max(len(t) for t in texts)
    ids = torch.zeros(len(texts), width, dtype=torch.long)
    mask = torch.zeros(len(texts), width, dtype=torch.long)
    for i, text in enumerate(texts):
        ids[i, : len(text)] = torch.tensor([ord(c) % vocab for c in text])
        mask[i, : len(text)] = 1
    return {"input_ids": ids, "attention_mask": mask}


class SleepyClassifier:
    """Encoding costs ENCODE_SLEEP, every forward costs MODEL_SLEEP, whatever the batch."""

    def __init__(self) -> None:
        self.label_names = ["a", "b"]
        self.threads_seen: list[int] = []
        self.grad_enabled: list[bool] = []
        self.batch_sizes: list[int] = []
        self.fail = False

    def encode(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        time.sleep(ENCODE_SLEEP)
        return _char_ids(texts, vocab=50)

    def forward_batch(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.fail:
            raise RuntimeError("boom")
        self.threads_seen.append(torch.get_num_threads())
        self.grad_enabled.append(torch.is_grad_enabled())
        self.batch_sizes.append(batch["input_ids"].shape[0])
        time.sleep(MODEL_SLEEP)
        return torch.zeros(batch["input_ids"].shape[0], 2)


class TinyModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)  # 40
        self.out = nn.Linear(4, 3)  # 12 + 3

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.unsqueeze(-1).float()  # (B, T, 1)
        pooled = (self.embed(input_ids) * mask).sum(1) / mask.sum(1).clamp(min=1)  # (B, 4)
        return self.out(pooled)  # (B, 3)


class TinyClassifier:
    def __init__(self) -> None:
        self.label_names = ["x", "y", "z"]
        self.model = TinyModel().eval()

    def encode(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        return _char_ids(texts, vocab=10)

    def forward_batch(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model(batch["input_ids"], batch["attention_mask"])


TEXTS = [f"text number {i}" for i in range(24)]


@pytest.fixture(scope="module")
def sleepy_result() -> tuple[SleepyClassifier, EfficiencyResult]:
    clf = SleepyClassifier()
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        result = measure_efficiency(
            clf, TEXTS, threads=1, n_latency=15, warmup=3, batch_size=8, repeats=2
        )
        assert torch.get_num_threads() == 2  # restored
    finally:
        torch.set_num_threads(before)
    return clf, result


def test_latency_reflects_known_cost(sleepy_result):
    _, r = sleepy_result
    assert r.model_p50_ms >= MODEL_SLEEP * 1000
    assert r.e2e_p50_ms >= (MODEL_SLEEP + ENCODE_SLEEP) * 1000
    assert r.e2e_p50_ms > r.model_p50_ms
    assert r.model_p50_ms <= r.model_p95_ms
    assert r.e2e_p50_ms <= r.e2e_p95_ms
    assert r.model_mean_ms >= MODEL_SLEEP * 1000


def test_throughput_bounded_by_known_cost(sleepy_result):
    _, r = sleepy_result
    assert 0 < r.model_texts_per_s <= 8 / MODEL_SLEEP
    assert 0 < r.e2e_texts_per_s <= 8 / (MODEL_SLEEP + ENCODE_SLEEP)
    assert r.e2e_texts_per_s < r.model_texts_per_s


def test_measurement_setup(sleepy_result):
    clf, r = sleepy_result
    assert set(clf.threads_seen) == {1}  # the requested thread count was in force
    assert not any(clf.grad_enabled)
    # 24 texts in batches of 8: only full batches, besides single-text latency calls.
    assert set(clf.batch_sizes) == {1, 8}
    d = r.to_dict()
    assert d["threads"] == 1
    assert d["n_latency"] == 15 and d["warmup"] == 3
    assert d["batch_size"] == 8 and d["n_texts"] == 24 and d["repeats"] == 2
    assert d["torch_version"] == torch.__version__
    assert d["device"] == "cpu"
    assert d["platform"] and isinstance(d["processor"], str)
    assert d["cpu_count"] is None or d["cpu_count"] >= 1


def test_call_counts_cycle_and_n_batches():
    clf = SleepyClassifier()
    r = measure_efficiency(
        clf, ["only", "two"], n_latency=5, warmup=1, batch_size=3, n_batches=2, repeats=2
    )
    # Latency: 1 device probe + (1 + 5) model-only + (1 + 5) end-to-end, all batch size 1,
    # cycling over the 2 texts. Throughput: (1 warm-up + 2 repeats x 2 batches) x 2 modes.
    assert clf.batch_sizes.count(1) == 13
    assert clf.batch_sizes.count(3) == 10
    assert r.n_texts == 6


def test_partial_last_batch():
    clf = TinyClassifier()
    r = measure_efficiency(clf, TEXTS[:10], n_latency=4, warmup=0, batch_size=4, repeats=1)
    assert r.n_texts == 10
    assert r.model_texts_per_s > 0 and r.e2e_texts_per_s > 0


def test_threads_restored_on_error():
    clf = SleepyClassifier()
    clf.fail = True
    before = torch.get_num_threads()
    with pytest.raises(RuntimeError, match="boom"):
        measure_efficiency(clf, TEXTS, threads=2 if before == 1 else 1)
    assert torch.get_num_threads() == before


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"threads": 0}, "threads must be >= 1"),
        ({"n_latency": 0}, "n_latency must be >= 1"),
        ({"warmup": -1}, "warmup must be >= 0"),
        ({"batch_size": 0}, "batch_size must be >= 1"),
        ({"repeats": 0}, "repeats must be >= 1"),
        ({"n_batches": 0}, "n_batches must be >= 1"),
    ],
)
def test_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        measure_efficiency(TinyClassifier(), TEXTS, **kwargs)


def test_rejects_no_texts_and_non_classifier():
    with pytest.raises(ValueError, match="at least one text"):
        measure_efficiency(TinyClassifier(), [])
    with pytest.raises(TypeError, match="encode"):
        measure_efficiency(object(), TEXTS)  # type: ignore[arg-type]


def test_protocol_is_structural():
    assert isinstance(TinyClassifier(), TextClassifier)
    assert isinstance(SleepyClassifier(), TextClassifier)


def test_count_parameters_counts_tied_weights_once():
    model = TinyModel()
    assert count_parameters(model) == 4 * 10 + 4 * 3 + 3
    tied = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 10, bias=False))
    tied[1].weight = tied[0].weight
    assert count_parameters(tied) == 40


def test_size_on_disk_counts_weight_files_only(tmp_path):
    folder = tmp_path / "student"
    folder.mkdir()
    save_file({"w": torch.zeros(1000, dtype=torch.float32)}, str(folder / "model.safetensors"))
    weights = (folder / "model.safetensors").stat().st_size
    assert weights > 4000
    (folder / "tokenizer.json").write_bytes(b"x" * 50_000)
    (folder / "checkpoints").mkdir()
    (folder / "checkpoints" / "last.safetensors").write_bytes(b"x" * 70_000)
    assert size_on_disk_mb(folder) == pytest.approx(weights / 1e6)

    (folder / "model.onnx").write_bytes(b"x" * 3000)
    assert size_on_disk_mb(folder) == pytest.approx((weights + 3000) / 1e6)
    assert size_on_disk_mb(folder / "model.onnx") == pytest.approx(0.003)


def test_size_on_disk_falls_back_to_whole_folder(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"x" * 1000)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_bytes(b"x" * 500)
    assert size_on_disk_mb(tmp_path) == pytest.approx(0.0015)
    with pytest.raises(FileNotFoundError):
        size_on_disk_mb(tmp_path / "missing")
