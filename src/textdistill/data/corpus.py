"""Data folders: THUCNews text files or JSONL, read into a validated :class:`Corpus`.

A data folder holds one file per split plus the class names::

    train.txt   dev.txt   [test.txt]     lines ``text<TAB>label_id``
    class.txt                            one class name per line; line i names label i

or JSONL splits (``train.jsonl`` ...) with one ``{"text": ..., "label": ...}`` object per
line, where ``label`` is a class name or an integer id.

The class list is explicit when the folder has ``class.txt`` or the caller passes a
``labels`` file of the same format (``--labels``, ``data.labels``; when both exist they must
agree): then every label must be in it. JSONL folders may go without one when every label
is a name; the classes are then the sorted distinct names of the first split (``train``),
and names that look like typos of each other are errors, because a typo would otherwise
become a class of its own:

- two names equal after Unicode NFKC folding, case folding and whitespace collapsing
  (``Finance``/``finance``, ``weather ``/``weather``, full-width ``ｆｉｎａｎｃｅ``);
- a name with a single row that is one edit away from a name with at least
  ``_FREQUENT_ROWS`` rows (``Finanse`` once, ``finance`` 500 times), for names of at least
  3 characters (two-character Chinese names such as 时尚/时政 are different words).

Clean data such as THUCNews, where every class has many rows under a distinct name, cannot
trip either rule; a single-row class without a look-alike is only a warning.

Texts: a text without a visible character (empty, whitespace, or only zero-width, BOM or
control characters, see :func:`textdistill.core.text.has_visible_text`) is an ``empty text``
error, and a text holding a C0 control character other than tab, newline and carriage
return (NUL, U+0001 ... U+001F, and DEL) is an error naming it: such bytes are file damage,
not content, and a model would see them as nothing. Tab is allowed inside a text (it
separates the label in ``.txt`` files, where the label is after the last tab; titles
occasionally contain one) and newlines inside JSONL strings are ordinary text.

A train split whose rows cover fewer than two classes is an error: nothing can be learned
from it (``data.holdout``/``data.train_limit`` subsets are checked again in
:mod:`textdistill.data.splits`).

Validation reads everything before failing and reports each problem as
``file:line: what is wrong`` so that a user fixes a file in one pass instead of one error
per run. Suspicious but usable data (duplicates, texts shared between splits) produces
warnings, not errors, because the public THUCNews split itself has both.

Unlabeled text files (:func:`read_texts`) follow the same text rules, except that a line
without visible text is skipped (with a counted warning, as blank lines are skipped)
rather than an error: such a file has no columns whose alignment a skip could break.
"""

from __future__ import annotations

import json
import logging
import random
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

from textdistill.core.errors import DataError, UserError
from textdistill.core.io import files_sha256
from textdistill.core.text import has_visible_text

logger = logging.getLogger(__name__)

CLASS_FILE = "class.txt"
FORMATS = (".txt", ".jsonl")
UNLABELED = -1
MIN_CLASSES = 2

_BOM = b"\xef\xbb\xbf"
_LABEL_ID = re.compile(r"[0-9]+")
_ICONV_HINT = "if it is GBK-encoded, convert it with: iconv -f gb18030 -t utf-8"
# C0 controls and DEL, except the whitespace that ordinary text carries: tab (allowed inside
# a text, see the module docs), newline and carriage return (JSONL strings may hold lines).
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_FREQUENT_ROWS = 10
"""Rows a class needs before a single-row look-alike of it counts as a typo (module docs)."""
_TYPO_HINT = f"if they are different classes, list the classes in {CLASS_FILE} or --labels"


