"""``textdistill-runtime``: predict with and serve an exported folder, without torch.

The command of the runtime distribution (``scripts/build-runtime.sh``), which has neither
PyTorch nor Typer; the full package installs it too. Plain ``argparse``, so that it needs
nothing beyond the runtime's own dependencies::

    textdistill-runtime predict MODEL "国足 2比0 战胜 泰国" [--top-k 3]
    textdistill-runtime serve MODEL [--host 127.0.0.1] [--port 8000] [--workers 1] [--threads N]

``predict`` prints one JSON object per text (the fields of
:class:`~textdistill.runtime.classifier.Prediction`); ``serve`` is ``textdistill serve`` for
exported folders (same API, page and limits). Errors print one line and exit 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from textdistill.core.errors import UserError


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="textdistill-runtime",
        description="Predict with and serve an exported textdistill folder (no PyTorch).",
    )
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("predict", help="Classify texts; one JSON line per text.")
    p.add_argument("model", help="An exported folder (textdistill export --format onnx).")
    p.add_argument("texts", nargs="*", help="Texts (none: read one per line from stdin).")
    p.add_argument("--top-k", type=int, default=1, help="Classes per text (default 1).")
    p.add_argument("--threads", type=int, default=None, help="Intra-op threads.")
    s = sub.add_parser("serve", help="The HTTP service (needs the serve extra).")
    s.add_argument("model", help="An exported folder.")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--workers", type=int, default=1, help="Worker processes.")
    s.add_argument("--threads", type=int, default=None, help="Threads per worker.")
    s.add_argument("--log-level", default="info")
    return ap


def _predict(args: argparse.Namespace) -> None:
    from textdistill.runtime.loader import load

    texts = args.texts or [line.rstrip("\n") for line in sys.stdin]
    clf = load(args.model, threads=args.threads)
    for p in clf.predict(texts, top_k=args.top_k):
        print(json.dumps(p.to_dict(), ensure_ascii=False, allow_nan=False))


def _serve(args: argparse.Namespace) -> None:
    try:
        from textdistill.deploy.serve import ServeSettings, run_server
    except ImportError as err:
        raise UserError(
            f"serving needs the web stack ({err.name} is missing): "
            "pip install 'textdistill-runtime[serve]'"
        ) from None
    settings = ServeSettings(threads=args.threads, backend="onnx")
    run_server(
        args.model,
        settings,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level=args.log_level,
    )


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(message)s")
    try:
        {"predict": _predict, "serve": _serve}[args.command](args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
