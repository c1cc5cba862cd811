"""``textdistill run CONFIG`` and ``textdistill demo``: the whole job in one command.

Stages: data -> teacher -> soft targets -> students -> report. Each stage records a key
of its inputs (resolved config section, data hash, teacher fingerprints) in its output;
a second run skips every stage whose key is unchanged, and a killed run resumes from
the stages it finished (and, inside a stage, from its last checkpoint).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from textdistill.config import Config, PipelineStudent, apply_overrides, load_config
from textdistill.data import Corpus
from textdistill.distill import distill
from textdistill.errors import UserError
from textdistill.evaluate import compare_models
from textdistill.folders import META_FILE, read_meta
from textdistill.io import files_sha256, read_json, write_json
from textdistill.teacher_train import train_teacher
from textdistill.workspace import open_corpus

log = logging.getLogger(__name__)


@dataclass
class PipelineResult:
    out: Path
    teacher: Path
    students: dict[str, Path]
    reports: dict[str, Path]
    timings: dict[str, float] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)


def stage_key(*parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def _done(folder: Path, key: str) -> bool:
    meta_file = folder / META_FILE
    return meta_file.is_file() and read_meta(folder).get("stage_key") == key


def student_config(cfg: Config, entry: PipelineStudent, teachers: list[Path]) -> Config:
    """The resolved config of one pipeline student."""
    overrides: dict[str, Any] = {
        "student.arch": entry.arch,
        "student.preset": entry.preset,
        "distill.mode": entry.mode,
        "distill.teachers": [str(t) for t in teachers],
    }
    overrides.update(entry.overrides)
    return apply_overrides(cfg, overrides)


def _student_key(cfg: Config, data_hash: str, teachers: list[Path]) -> str:
    fingerprints = [read_meta(t).get("fingerprint") for t in teachers]
    c = cfg.to_dict()
    return stage_key(
        "student", c["data"], c["tokenizer"], c["student"], c["distill"], data_hash, fingerprints
    )


def _train_students(
    cfg: Config,
    corpus: Corpus,
    out: Path,
    stages: dict[str, Path],
    data_hash: str,
    result: PipelineResult,
) -> None:
    for entry in cfg.pipeline.students:
        missing = [t for t in entry.teachers if t not in stages]
        if missing:
            raise UserError(
                f"pipeline student {entry.name!r}: unknown teacher stage(s) {missing}; "
                f"known so far: {sorted(stages)}"
            )
        teachers = [stages[t] for t in entry.teachers]
        scfg = student_config(cfg, entry, teachers)
        if scfg.distill.mode == "none":
            # The baseline twin still shares the first teacher's tokenizer.
            teachers = teachers[:1]
            scfg = apply_overrides(scfg, {"distill.teachers": [str(t) for t in teachers]})
        folder = out / "students" / entry.name
        key = _student_key(scfg, data_hash, teachers)
        if _done(folder, key):
            log.info("student %s is up to date; skipping", entry.name)
            result.skipped.append(entry.name)
        else:
            t0 = time.perf_counter()
            log.info("stage: student %s (%s)", entry.name, scfg.distill.mode)
            distill(scfg, corpus, folder, stage_key=key)
            result.timings[f"student:{entry.name}"] = time.perf_counter() - t0
        stages[entry.name] = folder
        result.students[entry.name] = folder


def _report(
    cfg: Config,
    corpus: Corpus,
    out: Path,
    models: list[Path],
    names: list[str],
    result: PipelineResult,
) -> None:
    fingerprints = [read_meta(m).get("fingerprint") for m in models]
    for split_name in cfg.pipeline.report_splits:
        if split_name not in corpus.splits:
            log.warning("no %r split in %s; not reported", split_name, corpus.root)
            continue
        folder = out / f"report-{split_name}"
        key = stage_key("report", split_name, names, fingerprints, cfg.to_dict()["eval"])
        stamp = folder / "stage.json"
        if stamp.is_file() and read_json(stamp).get("stage_key") == key:
            log.info("report on %s is up to date; skipping", split_name)
            result.skipped.append(f"report-{split_name}")
        else:
            t0 = time.perf_counter()
            compare_models(models, corpus.split(split_name), folder, names=names, eval_cfg=cfg.eval)
            write_json(stamp, {"stage_key": key})
            result.timings[f"report:{split_name}"] = time.perf_counter() - t0
        result.reports[split_name] = folder / "compare.md"


def run_pipeline(cfg: Config, out: str | Path) -> PipelineResult:
    """Run every stage of ``cfg`` into ``out``, skipping those already done."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    corpus = open_corpus(cfg)
    data_hash = files_sha256(corpus.files())
    teacher_dir = out / "teacher"
    c = cfg.to_dict()
    t_key = stage_key("teacher", c["data"], c["tokenizer"], c["teacher"], data_hash)
    result = PipelineResult(out=out, teacher=teacher_dir, students={}, reports={})
    if _done(teacher_dir, t_key):
        log.info("teacher is up to date; skipping")
        result.skipped.append("teacher")
    else:
        t0 = time.perf_counter()
        log.info("stage: teacher")
        train_teacher(cfg, corpus, teacher_dir, stage_key=t_key)
        result.timings["teacher"] = time.perf_counter() - t0
    stages: dict[str, Path] = {"teacher": teacher_dir}
    _train_students(cfg, corpus, out, stages, data_hash, result)
    names = ["teacher", *result.students]
    models = [teacher_dir, *result.students.values()]
    _report(cfg, corpus, out, models, names, result)
    write_json(out / "pipeline.json", {"timings_s": result.timings, "skipped": result.skipped})
    return result


DEMO_CONFIGS = {"full": "demo.yaml", "quick": "demo-quick.yaml"}


def demo_config(quick: bool = False) -> Config:
    """The built-in demo config (``quick``: a smoke run of about two minutes)."""
    name = DEMO_CONFIGS["quick" if quick else "full"]
    with resources.as_file(resources.files("textdistill") / "configs" / name) as path:
        return load_config(path)
