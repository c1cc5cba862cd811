"""HTTP classification service: FastAPI + uvicorn, with micro-batching.

Endpoints (OpenAPI docs at ``/docs``):

- ``POST /v1/classify`` ``{"texts": ["..."], "top_k": 1}`` -> one result per text: label,
  label id, probability, the ``top_k`` most likely labels, the model's time per text; plus
  the request's time in the queue and the size of the batch it ran in. A text without a
  visible character (empty, whitespace, zero-width spaces, control characters such as NUL)
  gets ``label: null`` and a ``reason``, as :meth:`Classifier.predict` does, with status 200.
- ``GET /healthz``: 200 ``{"status": "ok"}`` while the model can predict and the batching
  worker runs, else 503 ``{"status": "error", "reason": "..."}``.
- ``GET /v1/model``: name, kind, backend, quantization, labels, sizes, fingerprint, limits.
- ``GET /v1/stats``: requests, texts and batches served so far.
- ``GET /``: a page to try the model (``deploy/page.html``: no external assets, a
  Content-Security-Policy that allows only its own inline script and style, by hash); not
  part of the OpenAPI schema.

**Errors** are JSON ``{"error": {"code", "message", "details"}}`` with a 4xx status, never a
500, for anything a client can get wrong: invalid JSON (400), a body that is not JSON
(415), a body over the size limit (413), wrong types, unknown fields, an empty list, too
many texts, a text over ``max_text_chars`` characters, ``top_k`` outside ``[1, labels]``
(422). A full queue answers 503 with ``Retry-After``; a model that raises on a batch answers
500 ``inference_failed`` to the requests in that batch, and the service goes on.

**A model that cannot predict.** :func:`create_app` runs a probe prediction before serving;
``textdistill serve`` refuses to start when it fails, and an app built anyway reports the
problem on ``/healthz`` (503). A batch whose outputs are NaN or infinite (damaged weights)
answers 503 ``model_unavailable`` and makes ``/healthz`` 503 from then on; no response
ever carries NaN (JSON has none).

**Limits.** The body is capped at :attr:`ServeSettings.max_body_bytes` however it is sent:
a larger ``Content-Length`` is refused unread, and a body without one (``Transfer-Encoding:
chunked``) is read chunk by chunk and refused (413) as soon as it passes the cap, so a
request never holds more than the cap in memory. Texts over ``max_text_chars`` are
rejected (422), not cut, so a client learns that the model would not see all of its text;
whatever that limit, the classifier cuts each text to
:data:`textdistill.core.text.MAX_TEXT_CHARS` characters before tokenizing (the cap
training encodes use), so memory per text stays bounded. The published OpenAPI schema and
the validation agree: ``top_k`` is a JSON Schema integer, which ``2.0`` also is, so an
integral number is accepted as that integer while ``1.5``, ``"2"`` and ``true`` are not.

**Micro-batching** (:mod:`textdistill.deploy.batcher`): concurrent requests are joined into
batches of at most ``max_batch_size`` texts, waiting at most ``max_wait_ms``.

**Backends.** A folder is served as what it is: an ONNX export (``textdistill export``) on
the torch-free runtime (:mod:`textdistill.runtime`: no torch or transformers is imported,
so this module runs in the ``textdistill-runtime`` distribution too), a teacher or student
on PyTorch (int8-flagged folders quantized at load). Responses are rendered by orjson when
it is installed (the ``serve`` extra), uvicorn picks uvloop and httptools up the same way.
``backend="onnx"`` on a PyTorch folder is refused with the export command to run, rather
than exporting on the fly: an export takes time and is validated, and a served model should
be a file one can inspect, evaluate and compare.

**Processes.** ``run_server(workers=N)`` starts N uvicorn worker processes through the
import string ``textdistill.deploy.serve:create_app_from_env`` (the model path and settings
travel in environment variables); each loads its own copy of the model and, unless ``threads`` is
set, uses ``cpu_count // N`` intra-op threads so the workers do not oversubscribe the CPU.
"""

# No ``from __future__ import annotations``: FastAPI resolves endpoint annotations at run
# time, and the request model is built per app (its limits come from the settings).

import logging
import math
import os
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    create_model,
    model_validator,
)
from starlette.exceptions import HTTPException as StarletteHTTPException

from textdistill import __version__
from textdistill.core.errors import UserError
from textdistill.core.folder import (
    ALLOW_MODIFIED_ENV,
    allow_modified_default,
    folder_format,
    read_meta,
)
from textdistill.deploy.batcher import (
    BatchResult,
    InferenceFailed,
    MicroBatcher,
    ModelUnavailable,
    Overloaded,
    ServiceClosed,
    probe,
)
from textdistill.runtime.classifier import Classifier

