"""Teachers from elsewhere: Hugging Face classifiers (labels matched by name) and seed-style
state dicts, used directly as ``--teacher`` or imported with ``teacher import``."""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast
from typer.testing import CliRunner, Result

from textdistill.cli import app
from textdistill.core.errors import UserError
from textdistill.core.paths import textdistill_home
from textdistill.data.corpus import load_corpus
from textdistill.data.tokenization import build_tokenizer
from textdistill.inference.load import load
from textdistill.models.folders import read_meta
from textdistill.models.teacher import match_labels

CLASSES = ["sports", "finance", "game"]


def invoke(*args: Any) -> Result:
    return CliRunner().invoke(app, [str(a) for a in args])


def ok(result: Result) -> Result:
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory, corpus_builder: Callable[..., Path]) -> Path:
    return corpus_builder(tmp_path_factory.mktemp("data") / "data", per_class=6)


@pytest.fixture(scope="module")
def tok(data: Path) -> PreTrainedTokenizerFast:
    texts = load_corpus(data).split("train").texts
    return build_tokenizer(texts)


def hf_classifier(tok: PreTrainedTokenizerFast, names: list[str], seed: int = 0) -> Any:
    torch.manual_seed(seed)
    config = BertConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        vocab_size=len(tok),
        max_position_embeddings=64,
        num_labels=len(names),
        id2label=dict(enumerate(names)),
        label2id={n: i for i, n in enumerate(names)},
        architectures=["BertForSequenceClassification"],
    )
    model = BertForSequenceClassification(config).eval()
    with torch.no_grad():  # confident, distinct classes: a permutation cannot pass unseen
        model.classifier.weight.mul_(40)
    return model


def save_hf(model: Any, tok: PreTrainedTokenizerFast, path: Path) -> Path:
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def permuted(model: Any, order: list[int]) -> Any:
    """The same classifier with its classes listed in another order (head rows too)."""
    other = copy.deepcopy(model)
    names = [model.config.id2label[i] for i in order]
    with torch.no_grad():
        other.classifier.weight.copy_(model.classifier.weight[order])
        other.classifier.bias.copy_(model.classifier.bias[order])
    other.config.id2label = dict(enumerate(names))
    other.config.label2id = {n: i for i, n in enumerate(names)}
    return other


def by_name(model: Any, tok: PreTrainedTokenizerFast, texts: list[str]) -> list[dict[str, float]]:
    """Each text's class probabilities keyed by class name, from the Hugging Face model."""
    enc = tok(texts, padding=True, truncation=True, max_length=32, return_tensors="pt")
    with torch.no_grad():
        probs = model(**enc).logits.softmax(-1)
    return [{model.config.id2label[j]: float(p[j]) for j in range(len(p))} for p in probs]


TEXTS = ["球队比赛冠军", "银行基金利率", "游戏玩家网游", "今天"]


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory: pytest.TempPathFactory, tok: PreTrainedTokenizerFast) -> Path:
    return save_hf(hf_classifier(tok, CLASSES), tok, tmp_path_factory.mktemp("hf") / "clf")


def test_match_labels_by_name() -> None:
    assert match_labels(["game", "sports", "finance"], CLASSES, source="x") == [1, 2, 0]
    with pytest.raises(UserError, match=r"\[sports, finance, weather\].*\[sports, finance, game\]"):
        match_labels(["sports", "finance", "weather"], CLASSES, source="x")
    with pytest.raises(UserError, match=r"generic names.*--label-map"):
        match_labels(["LABEL_0", "LABEL_1", "LABEL_2"], CLASSES, source="x")
    mapping = {"LABEL_0": "game", "LABEL_1": "sports", "LABEL_2": "finance"}
    assert match_labels(
        ["LABEL_0", "LABEL_1", "LABEL_2"], CLASSES, source="x", label_map=mapping
    ) == [
        1,
        2,
        0,
    ]


def test_import_records_dev_metrics_and_predicts_like_the_checkpoint(
    tmp_path: Path, data: Path, hf_folder: Path, tok: PreTrainedTokenizerFast
) -> None:
    out = tmp_path / "teacher"
    result = ok(
        invoke("teacher", "import", hf_folder, "--data", data, "--out", out, "--max-len", "32")
    )
    assert "teacher saved to" in result.stdout
    meta = read_meta(out)
    assert meta["kind"] == "teacher" and meta["imported"]["source"] == str(hf_folder)
    assert set(meta["dev_metrics"]) == {"loss", "accuracy", "macro_f1"}
    dev = load_corpus(data).split("dev")
    clf = load(out)
    own = np.argmax(clf.logits(dev.texts), 1)
    assert meta["dev_metrics"]["accuracy"] == pytest.approx(np.mean(own == np.asarray(dev.labels)))
    want = by_name(BertForSequenceClassification.from_pretrained(hf_folder).eval(), tok, TEXTS)
    for p, w in zip(clf.predict(TEXTS, top_k=3), want, strict=True):
        assert {t["label"]: t["probability"] for t in p.top_k} == pytest.approx(w, abs=1e-5)
    ok(invoke("evaluate", "-m", out, "-d", data, "--no-efficiency"))