# --------------------------------------------------------------------------------------
# Public containers
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Split:
    """One split: parallel lists of texts and label ids (``-1``: no gold label)."""

    name: str
    texts: list[str]
    labels: list[int]
    path: Path | None = None

    def __post_init__(self) -> None:
        if len(self.texts) != len(self.labels):
            raise ValueError(
                f"split {self.name!r}: {len(self.texts)} texts but {len(self.labels)} labels"
            )

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def num_labelled(self) -> int:
        return sum(1 for y in self.labels if y != UNLABELED)

    @property
    def labelled(self) -> bool:
        """True when every row has a gold label."""
        return all(y != UNLABELED for y in self.labels)

    def select(self, indices: Iterable[int], name: str | None = None) -> Split:
        """The rows at ``indices`` (in that order) as a new split."""
        idx = list(indices)
        return Split(
            name if name is not None else self.name,
            [self.texts[i] for i in idx],
            [self.labels[i] for i in idx],
            self.path,
        )


@dataclass
class Corpus:
    """A validated data folder: class names and its splits, in file order."""

    root: Path
    label_names: list[str]
    splits: dict[str, Split]
    warnings: list[str] = field(default_factory=list)
    class_file: Path | None = None

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def split(self, name: str) -> Split:
        try:
            return self.splits[name]
        except KeyError:
            available = ", ".join(self.splits) or "none"
            raise UserError(
                f"{self.root}: no split named {name!r}; available: {available}"
            ) from None

    def files(self) -> list[Path]:
        """The files the corpus was read from (class file first), for hashing."""
        paths = [self.class_file] if self.class_file is not None else []
        paths += [s.path for s in self.splits.values() if s.path is not None]
        return paths

    def fingerprint(self) -> str:
        """sha256 over the data files: changes whenever any of them changes.

        Files are hashed in name order, so the value does not depend on the order in which
        the caller listed the splits.
        """
        return files_sha256(sorted(self.files(), key=lambda p: p.name))


@dataclass(frozen=True)
class LengthStats:
    """Text lengths in characters; percentiles use the nearest-rank definition."""

    min: int
    p50: int
    p90: int
    p99: int
    max: int

    @classmethod
    def of(cls, lengths: Sequence[int]) -> LengthStats | None:
        if not lengths:
            return None
        s = sorted(lengths)
        return cls(s[0], _nearest_rank(s, 50), _nearest_rank(s, 90), _nearest_rank(s, 99), s[-1])


@dataclass(frozen=True)
class SplitStats:
    """Counts over the valid rows of one split file."""

    name: str
    file: str
    rows: int
    class_counts: dict[str, int]
    lengths: LengthStats | None


@dataclass
class CheckReport:
    """Everything ``data check`` prints: problems, warnings and statistics."""

    root: Path
    errors: list[str]
    total_errors: int
    warnings: list[str]
    label_names: list[str]
    splits: dict[str, SplitStats]

    @property
    def ok(self) -> bool:
        return self.total_errors == 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "root": str(self.root),
            "ok": self.ok,
            "total_errors": self.total_errors,
            "errors": list(self.errors),
            "warnings": list(self.warnings),
            "label_names": list(self.label_names),
            "splits": {
                name: {
                    "file": s.file,
                    "rows": s.rows,
                    "class_counts": dict(s.class_counts),
                    "lengths": None if s.lengths is None else asdict(s.lengths),
                }
                for name, s in self.splits.items()
            },
        }


# --------------------------------------------------------------------------------------
# Public functions
# --------------------------------------------------------------------------------------


def load_corpus(
    root: str | Path,
    *,
    required: Sequence[str] = ("train", "dev"),
    optional: Sequence[str] = ("test",),
    max_errors: int = 50,
    labels: str | Path | None = None,
) -> Corpus:
    """Read and validate a data folder.

    ``labels``: a class list file (one name per line, like ``class.txt``) that JSONL labels
    must come from; the folder's ``class.txt``, if any, must then agree with it.

    Raises :class:`DataError` listing every problem (the first ``max_errors``, plus a count
    of the rest) and :class:`UserError` when ``root`` is not a folder or ``labels`` not a
    file. Warnings are logged and kept in ``Corpus.warnings``.
    """
    scan = _scan(Path(root), required, optional, max_errors, labels)
    if scan.problems.total:
        raise DataError(scan.problems.items, scan.problems.total)
    for w in scan.warnings:
        logger.warning("%s", w)
    splits = {name: sf.split for name, sf in scan.files.items()}
    logger.info(
        "Loaded %s: %s; %d classes",
        scan.root,
        ", ".join(f"{n} {len(s):,}" for n, s in splits.items()),
        len(scan.label_names),
    )
    return Corpus(
        root=scan.root,
        label_names=scan.label_names,
        splits=splits,
        warnings=scan.warnings,
        class_file=scan.class_file,
    )