log = logging.getLogger(__name__)

ENV_MODEL = "TEXTDISTILL_SERVE_MODEL"
ENV_SETTINGS = "TEXTDISTILL_SERVE_SETTINGS"
CLASSIFY_PATH = "/v1/classify"
_LOOPBACK = ("127.0.0.1", "localhost", "::1")

# A JSON string may spell a character as a 6-byte \uXXXX escape, and one outside the BMP
# (an emoji) as two, a surrogate pair: 12 bytes for what counts as one character. The byte
# limit of a classify body is the largest valid request written that way, plus room for the
# rest, so no request that the schema allows is refused for its size.
_BYTES_PER_CHAR = 12
_BODY_OVERHEAD = 4096

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class ServeSettings(BaseModel):
    """Limits and batching of the service; the CLI flags of ``textdistill serve``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: Literal["torch", "onnx"] | None = None
    """None: the folder's own (ONNX Runtime for an exported folder, PyTorch otherwise)."""
    max_batch_size: int = Field(64, ge=1)
    """Most texts per model call (a larger single request still runs, as its own batch)."""
    max_wait_ms: float = Field(5.0, ge=0)
    """How long the oldest queued request may wait for others to join its batch."""
    max_texts: int = Field(256, ge=1)
    """Most texts in one request."""
    max_text_chars: int = Field(1000, ge=1)
    """Most characters in one text (longer texts are rejected, not truncated; the model sees
    at most ``textdistill.core.text.MAX_TEXT_CHARS`` of any text)."""
    max_queue_texts: int = Field(10_000, ge=1)
    """Texts waiting at most; beyond, requests get 503 so that latency stays bounded."""
    threads: int | None = Field(None, ge=1)
    """Intra-op threads for inference (None: the backend's default, or cores / workers)."""

    @model_validator(mode="after")
    def _queue_fits_a_request(self) -> "ServeSettings":
        if self.max_queue_texts < self.max_texts:
            raise ValueError(
                f"max_queue_texts ({self.max_queue_texts}) must be >= max_texts "
                f"({self.max_texts}), or the largest requests could never be queued"
            )
        return self

    @property
    def max_body_bytes(self) -> int:
        """Largest request body accepted: checked on ``Content-Length`` before reading, and on
        the bytes read so far for a body sent without one (chunked)."""
        return self.max_texts * (self.max_text_chars * _BYTES_PER_CHAR + 8) + _BODY_OVERHEAD


# --------------------------------------------------------------------------- schemas


class ErrorInfo(BaseModel):
    code: str
    message: str
    details: list[dict[str, Any]] = Field(default_factory=list)


class ErrorResponse(BaseModel):
    error: ErrorInfo


class LabelScore(BaseModel):
    label: str
    probability: float


class TextResult(BaseModel):
    label: str | None
    label_id: int | None
    probability: float | None
    top_k: list[LabelScore]
    latency_ms: float | None = Field(description="Model time per text within its batch.")
    reason: str | None = Field(None, description="Why label is null (e.g. an empty text).")


class HealthResponse(BaseModel):
    status: Literal["ok", "error"]
    reason: str | None = Field(None, description="Why the service cannot answer (503 only).")


class ClassifyResponse(BaseModel):
    model: str
    results: list[TextResult]
    queue_ms: float = Field(description="Time the request waited for its batch to start.")
    batch_texts: int = Field(description="Texts in the batch this request ran in.")
    batch_ms: float = Field(description="Wall time of that batch's inference.")


def _integral(value: Any) -> Any:
    # JSON has one number type, and JSON Schema's "integer" (what the OpenAPI schema says
    # top_k is) includes 2.0: take an integral float as its int. The strict int check that
    # runs next still refuses 1.5, "2", true and non-finite numbers.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _request_model(settings: ServeSettings, num_labels: int) -> type[BaseModel]:
    """The classify body, with this service's limits (they show in the OpenAPI docs)."""
    text = Annotated[str, StringConstraints(max_length=settings.max_text_chars)]
    return create_model(
        "ClassifyRequest",
        __config__=ConfigDict(extra="forbid", strict=True),
        texts=(
            list[text],
            Field(
                min_length=1,
                max_length=settings.max_texts,
                description=f"1 to {settings.max_texts} texts of at most "
                f"{settings.max_text_chars} characters each.",
            ),
        ),
        top_k=(
            Annotated[int, BeforeValidator(_integral)],
            Field(1, ge=1, le=num_labels, description=f"Labels per text, 1 to {num_labels}."),
        ),
    )


