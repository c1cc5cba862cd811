"""Typed, validated configuration.

One nested model for the whole pipeline. YAML files are read with a safe loader that also
reads ``1e-3``, ``5e-5`` or ``-2e+1`` as floats (plain PyYAML follows YAML 1.1, which wants
a dot and a signed exponent, and hands such values over as strings); unknown keys and wrong
types are errors naming the file and the dotted key. Command-line flags override the file
through :func:`apply_overrides`, and the result is validated the same way.

Numbers are finite everywhere (``inf``/``nan`` would train nothing useful) and a student
trains for at least one epoch. ``teacher.train.epochs: 0`` stays valid: with
``teacher.model`` it imports that checkpoint without fine-tuning; ``teacher.mlm.epochs: 0``
skips MLM pretraining.

Training settings live inside ``teacher`` and ``student`` (``teacher.train``,
``student.train``) rather than in one top-level ``train`` section, because the pipeline
trains both in one run and they need different learning rates and epoch budgets.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)


class ConfigError(ValueError):
    """A configuration file or override that cannot be used; the message says where."""


class _KeyError(ValueError):
    """A cross-field check that failed on one key below the validated section.

    A model validator's error is located at the section (``student``); carrying the sub-key
    lets :func:`_format_error` name ``student.train.epochs`` like a field error.
    """

    def __init__(self, key: str, message: str, got: Any) -> None:
        super().__init__(message)
        self.key = key
        self.message = message
        self.got = got


class _Section(BaseModel):
    # allow_inf_nan=False: every float field rejects inf and nan (a YAML ``.inf`` or a CLI
    # ``--beta inf`` would otherwise be accepted and silently wreck training).
    model_config = ConfigDict(
        extra="forbid", strict=True, validate_assignment=True, allow_inf_nan=False
    )


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also resolves YAML 1.2 floats such as ``1e-3``."""


# YAML 1.2 core-schema floats that the 1.1 regex of PyYAML misses: an exponent without a
# dot (1e-3, 1E-4), an unsigned exponent (1.0e5), a leading dot with a sign (-.5e-3) and a
# signed exponent on an integer (-2e+1). Only forms with an exponent are added, so plain
# integers stay integers (the int resolver is tried first anyway).
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)[eE][-+]?[0-9]+$"),
    list("-+.0123456789"),
)


def _parse_yaml(text: str) -> Any:
    """Parse YAML safely (no Python objects) with the float resolver above."""
    # Safe: _Loader is a SafeLoader subclass, which builds no Python objects.
    return yaml.load(text, Loader=_Loader)


def _weights_ok(weights: list[float] | None) -> list[float] | None:
    """Ensemble weights as the combine rule takes them: non-negative, not all zero."""
    if weights is not None and weights and sum(weights) <= 0:
        raise ValueError("weights must not all be zero")
    return weights


Weights = Annotated[list[Annotated[float, Field(ge=0)]] | None, AfterValidator(_weights_ok)]
"""Combine-rule weights, checked on the field itself (the error names its key)."""


class DataConfig(_Section):
    dir: str | None = None
    """Data folder (THUCNews layout or JSONL); ``None`` means the built-in sample."""
    labels: str | None = None
    """A class list (one name per line, like ``class.txt``) for the folder: JSONL labels not
    in it are errors. Without it (and without ``class.txt``) JSONL classes are inferred from
    the train split. When the folder has a ``class.txt`` as well, the two must agree."""
    train_split: str = "train"
    dev_split: str = "dev"
    test_split: str = "test"
    max_errors: int = Field(50, ge=1)
    """Validation stops collecting problems after this many."""
    holdout: int | None = Field(None, ge=1)
    """Carve this many stratified train rows out as the model-selection split; the dev split
    is then used for reporting only."""
    train_limit: int | None = Field(None, ge=1)
    """Use only the first N (stratified) labelled training rows; the rest become unlabeled."""
    unlabeled_rest: bool = False
    """With ``train_limit``: keep the unused training texts as unlabeled transfer data."""
    seed: int = 13
    """Seed of the holdout and train_limit subsets (fixed, so every stage sees the same)."""


