"""Student architectures: one file each, registered in :data:`STUDENTS`.

A new student is one file (an ``nn.Module`` that honours
:class:`~textdistill.models.students.base.StudentModel`, plus its presets) and one entry in
:data:`STUDENTS`: distillation, model folders, exports and the CLI find it there.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn
from transformers import PretrainedConfig

from textdistill.models.students.base import StudentModel, StudentSpecError
from textdistill.models.students.bilstm import BILSTM_PRESETS, BiLSTMStudent
from textdistill.models.students.embeddings import init_embeddings_from_teacher
from textdistill.models.students.static import STATIC_PRESETS, StaticStudent
from textdistill.models.students.textcnn import TEXTCNN_PRESETS, TextCNNStudent
from textdistill.models.students.transformer import (
    TRANSFORMER_PRESETS,
    TransformerStudent,
    init_transformer_from_teacher,
    transformer_options_from_teacher,
)

__all__ = [
    "BILSTM_PRESETS",
    "STATIC_PRESETS",
    "STUDENTS",
    "STUDENT_TOKENIZERS",
    "TEXTCNN_PRESETS",
    "TRANSFORMER_PRESETS",
    "BiLSTMStudent",
    "StaticStudent",
    "StudentArch",
    "StudentModel",
    "StudentSpecError",
    "TextCNNStudent",
    "TransformerStudent",
    "build_student",
    "build_student_from_config",
    "init_embeddings_from_teacher",
    "student_arch",
    "student_options",
    "student_tokenizer_kind",
]


@dataclass(frozen=True)
class StudentArch:
    """A student architecture: its module class and its named presets (constructor args).

    The options a user may set are the class's constructor arguments other than
    ``vocab_size``, ``num_labels`` and ``pad_id``, which come from the tokenizer and data.
    ``tokenizer``: the one it reads by default (``student.tokenizer: auto``), a key of
    :data:`STUDENT_TOKENIZERS`. A student built *from* its teacher's architecture sets
    ``options_from_teacher`` (the teacher's Hugging Face config and the user's options ->
    the options to build with) and ``init_from_teacher`` (copies the teacher's weights in);
    both run whenever a model teacher is given, mode ``none`` included.
    """

    cls: type[StudentModel]
    presets: dict[str, dict[str, Any]]
    default_preset: str
    tokenizer: str = "shared"
    options_from_teacher: Callable[[PretrainedConfig, dict[str, Any]], dict[str, Any]] | None = None
    init_from_teacher: Callable[[Any, nn.Module], None] | None = None


STUDENTS: dict[str, StudentArch] = {
    "bilstm": StudentArch(BiLSTMStudent, BILSTM_PRESETS, "small"),
    "textcnn": StudentArch(TextCNNStudent, TEXTCNN_PRESETS, "default"),
    "static": StudentArch(StaticStudent, STATIC_PRESETS, "small", tokenizer="chars"),
    "transformer": StudentArch(
        TransformerStudent,
        TRANSFORMER_PRESETS,
        "small",
        options_from_teacher=transformer_options_from_teacher,
        init_from_teacher=init_transformer_from_teacher,
    ),
}
"""Architecture name -> its class and presets (``student.arch``)."""

STUDENT_TOKENIZERS = {
    "shared": "the (first) teacher's tokenizer, else a WordPiece one built from the corpus",
    "chars": "one token per character, built from the corpus (no teacher needed)",
}
"""What ``student.tokenizer`` may name (``auto``: the architecture's own choice)."""


def student_tokenizer_kind(arch: str, configured: str = "auto") -> str:
    """The tokenizer kind a student of ``arch`` reads when the config says ``configured``."""
    if configured == "auto":
        return student_arch(arch).tokenizer
    if configured not in STUDENT_TOKENIZERS:
        raise StudentSpecError(
            f"unknown student tokenizer '{configured}'; "
            f"valid: auto, {', '.join(STUDENT_TOKENIZERS)}"
        )
    return configured


_FIXED_ARGS = ("vocab_size", "num_labels", "pad_id")


def student_arch(arch: str) -> StudentArch:
    """The registered architecture ``arch``; a :class:`StudentSpecError` listing the valid ones."""
    if arch not in STUDENTS:
        raise StudentSpecError(
            f"unknown student architecture '{arch}'; valid: {', '.join(STUDENTS)}"
        )
    return STUDENTS[arch]


def student_options(arch: str) -> list[str]:
    """The options a user may set for ``arch`` (constructor args minus the fixed ones)."""
    params = inspect.signature(student_arch(arch).cls.__init__).parameters
    return [name for name in params if name != "self" and name not in _FIXED_ARGS]


def build_student(
    arch: str,
    preset: str,
    vocab_size: int,
    num_labels: int,
    pad_id: int = 0,
    **overrides: Any,
) -> StudentModel:
    """Build a student from an architecture name, a preset and optional overrides.

    Overrides whose value is ``None`` are ignored (unset config fields).

    Raises:
        StudentSpecError: unknown ``arch`` or ``preset``, or an override that does not
            apply to ``arch`` (e.g. ``num_filters`` for ``bilstm``). It is a ``ValueError``.
    """
    presets = student_arch(arch).presets
    if preset not in presets:
        raise StudentSpecError(
            f"unknown preset '{preset}' for student '{arch}'; valid: {', '.join(presets)}"
        )
    given = {k: v for k, v in overrides.items() if v is not None}
    options = student_options(arch)
    unknown = sorted(set(given) - set(options))
    if unknown:
        raise StudentSpecError(
            f"option(s) {', '.join(unknown)} do not apply to student '{arch}'; "
            f"its options: {', '.join(options)}"
        )
    kwargs = {**presets[preset], **given}
    return student_arch(arch).cls(
        vocab_size=vocab_size, num_labels=num_labels, pad_id=pad_id, **kwargs
    )


def build_student_from_config(config: Mapping[str, Any]) -> StudentModel:
    """Rebuild a student (fresh weights) from its ``config`` dict, e.g. read from JSON."""
    spec = dict(config)
    if "arch" not in spec:
        raise StudentSpecError(f"student config has no 'arch' key: {spec}")
    arch = str(spec.pop("arch"))
    allowed = set(student_options(arch)) | set(_FIXED_ARGS)
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise StudentSpecError(
            f"student config has unknown key(s) {', '.join(unknown)}; "
            f"valid: {', '.join(sorted(allowed))}"
        )
    return student_arch(arch).cls(**spec)
