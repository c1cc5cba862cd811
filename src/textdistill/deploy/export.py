"""Export model folders for deployment: ONNX (fp32 or int8) and int8 PyTorch.

:func:`export_model` turns a teacher or student folder into another self-describing folder
that :func:`textdistill.load` - and so ``predict``, ``evaluate``, ``compare`` and ``serve`` -
accepts like any model folder. Folders are written atomically and validated
against the source model before they are committed.

**ONNX** (``fmt="onnx"``): the model is traced by ``torch.onnx.export`` (TorchScript exporter,
opset 17 by default) behind a wrapper that returns the logits only, with dynamic batch and
sequence axes. The folder holds ``model.onnx``, the tokenizer, ``labels.json`` and a
``textdistill.json`` with ``format: "onnx"`` (``kind`` stays the source's), the opset, the
quantization, the source's path, fingerprint, dev metrics and weight size, its architecture
and parameter count, and a ``validation`` record (see below). The traced example batch
contains padding, so every padding-dependent branch is traced on its general path; padding
exactness is then checked numerically, not assumed.

**ONNX int8** (``quantize="int8"``): ONNX Runtime's dynamic quantization
(``quantize_dynamic``, 8-bit weights, activations quantized per batch at run time) after
its recommended pre-processing; it covers ``MatMul``/``Gemm``, ``Conv``, ``LSTM``
(``DynamicQuantizeLSTM``) and ``Gather`` (the embeddings).

**PyTorch int8** (``fmt="torch", quantize="int8"``): a quantized PyTorch model cannot be
stored without pickle (its packed weights are not plain tensors), so the folder keeps the
source's fp32 ``model.safetensors`` and files, with ``quantize: "int8"`` in
``textdistill.json``; :func:`textdistill.runtime.classifier.load` applies
``torch.ao.quantization.quantize_dynamic`` ({``nn.Linear``, ``nn.LSTM``}, qint8) when it
loads the folder. Its size on disk is therefore the source's; the int8 size (the quantized
state dict, serialized in memory) is recorded as ``quantized_weights_mb``.
``folders.load_model`` - used for training and teacher caches - ignores the flag and
returns the fp32 model; the folder's fingerprint is the source's (same weights, same
architecture) and ``quantize`` tells the two apart.

**Validation.** The source and the export run on a probe batch of random token rows of
mixed lengths, right-padded (:func:`probe_batch`). An fp32 ONNX export whose logits differ
from PyTorch's by more than ``atol`` is rejected (:class:`ExportValidationError`); for int8
models the largest difference and the argmax agreement are recorded, as quantization
changes the numbers by design. Accuracy on real data is what ``evaluate``/``compare`` are
for; the export records the source's dev accuracy to compare against.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from textdistill import __version__
from textdistill.core.errors import UserError
from textdistill.core.io import write_json
from textdistill.data.tokenization import pad_token_id
from textdistill.inference.torch import quantize_torch_dynamic
from textdistill.models.folders import (
    META_FILE,
    LoadedModel,
    building,
    folder_meta,
    load_model,
    read_meta,
    size_on_disk_mb,
    write_meta,
)
from textdistill.runtime.onnx import INPUT_NAMES, ONNX_FILE, OUTPUT_NAME, create_session

log = logging.getLogger(__name__)

QUANTIZATIONS = ("int8",)
DEFAULT_OPSET = 17
DEFAULT_ATOL = 1e-3
"""Largest fp32 logit difference accepted between PyTorch and ONNX Runtime."""

# Source metadata carried into the export: provenance, and what evaluate/compare read
# (``teachers`` for the agreement rate, ``mode``/``architecture`` for the report).
_CARRIED_KEYS = (
    "architecture",
    "max_len",
    "num_labels",
    "num_parameters",
    "dev_metrics",
    "mode",
    "teachers",
    "teacher_fingerprint",
    "config",
)
# Files of a source folder that describe its training run, not the model.
_SKIPPED_FILES = ("metrics.jsonl", META_FILE)
_SKIPPED_PREFIXES = ("eval_",)


class ExportValidationError(UserError):
    """The exported model does not reproduce the source model within tolerance."""


@dataclass
class ExportResult:
    """What :func:`export_model` wrote, with sizes before/after and the source's accuracy.

    Sizes are weight sizes in MB (:func:`~textdistill.models.folders.size_on_disk_mb`); for an
    int8 PyTorch folder ``size_mb`` is the quantized state dict's (the folder itself stores fp32).
    ``source_accuracy`` is the source's dev accuracy as its folder records it.
    """

    out: Path
    format: str
    quantize: str | None
    source: Path
    source_kind: str
    source_size_mb: float
    size_mb: float
    source_accuracy: float | None
    validation: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def size_ratio(self) -> float:
        """Exported weight size over the source's (0.25 means four times smaller)."""
        return self.size_mb / self.source_size_mb if self.source_size_mb else float("nan")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["out"], d["source"] = str(self.out), str(self.source)
        d["size_ratio"] = self.size_ratio
        return d


