"""Export: ONNX parity on padded batches, int8 (ONNX and PyTorch), folders, load, CLI."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedTokenizerFast
from typer.testing import CliRunner

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from textdistill.cli import app  # noqa: E402
from textdistill.core.errors import UserError  # noqa: E402
from textdistill.core.io import file_sha256  # noqa: E402
from textdistill.data.tokenization import build_tokenizer  # noqa: E402
from textdistill.deploy import export as export_mod  # noqa: E402
from textdistill.deploy.export import (  # noqa: E402
    ExportValidationError,
    default_out,
    export_model,
    probe_batch,
)
from textdistill.inference.load import load  # noqa: E402
from textdistill.inference.torch import TorchClassifier  # noqa: E402
from textdistill.models.folders import load_model, read_meta, save_student, save_teacher  # noqa: E402
from textdistill.models.students import build_student  # noqa: E402
from textdistill.models.teacher import (  # noqa: E402
    TeacherModel,
    new_scratch_classifier,
    scratch_bert_config,
)
from textdistill.runtime.classifier import Classifier  # noqa: E402
from textdistill.runtime.onnx import OnnxClassifier  # noqa: E402

CLASSES = ["sports", "finance", "game"]
KEYWORDS = ("球队比赛冠军进球联赛", "银行基金利率投资理财", "游戏玩家网游副本公测")
FILLER = "新闻今日消息最新发布报道"
MAX_LEN = 24
STUDENTS = {
    "bilstm": ("bilstm", "small", {"embed_dim": 16, "hidden_dim": 16, "layers": 2}),
    "textcnn": ("textcnn", "default", {"embed_dim": 16, "num_filters": 16}),
    "static": ("static", "small", {"embed_dim": 16, "buckets": 512, "hidden_dim": 16}),
    "transformer": (
        "transformer",
        "small",
        {"layers": 2, "hidden": 16, "heads": 2, "intermediate": 32, "max_positions": 64},
    ),
}
# Short, long (truncated at MAX_LEN), empty and single-character texts in one batch.
MIXED = [
    "球",
    "银行基金利率投资理财" * 4,
    "",
    "游戏玩家",
    "球队比赛冠军今日消息最新发布",
    "副",
]

runner = CliRunner()


def _titles(n_per_class: int, seed: int) -> tuple[list[str], list[int]]:
    """Keyword titles: 2-5 class keywords mixed with 0-4 filler characters."""
    rng = random.Random(seed)
    texts, labels = [], []
    for i in range(n_per_class):
        for y, words in enumerate(KEYWORDS):
            chars = rng.sample(words, rng.randint(2, 5)) + rng.sample(FILLER, rng.randint(0, 4))
            rng.shuffle(chars)
            texts.append("".join(chars) + str(i))
            labels.append(y)
    return texts, labels


def _train(
    model: nn.Module, tok: PreTrainedTokenizerFast, texts: list[str], labels: list[int]
) -> nn.Module:
    """A few full-batch Adam steps: enough for the keyword task, well under a second."""
    enc = tok(texts, padding=True, truncation=True, max_length=MAX_LEN, return_tensors="pt")
    y = torch.tensor(labels)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    model.train()
    for _ in range(40):
        loss = F.cross_entropy(model(enc["input_ids"], enc["attention_mask"]).logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def _accuracy(clf: Classifier, texts: list[str], labels: list[int]) -> float:
    pred = clf.logits(texts).argmax(-1)
    return float(np.mean(pred == np.asarray(labels)))


@pytest.fixture(scope="module")
def data() -> dict[str, tuple[list[str], list[int]]]:
    return {"train": _titles(30, seed=1), "test": _titles(20, seed=2)}


@pytest.fixture(scope="module")
def tokenizer(data: dict[str, tuple[list[str], list[int]]]) -> PreTrainedTokenizerFast:
    return build_tokenizer(data["train"][0] + [FILLER], vocab_size=200)


@pytest.fixture(scope="module")
def models(
    tmp_path_factory: pytest.TempPathFactory,
    tokenizer: PreTrainedTokenizerFast,
    data: dict[str, tuple[list[str], list[int]]],
) -> dict[str, Path]:
    """Trained tiny students and an untrained tiny BERT teacher (hidden 32, 2 layers)."""
    root = tmp_path_factory.mktemp("export-models")
    vocab = len(tokenizer)
    folders = {}
    for name, (arch, preset, sizes) in STUDENTS.items():
        torch.manual_seed(0)
        student = build_student(arch, preset, vocab, len(CLASSES), **sizes)
        _train(student, tokenizer, *data["train"])
        folders[name] = root / name
        save_student(
            folders[name], student, tokenizer, CLASSES, max_len=MAX_LEN, metrics={"accuracy": 0.97}
        )
    torch.manual_seed(0)
    cfg = scratch_bert_config(
        "custom", vocab_size=vocab, num_labels=3, layers=2, hidden=32, heads=2, intermediate=64
    )
    teacher = TeacherModel(new_scratch_classifier(cfg, CLASSES)).eval()
    folders["teacher"] = root / "teacher"
    save_teacher(folders["teacher"], teacher, tokenizer, CLASSES, max_len=MAX_LEN)
    return folders


@pytest.fixture(scope="module")
def exported(models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """fp32 and int8 ONNX exports of every model: ``{"bilstm": ..., "bilstm-int8": ...}``."""
    root = tmp_path_factory.mktemp("exported")
    out = {}
    for name, src in models.items():
        out[name] = export_model(src, root / f"{name}-onnx").out
        out[f"{name}-int8"] = export_model(src, root / f"{name}-int8", quantize="int8").out
    return out


def _pad_wider(batch: dict[str, torch.Tensor], extra: int, pad_id: int) -> dict[str, torch.Tensor]:
    ids = F.pad(batch["input_ids"], (0, extra), value=pad_id)
    mask = F.pad(batch["attention_mask"], (0, extra), value=0)
    return {"input_ids": ids, "attention_mask": mask}


# ---------------------------------------------------------------- fp32 parity


def _as_numpy(batch: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.numpy().astype(np.int64) for k, v in batch.items()}


@pytest.mark.parametrize("name", ["bilstm", "textcnn", "static", "transformer", "teacher"])
def test_onnx_matches_pytorch_on_padded_batches(
    name: str, models: dict[str, Path], exported: dict[str, Path]
) -> None:
    torch_clf = load(models[name])
    onnx_clf = load(exported[name])
    assert isinstance(onnx_clf, OnnxClassifier)
    batch = torch_clf.encode(MIXED)  # padded to the longest text: MAX_LEN
    assert batch["input_ids"].shape == (len(MIXED), MAX_LEN)
    expected = torch_clf.forward_batch(batch)
    pad_id = int(torch_clf.tokenizer.pad_token_id)
    # The same rows padded 9 columns further, and the short rows alone padded much less:
    # batch and sequence axes both differ from the traced example.
    wide = onnx_clf.forward_batch(_as_numpy(_pad_wider(batch, 9, pad_id)))
    np.testing.assert_array_equal(onnx_clf.encode(MIXED)["input_ids"], batch["input_ids"].numpy())
    torch.testing.assert_close(
        onnx_clf.forward_batch(_as_numpy(batch)), expected, atol=1e-4, rtol=0
    )
    torch.testing.assert_close(wide, expected, atol=1e-4, rtol=0)
    short_rows = [0, 3, 5]
    short = onnx_clf.encode([MIXED[i] for i in short_rows])
    assert short["input_ids"].shape[1] < 8
    torch.testing.assert_close(
        onnx_clf.forward_batch(short), expected[short_rows], atol=1e-4, rtol=0
    )
    assert float(expected.std()) > 0  # non-degenerate logits, or the check would be empty


def test_onnx_graph_has_dynamic_axes_and_logits_only(exported: dict[str, Path]) -> None:
    model = onnx.load(str(exported["bilstm"] / "model.onnx"))
    dims = {i.name: [d.dim_param for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    assert dims == {"input_ids": ["batch", "seq"], "attention_mask": ["batch", "seq"]}
    assert [o.name for o in model.graph.output] == ["logits"]
    props = {p.key: p.value for p in model.metadata_props}
    assert json.loads(props["textdistill.labels"]) == CLASSES
    assert props["textdistill.max_len"] == str(MAX_LEN)


# ---------------------------------------------------------------- folders and metadata


def test_onnx_folder_describes_itself(models: dict[str, Path], exported: dict[str, Path]) -> None:
    src_meta = read_meta(models["bilstm"])
    out = exported["bilstm"]
    meta = read_meta(out)
    assert meta["format"] == "onnx" and meta["kind"] == "student"
    assert meta["opset"] == 17 and meta["quantize"] is None
    assert meta["source"]["fingerprint"] == src_meta["fingerprint"]
    assert meta["source"]["dev_accuracy"] == 0.97
    assert meta["dev_metrics"] == src_meta["dev_metrics"]
    assert meta["architecture"] == src_meta["architecture"]
    assert meta["num_parameters"] == src_meta["num_parameters"]
    assert meta["max_len"] == MAX_LEN
    assert meta["validation"]["fp32_max_abs_diff"] < 1e-4
    assert meta["validation"]["argmax_agreement"] == 1.0
    assert meta["fingerprint"] != src_meta["fingerprint"]
    assert json.loads((out / "labels.json").read_text(encoding="utf-8")) == CLASSES
    assert (out / "tokenizer.json").is_file() and not (out / "model.safetensors").exists()
    clf = load(out)
    assert clf.kind == "onnx" and clf.label_names == CLASSES and clf.max_len == MAX_LEN
    src = load(models["bilstm"])
    # The runtime's tokenizer gives the PyTorch folder's ids and mask, as int64 numpy.
    assert clf.encode(MIXED).keys() == src.encode(MIXED).keys()
    for key, value in _as_numpy(src.encode(MIXED)).items():
        np.testing.assert_array_equal(clf.encode(MIXED)[key], value)
        assert clf.encode(MIXED)[key].dtype == np.int64


def test_export_result_reports_sizes_and_source_accuracy(
    models: dict[str, Path], tmp_path: Path
) -> None:
    result = export_model(models["textcnn"], tmp_path / "cnn", quantize="int8")
    assert result.source_accuracy == 0.97
    src_weights = (models["textcnn"] / "model.safetensors").stat().st_size / 1e6
    assert result.source_size_mb == pytest.approx(src_weights, abs=1e-6)
    assert result.size_mb == pytest.approx((tmp_path / "cnn" / "model.onnx").stat().st_size / 1e6)
    assert result.size_ratio == pytest.approx(result.size_mb / result.source_size_mb)
    assert result.to_dict()["out"] == str(tmp_path / "cnn")


def test_default_out_names() -> None:
    assert default_out("runs/bilstm", "onnx", None) == Path("runs/bilstm-onnx")
    assert default_out("runs/bilstm", "onnx", "int8") == Path("runs/bilstm-onnx-int8")
    assert default_out("runs/bilstm", "torch", "int8") == Path("runs/bilstm-int8")


def test_probe_batch_mixes_lengths_with_padding(tokenizer: PreTrainedTokenizerFast) -> None:
    batch = probe_batch(tokenizer, max_len=10, rows=4)
    # linspace(2, 10, 4) = 2, 4.67, 7.33, 10 -> 2, 5, 7, 10; long and short interleaved
    assert batch["attention_mask"].sum(1).tolist() == [5, 10, 2, 7]
    ids, mask = batch["input_ids"], batch["attention_mask"]
    pad, cls, sep = tokenizer.pad_token_id, tokenizer.cls_token_id, tokenizer.sep_token_id
    specials = torch.tensor(tokenizer.all_special_ids)
    for row, n in enumerate([5, 10, 2, 7]):
        assert ids[row, 0] == cls and ids[row, n - 1] == sep
        assert (ids[row, n:] == pad).all() and (mask[row, n:] == 0).all()
        body = ids[row, 1 : n - 1]
        assert not bool(torch.isin(body, specials).any())


# ---------------------------------------------------------------- int8


@pytest.mark.parametrize("name", ["bilstm", "textcnn", "static"])
def test_onnx_int8_is_smaller_and_as_accurate(
    name: str,
    models: dict[str, Path],
    exported: dict[str, Path],
    data: dict[str, tuple[list[str], list[int]]],
) -> None:
    fp32, int8 = exported[name], exported[f"{name}-int8"]
    assert (int8 / "model.onnx").stat().st_size < 0.75 * (fp32 / "model.onnx").stat().st_size
    texts, labels = data["test"]
    acc_torch = _accuracy(load(models[name]), texts, labels)
    acc_fp32 = _accuracy(load(fp32), texts, labels)
    q = load(int8)
    acc_int8 = _accuracy(q, texts, labels)
    assert acc_torch > 0.8  # the model learned the task, so the comparison means something
    assert acc_fp32 == acc_torch
    assert abs(acc_int8 - acc_fp32) <= 0.05
    ops = {n.op_type for n in onnx.load(str(int8 / "model.onnx")).graph.node}
    # The static student's weights are its embedding tables: quantized Gathers.
    assert ops & {"DynamicQuantizeLSTM", "ConvInteger", "MatMulInteger", "DequantizeLinear"}
    assert read_meta(int8)["quantize"] == "int8"
    preds = q.predict(["球队比赛", ""])
    assert preds[0].label in CLASSES and preds[1].label is None


@pytest.mark.parametrize(("name", "kind"), [("teacher", "teacher"), ("transformer", "student")])
def test_bert_int8_loads_and_predicts(name: str, kind: str, exported: dict[str, Path]) -> None:
    fp32, int8 = exported[name], exported[f"{name}-int8"]
    assert (int8 / "model.onnx").stat().st_size < (fp32 / "model.onnx").stat().st_size
    a, b = load(fp32), load(int8)
    la, lb = a.logits(MIXED), b.logits(MIXED)
    assert lb.shape == (len(MIXED), 3)
    if name == "teacher":  # untrained: small logits, small quantization error
        np.testing.assert_allclose(lb, la, atol=0.05)
    else:  # trained, 16 wide: int8 moves its large logits by more, not its answers
        assert (lb.argmax(-1) == la.argmax(-1)).all()
    assert read_meta(int8)["kind"] == kind


def test_teacher_torch_int8_quantizes_its_linear_layers(
    models: dict[str, Path], tmp_path: Path
) -> None:
    out = export_model(models["teacher"], tmp_path / "t8", fmt="torch", quantize="int8").out
    clf = load(out)
    assert clf.kind == "teacher"
    linears = [m for m in clf.model.modules() if isinstance(m, nn.Linear)]
    assert linears == []  # every nn.Linear became a dynamic int8 Linear
    fp32 = load(models["teacher"]).logits(MIXED)
    np.testing.assert_allclose(clf.logits(MIXED), fp32, atol=0.05)


def test_torch_int8_folder_quantizes_at_load_time(
    models: dict[str, Path], data: dict[str, tuple[list[str], list[int]]], tmp_path: Path
) -> None:
    src = models["bilstm"]
    result = export_model(src, tmp_path / "q", fmt="torch", quantize="int8")
    out = result.out
    # fp32 weights stored unchanged; the flag makes predict.load quantize.
    assert file_sha256(out / "model.safetensors") == file_sha256(src / "model.safetensors")
    meta = read_meta(out)
    assert meta["quantize"] == "int8" and meta["format"] == "torch"
    assert meta["fingerprint"] == read_meta(src)["fingerprint"]
    assert result.size_mb < result.source_size_mb
    assert meta["quantized_weights_mb"] == pytest.approx(result.size_mb, abs=1e-6)
    clf = load(out)
    kinds = {type(m) for m in clf.model.modules()}
    assert torch.ao.nn.quantized.dynamic.LSTM in kinds
    assert torch.ao.nn.quantized.dynamic.Linear in kinds
    assert nn.LSTM not in kinds
    # Training code loads the fp32 model from the same folder.
    assert any(type(m) is nn.LSTM for m in load_model(out).model.modules())
    texts, labels = data["test"]
    fp32_acc = _accuracy(load(src), texts, labels)
    assert abs(_accuracy(clf, texts, labels) - fp32_acc) <= 0.05


# ---------------------------------------------------------------- load / errors


def test_load_backend_selection(models: dict[str, Path], exported: dict[str, Path]) -> None:
    assert isinstance(load(exported["bilstm"], backend="onnx"), OnnxClassifier)
    plain = load(models["bilstm"], backend="torch")
    assert type(plain) is TorchClassifier
    with pytest.raises(UserError, match="textdistill export --model"):
        load(models["bilstm"], backend="onnx")
    with pytest.raises(UserError, match="ONNX export"):
        load(exported["bilstm"], backend="torch")
    with pytest.raises(UserError, match="unknown backend"):
        load(models["bilstm"], backend="tensorrt")


def test_onnx_session_follows_torch_threads(exported: dict[str, Path]) -> None:
    clf = load(exported["textcnn"])
    assert isinstance(clf, OnnxClassifier)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        clf.predict(["球队"])
        assert clf.session.get_session_options().intra_op_num_threads == 1
        torch.set_num_threads(2)
        assert clf.session.get_session_options().intra_op_num_threads == 2
    finally:
        torch.set_num_threads(before)
    pinned = OnnxClassifier.from_folder(exported["textcnn"], threads=1)
    assert pinned.session.get_session_options().intra_op_num_threads == 1
    spin = "session.intra_op.allow_spinning"
    assert pinned.session.get_session_options().get_session_config_entry(spin) == "1"
    pinned.spinning = False
    assert pinned.session.get_session_options().get_session_config_entry(spin) == "0"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"fmt": "torch"}, "needs --quantize int8"),
        ({"fmt": "tflite"}, "unknown export format"),
        ({"quantize": "int4"}, "unknown quantization"),
    ],
)
def test_export_rejects_bad_requests(
    models: dict[str, Path], tmp_path: Path, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(UserError, match=message):
        export_model(models["bilstm"], tmp_path / "x", **kwargs)
    assert not (tmp_path / "x").exists()


def test_export_rejects_exports_and_the_source_as_out(
    models: dict[str, Path], exported: dict[str, Path]
) -> None:
    with pytest.raises(UserError, match="already an export"):
        export_model(exported["bilstm"], exported["bilstm"].with_name("again"))
    with pytest.raises(UserError, match="must not be the source"):
        export_model(models["bilstm"], models["bilstm"])
    with pytest.raises(UserError, match="must not be the source"):
        export_model(models["bilstm"], models["bilstm"] / "inside")
    assert read_meta(models["bilstm"])["kind"] == "student"


def test_failed_validation_writes_nothing(
    models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = export_mod._run_onnx
    monkeypatch.setattr(export_mod, "_run_onnx", lambda path, batch: real(path, batch) + 0.5)
    with pytest.raises(ExportValidationError, match=re.escape("differs from PyTorch by 5.00e-01")):
        export_model(models["textcnn"], tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
    assert [p.name for p in tmp_path.iterdir()] == []  # no temporary folder left behind


def test_evaluate_accepts_an_onnx_folder(
    exported: dict[str, Path], data: dict[str, tuple[list[str], list[int]]]
) -> None:
    from textdistill.core.config import EvalConfig
    from textdistill.data.corpus import Split
    from textdistill.evaluation.evaluate import evaluate_model

    texts, labels = data["test"]
    split = Split(name="test", texts=texts, labels=labels)
    ev = evaluate_model(
        exported["bilstm"],
        split,
        eval_cfg=EvalConfig(latency_texts=3, warmup=1, batch_size=16),
    )
    assert ev.metrics["accuracy"] > 0.8
    assert ev.efficiency is not None and ev.efficiency.e2e_texts_per_s > 0


def test_compare_reports_the_export_next_to_its_source(
    models: dict[str, Path],
    exported: dict[str, Path],
    data: dict[str, tuple[list[str], list[int]]],
    tmp_path: Path,
) -> None:
    from textdistill.core.config import EvalConfig
    from textdistill.data.corpus import Split
    from textdistill.evaluation.evaluate import compare_models

    texts, labels = data["test"]
    _, summaries = compare_models(
        [models["textcnn"], exported["textcnn-int8"]],
        Split(name="test", texts=texts, labels=labels),
        tmp_path / "report",
        eval_cfg=EvalConfig(latency_texts=3, warmup=1, batch_size=16),
    )
    source, int8 = summaries
    assert (source.kind, int8.kind) == ("student", "onnx")
    assert int8.size_mb < source.size_mb
    assert abs(int8.accuracy - source.accuracy) <= 0.05
    assert int8.params == source.params


# ---------------------------------------------------------------- CLI


def test_cli_export_prints_sizes(models: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "cli-int8"
    result = runner.invoke(
        app, ["export", "--model", str(models["textcnn"]), "--quantize", "int8", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert "onnx int8 export of the student" in text
    assert "size: " in text and " MB -> " in text
    assert "source dev accuracy: 0.9700" in text
    assert (out / "model.onnx").is_file()
    bad = runner.invoke(app, ["export", "--model", str(models["textcnn"]), "--format", "torch"])
    assert bad.exit_code == 2 and "needs --quantize int8" in bad.output


def test_cli_predict_on_an_onnx_folder(exported: dict[str, Path]) -> None:
    result = runner.invoke(
        app, ["predict", "--model", str(exported["bilstm"]), "球队比赛冠军", "--format", "json"]
    )
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)
    assert row["label"] in CLASSES and 0 < row["probability"] <= 1
    expected = load(exported["bilstm"]).predict(["球队比赛冠军"])[0]
    assert row["label"] == expected.label
