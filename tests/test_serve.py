"""The HTTP service: endpoints, every bad-input case, micro-batching, and a real server."""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

fastapi = pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
pytest.importorskip("onnxruntime")

from fastapi.testclient import TestClient  # noqa: E402
from serving import (  # noqa: E402
    CLASSES,
    running_server,
    save_serving_student,
    serving_tokenizer,
)
from transformers import PreTrainedTokenizerFast  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from textdistill.cli import app as cli_app  # noqa: E402
from textdistill.core.errors import UserError  # noqa: E402
from textdistill.deploy.export import export_model  # noqa: E402
from textdistill.deploy.serve import (  # noqa: E402
    ENV_MODEL,
    ENV_SETTINGS,
    ClassifyResponse,
    ServeSettings,
    create_app,
    create_app_from_env,
    worker_threads,
)
from textdistill.inference.load import load  # noqa: E402
from textdistill.models.folders import (  # noqa: E402
    read_meta,
    save_student,
    size_on_disk_mb,
)
from textdistill.models.students import build_student  # noqa: E402
from textdistill.runtime.classifier import Classifier  # noqa: E402

TEXTS = [f"{a}{b}{i}" for i in range(5) for a, b in (("球队", "比赛"), ("银行", "基金"))]


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return serving_tokenizer()


@pytest.fixture(scope="module")
def student_dir(
    tmp_path_factory: pytest.TempPathFactory, tokenizer: PreTrainedTokenizerFast
) -> Path:
    return save_serving_student(tmp_path_factory.mktemp("serve") / "student", tokenizer)


@pytest.fixture(scope="module")
def onnx_dir(student_dir: Path) -> Path:
    return export_model(student_dir, student_dir.with_name("student-onnx")).out


@pytest.fixture(scope="module")
def nan_student_dir(
    tmp_path_factory: pytest.TempPathFactory, tokenizer: PreTrainedTokenizerFast
) -> Path:
    """A student folder that loads (every weight finite) but cannot predict: saturated LSTM
    gates and a head near float32's largest value overflow to infinite logits, whose
    softmax is NaN. (NaN weights themselves are refused when the folder is loaded.)"""
    model = build_student("bilstm", "small", len(tokenizer), 3, embed_dim=8, hidden_dim=8)
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.fill_(3e38 if name.startswith("classifier") else 10.0)
    out = tmp_path_factory.mktemp("serve-nan") / "damaged"
    save_student(out, model, tokenizer, CLASSES, max_len=16, metrics={"accuracy": 0.5})
    return out