# --------------------------------------------------------------------------- helpers


class _LogitsOnly(nn.Module):
    """``forward(input_ids, attention_mask) -> logits (B, C)``: the graph's only output."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids, attention_mask).logits  # (B, C)


def probe_batch(
    tokenizer: PreTrainedTokenizerBase, max_len: int, rows: int = 8, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Random ``[CLS] tokens [SEP]`` rows of mixed lengths, right-padded: (rows, max_len).

    Lengths run from 2 (an empty text) to ``max_len``, and no row fills the whole width
    except the longest, so every row but one carries padding. Token ids avoid the special
    tokens where the vocabulary allows.
    """
    if max_len < 2:
        raise ValueError(f"max_len must be >= 2, got {max_len}")
    g = torch.Generator().manual_seed(seed)
    vocab = len(tokenizer)
    specials = [int(i) for i in tokenizer.all_special_ids]
    low = max(specials) + 1 if specials and max(specials) + 1 < vocab else 0
    cls_id = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else low
    sep_id = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else low
    lengths = torch.linspace(2, max_len, rows).round().long().tolist()
    lengths = lengths[1::2] + lengths[::2]  # interleave long and short rows
    ids = torch.full((rows, max_len), pad_token_id(tokenizer), dtype=torch.long)
    mask = torch.zeros((rows, max_len), dtype=torch.long)
    for r, n in enumerate(lengths):
        body = torch.randint(low, vocab, (n - 2,), generator=g)
        ids[r, :n] = torch.cat([torch.tensor([cls_id]), body, torch.tensor([sep_id])])
        mask[r, :n] = 1
    return {"input_ids": ids, "attention_mask": mask}


@dataclass
class Probe:
    """A :func:`probe_batch` and the source model's fp32 logits on it."""

    batch: dict[str, torch.Tensor]
    reference: torch.Tensor  # (rows, C)

    @classmethod
    def for_model(cls, loaded: LoadedModel) -> Probe:
        batch = probe_batch(loaded.tokenizer, loaded.max_len)
        with torch.inference_mode():
            reference = loaded.model(**batch).logits.float()
        return cls(batch, reference)

    @property
    def rows(self) -> int:
        return int(self.reference.shape[0])

    def example(self) -> dict[str, torch.Tensor]:
        """The first two rows, cut to the longer one: a tracing input that has padding."""
        width = int(self.batch["attention_mask"][:2].sum(dim=1).max())
        return {k: v[:2, :width] for k, v in self.batch.items()}


def _compare_logits(reference: torch.Tensor, candidate: np.ndarray) -> dict[str, float]:
    got = torch.from_numpy(np.asarray(candidate, dtype=np.float32))
    return {
        "max_abs_diff": float((got - reference).abs().max()),
        "argmax_agreement": float((got.argmax(-1) == reference.argmax(-1)).float().mean()),
    }


def _run_onnx(path: Path, batch: dict[str, torch.Tensor]) -> np.ndarray:
    session = create_session(path, torch.get_num_threads())
    feeds = {name: batch[name].numpy().astype(np.int64) for name in INPUT_NAMES}
    (logits,) = session.run([OUTPUT_NAME], feeds)
    return np.asarray(logits)


