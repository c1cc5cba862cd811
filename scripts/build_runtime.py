"""Build ``textdistill-runtime``: the torch-free subset of this repository as its own wheel.

    python scripts/build_runtime.py --out dist/

The runtime distribution is the same source files as the full package (one prediction
path), only fewer: the package's lazy ``__init__``, the standard-library parts of ``core``,
``runtime`` (classifier, tokenizer fast path, ONNX backend, loader) and the service
(``deploy.serve``, ``deploy.batcher``, the page, the ``textdistill-runtime`` command). Its
dependencies are numpy, tokenizers and onnxruntime; the ``serve`` extra adds the web stack.
Installing it next to the full package is not supported (they share the ``textdistill``
import name); a deployment installs one or the other. ``scripts/check-runtime.sh`` installs
the wheel in a fresh virtual environment and proves it predicts and serves without torch.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"

FILES = (
    "textdistill/__init__.py",
    "textdistill/py.typed",
    "textdistill/core/__init__.py",
    "textdistill/core/errors.py",
    "textdistill/core/folder.py",
    "textdistill/core/io.py",
    "textdistill/core/text.py",
    "textdistill/runtime/__init__.py",
    "textdistill/runtime/classifier.py",
    "textdistill/runtime/loader.py",
    "textdistill/runtime/onnx.py",
    "textdistill/runtime/tokenize.py",
    "textdistill/deploy/__init__.py",
    "textdistill/deploy/batcher.py",
    "textdistill/deploy/page.html",
    "textdistill/deploy/runtime_cli.py",
    "textdistill/deploy/serve.py",
)
"""Everything the runtime imports (tests/test_runtime.py checks it imports nothing else)."""

DEPENDENCIES = ("numpy>=1.24", "tokenizers>=0.15", "onnxruntime>=1.18")
SERVE = (
    "fastapi>=0.110",
    "uvicorn>=0.29",
    "orjson>=3.9",
    "httptools>=0.6",
    "uvloop>=0.19; sys_platform != 'win32'",
)


def version() -> str:
    text = (SRC / "textdistill" / "__init__.py").read_text(encoding="utf-8")
    match = re.search(r'^__version__ = "([^"]+)"', text, re.M)
    if match is None:
        raise SystemExit("no __version__ in src/textdistill/__init__.py")
    return match.group(1)


def pyproject() -> str:
    deps = ", ".join(f'"{d}"' for d in DEPENDENCIES)
    serve = ", ".join(f'"{d}"' for d in SERVE)
    return f"""[build-system]
requires = ["setuptools>=68", "wheel"]
build-backend = "setuptools.build_meta"

[project]
name = "textdistill-runtime"
version = "{version()}"
description = "Run exported textdistill students: numpy, tokenizers and ONNX Runtime, no PyTorch."
requires-python = ">=3.11"
license = {{ text = "Apache-2.0" }}
dependencies = [{deps}]

[project.optional-dependencies]
serve = [{serve}]

[project.scripts]
textdistill-runtime = "textdistill.deploy.runtime_cli:main"

[tool.setuptools.packages.find]
where = ["src"]

[tool.setuptools.package-data]
textdistill = ["py.typed", "deploy/page.html"]
"""


def build(out: Path) -> Path:
    """Assemble the project in a temporary folder and build its wheel into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp) / "textdistill-runtime"
        for rel in FILES:
            target = project / "src" / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(SRC / rel, target)
        (project / "pyproject.toml").write_text(pyproject(), encoding="utf-8")
        before = set(out.glob("textdistill_runtime-*.whl"))
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "--quiet",
                "--no-deps",
                "--no-build-isolation",
                "--wheel-dir",
                str(out),
                str(project),
            ],
            check=True,
        )
    wheels = sorted(set(out.glob("textdistill_runtime-*.whl")) - before) or sorted(
        out.glob(f"textdistill_runtime-{version()}-*.whl")
    )
    if not wheels:
        raise SystemExit(f"no wheel was written to {out}")
    return wheels[-1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "dist", help="wheel folder")
    print(build(ap.parse_args().out))


if __name__ == "__main__":
    main()
