"""ONNX Runtime inference behind the :class:`~textdistill.inference.classifier.Classifier` API.

An exported folder (``textdistill export --format onnx``) holds ``model.onnx``, the tokenizer,
``labels.json`` and a ``textdistill.json`` with ``format: "onnx"`` (its ``kind`` stays the
source's, teacher or student; :attr:`OnnxClassifier.kind` is ``"onnx"`` for reports).
:func:`textdistill.load` opens such a folder as an :class:`OnnxClassifier`, so ``predict``,
``evaluate``, ``compare`` and ``serve`` use it like any other model folder.

The design keeps one prediction path: :class:`OnnxModule` is an ``nn.Module`` whose forward
runs the ONNX Runtime session and returns :class:`ClassifierOutput`, so the PyTorch
backend's ``encode`` / ``forward_batch`` and the base class's ``logits`` / ``predict`` run
unchanged on top of it.

**Threads.** With ``threads=None`` the session follows ``torch.get_num_threads()``: it is
(re)built with that many intra-op threads whenever the torch setting differs from the one it
was built for. ``evaluate --threads N`` (which sets torch's thread count while timing) thus
times the ONNX model under the same thread budget as the PyTorch ones. An explicit
``threads`` pins the session.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from textdistill.core.errors import UserError
from textdistill.data.tokenization import load_tokenizer
from textdistill.inference.torch import TorchClassifier
from textdistill.models.folders import (
    LoadedModel,
    check_fingerprint,
    check_folder,
    check_tokenizer_fits,
    folder_format,
    read_meta,
)
from textdistill.models.output import ClassifierOutput

if TYPE_CHECKING:
    import onnxruntime as ort

log = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
INPUT_NAMES = ("input_ids", "attention_mask")
OUTPUT_NAME = "logits"


def _import_ort() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise UserError(
            "the ONNX backend needs onnxruntime: pip install 'textdistill[export]'"
        ) from None
    return onnxruntime


def create_session(
    model_file: str | Path,
    threads: int,
    providers: Sequence[str] | None = None,
    *,
    spinning: bool = True,
) -> ort.InferenceSession:
    """An ONNX Runtime session with ``threads`` intra-op threads and sequential execution.

    One inter-op thread: these graphs are chains, and a second pool would only compete with
    the intra-op threads for the same cores. ``spinning``: idle pool threads busy-wait for
    the next call (ONNX Runtime's default: lowest latency when the process does nothing
    else); a server turns it off so that they leave the CPU to its event loop.
    """
    ort_mod = _import_ort()
    options = ort_mod.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    options.execution_mode = ort_mod.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort_mod.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only; ORT's warnings go to stderr, not logging
    return ort_mod.InferenceSession(
        str(model_file),
        sess_options=options,
        providers=list(providers or ["CPUExecutionProvider"]),
    )


class OnnxModule(nn.Module):
    """``forward(input_ids, attention_mask) -> ClassifierOutput(logits)`` on ONNX Runtime.

    The graph has no sentence vector output, so ``hidden`` is None. Inputs are fed as int64
    NumPy arrays (the exported graph's input type); the logits come back as a float32 CPU
    tensor. Thread-safe: ONNX Runtime's ``run`` is, and session rebuilds hold a lock.
    """

    def __init__(
        self,
        model_file: str | Path,
        *,
        threads: int | None = None,
        providers: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be >= 1 or None, got {threads}")
        self.model_file = Path(model_file)
        self.fixed_threads = threads
        self.providers = list(providers or ["CPUExecutionProvider"])
        self._lock = threading.Lock()
        self._session: ort.InferenceSession | None = None
        self._session_threads = 0
        self._spinning = True
        self.session  # noqa: B018 - build now, so a broken file fails at load time

    @property
    def threads(self) -> int:
        """The intra-op thread count the next call runs with."""
        return self.fixed_threads or torch.get_num_threads()

    @property
    def spinning(self) -> bool:
        """Whether idle intra-op threads busy-wait (see :func:`create_session`)."""
        return self._spinning

    @spinning.setter
    def spinning(self, value: bool) -> None:
        with self._lock:
            if value != self._spinning:
                self._spinning = value
                self._session = None  # rebuilt with the new setting on next use

    @property
    def session(self) -> ort.InferenceSession:
        """The current session, rebuilt if the thread count to follow has changed."""
        wanted = self.threads
        with self._lock:
            if self._session is None or self._session_threads != wanted:
                if self._session is not None:
                    log.debug("rebuilding the ONNX session for %d thread(s)", wanted)
                self._session = create_session(
                    self.model_file, wanted, self.providers, spinning=self._spinning
                )
                self._session_threads = wanted
            return self._session

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> ClassifierOutput:
        feeds = {
            "input_ids": input_ids.detach().cpu().numpy().astype(np.int64, copy=False),
            "attention_mask": attention_mask.detach().cpu().numpy().astype(np.int64, copy=False),
        }
        (logits,) = self.session.run([OUTPUT_NAME], feeds)  # (B, C)
        return ClassifierOutput(logits=torch.from_numpy(np.asarray(logits, dtype=np.float32)))


class OnnxClassifier(TorchClassifier):
    """An exported folder: the same tokenization and batching, the forward pass on ONNX Runtime.

    Everything but the forward pass - tokenization, batching, top-k, empty-text handling -
    is shared with the PyTorch backend, so PyTorch and ONNX predictions differ only by the
    model's numerics.
    """

    backend = "onnx"
    model: OnnxModule

    @classmethod
    def from_folder(
        cls,
        path: str | Path,
        *,
        threads: int | None = None,
        providers: Sequence[str] | None = None,
    ) -> OnnxClassifier:
        """Open an exported folder; ``threads=None`` follows ``torch.get_num_threads()``."""
        path = Path(path)
        meta = read_meta(path)
        if folder_format(meta) != "onnx":
            raise UserError(f"{path}: not an ONNX export (textdistill.json format is not onnx)")
        model_file = path / str(meta.get("onnx_file", ONNX_FILE))
        if not model_file.is_file():
            raise UserError(f"{path}: {model_file.name} is missing; export the model again")
        # The same checks as a PyTorch folder's (folders.load_model), but the vocabulary the
        # graph accepts is the one its architecture records.
        label_names, max_len = check_folder(path, meta)
        meta["fingerprint"] = check_fingerprint(path, meta)
        tokenizer = load_tokenizer(path)
        rows = (meta.get("architecture") or {}).get("vocab_size")
        check_tokenizer_fits(path, tokenizer, rows if isinstance(rows, int) else None)
        try:
            module = OnnxModule(model_file, threads=threads, providers=providers)
        except Exception as err:  # ONNX Runtime raises its own classes for a damaged graph
            raise UserError(f"{model_file}: not a loadable ONNX model ({err})") from None
        loaded = LoadedModel(
            model=module,
            tokenizer=tokenizer,
            label_names=label_names,
            meta=meta,
            path=path,
            max_len=max_len,
        )
        return cls(loaded)

    @property
    def kind(self) -> str:
        """``"onnx"``, the kind ``compare`` reports; ``meta["kind"]`` keeps the source's."""
        return "onnx"

    @property
    def session(self) -> ort.InferenceSession:
        return self.model.session

    def prepare_for_serving(self) -> None:
        # Spinning intra-op threads would take the CPU from the event loop under load.
        self.model.spinning = False
