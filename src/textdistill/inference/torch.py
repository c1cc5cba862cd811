"""PyTorch backend: teacher and student folders (and int8 PyTorch exports) on CPU or GPU.

A folder marked ``quantize: int8`` (``textdistill export --format torch --quantize int8``)
stores fp32 weights and is dynamically quantized here, at load time, so the same weights
file serves both precisions.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from textdistill.models.folders import LoadedModel, load_model, size_on_disk_mb
from textdistill.runtime.classifier import Classifier
from textdistill.runtime.tokenize import FastEncoder


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


def _fast_encoder(loaded: LoadedModel) -> FastEncoder | None:
    tok = loaded.tokenizer
    if tok.pad_token_id is None:
        return None
    return FastEncoder.from_json(
        tok.backend_tokenizer.to_str(),
        loaded.max_len,
        pad_id=int(tok.pad_token_id),
        truncation_side=str(getattr(tok, "truncation_side", "right") or "right"),
        split_special_tokens=bool(getattr(tok, "split_special_tokens", False)),
    )


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
        self.encoder = _fast_encoder(loaded)
        """The runtime's encoder (the same ids as ``tokenizer``, several times faster);
        None for a tokenizer without a pad token, which ``tokenizer`` itself then refuses."""

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
        if self.encoder is not None:
            ids, mask = self.encoder.encode(list(texts))
            return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}
        enc = self.tokenizer(
            list(texts),
            truncation=True,
            max_length=self.max_len,
            padding=True,
            return_tensors="pt",
        )
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def set_threads(self, threads: int | None) -> None:
        """``torch.set_num_threads`` (process-wide: PyTorch has one intra-op pool)."""
        if threads is not None:
            torch.set_num_threads(threads)

    @property
    def device(self) -> str:
        param = next(self.model.parameters(), None)
        return str(param.device) if param is not None else "cpu"

    @torch.inference_mode()
    def forward_batch(self, batch: dict[str, torch.Tensor]) -> np.ndarray:
        """Logits (B, C), float32 numpy, for an encoded batch; model time only (a GPU
        model's logits are copied to the CPU, which waits for the kernels to finish)."""
        out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return out.logits.float().cpu().numpy()