def strict_json(text: str) -> Any:
    """``json.loads`` that refuses NaN and infinities (what a strict client's parser does)."""

    def refuse(constant: str) -> Any:
        raise AssertionError(f"{constant} in a response: {text[:200]}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture
def clf(student_dir: Path) -> Classifier:
    """A fresh classifier per test, so that instrumenting it never leaks into another."""
    return load(student_dir)


def _count_calls(clf: Classifier, before: Callable[[], None] | None = None) -> list[int]:
    """Wrap ``clf.forward_batch``; the returned list gets each call's batch size."""
    calls: list[int] = []
    original = clf.forward_batch

    def counting(batch: dict[str, Any]) -> np.ndarray:
        calls.append(int(batch["input_ids"].shape[0]))
        if before is not None:
            before()
        return original(batch)

    clf.forward_batch = counting  # type: ignore[method-assign]
    return calls


def _concurrent_posts(app: Any, bodies: list[dict[str, Any]]) -> list[Any]:
    """POST all bodies at once through the ASGI app (no lifespan: the batcher starts lazily)."""

    async def run() -> list[Any]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return list(
                await asyncio.gather(*(client.post("/v1/classify", json=b) for b in bodies))
            )

    return asyncio.run(run())


# ---------------------------------------------------------------- endpoints


def test_classify_matches_predict(clf: Classifier) -> None:
    texts = ["球队比赛", "   ", "银行基金利率"]
    expected = clf.predict(texts, top_k=2)
    with TestClient(create_app(clf)) as client:
        r = client.post("/v1/classify", json={"texts": texts, "top_k": 2})
    assert r.status_code == 200
    body = r.json()
    ClassifyResponse.model_validate(body)  # the documented schema, though not re-validated
    assert body["model"] == "student" and body["batch_texts"] == 3
    assert body["queue_ms"] >= 0 and body["batch_ms"] > 0
    results = body["results"]
    assert len(results) == 3
    assert results[1] == {
        "label": None,
        "label_id": None,
        "probability": None,
        "top_k": [],
        "latency_ms": None,
        "reason": "empty text",
    }
    for got, want in zip([results[0], results[2]], [expected[0], expected[2]], strict=True):
        assert got["label"] == want.label and got["label_id"] == want.label_id
        assert got["probability"] == pytest.approx(want.probability, abs=1e-6)
        assert [t["label"] for t in got["top_k"]] == [t["label"] for t in want.top_k]
        assert len(got["top_k"]) == 2
        assert got["top_k"][0]["probability"] >= got["top_k"][1]["probability"]
        assert got["latency_ms"] > 0 and got["reason"] is None


def test_top_k_defaults_to_one_and_all_empty_texts_skip_the_model(clf: Classifier) -> None:
    calls = _count_calls(clf)
    with TestClient(create_app(clf)) as client:
        calls.clear()  # the start-up warm-up ran once
        r = client.post("/v1/classify", json={"texts": ["", " \t"]})
        assert r.status_code == 200
        assert [x["reason"] for x in r.json()["results"]] == ["empty text", "empty text"]
        assert calls == []
        r = client.post("/v1/classify", json={"texts": ["球队"]})
    assert len(r.json()["results"][0]["top_k"]) == 1


def test_healthz_model_stats_and_docs(clf: Classifier, student_dir: Path) -> None:
    settings = ServeSettings(max_texts=7, max_text_chars=50, max_batch_size=8, max_wait_ms=1.5)
    with TestClient(create_app(clf, settings)) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        info = client.get("/v1/model").json()
        client.post("/v1/classify", json={"texts": ["a", "b"]})
        stats = client.get("/v1/stats").json()
        assert client.get("/docs").status_code == 200
        schema = client.get("/openapi.json").json()
    meta = read_meta(student_dir)
    assert info["name"] == "student" and info["kind"] == "student"
    assert info["backend"] == "torch" and info["quantize"] is None
    assert info["labels"] == CLASSES and info["num_labels"] == 3 and info["max_len"] == 16
    assert info["fingerprint"] == meta["fingerprint"]
    assert info["num_parameters"] == meta["num_parameters"]
    assert info["size_mb"] == pytest.approx(size_on_disk_mb(student_dir), abs=1e-6)
    assert info["limits"] == {
        "max_texts": 7,
        "max_text_chars": 50,
        "max_batch_size": 8,
        "max_wait_ms": 1.5,
        "max_queue_texts": 10_000,
    }
    assert stats["requests"] == 1 and stats["texts"] == 2 and stats["batches"] == 1
    body = schema["components"]["schemas"]["ClassifyRequest"]["properties"]
    assert body["texts"]["maxItems"] == 7 and body["texts"]["items"]["maxLength"] == 50
    assert body["top_k"]["maximum"] == 3
    assert "/v1/classify" in schema["paths"]


def test_model_info_of_an_onnx_export(onnx_dir: Path, student_dir: Path) -> None:
    app = create_app(onnx_dir)
    options = app.state.classifier.session.get_session_options()
    # Idle ONNX Runtime threads must not spin: they would starve the event loop.
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    with TestClient(app) as client:
        info = client.get("/v1/model").json()
        r = client.post("/v1/classify", json={"texts": ["球队比赛"]})
    assert info["backend"] == "onnx" and info["kind"] == "student"
    assert info["source_fingerprint"] == read_meta(student_dir)["fingerprint"]
    assert r.status_code == 200
    want = load(student_dir).predict(["球队比赛"])[0]
    assert r.json()["results"][0]["probability"] == pytest.approx(want.probability, abs=1e-5)


def test_an_ensemble_of_a_student_and_an_onnx_export_is_served(
    tmp_path: Path, onnx_dir: Path, student_dir: Path
) -> None:
    from textdistill.models.ensemble import make_ensemble

    ens = make_ensemble([student_dir, onnx_dir], tmp_path / "ensemble")
    with TestClient(create_app(ens)) as client:
        info = client.get("/v1/model").json()
        r = client.post("/v1/classify", json={"texts": ["球队比赛", "银行基金"]})
    assert info["kind"] == "ensemble"
    assert info["size_mb"] == pytest.approx(
        size_on_disk_mb(student_dir) + size_on_disk_mb(onnx_dir)
    )
    assert r.status_code == 200
    want = load(ens).predict(["球队比赛", "银行基金"])
    got = r.json()["results"]
    assert [g["label"] for g in got] == [w.label for w in want]
    assert got[0]["probability"] == pytest.approx(want[0].probability, abs=1e-5)


def test_create_app_from_a_path_checks_the_backend(student_dir: Path) -> None:
    with pytest.raises(UserError, match="textdistill export"):
        create_app(student_dir, ServeSettings(backend="onnx"))


# ---------------------------------------------------------------- bad input

LIMITS = ServeSettings(max_texts=3, max_text_chars=10)
JSON = {"content-type": "application/json"}

BAD_REQUESTS: list[tuple[str, dict[str, Any], int, str, str]] = [
    ("invalid json", {"content": b'{"texts": [', "headers": JSON}, 400, "invalid_json", "JSON"),
    (
        "not json",
        {"content": b"texts=a", "headers": {"content-type": "application/x-www-form-urlencoded"}},
        415,
        "unsupported_media_type",
        "application/json",
    ),
    ("no body", {"headers": JSON}, 422, "invalid_request", "body: Field required"),
    ("array body", {"json": ["a"]}, 422, "invalid_request", "body: Input should be a valid"),
    ("no texts", {"json": {"top_k": 1}}, 422, "invalid_request", "texts: Field required"),
    ("texts string", {"json": {"texts": "a"}}, 422, "invalid_request", "texts: Input should be"),
    ("text int", {"json": {"texts": ["a", 1]}}, 422, "invalid_request", "texts[1]: Input"),
    ("text null", {"json": {"texts": [None]}}, 422, "invalid_request", "texts[0]: Input"),
    ("empty list", {"json": {"texts": []}}, 422, "invalid_request", "at least 1 item"),
    ("too many", {"json": {"texts": ["a"] * 4}}, 422, "invalid_request", "at most 3 items"),
    (
        "too long",
        {"json": {"texts": ["a", "长" * 11]}},
        422,
        "invalid_request",
        "texts[1]: String should have at most 10 characters",
    ),
    ("top_k 0", {"json": {"texts": ["a"], "top_k": 0}}, 422, "invalid_request", "top_k"),
    ("top_k 4", {"json": {"texts": ["a"], "top_k": 4}}, 422, "invalid_request", "less than"),
    ("top_k str", {"json": {"texts": ["a"], "top_k": "2"}}, 422, "invalid_request", "top_k"),
    ("top_k float", {"json": {"texts": ["a"], "top_k": 1.5}}, 422, "invalid_request", "top_k"),
    ("top_k bool", {"json": {"texts": ["a"], "top_k": True}}, 422, "invalid_request", "top_k"),
    ("top_k 4.0", {"json": {"texts": ["a"], "top_k": 4.0}}, 422, "invalid_request", "less than"),
    (
        "top_k 1e400",
        {"content": b'{"texts": ["a"], "top_k": 1e400}', "headers": JSON},
        422,
        "invalid_request",
        "top_k",
    ),
    (
        "lone surrogate",
        {"content": b'{"texts": ["a\\ud800"]}', "headers": JSON},
        422,
        "invalid_request",
        "texts[0]",
    ),
    (
        "not utf-8",
        {"content": b'{"texts": ["\xff\xfe"]}', "headers": JSON},
        400,
        "invalid_body",
        "parsing the body",
    ),
    (
        "deep nesting",
        {"content": b"[" * 2000 + b"]" * 2000, "headers": JSON},
        400,
        "invalid_body",
        "parsing the body",
    ),
    ("unknown", {"json": {"texts": ["a"], "topk": 2}}, 422, "invalid_request", "topk: Extra"),
    (
        "huge body",
        {"content": b'{"texts": ["' + b"a" * 30_000 + b'"]}', "headers": JSON},
        413,
        "payload_too_large",
        "limit",
    ),
]


@pytest.fixture
def limited_client(clf: Classifier) -> Any:
    with TestClient(create_app(clf, LIMITS), raise_server_exceptions=False) as client:
        yield client


@pytest.mark.parametrize(
    ("kwargs", "status", "code", "fragment"),
    [case[1:] for case in BAD_REQUESTS],
    ids=[case[0] for case in BAD_REQUESTS],
)
def test_bad_input_gets_a_clear_4xx(
    limited_client: Any, kwargs: dict[str, Any], status: int, code: str, fragment: str
) -> None:
    r = limited_client.post("/v1/classify", **kwargs)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == code
    assert fragment in error["message"]


def test_limits_are_inclusive(limited_client: Any) -> None:
    r = limited_client.post("/v1/classify", json={"texts": ["长" * 10] * 3, "top_k": 3})
    assert r.status_code == 200
    assert all(len(x["top_k"]) == 3 for x in r.json()["results"])


def test_unknown_routes_and_methods(limited_client: Any) -> None:
    r = limited_client.get("/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = limited_client.get("/v1/classify")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"


def test_a_failing_model_fails_its_batch_only(clf: Classifier) -> None:
    failures = [RuntimeError("boom")]

    def maybe_fail() -> None:
        if failures:
            raise failures.pop()

    with TestClient(create_app(clf), raise_server_exceptions=False) as client:
        _count_calls(clf, before=maybe_fail)
        r = client.post("/v1/classify", json={"texts": ["球队"]})
        assert r.status_code == 500
        assert r.json()["error"] == {
            "code": "inference_failed",
            "message": "the model failed on this batch: RuntimeError: boom",
            "details": [],
        }
        assert client.get("/healthz").status_code == 200
        assert client.post("/v1/classify", json={"texts": ["球队"]}).status_code == 200


def test_an_integral_top_k_is_the_integer_the_schema_says(limited_client: Any) -> None:
    # JSON Schema's "integer" (the published type of top_k) includes 2.0.
    r = limited_client.post("/v1/classify", json={"texts": ["球队"], "top_k": 2.0})
    assert r.status_code == 200, r.text
    assert len(r.json()["results"][0]["top_k"]) == 2


def test_invisible_texts_get_a_reason_and_skip_the_model(clf: Classifier) -> None:
    app = create_app(clf)
    calls = _count_calls(clf)
    texts = ["\u200b", "\ufeff", "\x01", "\x00", "\u200b\x00 \ufeff\u3000"]
    with TestClient(app) as client:
        calls.clear()  # the start-up warm-up
        r = client.post("/v1/classify", json={"texts": [*texts, "球队\x00比赛"]})
    assert r.status_code == 200
    results = r.json()["results"]
    assert [x["reason"] for x in results[:5]] == ["empty text"] * 5
    assert all(x["label"] is None for x in results[:5])
    assert results[5]["label"] in CLASSES  # a NUL inside visible text is just dropped
    assert calls == [1]


def test_the_probe_runs_when_the_app_is_built(clf: Classifier) -> None:
    calls = _count_calls(clf)
    app = create_app(clf)
    assert calls == [1] and app.state.batcher.problem is None


def test_a_model_with_nan_weights_is_reported_never_served_as_nan(nan_student_dir: Path) -> None:
    app = create_app(nan_student_dir)  # built all the same: /healthz is there to say why
    assert "cannot predict" in app.state.batcher.problem
    with TestClient(app, raise_server_exceptions=False) as client:
        health = client.get("/healthz")
        r = client.post("/v1/classify", json={"texts": ["球队比赛", ""], "top_k": 3})
        empty = client.post("/v1/classify", json={"texts": [" "]})
    assert health.status_code == 503
    body = strict_json(health.text)
    assert body["status"] == "error"
    assert str(nan_student_dir) in body["reason"] and "damaged" in body["reason"]
    assert r.status_code == 503
    error = strict_json(r.text)["error"]
    assert error["code"] == "model_unavailable" and "cannot predict" in error["message"]
    assert empty.status_code == 200  # no model call, nothing to refuse


@pytest.mark.parametrize("value", [math.nan, math.inf], ids=["nan", "inf"])
def test_non_finite_outputs_while_serving_answer_503_and_turn_healthz_503(
    clf: Classifier, value: float
) -> None:
    def broken(batch: dict[str, Any]) -> np.ndarray:
        return np.full((int(batch["input_ids"].shape[0]), 3), value, np.float32)

    with TestClient(create_app(clf), raise_server_exceptions=False) as client:
        assert client.get("/healthz").status_code == 200
        clf.forward_batch = broken  # type: ignore[method-assign]
        r = client.post("/v1/classify", json={"texts": ["球队", "银行"], "top_k": 3})
        health = client.get("/healthz")
    assert r.status_code == 503
    assert strict_json(r.text)["error"]["code"] == "model_unavailable"
    assert health.status_code == 503
    assert "NaN or infinite" in strict_json(health.text)["reason"]


def test_model_info_never_carries_nan(clf: Classifier) -> None:
    clf.meta["dev_metrics"] = {"accuracy": math.nan, "macro_f1": -math.inf, "n": 3}
    with TestClient(create_app(clf)) as client:
        r = client.get("/v1/model")
    assert r.status_code == 200
    assert strict_json(r.text)["dev_metrics"] == {"accuracy": None, "macro_f1": None, "n": 3}


def _post_streamed(app: Any, body: Any) -> Any:
    """POST an async iterable of bytes: httpx sends it chunked, with no Content-Length."""

    async def run() -> Any:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.post("/v1/classify", content=body, headers=JSON)

    return asyncio.run(run())


def test_a_chunked_body_over_the_limit_is_refused_before_it_is_all_read(clf: Classifier) -> None:
    app = create_app(clf)  # the default limits
    limit = app.state.settings.max_body_bytes
    chunk, total = 64 * 1024, 12 * 1024 * 1024
    assert total > 3 * limit
    sent: list[int] = []

    async def body() -> Any:
        yield b'{"texts": ["'
        while sum(sent) < total:
            sent.append(chunk)
            yield b"a" * chunk
        yield b'"]}'

    r = _post_streamed(app, body())
    assert r.request.headers["transfer-encoding"] == "chunked"
    assert "content-length" not in r.request.headers
    assert r.status_code == 413, r.text
    error = r.json()["error"]
    assert error["code"] == "payload_too_large" and str(limit) in error["message"]
    # Reading stopped at the limit: the rest of the stream was never asked for.
    assert limit < sum(sent) <= limit + chunk


def test_a_chunked_body_within_the_limit_is_served(clf: Classifier) -> None:
    data = json.dumps({"texts": ["球队比赛", "银行"]}, ensure_ascii=False).encode()

    async def body() -> Any:
        for i in range(0, len(data), 5):  # pieces that split characters too
            yield data[i : i + 5]

    r = _post_streamed(create_app(clf), body())
    assert r.status_code == 200, r.text
    assert [x["label"] in CLASSES for x in r.json()["results"]] == [True, True]


def test_the_largest_valid_body_fits_the_size_limit(clf: Classifier) -> None:
    # Characters outside the BMP are written as two \\uXXXX escapes (12 bytes) by clients
    # that escape non-ASCII (json.dumps by default): still within max_text_chars.
    settings = ServeSettings(max_texts=4, max_text_chars=500)
    body = json.dumps({"texts": ["😀" * 500] * 4, "top_k": 3}).encode()
    assert len(body) > 4 * 500 * 12
    with TestClient(create_app(clf, settings)) as client:
        r = client.post("/v1/classify", content=body, headers=JSON)
    assert r.status_code == 200, r.text


# ---------------------------------------------------------------- micro-batching


def test_concurrent_requests_are_batched(clf: Classifier) -> None:
    app = create_app(clf, ServeSettings(max_batch_size=64, max_wait_ms=50))
    calls = _count_calls(clf)  # after create_app: its probe prediction is not a request
    texts = TEXTS * 2  # 20 requests of one text each
    responses = _concurrent_posts(app, [{"texts": [t]} for t in texts])
    assert [r.status_code for r in responses] == [200] * 20
    assert 1 <= len(calls) < 20 and sum(calls) == 20
    stats = app.state.batcher.stats
    assert stats.requests == 20 and stats.batches == len(calls)
    assert max(r.json()["batch_texts"] for r in responses) > 1
    # Every request got its own text's answer back, not a neighbour's.
    direct = {p.text: p for p in load(clf.path).predict(sorted(set(texts)))}
    for text, r in zip(texts, responses, strict=True):
        (result,) = r.json()["results"]
        assert result["label"] == direct[text].label
        assert result["probability"] == pytest.approx(direct[text].probability, abs=1e-5)


def test_batches_respect_max_batch_size(clf: Classifier) -> None:
    app = create_app(clf, ServeSettings(max_batch_size=4, max_wait_ms=50, max_texts=10))
    calls = _count_calls(clf)
    bodies: list[dict[str, Any]] = [{"texts": [t]} for t in TEXTS[:9]]
    bodies.append({"texts": TEXTS[:6]})  # larger than a batch: runs alone, chunked by 4
    responses = _concurrent_posts(app, bodies)
    assert all(r.status_code == 200 for r in responses)
    assert all(r.json()["batch_texts"] <= 4 for r in responses[:9])
    assert responses[9].json()["batch_texts"] == 6 and len(responses[9].json()["results"]) == 6
    assert max(calls) == 4 and sum(calls) == 15 and len(calls) >= 5


def test_full_queue_answers_503(clf: Classifier) -> None:
    entered, release = threading.Event(), threading.Event()

    def block() -> None:
        entered.set()
        release.wait(10)

    settings = ServeSettings(max_batch_size=1, max_wait_ms=0, max_texts=1, max_queue_texts=2)
    app = create_app(clf, settings)
    _count_calls(clf, before=block)
    batcher = app.state.batcher

    async def scenario() -> tuple[Any, list[Any]]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:

            def post(text: str) -> asyncio.Task[Any]:
                return asyncio.create_task(client.post("/v1/classify", json={"texts": [text]}))

            first = post("a")
            while not entered.is_set():  # the first batch is now running (and blocked)
                await asyncio.sleep(0.005)
            queued = [post("b"), post("c")]
            while batcher.queued_texts < 2:
                await asyncio.sleep(0.005)
            rejected = await client.post("/v1/classify", json={"texts": ["d"]})
            release.set()
            return rejected, list(await asyncio.gather(first, *queued))

    rejected, served = asyncio.run(scenario())
    assert rejected.status_code == 503
    assert rejected.json()["error"]["code"] == "overloaded"
    assert rejected.headers["retry-after"] == "1"
    assert [r.status_code for r in served] == [200, 200, 200]


def test_shutdown_answers_running_and_queued_requests(clf: Classifier) -> None:
    entered, release = threading.Event(), threading.Event()

    def block() -> None:
        entered.set()
        release.wait(10)

    app = create_app(clf, ServeSettings(max_batch_size=1, max_wait_ms=0))
    _count_calls(clf, before=block)
    batcher = app.state.batcher

    async def scenario() -> list[Any]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            running = asyncio.create_task(client.post("/v1/classify", json={"texts": ["a"]}))
            while not entered.is_set():
                await asyncio.sleep(0.005)
            queued = asyncio.create_task(client.post("/v1/classify", json={"texts": ["b"]}))
            while batcher.queued_texts < 1:
                await asyncio.sleep(0.005)
            await batcher.close()
            release.set()
            return list(await asyncio.gather(running, queued))

    for r in asyncio.run(scenario()):
        assert r.status_code == 503
        assert r.json()["error"]["code"] == "shutting_down"


# ---------------------------------------------------------------- processes and CLI


def test_create_app_from_env(student_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_MODEL, raising=False)
    with pytest.raises(UserError, match=ENV_MODEL):
        create_app_from_env()
    monkeypatch.setenv(ENV_MODEL, str(student_dir))
    monkeypatch.setenv(ENV_SETTINGS, ServeSettings(max_texts=5).model_dump_json())
    app = create_app_from_env()
    assert app.state.settings.max_texts == 5
    assert app.state.classifier.path == student_dir


def test_settings_reject_a_queue_smaller_than_a_request() -> None:
    with pytest.raises(ValueError, match="max_queue_texts"):
        ServeSettings(max_texts=300, max_queue_texts=100)


def test_worker_threads_share_the_cores() -> None:
    assert worker_threads(4, cpus=16) == 4
    assert worker_threads(3, cpus=16) == 5
    assert worker_threads(32, cpus=16) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--backend", "onnx"], "export it first"),
        (["--backend", "tvm"], "--backend: Input should be 'torch' or 'onnx'"),
        (["--max-batch-size", "0"], "--max-batch-size: Input should be greater than or equal"),
        (["--port", "70000"], "--port must be in 1..65535"),
        (["--workers", "0"], "--workers must be >= 1"),
    ],
)
def test_cli_serve_rejects_bad_options(student_dir: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli_app, ["serve", "--model", str(student_dir), *args])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())