@contextlib.contextmanager
def _quiet_root_logging() -> Iterator[None]:
    """Route ONNX Runtime quantization's root-logger messages to this module's DEBUG log.

    The quantizer logs through ``logging.warning``/``logging.info`` on the root logger,
    which would also call ``logging.basicConfig`` and leave a stderr handler behind that
    duplicates every later log line of the application.
    """
    root = logging.getLogger()
    placeholder = logging.NullHandler()
    added = not root.handlers
    if added:
        root.addHandler(placeholder)  # makes basicConfig a no-op

    def to_debug(record: logging.LogRecord) -> bool:
        log.debug("onnxruntime: %s", record.getMessage())
        return False

    root.addFilter(to_debug)
    try:
        yield
    finally:
        root.removeFilter(to_debug)
        if added:
            root.removeHandler(placeholder)


# --------------------------------------------------------------------------- ONNX


def export_onnx(
    model: nn.Module,
    path: str | Path,
    example: dict[str, torch.Tensor],
    *,
    opset: int = DEFAULT_OPSET,
) -> None:
    """Trace ``model`` (our forward contract) to an ONNX file whose only output is the logits.

    ``example`` should contain padding (see the module docstring). Inputs are int64
    ``input_ids`` and ``attention_mask`` of shape (batch, seq); both axes are dynamic.
    """
    wrapper = _LogitsOnly(model).eval()
    args = (example["input_ids"], example["attention_mask"])
    axes = {name: {0: "batch", 1: "seq"} for name in INPUT_NAMES}
    with warnings.catch_warnings(record=True) as caught:
        # The TorchScript exporter warns about its own deprecation and about shape-derived
        # Python values it treats as constants; parity validation is the real check.
        warnings.simplefilter("always")
        torch.onnx.export(
            wrapper,
            args,
            str(path),
            input_names=list(INPUT_NAMES),
            output_names=[OUTPUT_NAME],
            opset_version=opset,
            dynamic_axes={**axes, OUTPUT_NAME: {0: "batch"}},
            dynamo=False,
        )
    for w in caught:
        log.debug("torch.onnx.export: %s: %s", w.category.__name__, w.message)


def quantize_onnx_int8(src: str | Path, dst: str | Path) -> None:
    """Dynamic int8 quantization (QInt8 weights) of the ONNX model ``src`` into ``dst``.

    Runs ONNX Runtime's quantization pre-processing first (shape inference and basic graph
    optimization), as its documentation recommends; symbolic shape inference is skipped
    because it cannot follow the ``min(seq, max_positions)`` slices of BERT graphs.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp, _quiet_root_logging():
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
        quantize_dynamic(str(prepared), str(dst), weight_type=QuantType.QInt8)


def _stamp_onnx_metadata(path: Path, props: dict[str, str]) -> None:
    """Add ``metadata_props`` so that the .onnx file alone still names its labels."""
    import onnx

    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, props)
    model.producer_name = "textdistill"
    model.producer_version = __version__
    onnx.save(model, str(path))


# --------------------------------------------------------------------------- torch int8


def state_dict_mb(model: nn.Module) -> float:
    """Size of ``model.state_dict()`` serialized with ``torch.save``, in MB (10^6 bytes)."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes / 1e6


# --------------------------------------------------------------------------- folders


def default_out(model_dir: str | Path, fmt: str, quantize: str | None) -> Path:
    """``DIR-onnx``, ``DIR-onnx-int8`` or ``DIR-int8``, next to the source folder."""
    src = Path(model_dir)
    suffix = "-".join(p for p in (fmt if fmt == "onnx" else None, quantize) if p)
    return src.with_name(f"{src.name}-{suffix}")


def _check_request(src: Path, meta: dict[str, Any], out: Path, fmt: str, q: str | None) -> None:
    if fmt not in EXPORTERS:
        raise UserError(f"unknown export format {fmt!r}; valid: {', '.join(EXPORTERS)}")
    if q is not None and q not in QUANTIZATIONS:
        raise UserError(f"unknown quantization {q!r}; valid: {', '.join(QUANTIZATIONS)}")
    offered = EXPORTERS[fmt][1]
    if q not in offered:
        # The only such case today: --format torch without quantization is the source itself.
        need = " or ".join(f"--quantize {o}" if o else "no --quantize" for o in offered)
        raise UserError(f"{src}: --format {fmt} needs {need} (plain {fmt} is the source itself)")
    if "source" in meta or meta.get("format", "torch") != "torch":
        raise UserError(
            f"{src} is already an export ({meta.get('format')} {meta.get('quantize') or 'fp32'}); "
            "export from the original teacher or student folder"
        )
    if out.resolve() == src.resolve() or src.resolve() in out.resolve().parents:
        raise UserError(f"--out {out} must not be the source folder or inside it")


