"""Predictions as a teacher: soft labels from any model (an LLM behind an API, a model in
another framework, human annotators), read from a JSONL file.

One line per text, either form::

    {"text": "...", "probs": {"sports": 0.9, "finance": 0.1}}      # classes missing: 0
    {"text": "...", "logits": [2.1, -0.3, 0.0], "labels": ["sports", "finance", "game"]}

Class names are matched to the data's ``class.txt`` by name (``--label-map`` renames them
first). Probabilities must be non-negative and sum to 1 within ``1e-3``; they are stored as
log-probabilities (``log max(p, 1e-12)``), which the losses treat as logits: softmax gives
the file's distribution back. Problems are reported as ``file:line`` (up to 20 at once).

``--teacher FILE.jsonl`` imports the file into a teacher folder (``format: predictions``:
``texts.json``, ``logits.npy``, ``labels.json``) once, fingerprinted by its content, and
the soft-target cache looks each transfer text up there: every transfer text must be in the
file. A predictions teacher has no hidden states (mode ``hidden`` says so) and cannot
classify new texts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from textdistill.core.errors import DataError, UserError
from textdistill.core.io import atomic_dir, file_sha256, read_json, write_json
from textdistill.models.folders import META_FILE, folder_meta

log = logging.getLogger(__name__)

PREDICTIONS_FORMAT = "predictions"
PROB_TOLERANCE = 1e-3
_MIN_PROB = 1e-12
_MAX_PROBLEMS = 20


@dataclass
class Predictions:
    """A teacher's outputs by text: ``logits`` (N, C) float32, row ``i`` for ``texts[i]``."""

    texts: list[str]
    logits: np.ndarray
    label_names: list[str]
    path: Path
    fingerprint: str

    def lookup(self, texts: Sequence[str]) -> np.ndarray:
        """Logits (len(texts), C) in the given order.

        Raises:
            UserError: texts the file does not cover (a few are quoted, with the count).
        """
        index = {t: i for i, t in enumerate(self.texts)}
        missing = [t for t in texts if t not in index]
        if missing:
            shown = ", ".join(repr(t[:40]) for t in missing[:5])
            raise UserError(
                f"{self.path}: {len(missing):,} of the {len(texts):,} transfer texts have no "
                f"prediction (e.g. {shown}); the file needs one line per transfer text"
            )
        return self.logits[[index[t] for t in texts]]


def read_predictions(
    path: str | Path, label_names: Sequence[str], label_map: dict[str, str] | None = None
) -> tuple[list[str], np.ndarray]:
    """Validate a predictions JSONL file; returns its texts and logits (N, C) in data order.

    Raises:
        DataError: every problem as ``file:line: ...`` (unknown labels, bad probabilities,
            duplicate texts, malformed lines).
    """
    p = Path(path)
    if not p.is_file():
        raise UserError(f"predictions file not found: {p}")
    classes = {name: i for i, name in enumerate(label_names)}
    rename = label_map or {}
    problems: list[str] = []
    texts: list[str] = []
    rows: list[np.ndarray] = []
    first_line: dict[str, int] = {}
    with p.open(encoding="utf-8-sig") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{p}:{lineno}"
            try:
                record = json.loads(line)
                text, row = _parse_record(record, classes, rename)
            except (ValueError, TypeError, KeyError) as err:
                problems.append(f"{where}: {err}")
            else:
                if text in first_line:
                    problems.append(f"{where}: duplicate text (first on line {first_line[text]})")
                else:
                    first_line[text] = lineno
                    texts.append(text)
                    rows.append(row)
            if len(problems) >= _MAX_PROBLEMS:
                problems.append(f"{p}: stopped after {_MAX_PROBLEMS} problems")
                break
    if not problems and not texts:
        problems.append(f"{p}: no predictions")
    if problems:
        raise DataError(problems)
    return texts, np.stack(rows).astype(np.float32)


