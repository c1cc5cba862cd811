"""The teacher: any Hugging Face sequence classifier behind one typed output.

``TeacherModel`` wraps an ``AutoModelForSequenceClassification`` and returns
:class:`ClassifierOutput` with the logits and the pooled sentence vector. For BERT-like
models with a pooler that is BERT's pooler output (tanh of a dense layer over [CLS], 768-d
for bert-base), captured with a forward hook so the model runs once; for models without a
pooler it is the last layer's first-token state.

Hugging Face's load reports and progress bars are silenced where their content is expected
(:func:`quiet_transformers`): loading our own folders, or an MLM checkpoint whose missing
classification head is the point of loading it.
"""

from __future__ import annotations

import contextlib
import logging
import pickle
import re
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    PreTrainedModel,
)
from transformers.utils import logging as hf_logging

from textdistill.core.errors import UserError
from textdistill.models.output import ClassifierOutput

log = logging.getLogger(__name__)

# layers, hidden, heads, intermediate
SCRATCH_PRESETS: dict[str, tuple[int, int, int, int]] = {
    "tiny": (2, 128, 2, 512),
    "mini": (4, 256, 4, 1024),
    "small": (4, 512, 8, 2048),
    "base": (12, 768, 12, 3072),
}


def scratch_bert_config(
    preset: str,
    *,
    vocab_size: int,
    num_labels: int,
    pad_token_id: int = 0,
    max_positions: int = 512,
    dropout: float = 0.1,
    layers: int | None = None,
    hidden: int | None = None,
    heads: int | None = None,
    intermediate: int | None = None,
) -> BertConfig:
    """A ``BertConfig`` for a preset, with explicit sizes overriding it.

    ``preset="custom"`` takes every size from the explicit arguments.
    """
    base: tuple[int, int, int, int]
    if preset == "custom":
        if layers is None or hidden is None or heads is None:
            raise UserError("--scratch custom needs --layers, --hidden and --heads")
        base = (layers, hidden, heads, intermediate or 4 * hidden)
    elif preset in SCRATCH_PRESETS:
        base = SCRATCH_PRESETS[preset]
    else:
        valid = ", ".join([*SCRATCH_PRESETS, "custom"])
        raise UserError(f"unknown scratch preset {preset!r}; valid: {valid}")
    n_layers = layers or base[0]
    n_hidden = hidden or base[1]
    n_heads = heads or base[2]
    n_inter = intermediate or base[3]
    if n_hidden % n_heads:
        raise UserError(f"hidden size {n_hidden} is not divisible by {n_heads} heads")
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=n_hidden,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        intermediate_size=n_inter,
        max_position_embeddings=max_positions,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        pad_token_id=pad_token_id,
    )
    config.num_labels = num_labels
    return config


def label_maps(label_names: list[str]) -> dict[str, Any]:
    return {
        "num_labels": len(label_names),
        "id2label": dict(enumerate(label_names)),
        "label2id": {n: i for i, n in enumerate(label_names)},
    }


def new_scratch_classifier(config: BertConfig, label_names: list[str]) -> PreTrainedModel:
    for key, value in label_maps(label_names).items():
        setattr(config, key, value)
    return BertForSequenceClassification(config)


def new_scratch_mlm(config: BertConfig) -> PreTrainedModel:
    return BertForMaskedLM(config)


_GENERIC_LABEL = re.compile(r"LABEL_[0-9]+")


def checkpoint_labels(name_or_path: str) -> list[str] | None:
    """The class names, in id order, of a checkpoint that has a trained classification head;
    None for one without (a base or masked-LM checkpoint), whose head will be new."""
    try:
        config = AutoConfig.from_pretrained(name_or_path)
    except (OSError, ValueError) as err:
        raise UserError(
            f"cannot load model {name_or_path!r}: {err}\n"
            "Give a local folder, or use --scratch PRESET when no checkpoint can be downloaded."
        ) from None
    heads = [a for a in (config.architectures or []) if a.endswith("ForSequenceClassification")]
    if not heads:
        return None
    return [str(config.id2label[i]) for i in range(config.num_labels)]


def match_labels(
    theirs: list[str],
    ours: list[str],
    *,
    source: str,
    label_map: dict[str, str] | None = None,
) -> list[int]:
    """``order`` with ``ours[i] == renamed(theirs[order[i]])``: our class i is their class
    ``order[i]``. Names are matched, never positions; ``label_map`` renames theirs first.

    Raises:
        UserError: generic names (``LABEL_0`` ...) without a ``label_map``, or label sets that
            differ; the message lists both and points to ``--label-map``.
    """
    renamed = [label_map.get(n, n) for n in theirs] if label_map else list(theirs)
    hint = "pass --label-map FILE (lines 'teacher label<TAB>data label') to say which is which"
    if not label_map and all(_GENERIC_LABEL.fullmatch(n) for n in theirs):
        raise UserError(
            f"{source}: its classes have generic names {_names(theirs)}, so they cannot be "
            f"matched to the data's {_names(ours)} by name; {hint}"
        )
    if len(set(renamed)) != len(renamed) or set(renamed) != set(ours):
        raise UserError(
            f"{source}: its classes {_names(renamed)} are not the data's classes "
            f"{_names(ours)}; {hint}"
        )
    return [renamed.index(name) for name in ours]