def check_corpus(
    root: str | Path,
    max_errors: int = 50,
    *,
    required: Sequence[str] = ("train", "dev"),
    optional: Sequence[str] = ("test",),
    labels: str | Path | None = None,
) -> CheckReport:
    """Validate a data folder without raising on bad data; statistics cover the valid rows.

    ``labels`` as in :func:`load_corpus`.
    """
    scan = _scan(Path(root), required, optional, max_errors, labels)
    stats = {}
    for name, sf in scan.files.items():
        counts = Counter(sf.split.labels)
        stats[name] = SplitStats(
            name=name,
            file=sf.path.name,
            rows=len(sf.split),
            class_counts={c: counts.get(i, 0) for i, c in enumerate(scan.label_names)},
            lengths=LengthStats.of([len(t) for t in sf.split.texts]),
        )
    return CheckReport(
        root=scan.root,
        errors=scan.problems.items,
        total_errors=scan.problems.total,
        warnings=scan.warnings,
        label_names=scan.label_names,
        splits=stats,
    )


def read_texts(path: str | Path, max_errors: int = 50) -> list[str]:
    """Unlabeled texts, one per line; surrounding whitespace stripped, empty lines skipped.

    Lines without a visible character (only zero-width, BOM or control characters) are
    skipped too, with a warning that counts them; a text holding a control character (NUL,
    ...) is a :class:`DataError` listing each such line as ``file:line`` (module docs).
    """
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: text file not found")
    data = p.read_bytes().removeprefix(_BOM)
    try:
        content = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise UserError(f"{p}:{line}: not valid UTF-8; {_ICONV_HINT}") from None
    lines = [t.strip() for t in content.split("\n")]
    if content.endswith("\n"):
        lines.pop()  # the end of the last line, not an empty line
    texts: list[str] = []
    empty = invisible = 0
    problems = _Problems(max_errors)
    for n, text in enumerate(lines, start=1):
        if not text:
            empty += 1
        elif not has_visible_text(text):
            invisible += 1
        elif (bad := _control_problem(text)) is not None:
            problems.add(bad, p, n)
        else:
            texts.append(text)
    if problems.total:
        raise DataError(problems.items, problems.total)
    if empty:
        logger.info("%s: skipped %d empty lines", p, empty)
    if invisible:
        logger.warning(
            "%s: skipped %d lines without visible text (only zero-width, BOM or control "
            "characters)",
            p,
            invisible,
        )
    if not texts:
        raise UserError(f"{p}: contains no text (expected one text per line)")
    return texts


def stratified_subset(split: Split, n: int, seed: int) -> tuple[Split, Split]:
    """Draw ``n`` rows stratified by label; return ``(subset, rest)``.

    Each label (``-1`` included) gets ``n * count / len(split)`` rows, rounded by the
    largest-remainder method so that the sizes add up to exactly ``n``; ties go to the
    smaller label id. Which rows is random but fixed by ``seed``. Both parts keep the
    original row order.
    """
    total = len(split)
    if not 0 <= n <= total:
        raise UserError(f"cannot take {n} rows from split {split.name!r}: it has {total}")
    by_label: dict[int, list[int]] = {}
    for i, y in enumerate(split.labels):
        by_label.setdefault(y, []).append(i)
    quotas = _largest_remainder({y: len(rows) for y, rows in by_label.items()}, n)
    # One generator walked in label order: the draw depends only on the data and the seed.
    rng = random.Random(seed)
    chosen: list[int] = []
    for y in sorted(by_label):
        chosen.extend(rng.sample(by_label[y], quotas[y]))
    chosen.sort()
    picked = set(chosen)
    rest = [i for i in range(total) if i not in picked]
    return split.select(chosen), split.select(rest)


