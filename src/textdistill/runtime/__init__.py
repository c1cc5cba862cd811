"""The torch-free runtime: load an exported folder and predict with numpy, tokenizers and
ONNX Runtime only (no torch, no transformers).

``from textdistill.runtime import load; load("model-onnx").predict(["..."])``

Its modules import only the standard library, numpy, ``tokenizers``, ``onnxruntime`` and
the standard-library parts of :mod:`textdistill.core` (``errors``, ``io``, ``text``,
``folder``); ``tests/test_runtime.py`` runs it where importing torch or transformers fails.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["Classifier", "Prediction", "load"]

if TYPE_CHECKING:
    from textdistill.runtime.classifier import Classifier, Prediction
    from textdistill.runtime.loader import load


def __getattr__(name: str) -> Any:
    # Lazy: importing the package costs nothing until a model is loaded.
    if name in ("Classifier", "Prediction"):
        from textdistill.runtime import classifier

        return getattr(classifier, name)
    if name == "load":
        from textdistill.runtime.loader import load

        return load
    raise AttributeError(name)
