"""PyTorch backend: teacher and student folders (and int8 PyTorch exports) on CPU or GPU.

A folder marked ``quantize: int8`` (``textdistill export --format torch --quantize int8``)
stores fp32 weights and is dynamically quantized here, at load time, so the same weights
file serves both precisions.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from textdistill.inference.classifier import Classifier
from textdistill.models.folders import LoadedModel, load_model, size_on_disk_mb


def quantize_torch_dynamic(model: nn.Module) -> nn.Module:
    """``torch.ao.quantization.quantize_dynamic`` of ``nn.Linear`` and ``nn.LSTM`` to qint8.

    Returns a new module in eval mode (CPU only). ``torch.ao.quantization`` is deprecated in
    favour of torchao, which is not a dependency; its deprecation warnings are silenced.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.ao.quantization is deprecated.*")
        warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*deprecated.*")
        quantized = torch.ao.quantization.quantize_dynamic(
            model.cpu().eval(), {nn.Linear, nn.LSTM}, dtype=torch.qint8, inplace=False
        )
    return quantized.eval()


class TorchClassifier(Classifier):
    """A folder's model, tokenizer and labels (:class:`LoadedModel`) run by PyTorch."""

    backend = "torch"

    def __init__(self, loaded: LoadedModel) -> None:
        super().__init__(
            path=loaded.path,
            label_names=loaded.label_names,
            max_len=loaded.max_len,
            meta=loaded.meta,
        )
        self.loaded = loaded
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer

    @classmethod
    def from_folder(cls, path: str | Path) -> TorchClassifier:
        loaded = load_model(path)
        if loaded.meta.get("quantize") == "int8":
            loaded.model = quantize_torch_dynamic(loaded.model)
        return cls(loaded)

    @property
    def kind(self) -> str:
        return self.loaded.kind

    def size_mb(self) -> float:
        return size_on_disk_mb(self.path)

    def encode(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Tokenize to ``input_ids``/``attention_mask`` (B, T), padded to the longest row."""
        enc = self.tokenizer(
            list(texts),
            truncation=True,
            max_length=self.max_len,
            padding=True,
            return_tensors="pt",
        )
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    @torch.inference_mode()
    def forward_batch(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits (B, C) for an encoded batch; model time only."""
        out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return out.logits.float()
