"""Transformer student: a BERT with K of the teacher's layers (DistilBERT, TinyBERT).

The student is a ``transformers.BertModel`` (embeddings, K encoder layers, pooler) plus a
linear classifier over the pooled ``[CLS]`` vector, so it exports to ONNX exactly as the
teacher does. With a BERT teacher (:func:`transformer_options_from_teacher`,
:func:`init_transformer_from_teacher`) it takes the teacher's widths and is initialised
from the teacher's embeddings, the chosen layers (``teacher_layers``; by default the last
layer of each of K equal blocks, ``g(i) = (i + 1) * N / K - 1``, TinyBERT's uniform
mapping: layers 1 and 3 of 4 for K = 2), its pooler and its classification head. Without a
teacher it is a randomly initialised BERT of the given sizes.

``ClassifierOutput.hidden`` is the pooled vector (what mode ``hidden`` matches);
``hidden_states`` are the embedding output and every layer's output, (B, T, H) each, which
mode ``layers`` matches to the teacher's layers ``teacher_layers``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn
from transformers import BertConfig, BertModel, PretrainedConfig

from textdistill.models.output import ClassifierOutput
from textdistill.models.students.base import StudentModel, StudentSpecError, check_positive


def uniform_layers(student_layers: int, teacher_layers: int) -> list[int]:
    """TinyBERT's uniform mapping: student layer i <- teacher layer ``(i+1)*N//K - 1``."""
    if not 1 <= student_layers <= teacher_layers:
        raise StudentSpecError(
            f"a transformer student takes 1 to {teacher_layers} of the teacher's "
            f"{teacher_layers} layers, not {student_layers}"
        )
    return [(i + 1) * teacher_layers // student_layers - 1 for i in range(student_layers)]


class TransformerStudent(StudentModel):
    """BERT embeddings -> K layers -> pooler (tanh over [CLS]) -> dropout -> linear.

    Args:
        vocab_size: rows of the word embedding (the teacher's tokenizer).
        num_labels: classes C.
        layers: encoder layers K.
        hidden: width H; ``heads`` must divide it.
        heads: attention heads.
        intermediate: feed-forward width.
        max_positions: position embeddings (the longest input).
        type_vocab_size: token-type embeddings (BERT's 2).
        dropout: hidden and attention dropout, and before the classifier.
        hidden_act: feed-forward activation (BERT's ``gelu``).
        layer_norm_eps: LayerNorm epsilon.
        teacher_layers: the teacher layer each student layer was initialised from (and is
            matched to in mode ``layers``), 0-based; None without a teacher.
        pad_id: padding token id.
    """

    def __init__(
        self,
        vocab_size: int,
        num_labels: int,
        layers: int = 2,
        hidden: int = 256,
        heads: int = 4,
        intermediate: int = 1024,
        max_positions: int = 512,
        type_vocab_size: int = 2,
        dropout: float = 0.1,
        hidden_act: str = "gelu",
        layer_norm_eps: float = 1e-12,
        teacher_layers: Sequence[int] | None = None,
        pad_id: int = 0,
    ) -> None:
        super().__init__()
        check_positive(
            vocab_size=vocab_size,
            num_labels=num_labels,
            layers=layers,
            hidden=hidden,
            heads=heads,
            intermediate=intermediate,
            max_positions=max_positions,
        )
        if hidden % heads:
            raise StudentSpecError(f"hidden {hidden} is not divisible by {heads} heads")
        mapped = [int(i) for i in teacher_layers] if teacher_layers is not None else None
        if mapped is not None and len(mapped) != layers:
            raise StudentSpecError(
                f"teacher_layers names {len(mapped)} layers for a student of {layers}"
            )
        self.config: dict[str, Any] = {
            "arch": "transformer",
            "vocab_size": vocab_size,
            "num_labels": num_labels,
            "layers": layers,
            "hidden": hidden,
            "heads": heads,
            "intermediate": intermediate,
            "max_positions": max_positions,
            "type_vocab_size": type_vocab_size,
            "dropout": dropout,
            "hidden_act": hidden_act,
            "layer_norm_eps": layer_norm_eps,
            "teacher_layers": mapped,
            "pad_id": pad_id,
        }
        self.teacher_layers = mapped
        bert_config = BertConfig(
            vocab_size=vocab_size,
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=intermediate,
            max_position_embeddings=max_positions,
            type_vocab_size=type_vocab_size,
            hidden_dropout_prob=dropout,
            attention_probs_dropout_prob=dropout,
            hidden_act=hidden_act,
            layer_norm_eps=layer_norm_eps,
            pad_token_id=pad_id,
        )
        self.bert = BertModel(bert_config, add_pooling_layer=True)
        self.embedding = self.bert.embeddings.word_embeddings
        self.hidden_size = hidden
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden, num_labels)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> ClassifierOutput:
        out = self.bert(
            input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True
        )
        pooled = out.pooler_output  # (B, H): tanh(W h_[CLS] + b)
        logits = self.classifier(self.dropout(pooled))  # (B, C)
        # (K + 1) x (B, T, H): the embeddings' output, then each layer's.
        return ClassifierOutput(logits=logits, hidden=pooled, hidden_states=out.hidden_states)


