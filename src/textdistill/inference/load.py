"""``load(DIR)``: open any model folder with the backend that runs it.

The only module that knows every backend. A folder's storage format
(:func:`~textdistill.models.folders.folder_format`) picks its loader from :data:`LOADERS`;
an ensemble folder loads each member the same way. A new export format is an exporter in
:mod:`textdistill.deploy.export` plus one entry here (and, for a torch-free backend, in
:data:`textdistill.runtime.loader.RUNTIME_LOADERS`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import torch

from textdistill.core.errors import UserError
from textdistill.inference.ensemble import EnsembleClassifier
from textdistill.inference.torch import TorchClassifier
from textdistill.models.ensemble import ENSEMBLE_KIND, read_ensemble
from textdistill.models.folders import folder_format, read_meta
from textdistill.runtime.classifier import Classifier
from textdistill.runtime.onnx import OnnxClassifier

LOADERS: dict[str, Callable[[Path], Classifier]] = {
    "torch": TorchClassifier.from_folder,
    # The runtime's own class (one prediction path); its threads follow torch's setting, so
    # evaluate --threads and serve --threads govern both backends alike.
    "onnx": functools.partial(OnnxClassifier.from_folder, threads_from=torch.get_num_threads),
}
"""Folder format -> the backend that opens it; also the valid ``backend`` names."""


def check_backend(path: str | Path, fmt: str, backend: str | None) -> None:
    """Raise a :class:`UserError` when ``backend`` cannot run a folder of format ``fmt``.

    An ONNX backend needs an exported folder: converting on the fly would hide a slow,
    validation-worthy step inside model loading, so the message says how to export instead.
    """
    if backend is None or backend == fmt:
        return
    if backend not in LOADERS:
        raise UserError(f"unknown backend {backend!r}; valid: {', '.join(LOADERS)}")
    if backend == "onnx":
        raise UserError(
            f"{path} is a PyTorch model folder; export it first with "
            f"`textdistill export --model {path} --format onnx --out OUT` and load OUT"
        )
    raise UserError(
        f"{path} is an ONNX export; load its source model folder for the torch backend "
        "(or use --backend onnx)"
    )


def load(path: str | Path, *, backend: str | None = None) -> Classifier:
    """Load a model folder (teacher, student, ensemble or export) for prediction.

    ``backend``: ``None`` runs the folder as what it is (an ONNX export on ONNX Runtime,
    anything else on PyTorch); ``"torch"`` or ``"onnx"`` insist on one and raise a
    :class:`~textdistill.core.errors.UserError` for a folder of the other kind. For an ensemble
    folder it applies to every member.
    """
    folder = Path(path)
    meta = read_meta(folder)
    if meta.get("kind") == ENSEMBLE_KIND:
        spec = read_ensemble(folder)
        members = [load(m, backend=backend) for m in spec.members]
        return EnsembleClassifier(folder, meta, spec, members)
    if meta.get("format") == "predictions":
        raise UserError(
            f"{folder} holds a teacher's predictions for fixed texts; it cannot classify "
            "new ones (use it as --teacher for distill, or load a model folder)"
        )
    fmt = folder_format(meta)
    check_backend(folder, fmt, backend)
    return LOADERS[fmt](folder)
