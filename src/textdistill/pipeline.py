"""``textdistill run CONFIG`` and ``textdistill demo``: the whole job in one command.

Stages: data -> teacher -> soft targets -> students -> report. Each stage records a key
of its inputs (resolved config section, data hash, teacher fingerprints) in its output;
a second run skips every stage whose key is unchanged, and a killed run resumes from
the stages it finished (and, inside a stage, from its last checkpoint).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from textdistill.core import distributed
from textdistill.core.config import (
    OUTPUT_ONLY,
    Config,
    PipelineEnsemble,
    PipelineStudent,
    apply_overrides,
    load_config,
)
from textdistill.core.errors import UserError
from textdistill.core.io import files_sha256, read_json, write_json
from textdistill.core.paths import work_dir_for
from textdistill.data.corpus import Corpus, Split
from textdistill.data.splits import open_corpus
from textdistill.distill.losses import mode_spec
from textdistill.distill.run import distill, distill_mode, preset_for
from textdistill.distill.teacher_train import train_teacher
from textdistill.evaluation.evaluate import compare_models
from textdistill.models.ensemble import ensemble_fingerprint, is_ensemble, make_ensemble
from textdistill.models.folders import META_FILE, read_meta

log = logging.getLogger(__name__)


@dataclass
class PipelineResult:
    """Where a run put everything; ``skipped`` lists the stages found up to date (in stage
    order) and ``timings`` the seconds of those that ran."""

    out: Path
    teacher: Path
    students: dict[str, Path]
    reports: dict[str, Path]
    ensembles: dict[str, Path] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)


STAGE_FILE = "stage.json"
"""In a stage's work folder while it runs, and in a report folder when it is written: the
key of the inputs it was (or is being) built from."""
TEACHER_STAGE = "teacher"
# Training settings that change how a run reports progress or recovers, not what it makes.
_TRAIN_SECTIONS = (("teacher", "train"), ("teacher", "mlm"), ("student", "train"))


def stage_key(*parts: Any) -> str:
    """A short hash of JSON-able ``parts``: equal keys mean equal stage inputs."""
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def _done(folder: Path, key: str) -> bool:
    meta_file = folder / META_FILE
    return meta_file.is_file() and read_meta(folder).get("stage_key") == key


def _key_config(cfg: Config, *sections: str) -> dict[str, Any]:
    """The config sections a stage depends on, without what cannot change its output.

    The locations of the data folder and of a ``data.labels`` file are left out (their
    files' hash is part of every key, so moved files are the same data) and so are the
    training settings in :data:`~textdistill.core.config.OUTPUT_ONLY`.
    """
    c = cfg.to_dict()
    out = {name: copy.deepcopy(c[name]) for name in sections}
    if "data" in out:
        out["data"].pop("dir", None)
        out["data"].pop("labels", None)
    for section, train in _TRAIN_SECTIONS:
        if section in out:
            for key in OUTPUT_ONLY:
                out[section][train].pop(key, None)
    return out


def _resume_flag(folder: Path, key: str) -> bool:
    """Whether to resume the stage that writes ``folder`` from its work folder.

    A stage's work folder records the key it was started with. With the same key, a killed
    earlier attempt is continued from its last checkpoint; with another (the config or data
    changed since), its leftovers are removed and the stage starts over. Collective: the
    main process decides and tidies up, every process gets the answer.
    """
    return distributed.on_main(lambda: _claim_work_dir(folder, key))


def _claim_work_dir(folder: Path, key: str) -> bool:
    work = work_dir_for(folder)
    stamp = work / STAGE_FILE
    if stamp.is_file() and read_json(stamp).get("stage_key") == key:
        log.info("resuming the interrupted stage from %s", work)
        return True
    if work.exists():
        shutil.rmtree(work)
    write_json(stamp, {"stage_key": key})
    return False


def student_config(cfg: Config, entry: PipelineStudent, teachers: list[Path]) -> Config:
    """The resolved config of one pipeline student.

    An ``arch`` other than ``student.arch`` without a ``preset`` takes that architecture's
    default preset (``student.preset`` names a size of ``student.arch``).
    """
    preset = entry.preset
    if entry.arch is not None and preset is None:
        preset = preset_for(entry.arch, cfg.student.arch, cfg.student.preset)
    overrides: dict[str, Any] = {
        "student.arch": entry.arch,
        "student.preset": preset,
        "distill.mode": entry.mode,
        "distill.teachers": [str(t) for t in teachers],
    }
    overrides.update(entry.overrides)
    return apply_overrides(cfg, overrides)


def _student_key(
    cfg: Config, data_hash: str, teacher_names: list[str], teachers: list[Path]
) -> str:
    # Teachers enter by stage name and fingerprint, not path, so a moved run folder is
    # still up to date while a retrained teacher invalidates its students.
    fingerprints = [read_meta(t).get("fingerprint") for t in teachers]
    c = _key_config(cfg, "data", "tokenizer", "student", "distill")
    c["distill"].pop("teachers", None)
    return stage_key("student", c, data_hash, teacher_names, fingerprints)


def _usable_folder_name(name: str) -> bool:
    return (
        bool(name)
        and name == name.strip()
        and name not in (".", "..")
        and not any(sep in name for sep in ("/", "\\"))
    )


def check_pipeline(cfg: Config) -> None:
    """Stage names (students and ensembles) must be unique folder names, other than the
    teacher's; every student's teachers must be stages that come before it, and an
    ensemble, which must be a student's only teacher, must have all its members trained
    before that student; ensemble members must be the teacher or students.

    Raises:
        UserError: naming the offending student or ensemble.
    """
    ensembles = {e.name: e for e in cfg.pipeline.ensembles}
    students = [e.name for e in cfg.pipeline.students]
    seen = {TEACHER_STAGE}
    for name in [*students, *(e.name for e in cfg.pipeline.ensembles)]:
        if not _usable_folder_name(name):
            raise UserError(f"pipeline stage name {name!r} is not a usable folder name")
        if name in seen:
            raise UserError(
                f"pipeline stage name {name!r} is used twice (or is the teacher's); "
                "give every student and ensemble its own name"
            )
        seen.add(name)
    for ens in ensembles.values():
        unknown = [m for m in ens.members if m != TEACHER_STAGE and m not in students]
        if unknown:
            raise UserError(
                f"pipeline ensemble {ens.name!r}: unknown member(s) {unknown}; members are "
                f"the teacher or students: {[TEACHER_STAGE, *students]}"
            )
        if ens.weights is not None and len(ens.weights) != len(ens.members):
            raise UserError(
                f"pipeline ensemble {ens.name!r}: {len(ens.weights)} weight(s) for "
                f"{len(ens.members)} members"
            )
    known = {TEACHER_STAGE}
    for i, entry in enumerate(cfg.pipeline.students):
        name = entry.name
        try:
            mode_spec(entry.mode or cfg.distill.mode)
        except ValueError as err:
            where = f"pipeline.students.{i}.mode" if entry.mode else "distill.mode"
            raise UserError(f"{where} (student {name!r}): {err}") from None
        if not entry.teachers:
            raise UserError(f"pipeline student {name!r}: give at least one teacher stage")
        for t in entry.teachers:
            if t in ensembles:
                if len(entry.teachers) > 1:
                    raise UserError(
                        f"pipeline student {name!r}: ensemble {t!r} must be its only teacher"
                    )
                late = [m for m in ensembles[t].members if m not in known]
                if late:
                    raise UserError(
                        f"pipeline student {name!r}: ensemble {t!r} needs {late} trained "
                        "first; list the student after them"
                    )
            elif t not in known:
                raise UserError(
                    f"pipeline student {name!r}: unknown teacher stage {t!r}; a student may "
                    f"learn from {sorted(known)} (stages listed before it) or an ensemble "
                    f"of them ({sorted(ensembles)})"
                )
        known.add(name)


def _build_ensemble(
    ens: PipelineEnsemble, out: Path, stages: dict[str, Path], result: PipelineResult
) -> Path:
    """The ensemble's folder, made (in no time: it holds no weights) unless up to date."""
    folder = out / "ensembles" / ens.name
    if ens.name in result.ensembles:
        return folder
    members = [stages[m] for m in ens.members]
    fingerprints = [str(read_meta(m).get("fingerprint", "")) for m in members]
    expected = ensemble_fingerprint(fingerprints, ens.weights, ens.combine)
    if is_ensemble(folder) and read_meta(folder).get("fingerprint") == expected:
        result.skipped.append(ens.name)
    else:
        log.info("stage: ensemble %s of %s", ens.name, ", ".join(ens.members))
        distributed.on_main(
            lambda: make_ensemble(members, folder, weights=ens.weights, combine=ens.combine)
        )
    result.ensembles[ens.name] = folder
    return folder


def _train_students(
    cfg: Config,
    corpus: Corpus,
    out: Path,
    stages: dict[str, Path],
    data_hash: str,
    result: PipelineResult,
) -> None:
    ensembles = {e.name: e for e in cfg.pipeline.ensembles}
    for entry in cfg.pipeline.students:
        names = list(entry.teachers)
        teachers = [
            _build_ensemble(ensembles[t], out, stages, result) if t in ensembles else stages[t]
            for t in names
        ]
        scfg = student_config(cfg, entry, teachers)
        if not distill_mode(scfg).needs_teacher:
            # The baseline twin learns from gold labels only but shares the first
            # teacher's tokenizer, so it sees exactly the distilled students' input ids.
            names, teachers = names[:1], teachers[:1]
            scfg = apply_overrides(scfg, {"distill.teachers": [str(t) for t in teachers]})
        folder = out / "students" / entry.name
        key = _student_key(scfg, data_hash, names, teachers)
        if _done(folder, key):
            log.info("student %s is up to date; skipping", entry.name)
            result.skipped.append(entry.name)
        else:
            t0 = time.perf_counter()
            log.info("stage: student %s (%s)", entry.name, scfg.distill.mode)
            if _resume_flag(folder, key):
                scfg = apply_overrides(scfg, {"student.train.resume": True})
            distill(scfg, corpus, folder, stage_key=key)
            result.timings[f"student:{entry.name}"] = time.perf_counter() - t0
        stages[entry.name] = folder
        result.students[entry.name] = folder


def _write_report(
    cfg: Config, models: list[Path], names: list[str], split: Split, folder: Path, key: str
) -> None:
    stamp = folder / STAGE_FILE
    stamp.unlink(missing_ok=True)  # a report cut short must not pass as finished
    compare_models(models, split, folder, names=names, eval_cfg=cfg.eval)
    write_json(stamp, {"stage_key": key})


def _report(
    cfg: Config,
    corpus: Corpus,
    out: Path,
    models: list[Path],
    names: list[str],
    data_hash: str,
    result: PipelineResult,
) -> None:
    fingerprints = [read_meta(m).get("fingerprint") for m in models]
    eval_cfg = _key_config(cfg, "eval")
    for split_name in cfg.pipeline.report_splits:
        if split_name not in corpus.splits:
            log.warning("no %r split in %s; not reported", split_name, corpus.root)
            continue
        folder = out / f"report-{split_name}"
        # The data hash too: new test rows change the report even when no model changed.
        key = stage_key("report", split_name, names, fingerprints, eval_cfg, data_hash)
        stamp = folder / STAGE_FILE
        if stamp.is_file() and read_json(stamp).get("stage_key") == key:
            log.info("report on %s is up to date; skipping", split_name)
            result.skipped.append(f"report-{split_name}")
        else:
            t0 = time.perf_counter()
            write = functools.partial(
                _write_report, cfg, models, names, corpus.split(split_name), folder, key
            )
            distributed.on_main(write)  # one process measures; the others wait
            result.timings[f"report:{split_name}"] = time.perf_counter() - t0
        result.reports[split_name] = folder / "compare.md"


def _train_teacher_stage(
    cfg: Config, corpus: Corpus, folder: Path, data_hash: str, result: PipelineResult
) -> None:
    key = stage_key("teacher", _key_config(cfg, "data", "tokenizer", "teacher"), data_hash)
    if _done(folder, key):
        log.info("teacher is up to date; skipping")
        result.skipped.append(TEACHER_STAGE)
        return
    t0 = time.perf_counter()
    log.info("stage: teacher")
    if _resume_flag(folder, key):
        cfg = apply_overrides(cfg, {"teacher.train.resume": True, "teacher.mlm.resume": True})
    train_teacher(cfg, corpus, folder, stage_key=key)
    result.timings[TEACHER_STAGE] = time.perf_counter() - t0


def run_pipeline(cfg: Config, out: str | Path) -> PipelineResult:
    """Run every stage of ``cfg`` into ``out``, skipping those already done.

    Layout of ``out``: ``teacher/``, ``students/<name>/``, ``ensembles/<name>/``,
    ``report-<split>/`` and
    ``pipeline.json`` (stage times of this run and of the runs that built the skipped
    stages, and the stages skipped by this run).

    Raises:
        UserError: an invalid ``pipeline`` section (see :func:`check_pipeline`), or any
            stage's user error.
    """
    check_pipeline(cfg)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    corpus = open_corpus(cfg)
    data_hash = files_sha256(corpus.files())
    teacher_dir = out / TEACHER_STAGE
    result = PipelineResult(out=out, teacher=teacher_dir, students={}, reports={})
    _train_teacher_stage(cfg, corpus, teacher_dir, data_hash, result)
    stages: dict[str, Path] = {TEACHER_STAGE: teacher_dir}
    _train_students(cfg, corpus, out, stages, data_hash, result)
    for ens in cfg.pipeline.ensembles:
        _build_ensemble(ens, out, stages, result)
    # Ensembles in config order, whenever each was built.
    shown = {e.name: result.ensembles[e.name] for e in cfg.pipeline.ensembles}
    names = [TEACHER_STAGE, *shown, *result.students]
    models = [teacher_dir, *shown.values(), *result.students.values()]
    _report(cfg, corpus, out, models, names, data_hash, result)
    distributed.on_main(lambda: _write_summary(cfg, out, result))
    return result


def _write_summary(cfg: Config, out: Path, result: PipelineResult) -> None:
    """``pipeline.json``: this run's stage times and skipped stages, plus ``stage_seconds``,
    the time each stage of the config took in the run that built it (kept from the earlier
    summary for the stages this run skipped), so a resumed run still reports every stage."""
    stages = [
        TEACHER_STAGE,
        *(f"student:{s.name}" for s in cfg.pipeline.students),
        *(f"report:{split}" for split in cfg.pipeline.report_splits),
    ]
    path = out / "pipeline.json"
    try:
        earlier = read_json(path).get("stage_seconds", {}) if path.is_file() else {}
    except (OSError, ValueError, AttributeError):
        earlier = {}  # an unreadable summary only loses the earlier times
    seconds = {k: earlier[k] for k in stages if k in earlier and k not in result.timings}
    seconds.update(result.timings)
    summary = {
        "timings_s": result.timings,
        "skipped": result.skipped,
        "stage_seconds": {k: seconds[k] for k in stages if k in seconds},
    }
    write_json(path, summary)


DEMO_CONFIGS = {"full": "demo.yaml", "quick": "demo-quick.yaml"}


def demo_config(quick: bool = False) -> Config:
    """The built-in demo config (``quick``: a smoke run of about two minutes)."""
    name = DEMO_CONFIGS["quick" if quick else "full"]
    with resources.as_file(resources.files("textdistill") / "configs" / name) as path:
        return load_config(path)