def test_a_permuted_id2label_gives_the_same_predictions_by_name(
    tmp_path: Path,
    data: Path,
    tok: PreTrainedTokenizerFast,
    hf_folder: Path,
    records_close: Callable[..., None],
) -> None:
    """The silent-mislabelling case: the same model, its classes stored in reverse order."""
    original = BertForSequenceClassification.from_pretrained(hf_folder).eval()
    reversed_ = save_hf(permuted(original, [2, 1, 0]), tok, tmp_path / "reversed")
    reloaded = BertForSequenceClassification.from_pretrained(reversed_).eval()
    records_close(by_name(reloaded, tok, TEXTS), by_name(original, tok, TEXTS), abs=1e-5)
    ok(invoke("teacher", "import", hf_folder, "-d", data, "-o", tmp_path / "a", "--max-len", "32"))
    ok(invoke("teacher", "import", reversed_, "-d", data, "-o", tmp_path / "b", "--max-len", "32"))
    a, b = load(tmp_path / "a"), load(tmp_path / "b")
    assert a.label_names == b.label_names == CLASSES
    np.testing.assert_allclose(a.logits(TEXTS), b.logits(TEXTS), atol=1e-5)
    records_close(
        read_meta(tmp_path / "a")["dev_metrics"], read_meta(tmp_path / "b")["dev_metrics"]
    )


def test_other_classes_fail_with_both_lists_and_a_label_map_fixes_generic_names(
    tmp_path: Path, data: Path, tok: PreTrainedTokenizerFast
) -> None:
    other = save_hf(hf_classifier(tok, ["sports", "finance", "weather"]), tok, tmp_path / "o")
    bad = invoke("teacher", "import", other, "-d", data, "-o", tmp_path / "t")
    assert bad.exit_code == 2
    said = " ".join(bad.stderr.split())
    assert "[sports, finance, weather]" in said and "[sports, finance, game]" in said
    assert "--label-map" in said and not (tmp_path / "t").exists()

    generic = save_hf(hf_classifier(tok, ["LABEL_0", "LABEL_1", "LABEL_2"]), tok, tmp_path / "g")
    bad = invoke("teacher", "import", generic, "-d", data, "-o", tmp_path / "t")
    assert bad.exit_code == 2 and "generic names" in bad.stderr
    mapping = tmp_path / "labels.tsv"
    mapping.write_text("LABEL_0\tgame\nLABEL_1\tsports\nLABEL_2\tfinance\n", encoding="utf-8")
    ok(invoke("teacher", "import", generic, "-d", data, "-o", tmp_path / "t",
              "--label-map", mapping, "--max-len", "32"))  # fmt: skip
    model = BertForSequenceClassification.from_pretrained(generic).eval()
    want = by_name(model, tok, TEXTS)  # keyed LABEL_i
    names = {"LABEL_0": "game", "LABEL_1": "sports", "LABEL_2": "finance"}
    for p, w in zip(load(tmp_path / "t").predict(TEXTS, top_k=3), want, strict=True):
        got = {t["label"]: t["probability"] for t in p.top_k}
        assert got == pytest.approx({names[k]: v for k, v in w.items()}, abs=1e-5)


@pytest.mark.slow
def test_a_hugging_face_folder_is_a_teacher_for_distill(
    tmp_path: Path, data: Path, tok: PreTrainedTokenizerFast
) -> None:
    """No import step: `distill --teacher HF_FOLDER` imports it once and reuses the import."""
    reversed_ = save_hf(
        permuted(hf_classifier(tok, CLASSES, seed=3), [2, 0, 1]), tok, tmp_path / "hf"
    )
    args = ["distill", "-t", reversed_, "-d", data, "--mode", "soft", "--embed-dim", "8",
            "--hidden-dim", "8", "--epochs", "1", "--batch-size", "8", "--max-len", "32",
            "-q"]  # fmt: skip
    ok(invoke(*args, "--out", tmp_path / "s1"))
    [imported] = (textdistill_home() / "teachers").iterdir()
    assert read_meta(imported)["imported"]["source"] == str(reversed_)
    ok(invoke(*args, "--out", tmp_path / "s2"))
    assert list((textdistill_home() / "teachers").iterdir()) == [imported]
    meta = read_meta(tmp_path / "s1")
    assert meta["teachers"] == [str(imported.resolve())]
    # The student learnt from the teacher's classes by name, in the data's order.
    assert json.loads((tmp_path / "s1" / "labels.json").read_text(encoding="utf-8")) == CLASSES