# --------------------------------------------------------------------------------------
# Scanning
# --------------------------------------------------------------------------------------


class _Problems:
    """Collects ``file:line: what`` messages in file order, keeping the first ``limit``.

    Problems are found in several passes (decoding, parsing, label lookup), so they are
    ordered by (file, line) rather than by discovery; the list is pruned as it grows, which
    keeps memory bounded on a file where every line is wrong. ``total`` counts them all.
    """

    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self.total = 0
        self.rank: dict[Path, int] = {}  # file order; unregistered (the folder) sorts first
        self._found: list[tuple[int, int, int, str]] = []

    def add(self, what: str, path: Path | None = None, line: int = 0) -> None:
        where = "" if path is None else f"{path}:{line}: " if line else f"{path}: "
        rank = 0 if path is None else self.rank.get(path, 0)
        self._found.append((rank, line, self.total, where + what))
        self.total += 1
        if len(self._found) >= 2 * self.limit:
            self._prune()

    def _prune(self) -> None:
        self._found.sort()
        del self._found[self.limit :]

    @property
    def items(self) -> list[str]:
        self._prune()
        return [msg for *_, msg in self._found]


@dataclass
class _Row:
    line: int
    text: str
    label: str | int  # txt: the raw id string; jsonl: the JSON value


@dataclass
class _SplitFile:
    name: str
    path: Path
    rows: list[_Row]
    blank_lines: int
    n_lines: int = 0
    split: Split = field(init=False)

    @property
    def bad_lines(self) -> int:
        """Lines that are neither blank nor a valid row (each is a reported problem)."""
        return self.n_lines - self.blank_lines - len(self.split)

    @property
    def is_txt(self) -> bool:
        return self.path.suffix == ".txt"


@dataclass
class _Scan:
    root: Path
    problems: _Problems
    label_names: list[str] = field(default_factory=list)
    class_file: Path | None = None
    files: dict[str, _SplitFile] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    warnings_early: list[str] = field(default_factory=list)
    """Warnings found while picking the classes, listed before the quality warnings."""


def _scan(
    root: Path,
    required: Sequence[str],
    optional: Sequence[str],
    max_errors: int,
    labels: str | Path | None = None,
) -> _Scan:
    if not root.exists():
        raise UserError(f"{root}: data folder not found")
    if not root.is_dir():
        raise UserError(f"{root}: not a folder (expected a data folder with train.txt, ...)")
    labels_path = None if labels is None else Path(labels)
    if labels_path is not None and not labels_path.is_file():
        raise UserError(
            f"{labels_path}: labels file not found (--labels / data.labels: one class name "
            "per line, like class.txt)"
        )
    scan = _Scan(root=root, problems=_Problems(max_errors))
    paths = _find_split_files(root, required, optional, scan.problems)
    scan.problems.rank[root / CLASS_FILE] = 1
    if labels_path is not None:
        scan.problems.rank[labels_path] = 1
    for i, path in enumerate(paths.values()):
        scan.problems.rank[path] = 2 + i
    for name, path in paths.items():
        scan.files[name] = _parse_split_file(name, path, scan.problems)
    _resolve_labels(scan, labels_path)
    train = scan.files.get(required[0]) if required else None
    if train is not None:
        _check_training_classes(train, scan.label_names, scan.problems)
    scan.warnings = scan.warnings_early + _quality_warnings(scan)
    return scan


def _check_training_classes(train: _SplitFile, names: list[str], problems: _Problems) -> None:
    """Fewer than two classes among the train rows is an error: nothing can be learned.

    Skipped when the class list itself is too short (already reported) or when lines of the
    file were rejected (the rejected rows may hold the other classes; the message would
    mislead until they are fixed).
    """
    present = sorted(set(train.split.labels) - {UNLABELED})
    if len(names) < MIN_CLASSES or not present or train.bad_lines or len(present) >= 2:
        return
    name = names[present[0]] if 0 <= present[0] < len(names) else str(present[0])
    problems.add(
        f"only one class ({name}) in the training rows; a classifier needs rows of at least "
        f"{MIN_CLASSES} classes",
        train.path,
    )