def _names(names: list[str], k: int = 12) -> str:
    shown = ", ".join(names[:k]) + (f", ... ({len(names)} in all)" if len(names) > k else "")
    return f"[{shown}]"


def reorder_head(model: PreTrainedModel, order: list[int], label_names: list[str]) -> None:
    """Permute the output rows of the classification head so that logit ``i`` is class
    ``label_names[i]`` (``order`` from :func:`match_labels`), and relabel the config."""
    if order != list(range(len(order))):
        heads = [
            m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == len(order)
        ]
        if not heads:
            raise UserError(
                f"cannot find the classification layer of this {type(model).__name__} to "
                "reorder its classes; export the teacher's predictions and use them instead"
            )
        head = heads[-1]  # the output layer comes last in module order
        index = torch.tensor(order)
        with torch.no_grad():
            head.weight.copy_(head.weight[index])
            if head.bias is not None:
                head.bias.copy_(head.bias[index])
    for key, value in label_maps(label_names).items():
        setattr(model.config, key, value)


def load_classifier(
    name_or_path: str,
    label_names: list[str],
    *,
    label_map: dict[str, str] | None = None,
    trained: bool = False,
) -> PreTrainedModel:
    """Load a checkpoint for sequence classification over ``label_names`` (in that order).

    A checkpoint with a trained head for the same classes keeps it, its outputs reordered by
    name (:func:`match_labels`), so predictions by name are the checkpoint's own. A base or
    masked-LM checkpoint gets a new head. With ``trained=False`` (fine-tuning follows), a
    head for other classes is replaced by a new one; with ``trained=True`` (the checkpoint is
    the teacher as it is) that is an error, as are names that cannot be matched.
    """
    theirs = checkpoint_labels(name_or_path)
    order = None
    if theirs is not None:
        try:
            order = match_labels(theirs, label_names, source=name_or_path, label_map=label_map)
        except UserError:
            if trained:
                raise
            log.warning(
                "%s: its head was trained for other classes %s; fine-tuning starts a new one",
                name_or_path,
                _names(theirs),
            )
    elif trained:
        raise UserError(
            f"{name_or_path}: not a trained classifier (no *ForSequenceClassification head); "
            "fine-tune it with `textdistill teacher train --model` instead"
        )
    try:
        if order is None:
            return AutoModelForSequenceClassification.from_pretrained(
                name_or_path, ignore_mismatched_sizes=True, **label_maps(label_names)
            )
        model = AutoModelForSequenceClassification.from_pretrained(name_or_path)
    except (OSError, ValueError) as err:  # missing files / unknown architecture
        raise UserError(f"cannot load model {name_or_path!r}: {err}") from None
    except pickle.UnpicklingError:
        # transformers reads a pytorch_model.bin with torch.load(weights_only=True): a pickle
        # holding anything but tensors is refused there, and must be refused here in words.
        raise UserError(
            f"cannot load model {name_or_path!r}: refused its pickled weights file, which "
            "holds more than plain tensors (torch's weights-only loader stopped at the first "
            "object); nothing was unpickled. Convert the checkpoint to safetensors where you "
            "trust it"
        ) from None
    reorder_head(model, order, label_names)
    return model


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence ``transformers`` below errors and hide its progress bars, then restore both."""
    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _pooler_name(model: PreTrainedModel) -> str | None:
    """Name (within ``model``) of the module whose output is the ``pooler_output``, if any.

    BERT's pooler includes its tanh; ALBERT keeps the tanh apart (``pooler_activation``), so
    its output, not the dense layer's, is the pooled vector.
    """
    base = model.base_model
    if not isinstance(getattr(base, "pooler", None), nn.Module):
        return None
    leaf = (
        "pooler_activation"
        if isinstance(getattr(base, "pooler_activation", None), nn.Module)
        else "pooler"
    )
    prefix = model.base_model_prefix if base is not model else ""
    return f"{prefix}.{leaf}" if prefix else leaf


class TeacherModel(nn.Module):
    """``forward(input_ids, attention_mask) -> ClassifierOutput(logits, pooled)``."""

    def __init__(self, hf_model: PreTrainedModel) -> None:
        super().__init__()
        self.hf = hf_model
        self.hidden_size = int(hf_model.config.hidden_size)
        # A name, not the module: a second reference would register the pooler twice and
        # duplicate its weights in ``state_dict``.
        self._pooler = _pooler_name(hf_model)

    @property
    def num_labels(self) -> int:
        return len(self.hf.config.id2label or {})

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> ClassifierOutput:
        captured: list[torch.Tensor] = []
        handle = None
        if self._pooler is not None:
            pooler = self.hf.get_submodule(self._pooler)
            handle = pooler.register_forward_hook(lambda _m, _i, out: captured.append(out))
        try:
            out = self.hf(
                input_ids=input_ids,
                attention_mask=attention_mask,
                output_hidden_states=self._pooler is None,
            )
        finally:
            if handle is not None:
                handle.remove()
        # (B, H): the pooler's output, else the last layer's first token
        pooled = captured[-1] if captured else out.hidden_states[-1][:, 0]
        return ClassifierOutput(logits=out.logits, hidden=pooled)

    def word_embeddings(self) -> torch.Tensor:
        """The input word-embedding matrix (V, H), for initialising a student."""
        emb = self.hf.get_input_embeddings()
        assert isinstance(emb, nn.Embedding)
        return emb.weight.detach()