def test_a_transformer_student_is_built_from_a_hugging_face_bert(
    tmp_path: Path, data: Path, tok: PreTrainedTokenizerFast
) -> None:
    """The checkpoint's classes in another order: the student copies the imported (reordered)
    head, so with both layers and steps too small to move them it predicts as the checkpoint
    does, class by class."""
    model = permuted(hf_classifier(tok, CLASSES, seed=5), [1, 2, 0])
    hf = save_hf(model, tok, tmp_path / "hf")
    args = ["distill", "-t", hf, "-d", data, "--mode", "soft", "--student", "transformer",
            "--layers", "2", "--epochs", "1", "--lr", "1e-12", "--batch-size", "8",
            "--max-len", "32", "-q", "--out", tmp_path / "s"]  # fmt: skip
    ok(invoke(*args))
    arch = read_meta(tmp_path / "s")["architecture"]
    assert arch["teacher_layers"] == [0, 1] and arch["hidden"] == 32
    texts = load_corpus(data).split("dev").texts
    got = load(tmp_path / "s").predict(texts, top_k=3)
    want = by_name(model, tok, texts)
    for g, w in zip(got, want, strict=True):
        assert {e["label"]: e["probability"] for e in g.top_k} == pytest.approx(w, abs=1e-4)


def seed_state_dict(model: Any) -> dict[str, torch.Tensor]:
    """The classic tutorial layout: ``bert.*`` and a ``fc`` Linear on the pooled output."""
    sd = model.state_dict()
    return {
        ("fc." + k[len("classifier.") :] if k.startswith("classifier.") else k): v
        for k, v in sd.items()
    }


def test_a_seed_state_dict_imports_and_predicts_like_its_model(
    tmp_path: Path, data: Path, tok: PreTrainedTokenizerFast, hf_folder: Path
) -> None:
    model = hf_classifier(tok, CLASSES, seed=5)
    base = tmp_path / "base"
    shutil.copytree(hf_folder, base)  # config and tokenizer of the architecture
    torch.save(seed_state_dict(model), tmp_path / "model.pt")
    ok(invoke("teacher", "import", "--state-dict", tmp_path / "model.pt", "--base", base,
              "-d", data, "-o", tmp_path / "t", "--max-len", "32"))  # fmt: skip
    got = load(tmp_path / "t").predict(TEXTS, top_k=3)
    for p, w in zip(got, by_name(model, tok, TEXTS), strict=True):
        assert {t["label"]: t["probability"] for t in p.top_k} == pytest.approx(w, abs=1e-5)

    broken = seed_state_dict(model)
    broken["fc2.weight"] = broken.pop("fc.bias")
    torch.save(broken, tmp_path / "broken.pt")
    bad = invoke("teacher", "import", "--state-dict", tmp_path / "broken.pt", "--base", base,
                 "-d", data, "-o", tmp_path / "u")  # fmt: skip
    assert bad.exit_code == 2
    said = " ".join(bad.stderr.split())
    assert "missing keys ['classifier.bias']" in said and "unknown keys ['fc2.weight']" in said


def test_a_pickled_object_is_refused(tmp_path: Path, data: Path, hf_folder: Path) -> None:
    torch.save({"fc.weight": torch.zeros(3, 32), "note": object()}, tmp_path / "evil.pt")
    bad = invoke("teacher", "import", "--state-dict", tmp_path / "evil.pt", "--base", hf_folder,
                 "-d", data, "-o", tmp_path / "t")  # fmt: skip
    assert bad.exit_code == 2 and "weights_only" in bad.stderr


