"""The torch-free runtime: exported folders predict and serve where torch and transformers
cannot even be imported, with the full package's results (the same code)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")

from textdistill.core.errors import UserError
from textdistill.deploy.export import export_model
from textdistill.inference.load import load as full_load
from textdistill.runtime import load as runtime_load
from textdistill.runtime.onnx import OnnxClassifier

TEXTS = ["球队 比赛 进球", "银行 基金 利率", "", "\u200b", "游戏 玩家" * 2000, "iPhone 2024年 发布"]

BLOCK = """
import importlib.abc, sys

class _Block(importlib.abc.MetaPathFinder):
    # Any import of these fails, as on a machine where they are not installed.
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in {"torch", "transformers", "accelerate", "safetensors"}:
            raise ImportError(f"blocked: {name}")
        return None

sys.meta_path.insert(0, _Block())
"""

PREDICT = """
import json, sys
from textdistill.runtime import load
clf = load(sys.argv[1], threads=1)
texts = json.loads(sys.argv[2])
out = [p.to_dict() for p in clf.predict(texts, top_k=2)]
heavy = sorted(m for m in sys.modules if m.split(".")[0] in {"torch", "transformers"})
print(json.dumps({"predictions": out, "heavy": heavy}))
"""

SERVE = """
import json, sys
from fastapi.testclient import TestClient
from textdistill.deploy.serve import create_app
with TestClient(create_app(sys.argv[1])) as client:
    ok = client.post("/v1/classify", json={"texts": json.loads(sys.argv[2]), "top_k": 2})
    bad = client.post("/v1/classify", json={"texts": [], "top_k": 2})
    health = client.get("/healthz")
heavy = sorted(m for m in sys.modules if m.split(".")[0] in {"torch", "transformers"})
print(json.dumps({"ok": ok.status_code, "results": ok.json()["results"], "bad": bad.status_code,
                  "health": health.status_code, "heavy": heavy}))