def _source_record(src: Path, meta: dict[str, Any]) -> dict[str, Any]:
    dev = meta.get("dev_metrics") or {}
    return {
        "path": str(src.resolve()),
        "kind": meta.get("kind"),
        "fingerprint": meta.get("fingerprint"),
        "weights_mb": round(size_on_disk_mb(src), 6),
        "dev_accuracy": dev.get("accuracy"),
        "dev_macro_f1": dev.get("macro_f1"),
    }


def _base_meta(src: Path, meta: dict[str, Any], fmt: str, quantize: str | None) -> dict[str, Any]:
    carried = {k: meta[k] for k in _CARRIED_KEYS if k in meta}
    # The source's kind: a teacher stays a teacher whatever runs it; ``format`` says how.
    fields = {"format": fmt, "quantize": quantize, "source": _source_record(src, meta), **carried}
    return folder_meta(meta["kind"], fields)


def _finish(tmp: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """Write ``textdistill.json`` with the fingerprint and sizes; returns it.

    The fingerprint is :func:`folders.folder_fingerprint`, which ``load_model`` checks. For
    an int8 PyTorch folder it equals the source's, rightly so for everything that loads it
    through ``load_model`` (the fp32 weights); ``quantize`` tells the two apart.
    """
    meta["weights_mb"] = round(size_on_disk_mb(tmp), 6)
    return write_meta(tmp, meta)


def _write_onnx(
    tmp: Path, loaded: LoadedModel, probe: Probe, *, quantize: str | None, opset: int, atol: float
) -> dict[str, Any]:
    """Export (and quantize) ``loaded`` into ``tmp/model.onnx``; returns the validation record."""
    target = tmp / ONNX_FILE
    fp32 = target if quantize is None else tmp / "model.fp32.onnx"
    export_onnx(loaded.model, fp32, probe.example(), opset=opset)
    exact = _compare_logits(probe.reference, _run_onnx(fp32, probe.batch))
    if exact["max_abs_diff"] > atol:
        raise ExportValidationError(
            f"the ONNX export of {loaded.path} differs from PyTorch by "
            f"{exact['max_abs_diff']:.2e} (> {atol:g}) on padded probe rows; nothing was "
            "written. Try another --opset, or report it with the model's textdistill.json"
        )
    validation: dict[str, Any] = {
        "probe_rows": probe.rows,
        "fp32_max_abs_diff": exact["max_abs_diff"],
        "atol": atol,
        **exact,
    }
    if quantize == "int8":
        quantize_onnx_int8(fp32, target)
        fp32.unlink()
        validation.update(_compare_logits(probe.reference, _run_onnx(target, probe.batch)))
    _stamp_onnx_metadata(
        target,
        {
            "textdistill.labels": json.dumps(loaded.label_names, ensure_ascii=False),
            "textdistill.max_len": str(loaded.max_len),
            "textdistill.quantize": quantize or "none",
        },
    )
    return validation


def _copy_model_files(src: Path, tmp: Path) -> None:
    """Top-level files of the source folder that make up the model (not its training logs)."""
    for f in sorted(src.iterdir()):
        if not f.is_file() or f.name in _SKIPPED_FILES or f.name.startswith(_SKIPPED_PREFIXES):
            continue
        shutil.copy2(f, tmp / f.name)


def _write_torch_int8(tmp: Path, loaded: LoadedModel, probe: Probe) -> dict[str, Any]:
    """Copy the fp32 folder into ``tmp`` and validate load-time quantization against it."""
    _copy_model_files(loaded.path, tmp)
    quantized = quantize_torch_dynamic(loaded.model)
    with torch.inference_mode():
        logits = quantized(**probe.batch).logits.float()  # (rows, C)
    return {
        "probe_rows": probe.rows,
        "quantized_weights_mb": round(state_dict_mb(quantized), 6),
        **_compare_logits(probe.reference, logits.numpy()),
    }


def _onnx_folder(
    tmp: Path, loaded: LoadedModel, probe: Probe, *, quantize: str | None, opset: int, atol: float
) -> dict[str, Any]:
    validation = _write_onnx(tmp, loaded, probe, quantize=quantize, opset=opset, atol=atol)
    loaded.tokenizer.save_pretrained(tmp)
    write_json(tmp / "labels.json", loaded.label_names)
    return {
        "opset": opset,
        "onnx_file": ONNX_FILE,
        "onnxruntime_version": _ort_version(),
        "validation": validation,
    }


def _torch_folder(
    tmp: Path, loaded: LoadedModel, probe: Probe, *, quantize: str | None, opset: int, atol: float
) -> dict[str, Any]:
    validation = _write_torch_int8(tmp, loaded, probe)
    return {
        "quantized_weights_mb": validation.pop("quantized_weights_mb"),
        "validation": validation,
    }


Exporter = Callable[..., dict[str, Any]]
"""``exporter(tmp, loaded, probe, *, quantize, opset, atol) -> metadata fields``: writes the
exported model's files into ``tmp`` after validating them against ``probe``."""

EXPORTERS: dict[str, tuple[Exporter, tuple[str | None, ...]]] = {
    "onnx": (_onnx_folder, (None, "int8")),
    "torch": (_torch_folder, ("int8",)),
}
"""Export format -> (exporter, the quantizations it offers). A new format is an entry here
plus the backend that loads its folders (:data:`textdistill.inference.load.LOADERS`)."""


def _export_into(
    tmp: Path,
    src: Path,
    meta: dict[str, Any],
    *,
    fmt: str,
    quantize: str | None,
    opset: int,
    atol: float,
) -> dict[str, Any]:
    """Write the exported folder's files into ``tmp``; returns its ``textdistill.json``."""
    loaded = load_model(src)
    probe = Probe.for_model(loaded)
    new_meta = _base_meta(src, meta, fmt, quantize)
    exporter, _ = EXPORTERS[fmt]
    new_meta.update(exporter(tmp, loaded, probe, quantize=quantize, opset=opset, atol=atol))
    return _finish(tmp, new_meta)


def export_model(
    model_dir: str | Path,
    out: str | Path | None = None,
    *,
    fmt: str = "onnx",
    quantize: str | None = None,
    opset: int = DEFAULT_OPSET,
    atol: float = DEFAULT_ATOL,
) -> ExportResult:
    """Export a teacher or student folder; see the module docstring for the formats.

    Args:
        model_dir: the source folder (written by ``teacher train`` or ``distill``).
        out: the new folder (default :func:`default_out`); replaced atomically if present.
        fmt: ``"onnx"`` or ``"torch"`` (the latter only with ``quantize="int8"``).
        quantize: ``None`` or ``"int8"``.
        opset: ONNX opset for the TorchScript exporter.
        atol: the largest fp32 logit difference accepted on the probe batch.

    Raises:
        UserError: bad arguments, or a source that is not a teacher/student folder.
        ExportValidationError: the fp32 ONNX export does not match PyTorch within ``atol``.
    """
    src = Path(model_dir)
    meta = read_meta(src)
    target = Path(out) if out is not None else default_out(src, fmt, quantize)
    _check_request(src, meta, target, fmt, quantize)
    log.info("exporting %s to %s (%s, %s)", src, target, fmt, quantize or "fp32")
    with building(target, "export folder") as tmp:
        new_meta = _export_into(tmp, src, meta, fmt=fmt, quantize=quantize, opset=opset, atol=atol)
    size_mb = float(new_meta.get("quantized_weights_mb", new_meta["weights_mb"]))
    result = ExportResult(
        out=target,
        format=fmt,
        quantize=quantize,
        source=src,
        source_kind=str(meta["kind"]),
        source_size_mb=float(new_meta["source"]["weights_mb"]),
        size_mb=size_mb,
        source_accuracy=new_meta["source"]["dev_accuracy"],
        validation=new_meta["validation"],
        meta=new_meta,
    )
    log.info(
        "exported %s: %.3f MB -> %.3f MB; max |logit difference| %.2e on the probe batch",
        target,
        result.source_size_mb,
        result.size_mb,
        result.validation["max_abs_diff"],
    )
    return result


def _ort_version() -> str:
    import onnxruntime

    return str(onnxruntime.__version__)