# ------------------------------------------------------------------ predictions as a teacher


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def write_predictions(path: Path, texts: list[str], seed: int = 0, form: str = "probs") -> Path:
    """Random confident distributions over CLASSES, one line per text."""
    rng = np.random.default_rng(seed)
    lines = []
    for text in texts:
        p = rng.dirichlet([0.5, 0.5, 0.5])
        if form == "probs":
            record: dict[str, Any] = {
                "text": text,
                "probs": dict(zip(CLASSES, p.tolist(), strict=True)),
            }
        else:  # logits in another class order, named
            order = [2, 0, 1]
            record = {
                "text": text,
                "logits": [float(np.log(p[i])) for i in order],
                "labels": [CLASSES[i] for i in order],
            }
        lines.append(json.dumps(record, ensure_ascii=False))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def expected_probs(path: Path) -> dict[str, np.ndarray]:
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        if "probs" in r:
            out[r["text"]] = np.array([r["probs"].get(c, 0.0) for c in CLASSES])
        else:
            z = dict(zip(r["labels"], r["logits"], strict=True))
            out[r["text"]] = softmax(np.array([[z[c] for c in CLASSES]]))[0]
    return out


def only_cache(root: Path) -> Path:
    [imported] = (root / "teachers").iterdir()
    [cache] = (imported / "soft_targets").iterdir()
    return cache


@pytest.mark.slow
@pytest.mark.parametrize("form", ["probs", "logits"])
def test_a_predictions_file_is_a_teacher_whose_soft_targets_are_its_probabilities(
    tmp_path: Path, data: Path, form: str
) -> None:
    texts = load_corpus(data).split("train").texts
    preds = write_predictions(tmp_path / "llm.jsonl", [*texts, "an extra text"], form=form)
    args = ["distill", "-t", preds, "-d", data, "--mode", "soft", "--embed-dim", "8",
            "--hidden-dim", "8", "--epochs", "1", "--batch-size", "8", "-q"]  # fmt: skip
    ok(invoke(*args, "--out", tmp_path / "s"))
    cache = only_cache(textdistill_home())
    logits = np.load(cache / "logits.npy")
    want = expected_probs(preds)
    np.testing.assert_allclose(softmax(logits), np.stack([want[t] for t in texts]), atol=1e-6)
    meta = read_meta(tmp_path / "s")
    assert meta["mode"] == "soft" and len(meta["teachers"]) == 1
    ok(invoke(*args, "--mode", "hard", "--out", tmp_path / "h"))  # the same cache serves hard
    assert only_cache(textdistill_home()) == cache


def test_predictions_need_every_transfer_text_and_hidden_mode_needs_a_model(
    tmp_path: Path, data: Path
) -> None:
    texts = load_corpus(data).split("train").texts
    preds = write_predictions(tmp_path / "short.jsonl", texts[:-2])
    base = ["distill", "-t", preds, "-d", data, "--epochs", "1", "-q"]
    bad = invoke(*base, "--mode", "soft", "--out", tmp_path / "s")
    assert bad.exit_code == 2 and "2 of the 18 transfer texts have no prediction" in bad.stderr
    full = write_predictions(tmp_path / "full.jsonl", texts)
    bad = invoke(
        "distill", "-t", full, "-d", data, "--mode", "hidden", "--out", tmp_path / "h", "-q"
    )
    assert bad.exit_code == 2 and "pooled vectors (hidden states)" in " ".join(bad.stderr.split())


def test_bad_prediction_lines_name_file_and_line(tmp_path: Path, data: Path) -> None:
    preds = tmp_path / "bad.jsonl"
    preds.write_text(
        "\n".join(
            [
                '{"text": "a", "probs": {"sports": 0.5, "finance": 0.5}}',
                '{"text": "b", "probs": {"sports": 0.5, "weather": 0.5}}',
                '{"text": "c", "probs": {"sports": 0.5, "finance": 0.4}}',
                '{"text": "a", "probs": {"game": 1.0}}',
                "not json",
                '{"text": "d", "logits": [1, 2], "labels": ["sports", "game"]}',
            ]
        )
        + "\n",
        encoding="utf-8",
    )
    bad = invoke("distill", "-t", preds, "-d", data, "--out", tmp_path / "s", "-q")
    assert bad.exit_code == 2
    said = bad.stderr
    assert f"{preds}:2: unknown label 'weather'" in said
    assert f"{preds}:3: probabilities sum to 0.900000, not 1" in said
    assert f"{preds}:4: duplicate text (first on line 1)" in said
    assert f"{preds}:5:" in said and f"{preds}:6: 2 logits and 2 labels for 3 classes" in said
    assert not (tmp_path / "s").exists()


