"""Teacher sources: whatever a user already has, turned into a teacher folder.

``distill.teachers`` (``--teacher``) may name any of these, and ``textdistill teacher import``
makes a self-describing teacher folder from the first three:

- a textdistill folder (teacher, student, export), used as it is;
- a Hugging Face sequence-classification folder or hub id (its own tokenizer), whose classes
  are matched to the data's by name (:func:`~textdistill.models.teacher.match_labels`);
- a state dict in the classic ``BertModel + Linear`` layout (``bert.*`` and ``fc.*``), on the
  architecture and tokenizer of a base checkpoint (``teacher import --state-dict``);
- a predictions file (JSONL of texts and class probabilities or logits from any model,
  :mod:`textdistill.distill.predictions`);
- an ensemble folder, which expands to its members with the folder's weights and rule.

An imported teacher is evaluated on the selection split (its ``dev_metrics``), so
``evaluate``, ``compare``, ``serve`` and ``export`` treat it like a trained one. Sources named
by ``--teacher`` are imported once into ``<TEXTDISTILL_HOME>/teachers/`` (keyed by the
source's files, the classes and the settings) and reused from there.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, PreTrainedModel

from textdistill.core.config import Config, apply_overrides
from textdistill.core.errors import UserError
from textdistill.core.io import file_sha256
from textdistill.core.paths import textdistill_home
from textdistill.data.corpus import Corpus
from textdistill.data.splits import prepare_training_data
from textdistill.data.tokenization import encode, load_tokenizer, looks_like_path
from textdistill.distill.cache import run_teacher
from textdistill.distill.predictions import import_predictions
from textdistill.evaluation.metrics import selection_metrics
from textdistill.models.ensemble import is_ensemble, read_ensemble
from textdistill.models.folders import META_FILE, LoadedModel, save_teacher
from textdistill.models.teacher import TeacherModel, label_maps, load_classifier

log = logging.getLogger(__name__)

_SEED_HEAD = {"fc.weight": "classifier.weight", "fc.bias": "classifier.bias"}
"""The classic tutorial's head names -> BertForSequenceClassification's."""


def is_textdistill_folder(source: str | Path) -> bool:
    return (Path(source) / META_FILE).is_file()


def read_label_map(path: str | Path) -> dict[str, str]:
    """``teacher label<TAB>data label`` per line (blank lines and ``#`` comments skipped).

    Raises:
        UserError: a missing file, a line without exactly two fields, or a teacher label twice.
    """
    p = Path(path)
    if not p.is_file():
        raise UserError(f"label map not found: {p}")
    mapping: dict[str, str] = {}
    for lineno, line in enumerate(p.read_text(encoding="utf-8-sig").splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = line.split("\t")
        if len(fields) != 2 or not all(f.strip() for f in fields):
            raise UserError(f"{p}:{lineno}: expected 'teacher label<TAB>data label', got {line!r}")
        theirs, ours = (f.strip() for f in fields)
        if theirs in mapping:
            raise UserError(f"{p}:{lineno}: teacher label {theirs!r} is mapped twice")
        mapping[theirs] = ours
    return mapping


def seed_state_dict_classifier(
    state_dict_file: str | Path, base: str, label_names: list[str]
) -> PreTrainedModel:
    """A ``BertModel + Linear(pooled)`` state dict (``bert.*``, ``fc.weight``, ``fc.bias``) as
    a ``BertForSequenceClassification`` on ``base``'s architecture.

    The file is read with ``torch.load(weights_only=True)`` (never unpickled). Its classes are
    the data's, in ``class.txt`` order: the layout carries no names, and the tutorial code
    that writes it indexes ``class.txt``.

    Raises:
        UserError: not a tensor mapping, another number of classes, or keys that are missing
            or unknown for the architecture (both listed).
    """
    path = Path(state_dict_file)
    if not path.is_file():
        raise UserError(f"state dict not found: {path}")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle errors of every kind: the file is not a safe state dict
        raise UserError(
            f"{path}: not a state dict torch.load(weights_only=True) reads: {err}"
        ) from None
    if not isinstance(raw, dict) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise UserError(f"{path}: expected a mapping of parameter names to tensors")
    if "fc.weight" not in raw:
        raise UserError(
            f"{path}: no 'fc.weight'; expected the BertModel + Linear layout (bert.*, fc.*)"
        )
    num_labels = int(raw["fc.weight"].shape[0])
    if num_labels != len(label_names):
        raise UserError(
            f"{path}: its head has {num_labels} classes but the data has {len(label_names)}"
        )
    config = AutoConfig.from_pretrained(base)
    for key, value in label_maps(label_names).items():
        setattr(config, key, value)
    model = AutoModelForSequenceClassification.from_config(config)
    renamed = {_SEED_HEAD.get(k) or k: v for k, v in raw.items()}
    expected = model.state_dict()
    # Buffers that tutorial checkpoints may or may not carry (position ids) are not weights.
    optional = {k for k in expected if k.endswith("position_ids")}
    missing = sorted(set(expected) - set(renamed) - optional)
    unknown = sorted(set(renamed) - set(expected))
    if missing or unknown:
        raise UserError(
            f"{path} does not fit {base}'s architecture: missing keys {missing or 'none'}; "
            f"unknown keys {unknown or 'none'}"
        )
    model.load_state_dict(renamed, strict=False)
    return model


def import_teacher(
    source: str | None,
    out: str | Path,
    cfg: Config,
    corpus: Corpus,
    *,
    label_map: dict[str, str] | None = None,
    state_dict: str | Path | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write a teacher folder for an existing classifier, evaluated on the selection split.

    ``source``: a Hugging Face classification folder or hub id, or with ``state_dict`` the
    base checkpoint whose architecture and tokenizer the state dict fits. Returns the
    folder's ``textdistill.json``.
    """
    if source is None:
        raise UserError("give the checkpoint to import (with --state-dict: its --base)")
    labels = corpus.label_names
    if state_dict is not None:
        hf = seed_state_dict_classifier(state_dict, source, labels)
    else:
        hf = load_classifier(source, labels, label_map=label_map, trained=True)
    tokenizer = load_tokenizer(source)
    max_len = cfg.tokenizer.max_len
    positions = getattr(hf.config, "max_position_embeddings", None)
    if isinstance(positions, int) and max_len > positions:
        raise UserError(f"tokenizer.max_len {max_len} exceeds {source}'s {positions} positions")
    teacher = TeacherModel(hf).eval()
    select = prepare_training_data(cfg, corpus).select
    loaded = LoadedModel(teacher, tokenizer, labels, {}, Path(str(source)), max_len)
    logits, _ = run_teacher(
        loaded, encode(tokenizer, select.texts, max_len), with_pooled=False, progress=False
    )
    metrics = selection_metrics(logits, np.asarray(select.labels), len(labels))
    log.info(
        "imported %s: %s accuracy %.4f, macro-F1 %.4f",
        source,
        select.name,
        metrics["accuracy"],
        metrics["macro_f1"],
    )
    return save_teacher(
        out,
        teacher,
        tokenizer,
        labels,
        cfg=cfg,
        max_len=max_len,
        metrics=metrics,
        extra={
            "initialized_from": str(source),
            "imported": {
                "source": str(source),
                "state_dict": str(state_dict) if state_dict is not None else None,
                "label_map": label_map,
                "select_split": select.name,
            },
            **(extra or {}),
        },
    )


def _source_key(source: str, cfg: Config, corpus: Corpus, label_map: dict[str, str] | None) -> str:
    """What an automatic import depends on: the source's files (or its hub id), the
    classes, the label map, the length and the selection rows."""
    folder = Path(source)
    if folder.is_file():
        files = {folder.name: file_sha256(folder)}
    elif folder.is_dir():
        files = {f.name: file_sha256(f) for f in sorted(folder.iterdir()) if f.is_file()}
    else:
        files = {"hub_id": source}
    blob = json.dumps(
        # data.labels is left out: the class names it gives are in the key already.
        [
            files,
            corpus.label_names,
            label_map,
            cfg.tokenizer.max_len,
            cfg.data.model_dump(exclude={"labels"}),
        ],
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def resolve_teacher(
    source: str, cfg: Config, corpus: Corpus, label_map: dict[str, str] | None = None
) -> str:
    """A textdistill folder for ``source``: itself if it is one, else its automatic import."""
    if is_textdistill_folder(source):
        return source
    predictions = Path(source).suffix == ".jsonl"
    if predictions and not Path(source).is_file():
        raise UserError(f"predictions file not found: {source}")
    out = textdistill_home() / "teachers" / _source_key(source, cfg, corpus, label_map)
    if not is_textdistill_folder(out):
        log.info("importing %s as a teacher (once; kept in %s)", source, out)
        if predictions:
            import_predictions(source, out, corpus.label_names, label_map=label_map)
        else:
            import_teacher(source, out, cfg, corpus, label_map=label_map)
    return str(out)


def expand_teachers(cfg: Config, corpus: Corpus | None = None) -> Config:
    """``cfg`` with every ``distill.teachers`` entry made a textdistill folder: Hugging Face
    sources imported (:func:`resolve_teacher`; needs ``corpus`` for the class names), and an
    ensemble folder replaced by its members, ``distill.teacher_weights`` and
    ``distill.ensemble`` taken from the folder.

    The result is the same config as listing the members by hand, so both share one
    soft-target cache.

    Raises:
        UserError: an ensemble folder next to other teachers, or together with
            ``distill.teacher_weights`` (the folder carries its own); a source that is not a
            textdistill folder when no ``corpus`` is given.
    """
    teachers = cfg.distill.teachers
    if any(is_ensemble(t) for t in teachers):
        if len(teachers) > 1:
            raise UserError(
                "an ensemble folder must be the only --teacher; to combine it with other "
                "models, list all the members as teachers (or make a new ensemble)"
            )
        if cfg.distill.teacher_weights is not None:
            raise UserError(
                f"{teachers[0]} is an ensemble with its own weights; drop --teacher-weight"
            )
        spec = read_ensemble(teachers[0])
        cfg = apply_overrides(
            cfg,
            {
                "distill.teachers": [str(m) for m in spec.members],
                "distill.teacher_weights": spec.weights,
                "distill.ensemble": spec.combine,
            },
        )
    foreign = [t for t in cfg.distill.teachers if not is_textdistill_folder(t)]
    if not foreign:
        return cfg
    for t in foreign:
        if not Path(t).exists() and looks_like_path(t):
            raise UserError(f"model folder not found: {t}")
    if corpus is None:
        raise UserError(f"not textdistill folders: {foreign}; import them with the data first")
    label_map = read_label_map(cfg.distill.label_map) if cfg.distill.label_map else None
    resolved = [resolve_teacher(t, cfg, corpus, label_map) for t in cfg.distill.teachers]
    return apply_overrides(cfg, {"distill.teachers": resolved})
