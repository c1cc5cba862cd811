"""Data folders: parsing, validation messages, warnings, statistics, stratified subsets."""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from textdistill.core.errors import DataError, UserError
from textdistill.data.corpus import (
    LengthStats,
    Split,
    check_corpus,
    load_corpus,
    read_texts,
    stratified_subset,
)

MakeCorpus = Callable[..., Path]


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_bytes(content.encode("utf-8"))
    return path


def folder(root: Path, files: dict[str, str | bytes]) -> Path:
    for name, content in files.items():
        write(root / name, content)
    return root


def problems_of(root: Path, **kwargs: object) -> list[str]:
    with pytest.raises(DataError) as info:
        load_corpus(root, **kwargs)  # type: ignore[arg-type]
    return info.value.problems


# --------------------------------------------------------------------------------------
# Reading valid folders
# --------------------------------------------------------------------------------------


def test_load_generated_folder(corpus_dir: Path) -> None:
    corpus = load_corpus(corpus_dir)
    assert corpus.label_names == ["sports", "finance", "game"]
    assert corpus.num_labels == 3
    assert list(corpus.splits) == ["train", "dev", "test"]
    train = corpus.split("train")
    assert len(train) == 30 and train.labelled and train.num_labelled == 30
    assert train.labels[:6] == [0, 1, 2, 0, 1, 2]
    first = (corpus_dir / "train.txt").read_text(encoding="utf-8").split("\n")[0]
    assert train.texts[0] == first.rsplit("\t", 1)[0]
    assert train.path == corpus_dir / "train.txt"
    assert corpus.warnings == []
    assert corpus.class_file == corpus_dir / "class.txt"
    assert corpus.files() == [
        corpus_dir / n for n in ("class.txt", "train.txt", "dev.txt", "test.txt")
    ]


def test_test_split_is_optional(make_corpus: MakeCorpus) -> None:
    corpus = load_corpus(make_corpus(splits=("train", "dev")))
    assert list(corpus.splits) == ["train", "dev"]


def test_custom_split_names(make_corpus: MakeCorpus) -> None:
    root = make_corpus(splits=("train", "valid"))
    corpus = load_corpus(root, required=("train", "valid"), optional=())
    assert len(corpus.split("valid")) == 30


def test_fingerprint_follows_file_contents(corpus_dir: Path) -> None:
    before = load_corpus(corpus_dir).fingerprint()
    assert load_corpus(corpus_dir).fingerprint() == before
    reordered = load_corpus(corpus_dir, required=("dev", "train"), optional=("test",))
    assert reordered.fingerprint() == before
    with (corpus_dir / "dev.txt").open("a", encoding="utf-8") as f:
        f.write("新增一条\t0\n")
    assert load_corpus(corpus_dir).fingerprint() != before


def test_unknown_split_lists_available(corpus_dir: Path) -> None:
    corpus = load_corpus(corpus_dir, optional=())
    with pytest.raises(UserError, match=r"no split named 'test'; available: train, dev"):
        corpus.split("test")


def test_line_format_details(tmp_path: Path) -> None:
    root = folder(
        tmp_path,
        {
            # BOM at the start, a trailing empty line and no newline after the last class.
            "class.txt": "\ufeffsports\r\nfinance\n\n",
            # Tab inside a title: the label is after the last tab. CRLF endings; U+2028 is
            # part of the title, not a line break; spaces around the id are tolerated.
            "train.txt": "\ufeff上海\t申花\t0\r\n股市\u2028大涨\t1\r\n球赛 \t 0\n",
            "dev.txt": "基金\t1",
        },
    )
    corpus = load_corpus(root)
    assert corpus.label_names == ["sports", "finance"]
    train = corpus.split("train")
    assert train.texts == ["上海\t申花", "股市\u2028大涨", "球赛 "]
    assert train.labels == [0, 1, 0]
    assert corpus.split("dev").texts == ["基金"]