@pytest.mark.slow
def test_a_predictions_file_and_a_model_distil_as_one_ensemble(
    tmp_path: Path, data: Path, hf_folder: Path
) -> None:
    texts = load_corpus(data).split("train").texts
    preds = write_predictions(tmp_path / "llm.jsonl", texts, seed=1)
    out = tmp_path / "s"
    ok(invoke("distill", "-t", preds, "-t", hf_folder, "-d", data, "--mode", "soft", "--out", out,
              "--embed-dim", "8", "--hidden-dim", "8", "--epochs", "1", "--batch-size", "8",
              "--max-len", "32", "-q"))  # fmt: skip
    meta = read_meta(out)
    assert len(meta["teachers"]) == 2
    # The student's tokenizer is the model teacher's (a predictions file has none).
    hf_vocab = json.loads((hf_folder / "tokenizer.json").read_text(encoding="utf-8"))["model"]
    student_vocab = json.loads((out / "tokenizer.json").read_text(encoding="utf-8"))["model"]
    assert student_vocab["vocab"] == hf_vocab["vocab"]
    with pytest.raises(UserError, match="cannot classify new ones"):
        load(meta["teachers"][0])


def test_teacher_train_with_no_epochs_imports_and_evaluates(
    tmp_path: Path, data: Path, tok: PreTrainedTokenizerFast, hf_folder: Path
) -> None:
    """`teacher train --model CLASSIFIER --epochs 0` (and a pipeline with train.epochs 0)."""
    reversed_ = save_hf(
        permuted(BertForSequenceClassification.from_pretrained(hf_folder), [2, 1, 0]),
        tok,
        tmp_path / "rev",
    )
    out = tmp_path / "t"
    result = ok(invoke("teacher", "train", "--model", reversed_, "-d", data, "-o", out,
                       "--epochs", "0", "--max-len", "32", "-q"))  # fmt: skip
    assert "dev accuracy" in " ".join(result.stdout.split())
    ok(invoke("teacher", "import", hf_folder, "-d", data, "-o", tmp_path / "a", "--max-len", "32"))
    np.testing.assert_allclose(
        load(out).logits(TEXTS), load(tmp_path / "a").logits(TEXTS), atol=1e-5
    )


def test_an_ensemble_can_have_a_hugging_face_member(
    tmp_path: Path, data: Path, hf_folder: Path, tiny_student: Path
) -> None:
    out = tmp_path / "ens"
    ok(invoke("ensemble", "-t", hf_folder, "-t", tiny_student, "--data", data, "-o", out,
              "--config", write_max_len(tmp_path)))  # fmt: skip
    members = read_meta(out)["members"]
    assert len(members) == 2 and str(textdistill_home() / "teachers") in str(
        (out / members[0]).resolve()
    )
    assert load(out).predict("球队比赛")[0].label in CLASSES


def write_max_len(tmp_path: Path) -> Path:
    config = tmp_path / "len.yaml"
    config.write_text("tokenizer: {max_len: 32}\n", encoding="utf-8")
    return config


def test_the_llm_example_writes_a_valid_predictions_file(tmp_path: Path) -> None:
    """docs/examples/llm_teacher.py, with a fake model in place of the API."""
    import importlib.util
    import math

    from textdistill.distill.predictions import read_predictions

    path = Path(__file__).resolve().parents[1] / "docs" / "examples" / "llm_teacher.py"
    spec = importlib.util.spec_from_file_location("llm_teacher", path)
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)

    answers = {"球队": {" sports": math.log(0.6), "game": math.log(0.2), "x": math.log(0.2)}}

    def fake(prompt: str) -> dict[str, float]:
        return next((v for k, v in answers.items() if k in prompt), {"?": 0.0})

    lines = list(example.prediction_lines(["球队夺冠", "无关"], CLASSES, fake))
    out = tmp_path / "llm.jsonl"
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    texts, logits = read_predictions(out, CLASSES)
    assert texts == ["球队夺冠", "无关"]
    np.testing.assert_allclose(softmax(logits)[0], [0.75, 0.0, 0.25], atol=1e-6)
    np.testing.assert_allclose(softmax(logits)[1], [1 / 3] * 3, atol=1e-6)


@pytest.mark.slow
def test_teacher_cache_accepts_a_hugging_face_folder_and_the_import_exports(
    tmp_path: Path, data: Path, hf_folder: Path
) -> None:
    config = write_max_len(tmp_path)
    result = ok(invoke("teacher", "cache", "-t", hf_folder, "-d", data, "-c", config, "-q"))
    assert "soft targets for 18 rows" in " ".join(result.stdout.split())
    [imported] = (textdistill_home() / "teachers").iterdir()
    exported = tmp_path / "onnx"
    ok(invoke("export", "--model", imported, "--format", "onnx", "--out", exported))
    np.testing.assert_allclose(
        load(exported).logits(TEXTS), load(imported).logits(TEXTS), atol=1e-4
    )