class TokenizerConfig(_Section):
    vocab_size: int = Field(21128, ge=10)
    min_frequency: int = Field(1, ge=1)
    max_len: int = Field(32, ge=4)
    lowercase: bool = True


class TrainConfig(_Section):
    epochs: int = Field(3, ge=0)
    batch_size: int = Field(64, ge=1)
    """Global rows per micro-batch, split evenly across the processes of a multi-process run
    (so a multiple of their number); the same config gives the same run on any number."""
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_ratio: float = Field(0.06, ge=0, le=1)
    max_grad_norm: float = Field(1.0, ge=0)
    grad_accum: int = Field(1, ge=1)
    seed: int = 42
    bf16: bool = False
    eval_every: int = Field(0, ge=0)
    """Also evaluate every N optimizer steps (0: once per epoch only)."""
    eval_subset: int | None = Field(None, ge=1)
    """Evaluate mid-epoch on the first N dev rows only (the end-of-epoch eval uses all)."""
    metric: Literal["macro_f1", "accuracy", "loss"] = "macro_f1"
    patience: int = Field(3, ge=0)
    """Stop after this many evaluations without improvement (0: never stop early)."""
    checkpoint_every: int = Field(200, ge=1)
    """Save a resumable checkpoint every N optimizer steps (and at every epoch end)."""
    resume: bool = False
    progress: bool = True
    log_every: int = Field(0, ge=0)
    """Log the training loss every N optimizer steps (0: about 20 times per epoch)."""


OUTPUT_ONLY = frozenset({"resume", "progress", "checkpoint_every", "log_every"})
""":class:`TrainConfig` fields that change how a run reports or checkpoints, never what it
computes: a resumed run may change them, and stage and cache keys leave them out."""


def _teacher_train() -> TrainConfig:
    return TrainConfig(epochs=3, lr=1e-4, batch_size=64)


def _mlm_train() -> TrainConfig:
    return TrainConfig(epochs=0, lr=5e-4, batch_size=64, metric="loss", patience=0)


def _student_train() -> TrainConfig:
    return TrainConfig(epochs=5, lr=2e-3, batch_size=64, weight_decay=0.0)


class TeacherConfig(_Section):
    model: str | None = None
    """A Hugging Face checkpoint (hub id or local folder) to fine-tune."""
    scratch: str | None = "mini"
    """Preset for a BERT trained from random weights: tiny, mini, small, base, or custom."""
    layers: int | None = Field(None, ge=1)
    hidden: int | None = Field(None, ge=8)
    heads: int | None = Field(None, ge=1)
    intermediate: int | None = Field(None, ge=8)
    dropout: float = Field(0.1, ge=0, lt=1)
    unlabeled: list[str] = Field(default_factory=list)
    """Text files (one text per line) added to MLM pretraining."""
    mlm_probability: float = Field(0.15, gt=0, lt=1)
    mlm: TrainConfig = Field(default_factory=_mlm_train)
    """MLM domain pretraining; ``mlm.epochs`` 0 skips it."""
    train: TrainConfig = Field(default_factory=_teacher_train)

    @model_validator(mode="after")
    def _one_source(self) -> TeacherConfig:
        if self.model is None and self.scratch is None:
            raise ValueError("set teacher.model (a checkpoint) or teacher.scratch (a preset)")
        return self