def _find_split_files(
    root: Path, required: Sequence[str], optional: Sequence[str], problems: _Problems
) -> dict[str, Path]:
    found: dict[str, Path] = {}
    missing: list[str] = []
    for name in dict.fromkeys([*required, *optional]):  # ordered, without repeats
        candidates = [root / f"{name}{ext}" for ext in FORMATS if (root / f"{name}{ext}").is_file()]
        if len(candidates) > 1:
            problems.add(f"both {name}.txt and {name}.jsonl exist; keep only one", root)
        elif candidates:
            found[name] = candidates[0]
        elif name in required:
            missing.append(name)
    if missing:
        expected = ", ".join(f"{n}.txt or {n}.jsonl" for n in missing)
        hint = ""
        if (root / "data").is_dir() and any(
            (root / "data" / f"{n}.txt").is_file() for n in missing
        ):
            hint = f"; did you mean {root / 'data'}?"
        problems.add(f"missing split file(s): expected {expected}{hint}", root)
    return found


def _read_lines(path: Path, problems: _Problems) -> tuple[list[tuple[int, str]], int]:
    """``(line number, line)`` for every line that is valid UTF-8, without line endings,
    and the number of lines in the file.

    Splits on ``\\n`` only: ``str.splitlines`` would also split on characters such as
    U+2028 that can occur inside a title.
    """
    data = path.read_bytes().removeprefix(_BOM)
    chunks = data.split(b"\n")
    if chunks[-1] == b"":
        chunks.pop()  # the end of the last line, not an empty line
    try:
        lines = data.decode("utf-8").split("\n")[: len(chunks)]
    except UnicodeDecodeError:
        return _decode_line_by_line(path, chunks, problems), len(chunks)
    return [(i, line.removesuffix("\r")) for i, line in enumerate(lines, start=1)], len(chunks)


def _decode_line_by_line(
    path: Path, chunks: list[bytes], problems: _Problems
) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    hinted = False
    for i, chunk in enumerate(chunks, start=1):
        try:
            out.append((i, chunk.decode("utf-8").removesuffix("\r")))
        except UnicodeDecodeError as err:
            byte = chunk[err.start]
            msg = f"not valid UTF-8 (byte 0x{byte:02x} at offset {err.start})"
            if not hinted:
                msg += f"; {_ICONV_HINT}"
                hinted = True
            problems.add(msg, path, i)
    return out