# --------------------------------------------------------------------------- errors


try:
    import orjson
except ImportError:  # the serve extra brings it; without it, the standard library's json
    orjson = None  # type: ignore[assignment]


class FastJSONResponse(JSONResponse):
    """JSON rendered by orjson when installed (several times faster than ``json.dumps`` on
    a response of many predictions; NaN would become ``null``, though none reaches here)."""

    def render(self, content: Any) -> bytes:
        if orjson is None:
            return super().render(content)
        return orjson.dumps(content)


def _error(status: int, code: str, message: str, details: Any = None, **headers: str) -> Any:
    body = {"error": {"code": code, "message": message, "details": details or []}}
    return FastJSONResponse(body, status_code=status, headers=headers or None)


def _loc(loc: tuple[Any, ...]) -> str:
    """``("body", "texts", 3)`` -> ``texts[3]``."""
    out = ""
    for part in loc[1:] if loc and loc[0] == "body" else loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


async def _validation_error(request: Request, exc: Exception) -> Any:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    content_type = request.headers.get("content-type", "")
    if any(e.get("type") == "json_invalid" for e in errors):
        ctx = errors[0].get("ctx") or {}
        return _error(400, "invalid_json", f"the body is not valid JSON: {ctx.get('error', '')}")
    if "json" not in content_type.lower() and await request.body():
        return _error(
            415,
            "unsupported_media_type",
            f"send a JSON body with Content-Type: application/json (got {content_type!r})",
        )
    details = [{"loc": _loc(tuple(e.get("loc", ()))), "msg": e.get("msg", "")} for e in errors]
    message = "; ".join(f"{d['loc']}: {d['msg']}" for d in details)
    return _error(422, "invalid_request", message, details)


async def _http_error(request: Request, exc: Exception) -> Any:
    assert isinstance(exc, StarletteHTTPException)
    code = {400: "invalid_body", 404: "not_found", 405: "method_not_allowed"}.get(
        exc.status_code, "http_error"
    )
    return _error(exc.status_code, code, str(exc.detail), **dict(exc.headers or {}))


async def _overloaded(request: Request, exc: Exception) -> Any:
    return _error(503, "overloaded", "too many texts queued; retry shortly", **{"Retry-After": "1"})


async def _closed(request: Request, exc: Exception) -> Any:
    return _error(503, "shutting_down", "the service is shutting down")


async def _inference_failed(request: Request, exc: Exception) -> Any:
    return _error(500, "inference_failed", f"the model failed on this batch: {exc}")


async def _model_unavailable(request: Request, exc: Exception) -> Any:
    # 503, not 500: the server works, the model it holds cannot predict (see /healthz).
    return _error(503, "model_unavailable", str(exc))


async def _internal(request: Request, exc: Exception) -> Any:
    # Starlette re-raises after this response, so the server logs the traceback.
    return _error(500, "internal_error", "the server failed to answer; see its log")