class StudentConfig(_Section):
    arch: str = "bilstm"
    """A key of :data:`textdistill.models.students.STUDENTS` (bilstm, textcnn, static,
    transformer)."""
    preset: str = "small"
    """bilstm: small or seed; textcnn: default; static: small or large; transformer: small."""
    tokenizer: Literal["auto", "shared", "chars"] = "auto"
    """``shared``: the teacher's tokenizer (WordPiece built from the corpus without one);
    ``chars``: one token per character, built from the corpus; ``auto``: the architecture's
    choice (``chars`` for static, ``shared`` for the others)."""
    options: dict[str, Any] = Field(default_factory=dict)
    """Architecture settings over the preset's, e.g. ``{embed_dim: 64, hidden_dim: 128}``;
    the valid keys are the architecture's constructor arguments (checked when it is built:
    ``bilstm``: embed_dim, hidden_dim, layers, dropout; ``textcnn``: embed_dim, num_filters,
    filter_sizes, dropout; ``static``: embed_dim, buckets, ngram_orders, hidden_dim,
    weighting, dropout; ``transformer``: layers, teacher_layers, dropout - its widths are the
    BERT teacher's when it has one - or, without a teacher, hidden, heads, intermediate)."""
    init_embeddings: Literal["random", "teacher"] = "random"
    """``teacher``: initialise from the teacher's word embeddings projected by PCA."""
    train: TrainConfig = Field(default_factory=_student_train)
    """``train.epochs`` must be at least 1: a student of 0 epochs would be saved untrained."""

    @model_validator(mode="after")
    def _trains(self) -> StudentConfig:
        if self.train.epochs < 1:
            raise _KeyError(
                "train.epochs", "a student trains for at least 1 epoch", self.train.epochs
            )
        return self


class DistillConfig(_Section):
    mode: str = "soft"
    """A distillation mode of :data:`textdistill.distill.losses.MODES` (checked there)."""
    teachers: list[str] = Field(default_factory=list)
    """Teacher folders; more than one means ensemble distillation."""
    teacher_weights: Weights = None
    """One per teacher, finite and non-negative, not all zero (the combine rule's terms;
    a zero drops a member, as in ensemble folders); the count is checked against the
    teachers once ensemble folders are expanded (``distill``)."""
    ensemble: Literal["logprob", "prob"] = "logprob"
    temperature: float = Field(2.0, gt=0)
    temperature_end: float | None = Field(None, gt=0)
    """Anneal linearly from ``temperature`` to this over training (None: constant)."""
    alpha: float = Field(0.7, ge=0, le=1)
    beta: float = Field(1.0, ge=0)
    hidden_loss: Literal["mse", "cosine"] = "mse"
    hard_target: Literal["teacher", "gold"] = "teacher"
    extra: list[str] = Field(default_factory=list)
    """Unlabeled text files (one per line) added to the transfer set."""
    label_map: str | None = None
    """A file of 'teacher label<TAB>data label' lines for teachers whose class names differ
    from the data's (Hugging Face checkpoints with other or generic names)."""
    cache_batch_size: int = Field(256, ge=1)
    augment_copies: int = Field(0, ge=0)
    """Perturbed copies of each transfer text, labelled by the teacher only (0: none)."""
    augment_mask_prob: float = Field(0.1, ge=0, lt=1)
    augment_ngram_prob: float = Field(0.25, ge=0, le=1)
    augment_seed: int = 7


class EvalConfig(_Section):
    threads: int = Field(1, ge=1)
    latency_texts: int = Field(200, ge=1)
    warmup: int = Field(20, ge=0)
    batch_size: int = Field(64, ge=1)


class PipelineStudent(_Section):
    """One student of a pipeline run; unset fields take the ``student``/``distill`` values."""

    name: str
    arch: str | None = None
    preset: str | None = None
    mode: str | None = None
    teachers: list[str] = Field(default_factory=lambda: ["teacher"])
    """Stage names: ``teacher``, students trained earlier in the same run (their logits are
    combined by ``distill.ensemble``), or one of ``pipeline.ensembles`` alone."""
    overrides: dict[str, Any] = Field(default_factory=dict)
    """Dotted config keys for this student only, e.g. ``distill.temperature: 4``."""


class PipelineEnsemble(_Section):
    """An ensemble of earlier stages: reported like a model, usable as a student's teacher."""

    name: str
    members: list[str] = Field(min_length=2)
    """Stage names: ``teacher`` and/or pipeline students."""
    weights: Weights = None
    combine: Literal["logprob", "prob"] = "logprob"