def _clip(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _parse_split_file(name: str, path: Path, problems: _Problems) -> _SplitFile:
    parse = _parse_txt_line if path.suffix == ".txt" else _parse_jsonl_line
    rows: list[_Row] = []
    blank = 0
    lines, n_lines = _read_lines(path, problems)
    for n, line in lines:
        if not line.strip() and (path.suffix == ".jsonl" or not line):
            blank += 1
            continue
        result = parse(line)
        if isinstance(result, str):
            problems.add(result, path, n)
        else:
            text, label = result
            rows.append(_Row(n, text, label))
    if n_lines == 0:
        problems.add("the file is empty", path)
    elif blank == n_lines:
        problems.add("the file has only blank lines", path)
    return _SplitFile(name, path, rows, blank, n_lines)


def _text_problem(text: str) -> str | None:
    """Why ``text`` cannot be a training row (module docs), or None."""
    if not has_visible_text(text):
        if not text.strip():
            return "empty text"
        shown = ", ".join(f"U+{ord(c):04X}" for c in dict.fromkeys(text) if not c.isspace())
        return f"empty text (only invisible characters: {_clip(shown, 40)})"
    return _control_problem(text)


def _control_problem(text: str) -> str | None:
    found = _CONTROL.search(text)
    if found is None:
        return None
    return f"text holds control character U+{ord(found.group()):04X}"


def _parse_txt_line(line: str) -> tuple[str, str] | str:
    """``(text, raw label)`` or an error message."""
    if "\t" not in line:
        return f"no tab: expected 'text<TAB>label_id', got {_clip(line)!r}"
    # The label is after the LAST tab: labels never contain one, titles occasionally do.
    text, label = line.rsplit("\t", 1)
    if (problem := _text_problem(text)) is not None:
        return problem
    return text, label.strip()


def _parse_jsonl_line(line: str) -> tuple[str, str | int] | str:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as err:
        return f"invalid JSON ({err.msg} at column {err.colno})"
    if not isinstance(obj, dict):
        return 'expected a JSON object like {"text": "...", "label": "..."}'
    text = obj.get("text")
    if not isinstance(text, str):
        return "'text' is missing or not a string"
    if (problem := _text_problem(text)) is not None:
        return problem
    if "label" not in obj:
        return "'label' is missing"
    label = obj["label"]
    if isinstance(label, bool) or not isinstance(label, int | str):
        return f"'label' must be a class name or an integer id, got {json.dumps(label)}"
    return text, label


def _read_class_file(path: Path, problems: _Problems) -> list[str]:
    lines, _ = _read_lines(path, problems)
    while lines and not lines[-1][1].strip():
        lines.pop()  # trailing empty lines are an editor artefact, not classes
    names: list[str] = []
    first_seen: dict[str, int] = {}
    for n, line in lines:
        name = line.strip()
        if not name:
            problems.add("empty class name", path, n)
        elif name in first_seen:
            problems.add(
                f"duplicate class name {name!r} (also on line {first_seen[name]})", path, n
            )
        else:
            first_seen[name] = n
        # Keep the line even when it is bad so that line i still means label i.
        names.append(name)
    return names


def _resolve_labels(scan: _Scan, labels_path: Path | None = None) -> None:
    """Pick the class names, then turn every row's label into an id (or a problem)."""
    class_path = scan.root / CLASS_FILE
    resolver: _LabelResolver
    if labels_path is not None:
        scan.class_file = labels_path
        names = _read_class_file(labels_path, scan.problems)
        _check_class_count(names, labels_path, scan.problems)
        if class_path.is_file() and labels_path.resolve() != class_path.resolve():
            # Two lists that disagree would give txt ids or JSONL names two meanings.
            theirs = _read_class_file(class_path, _Problems(1))
            if theirs != names:
                scan.problems.add(
                    f"the class list differs from {class_path} ({_preview(theirs)}); "
                    f"keep one, or make them equal",
                    labels_path,
                )
        resolver = _LabelResolver(names, str(labels_path))
    elif class_path.is_file():
        scan.class_file = class_path
        names = _read_class_file(class_path, scan.problems)
        _check_class_count(names, class_path, scan.problems)
        resolver = _LabelResolver(names, CLASS_FILE)
    elif _needs_class_file(scan.files.values()):
        files = (
            ", ".join(sf.path.name for sf in scan.files.values() if sf.is_txt) or "integer labels"
        )
        scan.problems.add(
            f"missing {CLASS_FILE} (needed for {files}): "
            "one class name per line, line i names label i",
            scan.root,
        )
        resolver = _LabelResolver(None, "")
    else:
        first = next(iter(scan.files.values()), None)
        derived = sorted({r.label for r in first.rows if isinstance(r.label, str)}) if first else []
        resolver = _LabelResolver(derived, f"the labels of {first.path.name}" if first else "")
        if first is not None:
            _check_class_count(derived, first.path, scan.problems, f" (no {CLASS_FILE})")
            scan.warnings_early = _look_alike_labels(first, scan.problems)

    for sf in scan.files.values():
        texts: list[str] = []
        labels: list[int] = []
        for row in sf.rows:
            result = resolver.resolve(row, sf.is_txt)
            if isinstance(result, str):
                scan.problems.add(result, sf.path, row.line)
            else:
                texts.append(row.text)
                labels.append(result)
        sf.split = Split(sf.name, texts, labels, sf.path)
    scan.label_names = resolver.display_names()


def _fold(name: str) -> str:
    """``name`` without the differences a typo makes invisible: Unicode width and
    compatibility forms (NFKC), case, and leading, trailing or repeated whitespace."""
    return " ".join(unicodedata.normalize("NFKC", name).casefold().split())


def _one_edit_apart(a: str, b: str) -> bool:
    """True when ``b`` is ``a`` with one character inserted, deleted or replaced, or two
    neighbours swapped (a Damerau-Levenshtein distance of 1)."""
    if a == b or abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        diff = [i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y]
        if len(diff) == 1:
            return True
        i = diff[0]
        return len(diff) == 2 and diff[1] == i + 1 and a[i] == b[i + 1] and a[i + 1] == b[i]
    short, long = (a, b) if len(a) < len(b) else (b, a)
    i = next((k for k, (x, y) in enumerate(zip(short, long, strict=False)) if x != y), len(short))
    return short[i:] == long[i + 1 :]


def _look_alike_labels(train: _SplitFile, problems: _Problems) -> list[str]:
    """Inferred class names that look like typos of each other (rules in the module docs)
    become problems at the line of the rarer one; returns warnings for single-row classes
    without a look-alike."""
    counts: Counter[str] = Counter()
    first_line: dict[str, int] = {}
    for row in train.rows:
        if isinstance(row.label, str):
            counts[row.label] += 1
            first_line.setdefault(row.label, row.line)
    flagged: set[str] = set()
    by_fold: dict[str, list[str]] = {}
    for name in counts:
        by_fold.setdefault(_fold(name), []).append(name)
    for variants in by_fold.values():
        if len(variants) < 2:
            continue
        # The most frequent spelling is taken as the intended one (ties: the first seen).
        main = max(variants, key=lambda n: (counts[n], -first_line[n]))
        for name in variants:
            if name != main:
                flagged.add(name)
                problems.add(
                    f"label {name!r} ({counts[name]} rows) and {main!r} (line "
                    f"{first_line[main]}, {counts[main]} rows) differ only in case, spaces or "
                    f"character width; if they are one class, use one spelling; {_TYPO_HINT}",
                    train.path,
                    first_line[name],
                )
    frequent = [n for n, c in counts.items() if c >= _FREQUENT_ROWS]
    single = [n for n, c in counts.items() if c == 1 and n not in flagged]
    lonely: list[str] = []
    for name in single:
        folded = _fold(name)
        like = next(
            (
                f
                for f in frequent
                if len(folded) >= 3 and len(_fold(f)) >= 3 and _one_edit_apart(folded, _fold(f))
            ),
            None,
        )
        if like is None:
            lonely.append(name)
            continue
        problems.add(
            f"label {name!r} has a single row and is one letter away from {like!r} (line "
            f"{first_line[like]}, {counts[like]} rows): a typo? if so, fix it; {_TYPO_HINT}",
            train.path,
            first_line[name],
        )
    if lonely and frequent:
        return [
            f"{train.path.name}: class(es) with a single row: {_preview(sorted(lonely))} "
            f"(others have up to {max(counts.values())}); check them for typos, or list the "
            f"classes in {CLASS_FILE}"
        ]
    return []


def _needs_class_file(files: Iterable[_SplitFile]) -> bool:
    return any(sf.is_txt or any(isinstance(r.label, int) for r in sf.rows) for sf in files)


def _check_class_count(names: list[str], path: Path, problems: _Problems, note: str = "") -> None:
    if len(names) < MIN_CLASSES:
        problems.add(f"found {len(names)} class(es){note}; a classifier needs at least 2", path)


class _LabelResolver:
    """Maps raw labels to ids against known names, or (``names=None``) accepts bare ids.

    ``names=None`` happens only when ``class.txt`` is missing, which is already an error;
    ids are then kept so that ``data check`` can still count rows per label.
    """

    def __init__(self, names: list[str] | None, source: str) -> None:
        self.names = names
        self.source = source
        self.index = {n: i for i, n in reversed(list(enumerate(names or [])))}
        self.max_id = -1

    def resolve(self, row: _Row, is_txt: bool) -> int | str:
        label = row.label
        if is_txt:
            assert isinstance(label, str)
            if not _LABEL_ID.fullmatch(label):
                return self._bad_id_message(label, row.text)
            return self._check_id(int(label))
        if isinstance(label, int):
            return self._check_id(label)
        if self.names is None:
            return f"label {label!r} cannot be looked up without {CLASS_FILE}"
        if label not in self.index:
            msg = f"label {label!r} is not in {self.source} ({_preview(self.names)})"
            close = [n for n in self.names if _fold(n) == _fold(label)]
            return msg + (f"; did you mean {close[0]!r}?" if close else "")
        return self.index[label]

    def _check_id(self, label: int) -> int | str:
        if self.names is None:
            if label < 0:
                return f"label id {label} is negative"
            self.max_id = max(self.max_id, label)
            return label
        if not 0 <= label < len(self.names):
            k = len(self.names)
            return (
                f"label id {label} is out of range: {self.source} has {k} classes (ids 0-{k - 1})"
            )
        return label

    def _bad_id_message(self, label: str, text: str) -> str:
        if not label:
            return "missing label id after the tab"
        msg = f"label {_clip(label, 30)!r} is not an integer class id"
        if self.names is not None and text.strip() in self.index:
            msg += " (columns swapped? expected 'text<TAB>label_id')"
        return msg

    def display_names(self) -> list[str]:
        if self.names is not None:
            return list(self.names)
        return [str(i) for i in range(self.max_id + 1)]


def _preview(names: Sequence[str], k: int = 10) -> str:
    shown = ", ".join(names[:k])
    return shown + (f", ... ({len(names)} classes)" if len(names) > k else "")


def _quality_warnings(scan: _Scan) -> list[str]:
    warnings: list[str] = []
    for sf in scan.files.values():
        file = sf.path.name
        if sf.blank_lines:
            warnings.append(f"{file}: {sf.blank_lines} blank lines skipped")
        pairs = list(zip(sf.split.texts, sf.split.labels, strict=True))
        duplicates = len(pairs) - len(set(pairs))
        if duplicates:
            warnings.append(f"{file}: {duplicates} duplicate lines")
        labels_of: dict[str, set[int]] = {}
        for text, y in pairs:
            labels_of.setdefault(text, set()).add(y)
        conflicting = sum(1 for ys in labels_of.values() if len(ys) > 1)
        if conflicting:
            warnings.append(f"{file}: {conflicting} texts appear with different labels")
    train = next(iter(scan.files.values()), None)
    if train is not None and train.split.texts and scan.label_names:
        present = set(train.split.labels)
        empty = [n for i, n in enumerate(scan.label_names) if i not in present]
        if empty:
            warnings.append(f"{train.path.name}: no rows for class(es) {_preview(empty)}")
    text_sets = {name: set(sf.split.texts) for name, sf in scan.files.items()}
    for a, b in combinations(text_sets, 2):
        shared = len(text_sets[a] & text_sets[b])
        if shared:
            warnings.append(f"{a}/{b}: {shared} texts appear in both")
    return warnings


# --------------------------------------------------------------------------------------
# Small numeric helpers
# --------------------------------------------------------------------------------------


def _nearest_rank(sorted_values: Sequence[int], p: int) -> int:
    """The smallest value with at least ``p`` percent of the values at or below it."""
    n = len(sorted_values)
    rank = max(1, -(-p * n // 100))  # ceil(p * n / 100) in integers: no float rounding
    return sorted_values[rank - 1]


def _largest_remainder(counts: dict[int, int], n: int) -> dict[int, int]:
    """Split ``n`` across groups in proportion to ``counts``; the parts sum to ``n``."""
    total = sum(counts.values())
    if total == 0:
        return dict.fromkeys(counts, 0)
    quotas = {k: n * c // total for k, c in counts.items()}
    left = n - sum(quotas.values())
    by_remainder = sorted(counts, key=lambda k: (-(n * counts[k] % total), k))
    for k in by_remainder[:left]:
        quotas[k] += 1
    return quotas