class _BodyLimit:
    """Refuse request bodies over ``max_bytes`` (413) however they are sent.

    A declared ``Content-Length`` over the limit is refused before anything is read. Any
    other body (``Transfer-Encoding: chunked``, or a length within the limit) is read here
    chunk by chunk and refused as soon as the bytes read pass the limit, the rest unread;
    a body within it is handed on whole (the app buffers it whole anyway to parse it).
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            text = f"the body has {int(declared)} bytes; the limit is {self.max_bytes}"
            await _error(413, "payload_too_large", text)(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left mid-body: nobody to answer, nothing to log
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                text = f"the body is over the limit of {self.max_bytes} bytes"
                await _error(413, "payload_too_large", text)(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replay: deque[Message] = deque([{"type": "http.request", "body": b"".join(chunks)}])

        async def replayed() -> Message:
            # The body once, then the client's own messages (a disconnect, for instance).
            return replay.popleft() if replay else await receive()

        await self.app(scope, replayed, send)


# --------------------------------------------------------------------------- app


def _finite(value: Any) -> Any:
    """``value`` with NaN and infinities (a damaged folder's metrics) as None: valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _model_info(clf: Classifier, settings: ServeSettings) -> dict[str, Any]:
    meta = clf.meta
    source = meta.get("source") or {}
    info = {
        "name": clf.path.name,
        "kind": meta.get("kind", clf.kind),
        "backend": folder_format(meta),
        "quantize": meta.get("quantize"),
        "labels": list(clf.label_names),
        "num_labels": len(clf.label_names),
        "max_len": clf.max_len,
        "num_parameters": meta.get("num_parameters"),
        "size_mb": round(clf.size_mb(), 6),
        "fingerprint": meta.get("fingerprint"),
        "source_fingerprint": source.get("fingerprint"),
        "dev_metrics": meta.get("dev_metrics") or {},
        "textdistill_version": __version__,
        "limits": {
            "max_texts": settings.max_texts,
            "max_text_chars": settings.max_text_chars,
            "max_batch_size": settings.max_batch_size,
            "max_wait_ms": settings.max_wait_ms,
            "max_queue_texts": settings.max_queue_texts,
        },
    }
    return dict(_finite(info))


def _response(clf: Classifier, result: BatchResult) -> dict[str, Any]:
    results = []
    for p in result.predictions:
        d = p.to_dict()
        d.pop("text")  # the client sent it; do not echo up to max_texts * max_text_chars
        results.append(d)
    return {
        "model": clf.path.name,
        "results": results,
        "queue_ms": result.queue_ms,
        "batch_texts": result.batch_texts,
        "batch_ms": result.batch_ms,
    }


def load_for_serving(model: str | Path, backend: str | None = None) -> Classifier:
    """The folder's classifier; an ONNX export is opened by the torch-free runtime, so a
    service of exported models never imports torch or transformers (anything else needs
    the full package and is opened by :func:`textdistill.inference.load.load`).

    Raises:
        UserError: the folder cannot be loaded, or not with ``backend``.
    """
    meta = read_meta(model)
    if folder_format(meta) == "onnx" and backend in (None, "onnx"):
        from textdistill.runtime.loader import load as load_exported

        return load_exported(model)
    try:
        from textdistill.inference.load import load
    except ImportError as err:  # the runtime distribution: no torch
        raise UserError(
            f"{model} is not an ONNX export; serving it needs the full textdistill package "
            f"({err.name} is missing): export it with `textdistill export` and serve the export"
        ) from None
    return load(model, backend=backend)


def create_app(
    classifier: Classifier | str | Path, settings: ServeSettings | None = None
) -> FastAPI:
    """The service for one model: a loaded :class:`Classifier` or a model folder path.

    Given a path, the folder is loaded with ``settings.backend`` (:func:`load_for_serving`)
    and ``settings.threads`` sets its intra-op threads. A probe
    prediction runs here; when it fails the app is still built (``/healthz`` answers 503
    with the reason, ``app.state.batcher.problem`` holds it) and :func:`run_server` refuses
    to serve it.
    """
    settings = settings or ServeSettings()
    if isinstance(classifier, Classifier):
        clf = classifier
    else:
        clf = load_for_serving(classifier, settings.backend)
        clf.set_threads(settings.threads)
    batcher = MicroBatcher(
        clf,
        max_batch_size=settings.max_batch_size,
        max_wait_ms=settings.max_wait_ms,
        max_queue_texts=settings.max_queue_texts,
    )
    clf.prepare_for_serving()
    info = _model_info(clf, settings)
    batcher.probe()  # logs and records a failure; /healthz and run_server report it

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        if batcher.problem is None:
            # The probe again, on the inference thread: its lazy set-up is thread-local.
            await batcher.warmup()
        log.info("serving %s (%s, %s)", clf.path, info["kind"], info["backend"])
        yield
        await batcher.close()

    app = FastAPI(
        title="textdistill",
        version=__version__,
        description=f"Text classification with `{clf.path.name}` ({info['kind']}).",
        lifespan=lifespan,
    )
    app.state.classifier = clf
    app.state.batcher = batcher
    app.state.settings = settings
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Overloaded, _overloaded)
    app.add_exception_handler(ServiceClosed, _closed)
    app.add_exception_handler(InferenceFailed, _inference_failed)
    app.add_exception_handler(ModelUnavailable, _model_unavailable)
    app.add_exception_handler(Exception, _internal)
    app.add_middleware(_BodyLimit, max_bytes=settings.max_body_bytes)
    _add_routes(app, clf, batcher, settings, info)
    return app


