"""``textdistill export | serve``: deployment formats and the HTTP service."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from textdistill.cli.common import VerboseOpt, console, setup_logging, user_errors
from textdistill.core.errors import UserError


def _size_line(before_mb: float, after_mb: float, note: str = "") -> str:
    ratio = f" ({after_mb / before_mb:.2f}x)" if before_mb > 0 else ""
    return f"size: {before_mb:.3f} MB -> {after_mb:.3f} MB{ratio}{note}"


@user_errors
def export(
    model: Path = typer.Option(..., "--model", "-m", help="Teacher or student folder."),
    fmt: str = typer.Option("onnx", "--format", "-f", help="onnx, or torch (with --quantize)."),
    quantize: str | None = typer.Option(
        None, "--quantize", "-q", help="int8: dynamic int8 quantization."
    ),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="New folder (default: MODEL-onnx, MODEL-onnx-int8, MODEL-int8)."
    ),
    opset: int = typer.Option(17, "--opset", help="ONNX opset."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    verbose: bool = VerboseOpt,
) -> None:
    """Export a model for deployment (ONNX, int8); the folder works with predict/evaluate/serve."""
    from textdistill.deploy.export import export_model

    setup_logging(verbose)
    if quantize is not None and quantize.lower() in ("none", "fp32"):
        quantize = None
    result = export_model(model, out, fmt=fmt, quantize=quantize, opset=opset)
    if as_json:
        print(json.dumps(result.to_dict(), ensure_ascii=False, indent=2, default=str))
        return
    v = result.validation
    note = " (int8 in memory; stored as fp32, quantized when loaded)" if fmt == "torch" else ""
    lines = [
        f"{result.out}: {fmt} {quantize or 'fp32'} export of the {result.source_kind} {model}",
        _size_line(result.source_size_mb, result.size_mb, note),
    ]
    if result.source_accuracy is not None:
        lines.append(f"source dev accuracy: {result.source_accuracy:.4f}")
    lines += [
        f"check on {v['probe_rows']} padded probe rows: max |logit difference| "
        f"{v['max_abs_diff']:.2e}, same argmax {v['argmax_agreement']:.0%}",
        f"accuracy and speed: textdistill compare -m {model} -m {result.out} -o REPORT",
    ]
    for line in lines:
        console.print(line, highlight=False, markup=False, soft_wrap=True)


def _option_problem(error: Any) -> str:
    """A pydantic error on a ServeSettings field, named as its command-line flag."""
    loc = "-".join(str(p) for p in error.get("loc", ())).replace("_", "-")
    msg = str(error.get("msg", "")).removeprefix("Value error, ")
    return f"--{loc}: {msg}" if loc else msg


@user_errors
def serve(
    model: Path = typer.Option(..., "--model", "-m", help="Model folder (PyTorch or ONNX)."),
    backend: str | None = typer.Option(
        None,
        "--backend",
        "-b",
        help="torch or onnx (default: the folder's own; onnx needs `textdistill export`).",
    ),
    host: str = typer.Option(
        "127.0.0.1", "--host", help="Address to bind; 0.0.0.0 exposes the service to the network."
    ),
    port: int = typer.Option(8000, "--port", "-p", help="TCP port."),
    workers: int = typer.Option(1, "--workers", "-w", help="Worker processes."),
    max_batch_size: int = typer.Option(64, "--max-batch-size", help="Most texts per model call."),
    max_wait_ms: float = typer.Option(
        5.0, "--max-wait-ms", help="Longest wait for a batch to fill, in milliseconds."
    ),
    max_texts: int = typer.Option(256, "--max-texts", help="Most texts per request."),
    max_text_chars: int = typer.Option(
        1000, "--max-text-chars", help="Most characters per text; longer texts get 422."
    ),
    max_queue_texts: int | None = typer.Option(
        None,
        "--max-queue-texts",
        help="Most texts waiting; more get 503 (default: 10000, at least --max-texts).",
    ),
    threads: int | None = typer.Option(
        None, "--threads", help="Inference threads per worker (default: cores / workers)."
    ),
    log_level: str = typer.Option("info", "--log-level", help="uvicorn log level."),
    verbose: bool = VerboseOpt,
) -> None:
    """Serve a model over HTTP: POST /v1/classify, GET /healthz, /v1/model, docs at /docs.

    A probe prediction runs first: a model that cannot predict (damaged weights) is not served.
    """
    from pydantic import ValidationError

    from textdistill.deploy.serve import ServeSettings, run_server

    setup_logging(verbose)
    try:
        settings = ServeSettings(
            backend=backend,  # validated by pydantic
            max_batch_size=max_batch_size,
            max_wait_ms=max_wait_ms,
            max_texts=max_texts,
            max_text_chars=max_text_chars,
            max_queue_texts=max_queue_texts or max(10_000, max_texts),
            threads=threads,
        )
    except ValidationError as err:
        raise UserError("; ".join(_option_problem(e) for e in err.errors())) from None
    if not 0 < port < 65536:
        raise UserError(f"--port must be in 1..65535, got {port}")
    run_server(model, settings, host=host, port=port, workers=workers, log_level=log_level)