def _bert_parts(model: nn.Module, where: str) -> tuple[BertModel, nn.Linear]:
    """The ``BertModel`` and classification layer of a Hugging Face BERT classifier."""
    bert = getattr(model, "bert", None)
    head = getattr(model, "classifier", None)
    if not isinstance(bert, BertModel) or not isinstance(head, nn.Linear):
        raise StudentSpecError(
            f"{where}: a transformer student is initialised from a BERT teacher "
            f"(BertForSequenceClassification), not a {type(model).__name__}; "
            "use --student bilstm, textcnn or static with this teacher"
        )
    return bert, head


def transformer_options_from_teacher(
    teacher_config: PretrainedConfig, options: dict[str, Any]
) -> dict[str, Any]:
    """The student options a BERT teacher decides: its widths, and the layer mapping for
    ``options["layers"]`` (unless ``teacher_layers`` is given). A width in ``options`` that
    differs from the teacher's is an error: the teacher's layers could not be copied."""
    if getattr(teacher_config, "model_type", None) != "bert":
        raise StudentSpecError(
            f"a transformer student needs a BERT teacher; this one is a "
            f"{getattr(teacher_config, 'model_type', '?')!r} model"
        )
    theirs = {
        "hidden": teacher_config.hidden_size,
        "heads": teacher_config.num_attention_heads,
        "intermediate": teacher_config.intermediate_size,
        "max_positions": teacher_config.max_position_embeddings,
        "type_vocab_size": teacher_config.type_vocab_size,
        "hidden_act": teacher_config.hidden_act,
        "layer_norm_eps": teacher_config.layer_norm_eps,
    }
    clash = [
        f"{k}={options[k]} (teacher: {v})" for k, v in theirs.items() if options.get(k, v) != v
    ]
    if clash:
        raise StudentSpecError(
            "a transformer student initialised from the teacher has the teacher's widths; "
            f"drop {', '.join(clash)}"
        )
    layers = int(options.get("layers", 2))
    mapped = options.get("teacher_layers") or uniform_layers(
        layers, int(teacher_config.num_hidden_layers)
    )
    bad = [i for i in mapped if not 0 <= int(i) < int(teacher_config.num_hidden_layers)]
    if bad:
        raise StudentSpecError(
            f"teacher_layers {list(mapped)}: the teacher has layers 0 to "
            f"{int(teacher_config.num_hidden_layers) - 1}"
        )
    return {**options, **theirs, "layers": layers, "teacher_layers": [int(i) for i in mapped]}


def init_transformer_from_teacher(student: TransformerStudent, teacher_hf: nn.Module) -> None:
    """Copy the teacher's embeddings, its layers ``student.teacher_layers``, its pooler and
    its classification head into ``student`` (same widths, same vocabulary)."""
    bert, head = _bert_parts(teacher_hf, "teacher")
    if student.teacher_layers is None:
        raise StudentSpecError("the student was built without teacher_layers")
    if bert.embeddings.word_embeddings.weight.shape != student.embedding.weight.shape:
        theirs = tuple(bert.embeddings.word_embeddings.weight.shape)
        raise StudentSpecError(
            f"the teacher's word embeddings are {theirs} but the student's "
            f"{tuple(student.embedding.weight.shape)}; they must share the teacher's tokenizer"
        )
    student.bert.embeddings.load_state_dict(bert.embeddings.state_dict())
    for i, j in enumerate(student.teacher_layers):
        student.bert.encoder.layer[i].load_state_dict(bert.encoder.layer[j].state_dict())
    if bert.pooler is not None and student.bert.pooler is not None:
        student.bert.pooler.load_state_dict(bert.pooler.state_dict())
    if head.weight.shape == student.classifier.weight.shape:
        student.classifier.load_state_dict(head.state_dict())


TRANSFORMER_PRESETS: dict[str, dict[str, Any]] = {
    # With a teacher: 2 of its layers at its widths; without one, a mini-shaped 2-layer BERT.
    "small": {"layers": 2, "hidden": 256, "heads": 4, "intermediate": 1024, "dropout": 0.1},
}