def test_blank_lines_are_skipped_with_a_warning(tmp_path: Path) -> None:
    root = folder(
        tmp_path,
        {"class.txt": "a\nb", "train.txt": "x\t0\n\ny\t1\n\n", "dev.txt": "z\t1\n"},
    )
    corpus = load_corpus(root)
    assert corpus.split("train").texts == ["x", "y"]
    assert corpus.warnings == ["train.txt: 2 blank lines skipped"]


# --------------------------------------------------------------------------------------
# Validation: every problem, as file:line: what
# --------------------------------------------------------------------------------------


def test_every_problem_is_reported_in_line_order(tmp_path: Path) -> None:
    root = folder(
        tmp_path,
        {
            "class.txt": "sports\nfinance",
            "train.txt": "好\t0\n坏\t1\n",
            "dev.txt": (
                "没有制表符\n"  # 1
                "标题\tx1\n"  # 2
                "标题\t7\n"  # 3
                "   \t0\n"  # 4
                "ok\t1\n"  # 5
                "sports\t标题\n"  # 6: columns swapped
                "标题\t\n"  # 7
            ).encode()
            + "中文\t0\n".encode("gbk"),  # 8: not UTF-8
        },
    )
    dev = root / "dev.txt"
    assert problems_of(root) == [
        f"{dev}:1: no tab: expected 'text<TAB>label_id', got '没有制表符'",
        f"{dev}:2: label 'x1' is not an integer class id",
        f"{dev}:3: label id 7 is out of range: class.txt has 2 classes (ids 0-1)",
        f"{dev}:4: empty text",
        f"{dev}:6: label '标题' is not an integer class id "
        "(columns swapped? expected 'text<TAB>label_id')",
        f"{dev}:7: missing label id after the tab",
        f"{dev}:8: not valid UTF-8 (byte 0xd6 at offset 0); "
        "if it is GBK-encoded, convert it with: iconv -f gb18030 -t utf-8",
    ]


def test_max_errors_caps_the_list_but_counts_everything(tmp_path: Path) -> None:
    bad = "".join(f"坏行{i}\n" for i in range(7))
    root = folder(tmp_path, {"class.txt": "a\nb", "train.txt": "x\t0\n" + bad, "dev.txt": "y\t1\n"})
    with pytest.raises(DataError) as info:
        load_corpus(root, max_errors=3)
    err = info.value
    assert err.total == 7
    assert [p.split(": ")[0] for p in err.problems] == [
        f"{root / 'train.txt'}:{n}" for n in (2, 3, 4)
    ]
    assert str(err).endswith("... and 4 more problems")


def test_missing_class_file(make_corpus: MakeCorpus) -> None:
    root = make_corpus(class_file=False)
    (problem,) = problems_of(root)
    assert problem.startswith(
        f"{root}: missing class.txt (needed for train.txt, dev.txt, test.txt)"
    )
    assert "line i names label i" in problem


def test_missing_split_names_folder_and_expected_files(make_corpus: MakeCorpus) -> None:
    root = make_corpus(splits=("train",))
    assert problems_of(root) == [f"{root}: missing split file(s): expected dev.txt or dev.jsonl"]


def test_missing_splits_hint_at_nested_data_folder(make_corpus: MakeCorpus, tmp_path: Path) -> None:
    make_corpus(tmp_path / "THUCNews" / "data")
    (problem,) = problems_of(tmp_path / "THUCNews")
    assert problem.endswith(f"did you mean {tmp_path / 'THUCNews' / 'data'}?")
    assert "train.txt or train.jsonl, dev.txt or dev.jsonl" in problem


def test_txt_and_jsonl_for_one_split_is_ambiguous(make_corpus: MakeCorpus) -> None:
    root = make_corpus()
    write(root / "dev.jsonl", '{"text": "x", "label": 0}\n')
    assert problems_of(root) == [f"{root}: both dev.txt and dev.jsonl exist; keep only one"]


