"""constraints/lock.txt pins everything the README's install resolves (so CI is reproducible)."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def read_pins(path: Path) -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep, f"{path.name}: {line!r} is not an exact pin"
            pins[canonicalize_name(name)] = version
    return pins


def closure(root: str, extras: set[str]) -> set[str]:
    """Names of every distribution that installing ``root[extras]`` pulls in, ``root`` included."""
    names: set[str] = set()
    visited: set[tuple[str, frozenset[str]]] = set()
    todo = [(root, frozenset(extras))]
    while todo:
        name, wanted = todo.pop()
        if (canonicalize_name(name), wanted) in visited:
            continue
        visited.add((canonicalize_name(name), wanted))
        names.add(canonicalize_name(name))
        environments = [{"extra": ""}, *({"extra": e} for e in wanted)]
        for text in metadata.requires(name) or []:
            req = Requirement(text)
            if req.marker is None or any(req.marker.evaluate(env) for env in environments):
                todo.append((req.name, frozenset(req.extras)))
    return names


def test_lock_pins_every_package_of_the_dev_install() -> None:
    pins = read_pins(ROOT / "constraints" / "lock.txt")
    needed = closure("textdistill", {"dev", "serve", "export"}) - {"textdistill", "torch"}
    missing = sorted(needed - pins.keys())
    assert not missing, f"not in constraints/lock.txt (run scripts/lock.sh): {missing}"
    assert "torch" not in pins  # constraints/cpu.txt owns torch


def test_readme_and_ci_install_with_the_lock() -> None:
    command = 'python -m pip install -c constraints/cpu.txt -c constraints/lock.txt -e ".[dev]"'
    assert command in (ROOT / "README.md").read_text(encoding="utf-8")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert re.search(r"pip install .*-c constraints/lock\.txt", ci)
    assert read_pins(ROOT / "constraints" / "cpu.txt").keys() == {"torch"}
