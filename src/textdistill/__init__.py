"""textdistill: distill a fine-tuned BERT text classifier into a tiny, fast student.

``from textdistill import load; clf = load("runs/student"); clf.predict(["..."])``
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Classifier", "Prediction", "__version__", "load"]

if TYPE_CHECKING:
    from textdistill.predict import Classifier, Prediction, load


def __getattr__(name: str) -> Any:
    # Lazy, so that `import textdistill` (and `textdistill --help`) does not import torch.
    if name in ("Classifier", "Prediction", "load"):
        from textdistill import predict

        return getattr(predict, name)
    raise AttributeError(name)
