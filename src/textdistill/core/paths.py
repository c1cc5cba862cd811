"""Where textdistill keeps things: its cache root and the work folder of a run."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

ENV_HOME = "TEXTDISTILL_HOME"


def textdistill_home() -> Path:
    """Root of textdistill's caches: ``$TEXTDISTILL_HOME`` or the platform's user cache."""
    env = os.environ.get(ENV_HOME)
    return Path(env).expanduser() if env else Path(platformdirs.user_cache_dir("textdistill"))


def work_dir_for(out: str | Path) -> Path:
    """Checkpoints and logs of a run that writes ``out`` live in ``out.work`` until done."""
    out = Path(out)
    return out.with_name(out.name + ".work")