"""


def _static_student(out: Path, labels: list[str]) -> Path:
    """A static student over its own character tokenizer (the runtime's numpy fast path)."""
    import torch

    from textdistill.data.tokenization import build_char_tokenizer
    from textdistill.models.folders import save_student
    from textdistill.models.students import build_student

    tok = build_char_tokenizer(["球队比赛进球冠军", "银行基金利率上涨", "游戏玩家发布 iPhone"])
    torch.manual_seed(0)
    model = build_student("static", "small", len(tok), len(labels), embed_dim=8, buckets=64)
    torch.nn.init.normal_(model.ngrams.weight)
    save_student(out, model, tok, labels, max_len=16)
    return out


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, tiny_student: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runtime")
    labels = json.loads((tiny_student / "labels.json").read_text(encoding="utf-8"))
    static = _static_student(root / "static", labels)
    return {
        "fp32": export_model(tiny_student, root / "onnx", fmt="onnx").out,
        "int8": export_model(tiny_student, root / "onnx-int8", fmt="onnx", quantize="int8").out,
        "static-int8": export_model(static, root / "static-int8", fmt="onnx", quantize="int8").out,
    }


def _blocked(script: str, *args: str) -> dict:  # type: ignore[type-arg]
    done = subprocess.run(
        [sys.executable, "-c", BLOCK + script, *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


@pytest.mark.parametrize("precision", ["fp32", "int8", "static-int8"])
def test_the_runtime_predicts_without_torch_what_the_full_package_predicts(
    exported: dict[str, Path], precision: str
) -> None:
    folder = exported[precision]
    got = _blocked(PREDICT, str(folder), json.dumps(TEXTS))
    assert got["heavy"] == []
    full = full_load(folder)
    full.set_threads(1)  # int8 kernels may round differently on another thread count
    want = [p.to_dict() for p in full.predict(TEXTS, top_k=2)]
    for g, w in zip(got["predictions"], want, strict=True):
        g.pop("latency_ms"), w.pop("latency_ms")
        assert g == w  # one prediction path: the same labels, probabilities and reasons
    assert [p["reason"] for p in got["predictions"]][2:4] == ["empty text", "empty text"]
    assert all(p["label"] is not None for i, p in enumerate(got["predictions"]) if i not in (2, 3))


def test_the_full_package_opens_exports_with_the_runtime_class(exported: dict[str, Path]) -> None:
    assert type(full_load(exported["fp32"])) is OnnxClassifier
    assert type(runtime_load(exported["fp32"])) is OnnxClassifier


def test_exported_predictions_match_the_pytorch_source(
    exported: dict[str, Path], tiny_student: Path
) -> None:
    source = full_load(tiny_student).predict(TEXTS, top_k=2)
    onnx = runtime_load(exported["fp32"]).predict(TEXTS, top_k=2)
    for s, o in zip(source, onnx, strict=True):
        assert (s.label, s.reason) == (o.label, o.reason)
        if s.probability is not None:
            assert o.probability == pytest.approx(s.probability, abs=1e-4)


def test_the_service_of_an_export_runs_without_torch(exported: dict[str, Path]) -> None:
    pytest.importorskip("fastapi")
    got = _blocked(SERVE, str(exported["int8"]), json.dumps(TEXTS[:2]))
    assert got["heavy"] == []
    assert (got["ok"], got["bad"], got["health"]) == (200, 422, 200)
    assert [r["label"] is not None for r in got["results"]] == [True, True]


def test_the_cli_serves_an_export_without_torch(exported: dict[str, Path]) -> None:
    # `textdistill serve --help` and the command's imports, on a machine without torch.
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            BLOCK + "import sys; sys.argv = ['textdistill', 'serve', '--help']\n"
            "from textdistill.cli import main\nmain()",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "--workers" in done.stdout


def test_the_runtime_refuses_what_needs_pytorch(tiny_student: Path) -> None:
    with pytest.raises(UserError, match=r"needs the full textdistill package.*textdistill export"):
        runtime_load(tiny_student)


def test_threads_are_set_on_the_session(exported: dict[str, Path]) -> None:
    clf = runtime_load(exported["fp32"], threads=1)
    assert isinstance(clf, OnnxClassifier)
    assert clf.session.get_session_options().intra_op_num_threads == 1
    clf.set_threads(2)
    assert clf.session.get_session_options().intra_op_num_threads == 2


def test_the_runtime_wheel_holds_every_module_it_imports() -> None:
    # scripts/build_runtime.py copies FILES; an import of another textdistill module would
    # fail in the runtime distribution, unless it is the guarded way to the full package.
    import ast
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "build_runtime", Path(__file__).parents[1] / "scripts" / "build_runtime.py"
    )
    assert spec is not None and spec.loader is not None
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    shipped = {
        f[: -len(".py")].replace("/", ".").removesuffix(".__init__")
        for f in build.FILES
        if f.endswith(".py")
    }
    missing = []
    for rel in build.FILES:
        if not rel.endswith(".py"):
            continue
        tree = ast.parse((build.SRC / rel).read_text(encoding="utf-8"))
        guarded = {
            id(n)
            for t in ast.walk(tree)
            if isinstance(t, ast.Try)
            and any(isinstance(h.type, ast.Name) and h.type.id == "ImportError" for h in t.handlers)
            for n in ast.walk(t)
        } | {  # type-checking-only imports never run
            id(n)
            for t in ast.walk(tree)
            if isinstance(t, ast.If) and getattr(t.test, "id", None) == "TYPE_CHECKING"
            for n in ast.walk(t)
        }
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                if name.split(".")[0] != "textdistill" or id(node) in guarded:
                    continue
                if name not in shipped:
                    missing.append(f"{rel}: {name}")
    assert missing == []
    for rel in build.FILES:
        assert (build.SRC / rel).is_file(), rel


def test_prediction_to_dict_has_every_field() -> None:
    import dataclasses

    from textdistill.runtime.classifier import Prediction

    p = Prediction("t", "a", 0, 0.5, [{"label": "a", "probability": 0.5}], 1.0, None)
    assert p.to_dict() == dataclasses.asdict(p)