def _default_students() -> list[PipelineStudent]:
    return [
        PipelineStudent(name=f"bilstm-{mode}", arch="bilstm", mode=mode)
        for mode in ("none", "hard", "soft", "hidden")
    ]


class PipelineConfig(_Section):
    """What ``textdistill run`` / ``demo`` trains and reports on."""

    students: list[PipelineStudent] = Field(default_factory=_default_students)
    ensembles: list[PipelineEnsemble] = Field(default_factory=list)
    """Built once their members are trained; a student names one alone in ``teachers``."""
    report_splits: list[str] = Field(default_factory=lambda: ["test"])
    """Splits evaluated in the final report (those present in the data)."""


class Config(_Section):
    data: DataConfig = Field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    student: StudentConfig = Field(default_factory=StudentConfig)
    distill: DistillConfig = Field(default_factory=DistillConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)


def _format_error(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        loc = [str(p) for p in e["loc"]]
        got = e.get("input")
        msg = e["msg"]
        cause = (e.get("ctx") or {}).get("error")
        if isinstance(cause, _KeyError):
            loc.append(cause.key)
            msg, got = cause.message, cause.got
        elif e["type"] == "value_error" and isinstance(cause, ValueError):
            msg = str(cause)  # without pydantic's "Value error, " prefix
        key = ".".join(loc) or "(top level)"
        if e["type"] == "extra_forbidden":
            lines.append(f"{source}: unknown key '{key}'")
        elif isinstance(got, dict):
            lines.append(f"{source}: {key}: {msg}")  # a whole section: too long to echo
        else:
            lines.append(f"{source}: {key}: {msg} (got {got!r})")
    return "\n".join(lines)


def config_from_dict(raw: dict[str, Any], source: str = "<config>") -> Config:
    """Validate a nested dict into a :class:`Config`, raising :class:`ConfigError`."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping, got {type(raw).__name__}")
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_error(err, source)) from None


def load_config(path: str | Path | None = None) -> Config:
    """Read a YAML config (``None``: all defaults)."""
    if path is None:
        return Config()
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: config file not found")
    try:
        raw = _parse_yaml(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"{p}: not valid YAML: {err}") from None
    return config_from_dict(raw or {}, str(p))


def apply_overrides(cfg: Config, overrides: dict[str, Any]) -> Config:
    """Return a copy of ``cfg`` with dotted keys set, e.g. ``{"student.train.lr": 1e-3}``.

    ``None`` values are skipped so that unset CLI flags leave the file's value alone.
    """
    raw = copy.deepcopy(cfg.to_dict())
    for key, value in overrides.items():
        if value is None:
            continue
        node = raw
        section: type[BaseModel] | None = Config  # None once inside a free-form mapping
        parts = key.split(".")
        for part in parts[:-1]:
            if section is not None:
                section = _subsection(section, part, key)
            if part not in node and section is None:
                node[part] = {}
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"override: unknown key '{key}'")
            node = node[part]
        # Keys of a free-form mapping (e.g. student.options) may be new; section keys may not.
        if parts[-1] not in node and section is not None:
            raise ConfigError(f"override: unknown key '{key}'")
        node[parts[-1]] = value
    return config_from_dict(raw, "command line")


def _subsection(section: type[BaseModel], name: str, key: str) -> type[BaseModel] | None:
    """The config class of field ``name`` of ``section``; None for a ``dict[str, Any]`` field
    (whose keys are free) and a :class:`ConfigError` for an unknown or scalar field."""
    field = section.model_fields.get(name)
    if field is None:
        raise ConfigError(f"override: unknown key '{key}'")
    kind = field.annotation
    if isinstance(kind, type) and issubclass(kind, BaseModel):
        return kind
    if getattr(kind, "__origin__", None) is dict:
        return None
    raise ConfigError(f"override: unknown key '{key}'")


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(cfg.to_yaml(), encoding="utf-8")
