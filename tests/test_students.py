"""Student models: padding exactness, presets, config round trip, PCA init, ONNX parity."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence

from textdistill.core.errors import UserError
from textdistill.models.output import ClassifierOutput
from textdistill.models.students import (
    BILSTM_PRESETS,
    STATIC_PRESETS,
    STUDENTS,
    TEXTCNN_PRESETS,
    BiLSTMStudent,
    StaticStudent,
    StudentArch,
    StudentModel,
    StudentSpecError,
    TextCNNStudent,
    build_student,
    build_student_from_config,
    init_embeddings_from_teacher,
    student_arch,
    student_options,
)

VOCAB, LABELS, PAD = 50, 4, 0

TINY = {
    "bilstm-1": ("bilstm", "small", {"embed_dim": 8, "hidden_dim": 6, "layers": 1}),
    "bilstm-3": ("bilstm", "small", {"embed_dim": 8, "hidden_dim": 6, "layers": 3}),
    "textcnn": ("textcnn", "default", {"embed_dim": 8, "num_filters": 5}),
    "textcnn-wide": (
        "textcnn",
        "default",
        {"embed_dim": 8, "num_filters": 5, "filter_sizes": [1, 5]},
    ),
    "static": ("static", "small", {"embed_dim": 8, "buckets": 97}),
    "transformer": (
        "transformer",
        "small",
        {"layers": 2, "hidden": 8, "heads": 2, "intermediate": 16, "max_positions": 64},
    ),
    "static-zipf-hidden": (
        "static",
        "small",
        {
            "embed_dim": 8,
            "buckets": 31,
            "ngram_orders": [2, 3, 4],
            "hidden_dim": 5,
            "weighting": "zipf",
        },
    ),
}


def _tiny(name: str, seed: int = 0) -> nn.Module:
    arch, preset, overrides = TINY[name]
    torch.manual_seed(seed)
    model = build_student(arch, preset, VOCAB, LABELS, pad_id=PAD, **overrides).eval()
    if isinstance(model, StaticStudent):
        # Its n-gram rows start at zero, which would hide any n-gram bug from these tests.
        nn.init.normal_(model.ngrams.weight)
    return model


def _pad(rows: list[list[int]], width: int, filler: int = PAD) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token rows to ``width``; ``filler`` goes under mask 0 (normally the pad id)."""
    ids = torch.full((len(rows), width), filler, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    return ids, mask


def _texts(lengths: list[int], seed: int = 1) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, VOCAB, (n,), generator=g).tolist() for n in lengths]


def _run(
    model: nn.Module, rows: list[list[int]], width: int, filler: int = PAD
) -> ClassifierOutput:
    ids, mask = _pad(rows, width, filler)
    with torch.no_grad():
        out = model(ids, mask)
    assert isinstance(out, ClassifierOutput)
    return out


# ---------------------------------------------------------------- padding