def _parse_record(
    record: Any, classes: dict[str, int], rename: dict[str, str]
) -> tuple[str, np.ndarray]:
    if not isinstance(record, dict):
        raise ValueError("expected a JSON object with 'text' and 'probs' or 'logits'")
    text = record.get("text")
    if not isinstance(text, str) or not text.strip():
        raise ValueError("'text' must be a non-empty string")
    known = {"text", "probs", "logits", "labels"}
    if unknown := sorted(set(record) - known):
        raise ValueError(f"unknown key(s) {unknown}; valid: {sorted(known)}")
    if "probs" in record:
        probs = record["probs"]
        if not isinstance(probs, dict) or not probs:
            raise ValueError("'probs' must be an object of class name -> probability")
        dist = np.zeros(len(classes), np.float64)
        for name, value in probs.items():
            dist[_class_index(name, classes, rename)] = _number(value, f"probability of {name!r}")
        if (dist < 0).any():
            raise ValueError("probabilities must not be negative")
        if abs(dist.sum() - 1.0) > PROB_TOLERANCE:
            raise ValueError(f"probabilities sum to {dist.sum():.6f}, not 1 (within 1e-3)")
        return text, np.log(np.maximum(dist, _MIN_PROB))
    if "logits" in record:
        logits, labels = record["logits"], record.get("labels")
        if not isinstance(logits, list) or not isinstance(labels, list):
            raise ValueError("'logits' needs a 'labels' list of the same length, in its order")
        if len(logits) != len(labels) or len(labels) != len(classes):
            raise ValueError(
                f"{len(logits)} logits and {len(labels)} labels for {len(classes)} classes"
            )
        row = np.full(len(classes), np.nan)
        for name, value in zip(labels, logits, strict=True):
            i = _class_index(name, classes, rename)
            if not math.isnan(row[i]):
                raise ValueError(f"label {name!r} appears twice")
            row[i] = _number(value, f"logit of {name!r}")
        return text, row
    raise ValueError("each line needs 'probs' (an object) or 'logits' with 'labels'")


def _class_index(name: Any, classes: dict[str, int], rename: dict[str, str]) -> int:
    label = rename.get(str(name), str(name))
    if label not in classes:
        raise ValueError(f"unknown label {name!r}; the data's classes: {list(classes)}")
    return classes[label]


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number, got {value!r}")
    return float(value)


def is_predictions_folder(path: str | Path) -> bool:
    meta = Path(path) / META_FILE
    return meta.is_file() and read_json(meta).get("format") == PREDICTIONS_FORMAT


def import_predictions(
    source: str | Path,
    out: str | Path,
    label_names: Sequence[str],
    *,
    label_map: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Validate ``source`` and write it as a predictions teacher folder; returns its meta."""
    texts, logits = read_predictions(source, label_names, label_map)
    content = hashlib.sha256()
    content.update(json.dumps([texts, list(label_names)], ensure_ascii=False).encode("utf-8"))
    content.update(logits.tobytes())
    meta = folder_meta(
        "teacher",
        {
            "format": PREDICTIONS_FORMAT,
            "num_labels": len(label_names),
            "rows": len(texts),
            "imported": {"source": str(source), "sha256": file_sha256(source)},
            "label_map": label_map,
            "fingerprint": content.hexdigest()[:32],
            "dev_metrics": {},
        },
    )
    with atomic_dir(out) as tmp:
        write_json(tmp / "texts.json", texts)
        np.save(tmp / "logits.npy", logits)
        write_json(tmp / "labels.json", list(label_names))
        write_json(tmp / META_FILE, meta)
    log.info("imported %d predictions from %s", len(texts), source)
    return meta


def load_predictions(folder: str | Path) -> Predictions:
    path = Path(folder)
    meta = read_json(path / META_FILE)
    texts = read_json(path / "texts.json")
    logits = np.load(path / "logits.npy", allow_pickle=False)
    if logits.shape != (len(texts), int(meta["num_labels"])):
        raise UserError(f"{path}: damaged predictions folder; import the file again")
    return Predictions(
        texts=[str(t) for t in texts],
        logits=logits.astype(np.float32),
        label_names=[str(n) for n in read_json(path / "labels.json")],
        path=path,
        fingerprint=str(meta["fingerprint"]),
    )
