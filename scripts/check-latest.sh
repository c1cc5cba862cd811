#!/usr/bin/env bash
# The "latest" check: a brand-new virtual environment WITHOUT the lock, so pip takes the newest
# releases that pyproject.toml's ranges allow, then the README's whole test command. Run it
# whenever dependencies change and before a release. When it fails, fix the code, or bound the
# range in pyproject.toml with a comment saying why. It prints the versions that differ from
# constraints/lock.txt and keeps the full list in $OUT (default: latest-versions.txt in a
# temporary folder, path printed at the end).
#
#   scripts/check-latest.sh    # install ~2 min, then the suite
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
tmp=$(mktemp -d)
out=${OUT:-$tmp/latest-versions.txt}
trap 'rm -rf "$tmp/venv"' EXIT

"$python" -m venv "$tmp/venv"
export PIP_DISABLE_PIP_VERSION_CHECK=1
# torch stays on the local CPU build (constraints/cpu.txt): "latest" is about everything else.
"$tmp/venv/bin/python" -m pip install -q -c constraints/cpu.txt -e ".[dev]"
# --all: setuptools too, as in the lock (pip itself is in neither).
"$tmp/venv/bin/python" -m pip freeze --all --exclude-editable | grep -v -i '^pip==' \
  | LC_ALL=C sort -f > "$out"

echo "== versions that differ from constraints/lock.txt (lock -> latest) =="
"$tmp/venv/bin/python" - constraints/lock.txt "$out" <<'PY'
import sys

def read(path):
    pins = {}
    for line in open(path, encoding="utf-8"):
        line = line.strip()
        if line and not line.startswith("#") and "==" in line:
            name, version = line.split("==", 1)
            pins[name.lower().replace("_", "-")] = version
    return pins

lock, latest = read(sys.argv[1]), read(sys.argv[2])
rows = [
    f"  {name}: {lock.get(name, '-')} -> {latest.get(name, '-')}"
    for name in sorted(lock.keys() | latest.keys())
    if name != "torch" and lock.get(name) != latest.get(name)
]
print("\n".join(rows) if rows else "  none: the lock is the latest")
PY

echo "== the README's test command =="
PATH="$tmp/venv/bin:$PATH" bash -c 'ruff check . && ruff format --check . && mypy && pytest'
echo "latest check passed; versions in $out"