@pytest.mark.parametrize("name", list(TINY))
def test_padding_invariance(name: str) -> None:
    model = _tiny(name)
    # Lengths include 1 and 2, shorter than the widest TextCNN filter.
    texts = _texts([3, 1, 2, 7])
    for text in texts:
        alone = _run(model, [text], len(text))
        padded = _run(model, [text], len(text) + 25)
        # Tokens under mask 0 must not matter either: fill padding with real ids.
        junk = _run(model, [text], len(text) + 9, filler=17)
        batched = _run(model, [*texts, list(range(1, 31))], 40)
        row = texts.index(text)
        assert alone.hidden is not None
        for other in (padded, junk):
            torch.testing.assert_close(other.logits, alone.logits, atol=1e-5, rtol=0)
            torch.testing.assert_close(other.hidden, alone.hidden, atol=1e-5, rtol=0)
        torch.testing.assert_close(batched.logits[row], alone.logits[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(batched.hidden[row], alone.hidden[0], atol=1e-5, rtol=0)  # type: ignore[index]


@pytest.mark.parametrize("layers", [1, 2])
def test_bilstm_matches_packed_bidirectional_lstm(layers: int) -> None:
    """The sentence vector is h_n of a packed bidirectional nn.LSTM with the same weights."""
    torch.manual_seed(0)
    model = BiLSTMStudent(VOCAB, LABELS, embed_dim=8, hidden_dim=6, layers=layers).eval()
    ref = nn.LSTM(8, 6, num_layers=layers, bidirectional=True, batch_first=True)
    state = {}
    for i, layer in enumerate(model.layers):
        for direction, suffix in ((layer.fwd, ""), (layer.bwd, "_reverse")):
            for pname, p in direction.named_parameters():  # e.g. weight_ih_l0
                state[pname.replace("_l0", f"_l{i}") + suffix] = p.detach()
    ref.load_state_dict(state)
    texts = _texts([5, 2, 9, 1])
    ids, mask = _pad(texts, 12)
    with torch.no_grad():
        ours = model(ids, mask).hidden
        packed = pack_padded_sequence(
            model.embedding(ids), mask.sum(1), batch_first=True, enforce_sorted=False
        )
        _, (h_n, _) = ref(packed)
    expected = torch.cat([h_n[-2], h_n[-1]], dim=-1)  # last layer: forward, backward
    torch.testing.assert_close(ours, expected, atol=1e-6, rtol=0)


def test_textcnn_windows_start_on_real_tokens() -> None:
    """Hand-built check: windows start on real tokens and see zeros past the text."""
    torch.manual_seed(0)
    model = TextCNNStudent(VOCAB, LABELS, embed_dim=3, num_filters=2, filter_sizes=[3]).eval()
    text = [4, 9]  # shorter than the filter
    emb = model.embedding.weight.detach()
    seq = torch.stack([emb[4], emb[9], torch.zeros(3), torch.zeros(3)])  # (L + 2, E)
    conv = model.convs[0]
    windows = []
    for start in range(len(text)):  # valid windows: start at position 0 and 1
        window = seq[start : start + 3]  # (3, E)
        windows.append(torch.einsum("fek,ke->f", conv.weight.detach(), window) + conv.bias.detach())
    expected = torch.relu(torch.stack(windows)).max(dim=0).values
    out = _run(model, [text], 6)
    torch.testing.assert_close(out.hidden[0], expected, atol=1e-6, rtol=0)  # type: ignore[index]


# ---------------------------------------------------------------- shapes and config


@pytest.mark.parametrize(
    ("name", "hidden_size"),
    [
        ("bilstm-1", 12),
        ("bilstm-3", 12),
        ("textcnn", 15),
        ("textcnn-wide", 10),
        ("static", 8),
        ("static-zipf-hidden", 5),
        ("transformer", 8),
    ],
)
def test_output_shapes(name: str, hidden_size: int) -> None:
    model = _tiny(name)
    assert model.hidden_size == hidden_size
    out = _run(model, _texts([3, 5, 2]), 6)
    assert out.logits.shape == (3, LABELS)
    assert out.hidden is not None
    assert out.hidden.shape == (3, hidden_size)


def test_presets_and_overrides() -> None:
    model = build_student("bilstm", "small", VOCAB, LABELS)
    for key, value in BILSTM_PRESETS["small"].items():
        assert model.config[key] == value
    model = build_student(
        "bilstm", "seed", VOCAB, LABELS, pad_id=3, hidden_dim=4, layers=None, embed_dim=None
    )
    assert model.config["hidden_dim"] == 4  # override applied
    assert model.config["layers"] == BILSTM_PRESETS["seed"]["layers"]  # None ignored
    assert model.config["pad_id"] == 3
    assert model.embedding.padding_idx == 3
    cnn = build_student("textcnn", "default", VOCAB, LABELS, filter_sizes=[2, 5], num_filters=3)
    assert cnn.config["filter_sizes"] == [2, 5]
    assert cnn.hidden_size == 6
    assert cnn.config["embed_dim"] == TEXTCNN_PRESETS["default"]["embed_dim"]


def test_build_student_errors() -> None:
    with pytest.raises(
        ValueError, match=r"unknown student architecture 'gru'; valid: bilstm, textcnn"
    ):
        build_student("gru", "small", VOCAB, LABELS)
    with pytest.raises(ValueError, match=r"unknown preset 'huge'.*valid: small, seed"):
        build_student("bilstm", "huge", VOCAB, LABELS)
    with pytest.raises(ValueError, match=r"num_filters do not apply to student 'bilstm'"):
        build_student("bilstm", "small", VOCAB, LABELS, num_filters=8)
    with pytest.raises(ValueError, match=r"filter_sizes must be a non-empty"):
        build_student("textcnn", "default", VOCAB, LABELS, filter_sizes=[])
    with pytest.raises(ValueError, match=r"hidden_dim=0"):
        build_student("bilstm", "small", VOCAB, LABELS, hidden_dim=0)
    # the CLI reports these as user errors (exit code 2), not tracebacks
    assert issubclass(StudentSpecError, UserError)


def test_seed_preset_parameter_count() -> None:
    """The reference student: 27,471,882 parameters at vocab 21,128 and 10 classes."""
    vocab, classes, e, h = 21128, 10, 256, 512
    lstm = lambda inp: 2 * (4 * h * (inp + h) + 8 * h)  # noqa: E731 - both directions, 2 biases
    expected = vocab * e + lstm(e) + 3 * lstm(2 * h) + (2 * h * classes + classes)
    assert expected == 27_471_882
    with torch.device("meta"):  # shapes only: no 110 MB allocation
        model = build_student("bilstm", "seed", vocab, classes)
    assert sum(p.numel() for p in model.parameters()) == expected


@pytest.mark.parametrize("name", list(TINY))
def test_rebuild_from_json_config(name: str) -> None:
    model = _tiny(name)
    config = json.loads(json.dumps(model.config))
    rebuilt = build_student_from_config(config).eval()
    assert type(rebuilt) is type(model)
    assert rebuilt.config == model.config
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == shapes
    rebuilt.load_state_dict(model.state_dict())
    texts = _texts([4, 2])
    torch.testing.assert_close(_run(rebuilt, texts, 5).logits, _run(model, texts, 5).logits)


def test_rebuild_from_config_errors() -> None:
    with pytest.raises(ValueError, match=r"no 'arch'"):
        build_student_from_config({"vocab_size": 5})
    config = {**_tiny("textcnn").config, "hidden_dim": 4}
    with pytest.raises(ValueError, match=r"unknown key\(s\) hidden_dim"):
        build_student_from_config(config)


def test_students_registry() -> None:
    assert STUDENTS["bilstm"] == StudentArch(BiLSTMStudent, BILSTM_PRESETS, "small")
    assert STUDENTS["textcnn"] == StudentArch(TextCNNStudent, TEXTCNN_PRESETS, "default")
    assert STUDENTS["static"] == StudentArch(StaticStudent, STATIC_PRESETS, "small", "chars")
    assert student_options("textcnn") == ["embed_dim", "num_filters", "filter_sizes", "dropout"]
    with pytest.raises(StudentSpecError, match="valid: bilstm, textcnn, static"):
        student_arch("gru")


class BagStudent(StudentModel):
    """A bag of embeddings: the smallest student that honours the contract."""

    def __init__(self, vocab_size: int, num_labels: int, embed_dim: int = 8, pad_id: int = 0):
        super().__init__()
        self.config = {
            "arch": "bag",
            "vocab_size": vocab_size,
            "num_labels": num_labels,
            "embed_dim": embed_dim,
            "pad_id": pad_id,
        }
        self.hidden_size = embed_dim
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=pad_id)
        self.classifier = nn.Linear(embed_dim, num_labels)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> ClassifierOutput:
        mask = attention_mask.unsqueeze(-1).float()  # (B, T, 1)
        hidden = (self.embedding(input_ids) * mask).sum(1) / mask.sum(1).clamp(min=1)  # (B, E)
        return ClassifierOutput(logits=self.classifier(hidden), hidden=hidden)


def test_a_new_student_is_one_class_and_one_registry_entry(
    tmp_path: Path,
    tiny_corpus: Path,
    tiny_teacher: Path,
    make_tiny_config: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Registering a class in STUDENTS is all distill, folders, load and export need."""
    from textdistill.data.corpus import load_corpus
    from textdistill.deploy.export import export_model
    from textdistill.distill.run import distill
    from textdistill.inference.load import load

    bag = StudentArch(BagStudent, {"tiny": {"embed_dim": 8}}, "tiny")
    monkeypatch.setitem(STUDENTS, "bag", bag)
    cfg = make_tiny_config(
        tiny_corpus,
        **{
            "student.arch": "bag",
            "student.preset": "tiny",
            "student.options": {"embed_dim": 12},
            "student.init_embeddings": "teacher",
            "distill.mode": "hidden",
            "distill.teachers": [str(tiny_teacher)],
        },
    )
    out = tmp_path / "bag"
    distill(cfg, load_corpus(tiny_corpus), out)
    clf = load(out)
    arch = clf.meta["architecture"]
    assert arch == {**BagStudent(5, 3, 12).config, "vocab_size": arch["vocab_size"]}
    (pred,) = clf.predict("球队比赛")
    assert pred.label in clf.label_names
    onnx = load(export_model(out, tmp_path / "bag-onnx").out)
    texts = ["球队比赛", "银行"]
    np.testing.assert_allclose(onnx.logits(texts), clf.logits(texts), atol=1e-4)


# ---------------------------------------------------------------- training behaviour


@pytest.mark.parametrize("name", ["bilstm-3", "textcnn", "static", "transformer"])
def test_gradients_reach_every_parameter(name: str) -> None:
    model = _tiny(name).train()
    ids, mask = _pad(_texts([6, 3, 4]), 8)
    out = model(ids, mask)
    loss = nn.functional.cross_entropy(out.logits, torch.tensor([0, 1, 2]))
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert p.grad.abs().sum() > 0, pname
    assert model.embedding.weight.grad[PAD].abs().sum() == 0  # padding row stays frozen


def test_eval_mode_is_deterministic_and_dropout_active_in_train() -> None:
    model = build_student("textcnn", "default", VOCAB, LABELS, embed_dim=8, num_filters=16)
    ids, mask = _pad(_texts([5, 5]), 5)
    model.train()
    a, b = model(ids, mask).logits, model(ids, mask).logits
    assert not torch.allclose(a, b)  # dropout 0.5 on 48 features
    model.eval()
    torch.testing.assert_close(model(ids, mask).logits, model(ids, mask).logits)


# ---------------------------------------------------------------- teacher embedding init


def _low_rank_teacher(vocab: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher embeddings of rank 3 around a mean; the dominant direction is returned too."""
    g = torch.Generator().manual_seed(0)
    basis, _ = torch.linalg.qr(torch.randn(width, 3, generator=g))  # orthonormal (width, 3)
    coef = torch.randn(vocab, 3, generator=g) * torch.tensor([10.0, 3.0, 1.0])
    mean = torch.randn(width, generator=g)
    return coef @ basis.T + mean, basis[:, 0]


def test_init_embeddings_pca() -> None:
    teacher, top = _low_rank_teacher(VOCAB, 12)
    student = _tiny("bilstm-1")  # embed_dim 8 >= rank 3
    std_before = float(student.embedding.weight.detach().std())
    init_embeddings_from_teacher(student, teacher)
    weight = student.embedding.weight.detach()
    assert weight.shape == (VOCAB, 8)
    assert torch.equal(weight[PAD], torch.zeros(8))
    rows = torch.arange(1, VOCAB)  # the pad row was zeroed
    # The first column is the score on the top principal direction.
    scores = (teacher - teacher.mean(0)) @ top
    corr = torch.corrcoef(torch.stack([weight[rows, 0], scores[rows]]))[0, 1]
    assert abs(float(corr)) > 0.999
    # Rank 3 <= embed_dim: the projection keeps all geometry, so pairwise distances are
    # the teacher's up to one global scale.
    exact = "donot_use_mm_for_euclid_dist"
    d_student = torch.cdist(weight[rows].double(), weight[rows].double(), compute_mode=exact)
    d_teacher = torch.cdist(teacher[rows].double(), teacher[rows].double(), compute_mode=exact)
    ratio = d_student[d_teacher > 0] / d_teacher[d_teacher > 0]
    assert float(ratio.std() / ratio.mean()) < 1e-6
    # Components beyond the teacher's rank carry no variance; overall scale is preserved.
    assert float(weight[:, 3:].abs().max()) < 1e-4
    assert float(weight.std()) == pytest.approx(std_before, rel=0.05)


def test_init_embeddings_wider_student_keeps_random_tail() -> None:
    teacher, _ = _low_rank_teacher(VOCAB, 5)
    student = _tiny("bilstm-1")  # embed_dim 8 > teacher width 5
    tail = student.embedding.weight.detach()[1:, 5:].clone()
    init_embeddings_from_teacher(student, teacher, std=0.5)
    weight = student.embedding.weight.detach()
    torch.testing.assert_close(weight[1:, 5:], tail)
    assert float(weight[:, :5].std()) == pytest.approx(0.5, rel=0.05)


def test_init_embeddings_through_a_vocabulary_map() -> None:
    teacher = torch.randn(30, 12, generator=torch.Generator().manual_seed(3))
    student = _tiny("static")  # VOCAB 50 tokens of its own
    before = student.embedding.weight.detach().clone()
    rows = [-1] * VOCAB
    rows[7], rows[9], rows[PAD] = 1, 29, 5
    init_embeddings_from_teacher(student, teacher, std=1.0, rows=rows)
    weight = student.embedding.weight.detach()
    # Mapped tokens carry their teacher row's scores: the same scores as a shared-vocabulary
    # student of the teacher's size gets for those rows (after the common rescaling).
    twin = build_student("static", "small", 30, LABELS, embed_dim=8, buckets=7)
    init_embeddings_from_teacher(twin, teacher, std=1.0)
    torch.testing.assert_close(weight[7], twin.embedding.weight[1].detach())
    torch.testing.assert_close(weight[9], twin.embedding.weight[29].detach())
    unmapped = [i for i in range(VOCAB) if rows[i] == -1]
    torch.testing.assert_close(weight[unmapped], before[unmapped])
    assert torch.equal(weight[PAD], torch.zeros(8))  # the pad row stays zero, mapped or not


def test_init_embeddings_errors() -> None:
    with pytest.raises(ValueError, match=r"one teacher id \(or -1\) for each of the 50"):
        init_embeddings_from_teacher(_tiny("static"), torch.randn(30, 12), rows=[0] * 49)
    with pytest.raises(ValueError, match=r"below the teacher's 30"):
        init_embeddings_from_teacher(_tiny("static"), torch.randn(30, 12), rows=[30] * VOCAB)
    with pytest.raises(ValueError, match=r"share a tokenizer"):
        init_embeddings_from_teacher(_tiny("textcnn"), torch.randn(VOCAB + 1, 12))
    with pytest.raises(ValueError, match=r"no `embedding`"):
        init_embeddings_from_teacher(nn.Linear(2, 2), torch.randn(VOCAB, 12))


# ---------------------------------------------------------------- ONNX


class _LogitsOnly(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids, attention_mask).logits


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore::UserWarning")
@pytest.mark.parametrize(
    "name", ["bilstm-3", "textcnn-wide", "static", "static-zipf-hidden", "transformer"]
)
def test_onnx_export_parity(name: str, tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    model = _tiny(name)
    # Export on one shape, run on another: batch and sequence axes must stay dynamic.
    example = _pad(_texts([4, 4]), 4)
    path = tmp_path / "student.onnx"
    wrapper = _LogitsOnly(model).eval()  # the exporter restores the wrapper's mode afterwards
    torch.onnx.export(
        wrapper,
        example,
        str(path),
        input_names=["input_ids", "attention_mask"],
        output_names=["logits"],
        opset_version=17,
        dynamic_axes={
            "input_ids": {0: "batch", 1: "seq"},
            "attention_mask": {0: "batch", 1: "seq"},
            "logits": {0: "batch"},
        },
        dynamo=False,
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ids, mask = _pad(_texts([9, 1, 3, 6, 2], seed=5), 11)
    (onnx_logits,) = session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
    with torch.no_grad():
        expected = model(ids, mask).logits
    assert not model.training
    torch.testing.assert_close(torch.from_numpy(onnx_logits), expected, atol=1e-5, rtol=0)
    assert math.isfinite(float(expected.abs().sum()))