def _add_routes(
    app: FastAPI,
    clf: Classifier,
    batcher: MicroBatcher,
    settings: ServeSettings,
    info: dict[str, Any],
) -> None:
    request_model = _request_model(settings, len(clf.label_names))
    errors: dict[int | str, dict[str, Any]] = {
        code: {"model": ErrorResponse} for code in (400, 413, 415, 422, 503)
    }

    async def classify(body: request_model) -> Any:  # type: ignore[valid-type]
        data = body.model_dump()  # type: ignore[attr-defined]
        result = await batcher.classify(data["texts"], data["top_k"])
        # A Response skips re-validating the output through ClassifyResponse (which stays
        # the documented schema): per-request cost matters at thousands of requests/s.
        return FastJSONResponse(_response(clf, result))

    app.add_api_route(
        CLASSIFY_PATH,
        classify,
        methods=["POST"],
        response_model=ClassifyResponse,
        responses=errors,
        summary="Classify texts",
    )

    @app.get(
        "/healthz",
        summary="Liveness and readiness",
        response_model=HealthResponse,
        responses={503: {"model": HealthResponse, "description": "The model cannot predict."}},
    )
    async def healthz() -> JSONResponse:
        problem = batcher.problem
        if problem is None:
            return JSONResponse({"status": "ok"})
        return JSONResponse({"status": "error", "reason": problem}, status_code=503)

    @app.get("/v1/model", summary="The served model")
    async def model() -> dict[str, Any]:
        return info

    @app.get("/v1/stats", summary="Requests, texts and batches served")
    async def stats() -> dict[str, Any]:
        return batcher.stats.to_dict()

    _add_page(app)


def _add_page(app: FastAPI) -> None:
    """``GET /``: a page to try the model (``deploy/page.html``, read once), outside the schema.

    Its Content-Security-Policy allows exactly its own inline ``<script>`` and ``<style>``
    (by sha256) and requests to this server: no other script, style, image or frame.
    """
    import base64
    import hashlib
    import re
    from importlib import resources

    from fastapi.responses import HTMLResponse

    html = resources.files("textdistill.deploy").joinpath("page.html").read_text(encoding="utf-8")

    def hashes(tag: str) -> str:
        blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", html, flags=re.DOTALL)
        digests = (hashlib.sha256(b.encode()).digest() for b in blocks)
        return " ".join(f"'sha256-{base64.b64encode(d).decode()}'" for d in digests)

    headers = {
        "Content-Security-Policy": f"default-src 'none'; script-src {hashes('script')}; "
        f"style-src {hashes('style')}; connect-src 'self'; img-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }

    @app.get("/", include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(html, headers=headers)


def create_app_from_env() -> FastAPI:
    """App factory for ``uvicorn --factory`` / worker processes: reads :data:`ENV_MODEL`.

    :data:`ENV_SETTINGS` holds the :class:`ServeSettings` as JSON (optional).
    """
    path = os.environ.get(ENV_MODEL)
    if not path:
        raise UserError(f"set {ENV_MODEL} to the model folder to serve")
    raw = os.environ.get(ENV_SETTINGS)
    settings = ServeSettings.model_validate_json(raw) if raw else ServeSettings()
    return create_app(path, settings)


def worker_threads(workers: int, cpus: int | None = None) -> int:
    """Intra-op threads per worker process: the cores shared out, at least one."""
    return max(1, (cpus or os.cpu_count() or 1) // max(1, workers))


def run_server(
    model: str | Path,
    settings: ServeSettings | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 1,
    log_level: str = "info",
) -> None:
    """Serve ``model`` until interrupted (SIGINT/SIGTERM shut down gracefully).

    One worker serves an app built here, so a bad folder fails before the port is bound;
    several workers each build theirs through :func:`create_app_from_env`.
    """
    import uvicorn

    settings = settings or ServeSettings()
    if workers < 1:
        raise UserError(f"--workers must be >= 1, got {workers}")
    target: FastAPI | str = "textdistill.deploy.serve:create_app_from_env"
    if workers == 1:
        target = create_app(model, settings)
        problem = target.state.batcher.problem
    else:
        # Fail here, not once per worker: the folder must exist, suit the backend and
        # predict (each worker probes its own copy again).
        problem = probe(load_for_serving(model, settings.backend))
    if problem is not None:
        raise UserError(f"cannot serve {model}: {problem}")
    if workers > 1:
        if settings.threads is None:
            settings = settings.model_copy(update={"threads": worker_threads(workers)})
        os.environ[ENV_MODEL] = str(Path(model).resolve())
        os.environ[ENV_SETTINGS] = settings.model_dump_json()
        if allow_modified_default():
            # Worker processes load the folder again; the CLI flag reaches them this way.
            os.environ[ALLOW_MODIFIED_ENV] = "1"
    if host not in _LOOPBACK:
        log.warning("binding %s: the service is reachable from other machines", host)
    log.info("API docs at http://%s:%d/docs", host, port)
    uvicorn.run(
        target,
        factory=workers > 1,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
    )