@pytest.mark.parametrize("workers", ["1", "2"])
def test_cli_serve_refuses_a_model_that_cannot_predict(
    nan_student_dir: Path, workers: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import uvicorn

    def never(*_args: Any, **_kwargs: Any) -> None:
        raise AssertionError("the server started")

    monkeypatch.setattr(uvicorn, "run", never)
    monkeypatch.delenv(ENV_MODEL, raising=False)
    args = ["serve", "--model", str(nan_student_dir), "--workers", workers]
    result = CliRunner().invoke(cli_app, args)
    assert result.exit_code == 2, result.output
    output = " ".join(result.output.split())
    assert "cannot serve" in output and "cannot predict" in output
    assert "Traceback" not in output and ENV_MODEL not in os.environ


def _chunked_post(port: int, total: int, chunk: int = 64 * 1024) -> tuple[bytes, int]:
    """POST ``total`` bytes with ``Transfer-Encoding: chunked`` over a raw socket, a thread
    sending while this one waits for the answer; returns its status line and bytes sent."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sent = [0]

    def send() -> None:
        head = (
            "POST /v1/classify HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            "Transfer-Encoding: chunked\r\n\r\n"
        )
        try:
            sock.sendall(head.encode())
            piece = b"%x\r\n" % chunk + b"a" * chunk + b"\r\n"
            while sent[0] < total:
                sock.sendall(piece)
                sent[0] += chunk
            sock.sendall(b"0\r\n\r\n")
        except OSError:  # the server answered and closed: what this test wants
            pass

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    try:
        answer = b""
        while b"\r\n" not in answer:
            data = sock.recv(4096)
            if not data:
                break
            answer += data
    finally:
        sock.close()
        sender.join(30)
    return answer.split(b"\r\n", 1)[0], sent[0]


@pytest.mark.slow
def test_real_server_process(onnx_dir: Path, tmp_path: Path) -> None:
    log_file = tmp_path / "server.log"
    with running_server(onnx_dir, log_file) as (base, proc):
        port = int(base.rsplit(":", 1)[1])
        r = httpx.post(f"{base}/v1/classify", json={"texts": ["球队比赛", ""], "top_k": 2})
        assert r.status_code == 200
        first, empty = r.json()["results"]
        assert first["label"] in CLASSES and len(first["top_k"]) == 2
        assert empty["label"] is None and empty["reason"] == "empty text"
        assert httpx.get(f"{base}/v1/model").json()["backend"] == "onnx"
        bad = httpx.post(f"{base}/v1/classify", json={"texts": []})
        assert bad.status_code == 422
        # Far over the limit, and over what socket buffers hold: a server that read on
        # would take it all; this one answers 413 and stops reading (the sender fails).
        status, sent = _chunked_post(port, total=64 * 1024 * 1024)
        assert status.startswith(b"HTTP/1.1 413"), status
        assert sent < 64 * 1024 * 1024
        assert httpx.get(f"{base}/healthz").status_code == 200  # and the server goes on
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        assert "Application shutdown complete" in log_file.read_text(errors="replace")
