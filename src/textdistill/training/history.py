"""The training history, ``metrics.jsonl``: one JSON object per line, written by ``fit``.

Each line has a ``stage`` (``teacher``, ``mlm``, ``distill-soft``, ...) and a ``step``; train
lines carry ``loss``, ``lr`` and the loss terms, eval lines an ``eval`` object of
:func:`~textdistill.evaluation.metrics.selection_metrics`. The one reader and the one writer
of the file live here.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from textdistill.core.io import atomic_write

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"


def read_history(path: str | Path) -> list[dict[str, Any]]:
    """Read a ``metrics.jsonl`` training history; a missing file gives ``[]``.

    Lines that are not JSON objects (e.g. a last line torn by a kill mid-write) are skipped
    with a warning rather than failing the run or report that reads them.
    """
    p = Path(path)
    if not p.is_file():
        return []
    records = []
    for lineno, line in enumerate(p.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if isinstance(record, dict):
            records.append(record)
        else:
            log.warning("%s:%d: not a JSON object, skipped", p, lineno)
    return records


class MetricsLog:
    """``metrics.jsonl`` writer for one stage; only the main process touches the file."""

    def __init__(self, path: Path, stage: str, enabled: bool) -> None:
        self.path = path
        self.stage = stage
        self.enabled = enabled

    def reset(self, history: Sequence[Mapping[str, Any]]) -> None:
        """Keep other stages' lines, replace this stage's with ``history`` (atomically)."""
        if not self.enabled:
            return
        kept = [e for e in read_history(self.path) if e.get("stage") != self.stage]
        lines = [json.dumps(e, ensure_ascii=False) for e in [*kept, *history]]
        with atomic_write(self.path) as f:
            f.write("".join(line + "\n" for line in lines).encode("utf-8"))

    def append(self, entry: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry, ensure_ascii=False) + "\n")
