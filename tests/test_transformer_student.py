"""The transformer student: layer mapping, initialisation from a BERT teacher, mode layers."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, DistilBertConfig

from textdistill.distill.losses import distillation_loss, layer_mse
from textdistill.models.output import ClassifierOutput
from textdistill.models.students import StudentSpecError, build_student
from textdistill.models.students.transformer import (
    TransformerStudent,
    init_transformer_from_teacher,
    transformer_options_from_teacher,
    uniform_layers,
)

VOCAB, LABELS = 40, 3


def _teacher(layers: int = 4) -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        num_labels=LABELS,
    )
    return BertForSequenceClassification(config).eval()


def _from_teacher(teacher: BertForSequenceClassification, **options: object) -> TransformerStudent:
    built = transformer_options_from_teacher(teacher.config, dict(options))
    student = build_student("transformer", "small", VOCAB, LABELS, **built)
    assert isinstance(student, TransformerStudent)
    init_transformer_from_teacher(student, teacher)
    return student.eval()


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.tensor([[2, 7, 9, 11, 3], [2, 5, 3, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    return ids, mask


@pytest.mark.parametrize(
    ("k", "n", "expected"),
    [
        (2, 4, [1, 3]),
        (1, 4, [3]),
        (4, 4, [0, 1, 2, 3]),
        (6, 12, [1, 3, 5, 7, 9, 11]),
        (3, 12, [3, 7, 11]),
    ],
)
def test_uniform_layer_mapping(k: int, n: int, expected: list[int]) -> None:
    assert uniform_layers(k, n) == expected


def test_uniform_layer_mapping_refuses_impossible_sizes() -> None:
    with pytest.raises(StudentSpecError, match="1 to 4 of the teacher's 4 layers, not 5"):
        uniform_layers(5, 4)
    with pytest.raises(StudentSpecError, match="not 0"):
        uniform_layers(0, 4)


def test_a_student_of_every_teacher_layer_is_the_teacher() -> None:
    teacher = _teacher()
    student = _from_teacher(teacher, layers=4)
    ids, mask = _batch()
    with torch.no_grad():
        want = teacher(input_ids=ids, attention_mask=mask).logits
        got = student(ids, mask)
    torch.testing.assert_close(got.logits, want, atol=1e-6, rtol=0)
    assert got.hidden_states is not None and len(got.hidden_states) == 5


def test_two_of_four_layers_copy_layers_1_and_3() -> None:
    teacher = _teacher()
    student = _from_teacher(teacher, layers=2)
    assert student.teacher_layers == [1, 3]
    assert student.config["hidden"] == 16 and student.config["intermediate"] == 32
    for mine, theirs in ((0, 1), (1, 3)):
        a = student.bert.encoder.layer[mine].state_dict()
        b = teacher.bert.encoder.layer[theirs].state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(student.embedding.weight, teacher.bert.embeddings.word_embeddings.weight)
    assert torch.equal(student.classifier.weight, teacher.classifier.weight)
    # The copies are copies: training the student leaves the teacher as it was.
    before = teacher.bert.encoder.layer[1].output.dense.weight.clone()
    with torch.no_grad():
        student.bert.encoder.layer[0].output.dense.weight.add_(1.0)
    assert torch.equal(teacher.bert.encoder.layer[1].output.dense.weight, before)


def test_explicit_teacher_layers_and_their_errors() -> None:
    teacher = _teacher()
    assert _from_teacher(teacher, layers=2, teacher_layers=[0, 2]).teacher_layers == [0, 2]
    with pytest.raises(StudentSpecError, match="the teacher has layers 0 to 3"):
        transformer_options_from_teacher(teacher.config, {"layers": 1, "teacher_layers": [4]})
    with pytest.raises(StudentSpecError, match=r"drop hidden=32 \(teacher: 16\)"):
        transformer_options_from_teacher(teacher.config, {"hidden": 32})
    with pytest.raises(StudentSpecError, match="needs a BERT teacher"):
        transformer_options_from_teacher(DistilBertConfig(), {})
    with pytest.raises(StudentSpecError, match="names 1 layers for a student of 2"):
        build_student("transformer", "small", VOCAB, LABELS, layers=2, teacher_layers=[0])


def test_layer_mse_by_hand() -> None:
    # Two states, B=1, T=2 (second token padding), H=2.
    s = (torch.tensor([[[1.0, 2.0], [9.0, 9.0]]]), torch.tensor([[[0.0, 0.0], [5.0, 5.0]]]))
    t = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]], [[[3.0, 4.0], [0.0, 0.0]]]])
    mask = torch.tensor([[1, 0]])
    # state 0: ((1-1)^2 + (2-0)^2) / 2 = 2; state 1: (9 + 16) / 2 = 12.5; mean 7.25
    assert float(layer_mse(s, t, mask)) == pytest.approx(7.25)
    with pytest.raises(ValueError, match="2 student states but 1"):
        layer_mse(s, t[:1], mask)


def test_mode_layers_adds_the_layer_term() -> None:
    logits = torch.tensor([[1.0, 0.0, -1.0]])
    states = (torch.ones(1, 2, 4), torch.zeros(1, 2, 4))
    out = ClassifierOutput(logits=logits, hidden=None, hidden_states=states)
    batch = {
        "labels": torch.tensor([0]),
        "teacher_logits": logits.clone(),
        "teacher_layers": torch.zeros(2, 1, 2, 4),
        "attention_mask": torch.ones(1, 2, dtype=torch.long),
    }
    loss = distillation_loss(out, batch, mode="layers", T=2.0, alpha=0.5, beta=3.0)
    assert loss.terms["layers"] == pytest.approx(0.5)  # state 0 off by 1 everywhere, state 1 exact
    soft = distillation_loss(out, batch, mode="soft", T=2.0, alpha=0.5, beta=3.0)
    assert loss.terms["loss"] == pytest.approx(soft.terms["loss"] + 3.0 * 0.5)
    with pytest.raises(ValueError, match="needs the student's hidden_states"):
        distillation_loss(
            ClassifierOutput(logits=logits), batch, mode="layers", T=2, alpha=0.5, beta=1
        )