def test_class_file_problems(tmp_path: Path) -> None:
    root = folder(
        tmp_path,
        {"class.txt": "a\n\nb\na\n", "train.txt": "x\t0\nz\t2\n", "dev.txt": "y\t2\n"},
    )
    cls = root / "class.txt"
    assert problems_of(root) == [
        f"{cls}:2: empty class name",
        f"{cls}:4: duplicate class name 'a' (also on line 1)",
    ]


def test_one_class_is_not_enough(tmp_path: Path) -> None:
    root = folder(tmp_path, {"class.txt": "only", "train.txt": "x\t0\n", "dev.txt": "y\t0\n"})
    assert problems_of(root) == [
        f"{root / 'class.txt'}: found 1 class(es); a classifier needs at least 2"
    ]


def test_empty_split_files(tmp_path: Path) -> None:
    root = folder(
        tmp_path,
        {"class.txt": "a\nb", "train.txt": "x\t0\nz\t1\n", "dev.txt": "", "test.txt": "\n\n"},
    )
    assert problems_of(root) == [
        f"{root / 'dev.txt'}: the file is empty",
        f"{root / 'test.txt'}: the file has only blank lines",
    ]
    # A file whose only line is undecodable is reported as such, not as empty.
    write(root / "dev.txt", "坏".encode("gbk"))
    write(root / "test.txt", "y\t1\n")
    (problem,) = problems_of(root)
    assert problem.startswith(f"{root / 'dev.txt'}:1: not valid UTF-8")


def test_root_must_be_a_folder(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="data folder not found"):
        load_corpus(tmp_path / "nope")
    write(tmp_path / "file.txt", "x")
    with pytest.raises(UserError, match="not a folder"):
        load_corpus(tmp_path / "file.txt")


# --------------------------------------------------------------------------------------
# JSONL
# --------------------------------------------------------------------------------------


def jsonl(*objs: object) -> str:
    return "".join(
        (o if isinstance(o, str) else json.dumps(o, ensure_ascii=False)) + "\n" for o in objs
    )


def test_jsonl_names_without_class_file_are_sorted(make_corpus: MakeCorpus) -> None:
    corpus = load_corpus(make_corpus(fmt="jsonl", class_file=False))
    assert corpus.label_names == ["finance", "game", "sports"]
    assert corpus.split("train").labels[:3] == [2, 0, 1]  # sports, finance, game
    assert corpus.class_file is None
    assert [p.name for p in corpus.files()] == ["train.jsonl", "dev.jsonl", "test.jsonl"]


def test_jsonl_follows_class_file_order(make_corpus: MakeCorpus) -> None:
    corpus = load_corpus(make_corpus(fmt="jsonl"))
    assert corpus.label_names == ["sports", "finance", "game"]
    assert corpus.split("dev").labels[:3] == [0, 1, 2]


def test_jsonl_integer_labels_with_class_file(make_corpus: MakeCorpus) -> None:
    corpus = load_corpus(make_corpus(fmt="jsonl", jsonl_labels="id"))
    assert corpus.split("train").labels[:3] == [0, 1, 2]


def test_jsonl_integer_labels_need_class_file(make_corpus: MakeCorpus) -> None:
    root = make_corpus(fmt="jsonl", jsonl_labels="id", class_file=False)
    (problem,) = problems_of(root)
    assert problem.startswith(f"{root}: missing class.txt (needed for integer labels)")


def test_jsonl_problems(tmp_path: Path) -> None:
    root = folder(
        tmp_path,
        {
            "train.jsonl": jsonl({"text": "甲", "label": "a"}, {"text": "乙", "label": "b"}),
            "dev.jsonl": jsonl(
                "{not json",
                ["text", "a"],
                {"label": "a"},
                {"text": " ", "label": "a"},
                {"text": "丙"},
                {"text": "丁", "label": True},
                {"text": "戊", "label": 1.5},
                {"text": "己", "label": "c"},
                {"text": "庚", "label": "b", "extra": 1},
            ),
        },
    )
    dev = root / "dev.jsonl"
    assert problems_of(root) == [
        f"{dev}:1: invalid JSON (Expecting property name enclosed in double quotes at column 2)",
        f'{dev}:2: expected a JSON object like {{"text": "...", "label": "..."}}',
        f"{dev}:3: 'text' is missing or not a string",
        f"{dev}:4: empty text",
        f"{dev}:5: 'label' is missing",
        f"{dev}:6: 'label' must be a class name or an integer id, got true",
        f"{dev}:7: 'label' must be a class name or an integer id, got 1.5",
        f"{dev}:8: label 'c' is not in the labels of train.jsonl (a, b)",
    ]


