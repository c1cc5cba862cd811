"""ONNX Runtime backend, torch-free: an exported folder's tokenizer and graph, nothing else.

An exported folder (``textdistill export --format onnx``) holds ``model.onnx``, the tokenizer
files, ``labels.json`` and a ``textdistill.json`` with ``format: "onnx"`` (its ``kind`` stays
the source's, teacher or student; :attr:`OnnxClassifier.kind` is ``"onnx"`` for reports).
Loading runs the checks every folder gets (:mod:`textdistill.core.folder`: fingerprint,
labels, ``max_len``, ``tokenizer.json``) plus one of its own: the tokenizer may not have more
tokens than the graph's embeddings (the architecture's ``vocab_size``).

The path per batch is the shortest there is: :class:`~textdistill.runtime.tokenize.FastEncoder`
gives int64 numpy ids and mask, ONNX Runtime takes them as they are and returns float32
logits; softmax, top-k and the checks of :class:`~textdistill.runtime.classifier.Classifier`
run in numpy. The full package loads exported folders with this same class.

**Threads.** ``threads``: intra-op threads of the session; ``None`` follows ``threads_from()``
when given (the full package passes ``torch.get_num_threads``, so ``evaluate --threads N``
times the ONNX model under the same budget as the PyTorch ones; the session is rebuilt when
that number changes), else ONNX Runtime's default (one per physical core).
:meth:`OnnxClassifier.set_threads` pins a number later.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from textdistill.core.errors import UserError
from textdistill.core.folder import (
    META_FILE,
    check_fingerprint,
    check_folder,
    check_vocab_fits,
    folder_format,
    read_meta,
    size_on_disk_mb,
)
from textdistill.runtime.classifier import Batch, Classifier
from textdistill.runtime.tokenize import FastEncoder

if TYPE_CHECKING:
    import onnxruntime as ort

log = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
INPUT_NAMES = ("input_ids", "attention_mask")
OUTPUT_NAME = "logits"


def import_ort() -> Any:
    """``onnxruntime``, or a :class:`UserError` saying how to install it."""
    try:
        import onnxruntime
    except ImportError:
        raise UserError(
            "the ONNX backend needs onnxruntime: pip install onnxruntime (or textdistill[export])"
        ) from None
    return onnxruntime


def create_session(
    model_file: str | Path,
    threads: int | None,
    providers: Sequence[str] | None = None,
    *,
    spinning: bool = True,
) -> ort.InferenceSession:
    """An ONNX Runtime session with ``threads`` intra-op threads (None: ORT's default) and
    sequential execution.

    One inter-op thread: these graphs are chains, and a second pool would only compete with
    the intra-op threads for the same cores. ``spinning``: idle pool threads busy-wait for
    the next call (ONNX Runtime's default: lowest latency when the process does nothing
    else); a server turns it off so that they leave the CPU to its event loop.
    """
    ort_mod = import_ort()
    options = ort_mod.SessionOptions()
    if threads is not None:
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


class OnnxClassifier(Classifier):
    """An exported folder run by ONNX Runtime, tokenized by the Rust tokenizer.

    Thread-safe: ONNX Runtime's ``run`` and the encoder are; session rebuilds hold a lock.
    """

    backend = "onnx"

    def __init__(
        self,
        path: Path,
        meta: dict[str, Any],
        *,
        label_names: Sequence[str],
        max_len: int,
        encoder: FastEncoder,
        model_file: Path,
        threads: int | None = None,
        threads_from: Callable[[], int] | None = None,
        providers: Sequence[str] | None = None,
    ) -> None:
        super().__init__(path=path, label_names=label_names, max_len=max_len, meta=meta)
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be >= 1 or None, got {threads}")
        self.encoder = encoder
        self.model_file = model_file
        self.fixed_threads = threads
        self.threads_from = threads_from
        self.providers = list(providers or ["CPUExecutionProvider"])
        self._lock = threading.Lock()
        self._session: ort.InferenceSession | None = None
        self._session_threads: int | None = None
        self._spinning = True
        try:
            self.session  # noqa: B018 - build now, so a broken file fails at load time
        except UserError:
            raise
        except Exception as err:  # ONNX Runtime raises its own classes for a damaged graph
            raise UserError(f"{model_file}: not a loadable ONNX model ({err})") from None

    @classmethod
    def from_folder(
        cls,
        path: str | Path,
        *,
        threads: int | None = None,
        threads_from: Callable[[], int] | None = None,
        providers: Sequence[str] | None = None,
        allow_modified: bool | None = None,
    ) -> OnnxClassifier:
        """Open an exported folder (see the module docstring for ``threads``).

        Raises:
            UserError: not an ONNX export, or its files are missing, changed or damaged.
        """
        path = Path(path)
        meta = read_meta(path)
        if folder_format(meta) != "onnx":
            raise UserError(f"{path}: not an ONNX export ({META_FILE} format is not onnx)")
        model_file = path / str(meta.get("onnx_file", ONNX_FILE))
        if not model_file.is_file():
            raise UserError(f"{path}: {model_file.name} is missing; export the model again")
        label_names, max_len = check_folder(path, meta)
        meta["fingerprint"] = check_fingerprint(path, meta, allow_modified=allow_modified)
        encoder = FastEncoder.from_folder(path, max_len)
        rows = (meta.get("architecture") or {}).get("vocab_size")
        check_vocab_fits(path, encoder.vocab_size, rows if isinstance(rows, int) else None)
        return cls(
            path,
            meta,
            label_names=label_names,
            max_len=max_len,
            encoder=encoder,
            model_file=model_file,
            threads=threads,
            threads_from=threads_from,
            providers=providers,
        )

    @property
    def kind(self) -> str:
        """``"onnx"``, the kind ``compare`` reports; ``meta["kind"]`` keeps the source's."""
        return "onnx"

    def size_mb(self) -> float:
        return size_on_disk_mb(self.path)

    @property
    def threads(self) -> int | None:
        """The intra-op thread count the next call runs with (None: ORT's default)."""
        if self.fixed_threads is not None:
            return self.fixed_threads
        return self.threads_from() if self.threads_from is not None else None

    def set_threads(self, threads: int | None) -> None:
        """Pin the intra-op threads (None: back to following ``threads_from``/the default)."""
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be >= 1 or None, got {threads}")
        self.fixed_threads = threads

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
                    log.debug("rebuilding the ONNX session for %s thread(s)", wanted)
                self._session = create_session(
                    self.model_file, wanted, self.providers, spinning=self._spinning
                )
                self._session_threads = wanted
            return self._session

    def prepare_for_serving(self) -> None:
        # Spinning intra-op threads would take the CPU from the event loop under load.
        self.spinning = False

    def encode(self, texts: Sequence[str]) -> Batch:
        """``input_ids``/``attention_mask`` (B, T) int64, padded to the longest row."""
        ids, mask = self.encoder.encode(texts)
        return {"input_ids": ids, "attention_mask": mask}

    def forward_batch(self, batch: Batch) -> np.ndarray:
        """Logits (B, C) float32; ONNX Runtime time only."""
        feeds = {name: batch[name] for name in INPUT_NAMES}
        (logits,) = self.session.run([OUTPUT_NAME], feeds)
        return np.asarray(logits, dtype=np.float32)
