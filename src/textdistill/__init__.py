"""textdistill: distill a fine-tuned BERT text classifier into a tiny, fast student.

``from textdistill import load; clf = load("runs/student"); clf.predict(["..."])``
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Classifier", "Prediction", "__version__", "load"]

if TYPE_CHECKING:
    from textdistill.inference.load import load
    from textdistill.runtime.classifier import Classifier, Prediction


def __getattr__(name: str) -> Any:
    # Lazy, so that `import textdistill` (and `textdistill --help`) does not import torch.
    if name in ("Classifier", "Prediction"):
        from textdistill.runtime import classifier

        return getattr(classifier, name)
    if name == "load":
        try:
            from textdistill.inference.load import load
        except ImportError:  # the runtime distribution (no torch): exported folders only
            from textdistill.runtime.loader import load  # type: ignore[assignment]
        return load
    raise AttributeError(name)