def test_jsonl_name_not_in_class_file(tmp_path: Path) -> None:
    root = folder(
        tmp_path,
        {
            "class.txt": "a\nb",
            "train.jsonl": jsonl({"text": "甲", "label": "a"}, {"text": "乙", "label": 5}),
            "dev.jsonl": jsonl({"text": "丙", "label": "z"}),
        },
    )
    assert problems_of(root) == [
        f"{root / 'train.jsonl'}:2: label id 5 is out of range: class.txt has 2 classes (ids 0-1)",
        f"{root / 'dev.jsonl'}:1: label 'z' is not in class.txt (a, b)",
    ]


# --------------------------------------------------------------------------------------
# Warnings
# --------------------------------------------------------------------------------------


def test_duplicates_conflicts_and_overlaps_are_warnings(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = folder(
        tmp_path,
        {
            "class.txt": "a\nb\nc",
            "train.txt": "甲\t0\n甲\t0\n甲\t0\n乙\t1\n乙\t0\n丙\t1\n",
            "dev.txt": "甲\t0\n丙\t1\n丁\t1\n丁\t1\n",
            "test.txt": "丁\t0\n戊\t1\n",
        },
    )
    with caplog.at_level(logging.WARNING, logger="textdistill.data.corpus"):
        corpus = load_corpus(root)
    assert corpus.warnings == [
        "train.txt: 2 duplicate lines",
        "train.txt: 1 texts appear with different labels",
        "dev.txt: 1 duplicate lines",
        "train.txt: no rows for class(es) c",
        "train/dev: 2 texts appear in both",
        "dev/test: 1 texts appear in both",
    ]
    assert [r.getMessage() for r in caplog.records] == corpus.warnings


# --------------------------------------------------------------------------------------
# check_corpus
# --------------------------------------------------------------------------------------


def test_check_stats_are_hand_computed(tmp_path: Path) -> None:
    # Lengths 1..10 in train. Nearest rank: p50 -> 5th value, p90 -> 9th, p99 -> 10th.
    train = "".join(f"{'字' * n}\t{n % 2}\n" for n in range(1, 11))
    root = folder(tmp_path, {"class.txt": "even\nodd", "train.txt": train, "dev.txt": "ab\t1\n"})
    report = check_corpus(root)
    assert report.ok and report.errors == [] and report.total_errors == 0
    assert report.label_names == ["even", "odd"]
    stats = report.splits["train"]
    assert (stats.file, stats.rows) == ("train.txt", 10)
    assert stats.class_counts == {"even": 5, "odd": 5}
    assert stats.lengths == LengthStats(min=1, p50=5, p90=9, p99=10, max=10)
    assert report.splits["dev"].lengths == LengthStats(2, 2, 2, 2, 2)
    assert "test" not in report.splits


def test_check_reports_stats_for_the_good_lines(tmp_path: Path) -> None:
    train = "一\t0\n二二\t1\n坏\n三三三\t9\n四四四四\t1\n"
    root = folder(tmp_path, {"class.txt": "a\nb", "train.txt": train, "dev.txt": "x\t0\n"})
    report = check_corpus(root, max_errors=1)
    assert not report.ok
    assert report.total_errors == 2
    assert report.errors == [
        f"{root / 'train.txt'}:3: no tab: expected 'text<TAB>label_id', got '坏'"
    ]
    stats = report.splits["train"]
    assert stats.rows == 3
    assert stats.class_counts == {"a": 1, "b": 2}
    assert stats.lengths == LengthStats(1, 2, 4, 4, 4)
    as_dict = report.to_dict()
    assert as_dict["ok"] is False
    assert as_dict["splits"]["train"]["lengths"] == {
        "min": 1,
        "p50": 2,
        "p90": 4,
        "p99": 4,
        "max": 4,
    }
    json.dumps(as_dict)  # serialisable


def test_check_without_class_file_counts_by_id(make_corpus: MakeCorpus) -> None:
    report = check_corpus(make_corpus(class_file=False))
    assert not report.ok
    assert report.label_names == ["0", "1", "2"]
    assert report.splits["dev"].class_counts == {"0": 10, "1": 10, "2": 10}


# --------------------------------------------------------------------------------------
# Splits, subsets, unlabeled text
# --------------------------------------------------------------------------------------


def test_split_invariants() -> None:
    with pytest.raises(ValueError, match="2 texts but 1 labels"):
        Split("x", ["a", "b"], [0])
    s = Split("extra", ["a", "b"], [-1, -1])
    assert s.labels == [-1, -1] and not s.labelled and s.num_labelled == 0 and s.path is None
    part = Split("x", ["a", "b", "c"], [0, -1, 1]).select([2, 0], name="y")
    assert (part.name, part.texts, part.labels) == ("y", ["c", "a"], [1, 0])


def test_stratified_subset_largest_remainder() -> None:
    # Counts 6/3/1, n=5: exact shares 3, 1.5, 0.5 -> floors 3, 1, 0 and one row left;
    # labels 1 and 2 tie on remainder, the smaller id gets it.
    labels = [0, 1, 0, 2, 0, 1, 0, 0, 1, 0]
    split = Split("train", [f"t{i}" for i in range(10)], labels, Path("train.txt"))
    sub, rest = stratified_subset(split, 5, seed=1)
    assert Counter(sub.labels) == {0: 3, 1: 2}
    assert len(rest) == 5 and sub.name == rest.name == "train" and sub.path == Path("train.txt")
    # Disjoint, complete, and in original order.
    assert sorted(sub.texts + rest.texts, key=lambda t: int(t[1:])) == split.texts
    assert sub.texts == sorted(sub.texts, key=lambda t: int(t[1:]))
    assert rest.texts == sorted(rest.texts, key=lambda t: int(t[1:]))


def test_stratified_subset_is_deterministic_per_seed() -> None:
    split = Split("train", [str(i) for i in range(200)], [i % 4 for i in range(200)])
    a, _ = stratified_subset(split, 40, seed=7)
    b, _ = stratified_subset(split, 40, seed=7)
    c, _ = stratified_subset(split, 40, seed=8)
    assert a == b
    assert a.texts != c.texts
    assert Counter(a.labels) == {0: 10, 1: 10, 2: 10, 3: 10}


def test_stratified_subset_edges() -> None:
    split = Split("train", ["a", "b", "c"], [0, 1, -1])
    sub, rest = stratified_subset(split, 0, seed=0)
    assert len(sub) == 0 and rest.texts == ["a", "b", "c"]
    sub, rest = stratified_subset(split, 3, seed=0)
    assert sub.texts == ["a", "b", "c"] and len(rest) == 0
    with pytest.raises(UserError, match="cannot take 4 rows from split 'train': it has 3"):
        stratified_subset(split, 4, seed=0)


def test_read_texts(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write(tmp_path / "extra.txt", "\ufeff  第一条 \r\n\n第二条\n   \n第三条")
    with caplog.at_level(logging.INFO, logger="textdistill.data.corpus"):
        assert read_texts(path) == ["第一条", "第二条", "第三条"]
    assert "skipped 2 empty lines" in caplog.text


def test_read_texts_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="text file not found"):
        read_texts(tmp_path / "missing.txt")
    bad = write(tmp_path / "gbk.txt", "好\n".encode() + "坏".encode("gbk") + b"\n")
    with pytest.raises(UserError, match=rf"{bad}:2: not valid UTF-8"):
        read_texts(bad)
    empty = write(tmp_path / "empty.txt", "\n \n")
    with pytest.raises(UserError, match="contains no text"):
        read_texts(empty)


# --------------------------------------------------------------------------------------
# What counts as a text: invisible-only and control characters
# --------------------------------------------------------------------------------------


def test_invisible_only_texts_are_empty_text(tmp_path: Path) -> None:
    root = folder(
        tmp_path,
        {
            "class.txt": "a\nb",
            "train.txt": "好\t0\n\u200b\t1\n\ufeff\u200b \t0\n\x01\x02\t1\n坏\t1\n",
            "dev.jsonl": jsonl(
                {"text": "\u200b\u200b", "label": "a"},
                {"text": "\x00", "label": "b"},
                {"text": "\u3000 ", "label": "a"},  # ideographic space: whitespace
                {"text": "ok", "label": "a"},
            ),
        },
    )
    train, dev = root / "train.txt", root / "dev.jsonl"
    assert problems_of(root) == [
        f"{train}:2: empty text (only invisible characters: U+200B)",
        f"{train}:3: empty text (only invisible characters: U+FEFF, U+200B)",
        f"{train}:4: empty text (only invisible characters: U+0001, U+0002)",
        f"{dev}:1: empty text (only invisible characters: U+200B)",
        f"{dev}:2: empty text (only invisible characters: U+0000)",
        f"{dev}:3: empty text",
    ]


def test_control_characters_inside_a_text_are_errors(tmp_path: Path) -> None:
    root = folder(
        tmp_path,
        {
            "class.txt": "a\nb",
            # Tabs inside a title are fine (the label is after the last tab); NUL is not.
            "train.txt": "有\t制表符\t0\nab\x00c\t1\n好\x1b[0m\t0\n删\x7f\t1\n",
            "dev.jsonl": jsonl(
                {"text": "两行\n文本\r\n", "label": "a"},  # newlines in JSONL are text
                {"text": "x\u0001y", "label": "b"},
            ),
        },
    )
    train, dev = root / "train.txt", root / "dev.jsonl"
    assert problems_of(root) == [
        f"{train}:2: text holds control character U+0000",
        f"{train}:3: text holds control character U+001B",
        f"{train}:4: text holds control character U+007F",
        f"{dev}:2: text holds control character U+0001",
    ]
    write(train, "有\t制表符\t0\n好\t1\n")
    write(dev, jsonl({"text": "两行\n文本", "label": "a"}, {"text": "y", "label": "b"}))
    corpus = load_corpus(root, required=("train", "dev"))
    assert corpus.split("train").texts[0] == "有\t制表符"
    assert corpus.split("dev").texts[0] == "两行\n文本"


def test_read_texts_skips_invisible_lines_with_a_counted_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write(tmp_path / "extra.txt", "第一条\n\u200b\n\n\ufeff\u200b\n\x01\n第二条\n")
    with caplog.at_level(logging.INFO, logger="textdistill.data.corpus"):
        assert read_texts(path) == ["第一条", "第二条"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        f"{path}: skipped 3 lines without visible text (only zero-width, BOM or control characters)"
    ]
    assert "skipped 1 empty lines" in caplog.text
    only = write(tmp_path / "only.txt", "\u200b\n\x00\n")
    with pytest.raises(UserError, match="contains no text"):
        read_texts(only)


def test_read_texts_control_characters_are_errors_with_lines(tmp_path: Path) -> None:
    path = write(tmp_path / "extra.txt", "好\nab\x00c\n还好\n坏\x01\n")
    with pytest.raises(DataError) as info:
        read_texts(path)
    assert info.value.problems == [
        f"{path}:2: text holds control character U+0000",
        f"{path}:4: text holds control character U+0001",
    ]


# --------------------------------------------------------------------------------------
# One-class training data
# --------------------------------------------------------------------------------------


def test_a_train_split_of_one_class_is_an_error(tmp_path: Path) -> None:
    root = folder(
        tmp_path,
        {"class.txt": "a\nb", "train.txt": "甲\t1\n乙\t1\n", "dev.txt": "丙\t0\n丁\t1\n"},
    )
    message = (
        f"{root / 'train.txt'}: only one class (b) in the training rows; a classifier needs "
        "rows of at least 2 classes"
    )
    assert problems_of(root) == [message]
    report = check_corpus(root)
    assert not report.ok and report.errors == [message]
    # JSONL with inferred classes: the class list itself is too short (one message only).
    jroot = folder(
        tmp_path / "j",
        {
            "train.jsonl": jsonl({"text": "甲", "label": "x"}),
            "dev.jsonl": jsonl({"text": "乙", "label": "x"}),
        },
    )
    assert problems_of(jroot) == [
        f"{jroot / 'train.jsonl'}: found 1 class(es) (no class.txt); a classifier needs at least 2"
    ]


def test_one_class_check_waits_for_rejected_train_lines(tmp_path: Path) -> None:
    # The bad line may be the other class: report it alone, not a misleading "one class".
    root = folder(
        tmp_path,
        {"class.txt": "a\nb", "train.txt": "甲\t0\n乙\t9\n", "dev.txt": "丙\t0\n丁\t1\n"},
    )
    assert problems_of(root) == [
        f"{root / 'train.txt'}:2: label id 9 is out of range: class.txt has 2 classes (ids 0-1)"
    ]


# --------------------------------------------------------------------------------------
# Explicit class lists (--labels) and look-alike inferred labels
# --------------------------------------------------------------------------------------


def test_labels_file_is_the_class_list(tmp_path: Path) -> None:
    labels = write(tmp_path / "labels.txt", "finance\nweather\n")
    root = folder(
        tmp_path / "data",
        {
            "train.jsonl": jsonl(
                {"text": "股市", "label": "finance"},
                {"text": "下雨", "label": "weather"},
                {"text": "大涨", "label": "Finance"},
                {"text": "晴天", "label": "weather "},
                {"text": "体育", "label": "sports"},
            ),
            "dev.jsonl": jsonl({"text": "基金", "label": 1}),
        },
    )
    train = root / "train.jsonl"
    assert problems_of(root, labels=labels) == [
        f"{train}:3: label 'Finance' is not in {labels} (finance, weather); did you mean "
        "'finance'?",
        f"{train}:4: label 'weather ' is not in {labels} (finance, weather); did you mean "
        "'weather'?",
        f"{train}:5: label 'sports' is not in {labels} (finance, weather)",
    ]
    write(train, jsonl({"text": "股市", "label": "weather"}, {"text": "下雨", "label": "finance"}))
    corpus = load_corpus(root, labels=labels)
    # The file's order, not sorted names; integer labels work too; it is hashed.
    assert corpus.label_names == ["finance", "weather"]
    assert corpus.split("train").labels == [1, 0] and corpus.split("dev").labels == [1]
    assert corpus.class_file == labels and corpus.files()[0] == labels
    with pytest.raises(UserError, match="labels file not found"):
        load_corpus(root, labels=tmp_path / "nope.txt")


def test_labels_file_serves_txt_folders_and_must_agree_with_class_txt(tmp_path: Path) -> None:
    labels = write(tmp_path / "labels.txt", "a\nb\n")
    root = folder(tmp_path / "data", {"train.txt": "甲\t0\n乙\t1\n", "dev.txt": "丙\t1\n"})
    assert load_corpus(root, labels=labels).label_names == ["a", "b"]
    write(root / "class.txt", "a\nb\n")
    assert load_corpus(root, labels=labels).label_names == ["a", "b"]  # equal lists: fine
    assert load_corpus(root, labels=root / "class.txt").class_file == root / "class.txt"
    write(root / "class.txt", "b\na\n")
    assert problems_of(root, labels=labels) == [
        f"{labels}: the class list differs from {root / 'class.txt'} (b, a); keep one, or make "
        "them equal"
    ]


def test_inferred_labels_differing_in_case_space_or_width_are_errors(tmp_path: Path) -> None:
    rows = [{"text": f"财{i}", "label": "finance"} for i in range(5)]
    rows += [{"text": f"天{i}", "label": "weather"} for i in range(5)]
    rows += [
        {"text": "涨", "label": "Finance"},
        {"text": "雨", "label": "weather "},
        {"text": "宽", "label": "ｆｉｎａｎｃｅ"},
    ]
    root = folder(tmp_path, {"train.jsonl": jsonl(*rows), "dev.jsonl": jsonl(rows[0])})
    train = root / "train.jsonl"
    hint = "if they are different classes, list the classes in class.txt or --labels"
    assert problems_of(root) == [
        f"{train}:11: label 'Finance' (1 rows) and 'finance' (line 1, 5 rows) differ only in "
        f"case, spaces or character width; if they are one class, use one spelling; {hint}",
        f"{train}:12: label 'weather ' (1 rows) and 'weather' (line 6, 5 rows) differ only in "
        f"case, spaces or character width; if they are one class, use one spelling; {hint}",
        f"{train}:13: label 'ｆｉｎａｎｃｅ' (1 rows) and 'finance' (line 1, 5 rows) differ only "
        f"in case, spaces or character width; if they are one class, use one spelling; {hint}",
    ]
    # An explicit list settles it: the rows are then checked against it instead (class.txt
    # names are stripped, so 'weather ' still needs fixing).
    write(root / "class.txt", "finance\nweather\nFinance\nｆｉｎａｎｃｅ\n")
    assert problems_of(root) == [
        f"{train}:12: label 'weather ' is not in class.txt (finance, weather, Finance, "
        "ｆｉｎａｎｃｅ); did you mean 'weather'?"
    ]


def test_single_row_look_alike_of_a_frequent_label_is_an_error(tmp_path: Path) -> None:
    rows = [{"text": f"财{i}", "label": "finance"} for i in range(10)]
    rows += [{"text": f"体{i}", "label": "sports"} for i in range(10)]
    rows += [{"text": "错", "label": "fiannce"}]  # swapped letters
    root = folder(tmp_path, {"train.jsonl": jsonl(*rows), "dev.jsonl": jsonl(rows[0])})
    (problem,) = problems_of(root)
    assert problem == (
        f"{root / 'train.jsonl'}:21: label 'fiannce' has a single row and is one letter away "
        "from 'finance' (line 1, 10 rows): a typo? if so, fix it; if they are different "
        "classes, list the classes in class.txt or --labels"
    )


def test_clean_thucnews_like_labels_pass_and_lonely_rare_classes_only_warn(
    tmp_path: Path,
) -> None:
    # THUCNews' own names include one-edit pairs (时尚/时政); with many rows each, and with
    # 2-character names, neither rule fires.
    names = ["时尚", "时政", "体育", "财经", "sports", "sport"]
    rows = [{"text": f"{n}{i}", "label": n} for n in names for i in range(12)]
    dev = jsonl({"text": "新", "label": "体育"})
    root = folder(tmp_path, {"train.jsonl": jsonl(*rows), "dev.jsonl": dev})
    corpus = load_corpus(root)
    assert corpus.num_labels == 6 and corpus.warnings == []
    # A single-row class next to many-row ones, with no look-alike (or a 2-character one):
    # a warning to look at, not an error.
    rows += [{"text": "星", "label": "星座"}, {"text": "时", "label": "时事"}]
    write(root / "train.jsonl", jsonl(*rows))
    corpus = load_corpus(root)
    assert corpus.num_labels == 8
    assert corpus.warnings[0] == (
        "train.jsonl: class(es) with a single row: 时事, 星座 (others have up to 12); check them "
        "for typos, or list the classes in class.txt"
    )
