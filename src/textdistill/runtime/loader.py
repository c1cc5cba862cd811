"""``load(DIR)`` for exported folders without torch: the runtime's own loader table.

The full package's :func:`textdistill.inference.load.load` opens exported folders with the
same classes (one prediction path); this one refuses, with a message, what needs PyTorch.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from textdistill.core.errors import UserError
from textdistill.core.folder import folder_format, read_meta
from textdistill.runtime.classifier import Classifier
from textdistill.runtime.onnx import OnnxClassifier

RUNTIME_LOADERS: dict[str, Callable[..., Classifier]] = {
    "onnx": OnnxClassifier.from_folder,
}
"""Export format -> the torch-free backend that opens it (``threads=`` is passed on)."""


def load(path: str | Path, *, threads: int | None = None) -> Classifier:
    """Open an exported folder for prediction (``threads``: intra-op threads, None: the
    runtime's default).

    Raises:
        UserError: not a model folder, damaged, or a folder that needs PyTorch (a teacher or
            student folder, an int8 PyTorch export, an ensemble): export it first.
    """
    folder = Path(path)
    meta = read_meta(folder)
    fmt = folder_format(meta)
    if meta.get("kind") == "ensemble" or meta.get("format") == "predictions":
        fmt = str(meta.get("kind") if meta.get("kind") == "ensemble" else "predictions")
    if fmt not in RUNTIME_LOADERS:
        valid = ", ".join(RUNTIME_LOADERS)
        raise UserError(
            f"{folder} is a {fmt} folder, which needs the full textdistill package (PyTorch); "
            f"the runtime opens exported folders ({valid}): `textdistill export --model "
            f"{folder} --format onnx --out OUT` and load OUT"
        )
    return RUNTIME_LOADERS[fmt](folder, threads=threads)
