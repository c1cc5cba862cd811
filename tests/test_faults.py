"""Fault injection on model folders and atomic writes: each damage ends in a clean message
naming the file, or in a repaired result; never a traceback, never a silent wrong answer.

Every probe damages a copy of the session's tiny teacher or student folder.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from textdistill.cli import app
from textdistill.core.errors import UserError, WriteError
from textdistill.core.io import as_write_error, atomic_dir, repair_interrupted, write_json
from textdistill.data.tokenization import build_tokenizer
from textdistill.models import folders
from textdistill.models.folders import (
    META_FILE,
    WEIGHTS_FILE,
    load_model,
    read_meta,
    save_student,
)

DEAD_PID = 2**22 + 12345  # above the default pid_max: no such process
TEXT = "球队 比赛 进球"


@pytest.fixture
def student(tmp_path: Path, tiny_student: Path) -> Path:
    return Path(shutil.copytree(tiny_student, tmp_path / "student"))


@pytest.fixture
def teacher(tmp_path: Path, tiny_teacher: Path) -> Path:
    return Path(
        shutil.copytree(tiny_teacher, tmp_path / "teacher", ignore=shutil.ignore_patterns("soft*"))
    )


def _edit_meta(folder: Path, **changes: object) -> None:
    meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
    meta.update(changes)
    (folder / META_FILE).write_text(json.dumps(meta), encoding="utf-8")


def _rewrite_weights(folder: Path, change: Callable[[dict[str, torch.Tensor]], None]) -> None:
    weights = load_file(str(folder / WEIGHTS_FILE))
    change(weights)
    save_file(weights, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})


# ------------------------------------------------------------------ damaged model folders


@pytest.mark.parametrize("kind", ["student", "teacher"])
def test_a_deleted_tokenizer_is_an_error_even_when_changes_are_allowed(
    kind: str, request: pytest.FixtureRequest
) -> None:
    folder: Path = request.getfixturevalue(kind)
    (folder / "tokenizer.json").unlink()
    for allow in (False, True):
        with pytest.raises(UserError, match=r"tokenizer\.json: missing; .*\[UNK\]"):
            load_model(folder, allow_modified=allow)


def test_a_foreign_tokenizer_is_refused(student: Path, tmp_path: Path) -> None:
    texts = [f"词{i} 字{i} 另{i} 外{i}" for i in range(300)]
    other = build_tokenizer(texts, vocab_size=2000)
    other.save_pretrained(tmp_path / "other")
    shutil.copyfile(tmp_path / "other" / "tokenizer.json", student / "tokenizer.json")
    with pytest.raises(UserError, match=r"tokenizer\.json changed"):
        load_model(student)
    with pytest.raises(UserError, match=r"the tokenizer has \d+ tokens but the model's embeddings"):
        load_model(student, allow_modified=True)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused(student: Path, value: float) -> None:
    def poison(weights: dict[str, torch.Tensor]) -> None:
        name = next(n for n, t in weights.items() if t.is_floating_point() and "classifier" in n)
        weights[name] = weights[name].clone()
        weights[name].view(-1)[0] = value

    _rewrite_weights(student, poison)
    with pytest.raises(UserError, match=r"model\.safetensors changed"):
        load_model(student)
    with pytest.raises(UserError, match="holds NaN or infinite values"):
        load_model(student, allow_modified=True)


def test_flipped_bytes_in_the_weights_are_detected(student: Path) -> None:
    data = bytearray((student / WEIGHTS_FILE).read_bytes())
    data[-7] ^= 0x10  # inside the last tensor: still a valid file, other numbers
    (student / WEIGHTS_FILE).write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"model\.safetensors changed.*--allow-modified"):
        load_model(student)


def test_a_changed_label_list_is_detected_and_a_short_one_refused(student: Path) -> None:
    names = json.loads((student / "labels.json").read_text(encoding="utf-8"))
    write_json(student / "labels.json", list(reversed(names)))
    with pytest.raises(UserError, match=r"labels\.json changed"):
        load_model(student)
    assert load_model(student, allow_modified=True).label_names == list(reversed(names))

    write_json(student / "labels.json", names[:-1])
    with pytest.raises(UserError, match=rf"labels\.json: {len(names) - 1} class names, but"):
        load_model(student, allow_modified=True)
    write_json(student / "labels.json", [names[0]] * len(names))
    with pytest.raises(UserError, match="must be distinct"):
        load_model(student, allow_modified=True)


@pytest.mark.parametrize("max_len", [-5, 0, 1, "32", 10**9, True])
def test_a_bad_max_len_names_the_metadata_file(student: Path, max_len: object) -> None:
    _edit_meta(student, max_len=max_len)
    with pytest.raises(UserError, match=r"textdistill\.json: max_len must be an integer"):
        load_model(student, allow_modified=True)


def test_a_max_len_beyond_the_teachers_positions_is_refused(teacher: Path) -> None:
    positions = json.loads((teacher / "config.json").read_text())["max_position_embeddings"]
    _edit_meta(teacher, max_len=positions + 1)
    with pytest.raises(UserError, match=f"exceeds the model's {positions} positions"):
        load_model(teacher, allow_modified=True)


def test_pickled_weights_are_refused_not_unpickled(teacher: Path) -> None:
    state = {k: v.clone() for k, v in load_file(str(teacher / WEIGHTS_FILE)).items()}
    (teacher / WEIGHTS_FILE).unlink()
    torch.save(state, teacher / "pytorch_model.bin")
    with pytest.raises(UserError, match=r"refused to load pytorch_model\.bin.*never loaded"):
        load_model(teacher, allow_modified=True)


def test_an_unmodified_folder_loads_without_warnings(
    student: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        loaded = load_model(student)
    assert loaded.fingerprint == read_meta(student)["fingerprint"]
    assert not caplog.records


def test_a_folder_saved_before_fingerprint_v2_is_checked_by_the_old_one(student: Path) -> None:
    meta = json.loads((student / META_FILE).read_text(encoding="utf-8"))
    for key in ("fingerprint_version", "files"):
        meta.pop(key)
    meta["fingerprint"] = folders.folder_fingerprint(student, meta, version=1)
    (student / META_FILE).write_text(json.dumps(meta), encoding="utf-8")
    assert load_model(student).fingerprint == meta["fingerprint"]  # cache keys unchanged
    _rewrite_weights(student, lambda w: w.update({k: v + 1 for k, v in w.items()}))
    with pytest.raises(UserError, match="changed since the folder was saved"):
        load_model(student)


def test_cli_refuses_a_modified_folder_and_accepts_it_with_the_flag(student: Path) -> None:
    names = json.loads((student / "labels.json").read_text(encoding="utf-8"))
    write_json(student / "labels.json", list(reversed(names)))
    runner = CliRunner()
    refused = runner.invoke(app, ["predict", "--model", str(student), TEXT])
    assert refused.exit_code == 2, refused.output
    assert "labels.json changed" in refused.output and "Traceback" not in refused.output
    allowed = runner.invoke(app, ["--allow-modified", "predict", "--model", str(student), TEXT])
    assert allowed.exit_code == 0, allowed.output
    # The flag holds for its own invocation only.
    again = runner.invoke(app, ["predict", "--model", str(student), TEXT])
    assert again.exit_code == 2


def test_an_onnx_export_gets_the_same_checks(tmp_path: Path, tiny_student: Path) -> None:
    pytest.importorskip("onnxruntime")
    from textdistill.deploy.export import export_model
    from textdistill.inference.load import load

    out = export_model(tiny_student, tmp_path / "onnx", fmt="onnx").out
    assert load(out).predict(TEXT)[0].label is not None
    names = json.loads((out / "labels.json").read_text(encoding="utf-8"))
    write_json(out / "labels.json", names[:-1])
    with pytest.raises(UserError, match=r"labels\.json: \d+ class names, but the model has"):
        load(out)
    (out / "tokenizer.json").unlink()
    write_json(out / "labels.json", names)
    with pytest.raises(UserError, match=r"tokenizer\.json: missing"):
        load(out)


# ------------------------------------------------------------------------- write errors


def _saving(folder: Path, out: Path) -> Callable[[], object]:
    loaded = load_model(folder)
    return lambda: save_student(out, loaded.model, loaded.tokenizer, loaded.label_names)  # type: ignore[arg-type]


def _no_space(*_args: object, **_kwargs: object) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize(
    ("target", "error"),
    [
        (
            "st_save_model",
            SafetensorError("Error while serializing: IoError(No space left on device)"),
        ),
        ("write_json", OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))),
        ("tokenizer", Exception("No space left on device (os error 28)")),
        ("st_save_model", OSError(errno.EACCES, os.strerror(errno.EACCES))),
    ],
)
def test_a_failed_save_is_one_message_and_leaves_nothing(
    student: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    target: str,
    error: Exception,
) -> None:
    out = tmp_path / "runs" / "new"
    save = _saving(student, out)

    def fail(*_args: object, **_kwargs: object) -> None:
        raise error

    if target == "tokenizer":
        monkeypatch.setattr(type(load_model(student).tokenizer), "save_pretrained", fail)
    else:
        monkeypatch.setattr(folders, target, fail)
    with pytest.raises(WriteError) as err:
        save()
    message = str(err.value)
    assert message.startswith(f"could not write the student folder {out}: ")
    assert "(nothing was written)" in message and "--resume" in message
    recognised = as_write_error(error)
    assert recognised is not None and recognised.errno is not None
    assert os.strerror(recognised.errno) in message
    assert not out.exists() and list(out.parent.iterdir()) == []


def test_a_failed_replacement_keeps_the_previous_version(
    student: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = Path(shutil.copytree(student, tmp_path / "kept"))
    before = (out / WEIGHTS_FILE).read_bytes()
    monkeypatch.setattr(folders, "st_save_model", _no_space)
    with pytest.raises(WriteError, match="the previous version is unchanged"):
        _saving(student, out)()
    assert (out / WEIGHTS_FILE).read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept", "student"]


@pytest.mark.parametrize(
    "error",
    [
        OSError(errno.EROFS, os.strerror(errno.EROFS), "/data/run/x.json"),
        SafetensorError("Error while serializing: IoError(No space left on device)"),
    ],
)
def test_the_cli_turns_any_write_error_into_one_message(
    error: Exception, capsys: pytest.CaptureFixture[str]
) -> None:
    # The last net, for a write deep inside a command that has no message of its own.
    from textdistill.cli.common import user_errors

    def command() -> None:
        raise error

    with pytest.raises(SystemExit) as exit_:
        user_errors(command)()
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: could not write a file: ")
    assert "nothing partial was left" in err and "--resume" in err and "Traceback" not in err

    def bug() -> None:
        raise ValueError("a bug, not a write error")

    with pytest.raises(ValueError, match="a bug"):
        user_errors(bug)()


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A real 16 kB file system, where the runner may mount one (root); else skipped."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(mount)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_real_full_disk(student: Path, small_tmpfs: Path) -> None:
    assert sum(f.stat().st_size for f in student.iterdir() if f.is_file()) > 16_000
    with pytest.raises(WriteError, match=r"No space left on device.*nothing was written"):
        _saving(student, small_tmpfs / "model")()
    assert list(small_tmpfs.iterdir()) == []


# -------------------------------------------------------------- interrupted replacements


def test_a_replacement_killed_between_its_renames_is_restored(
    student: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The state a kill between atomic_dir's two renames leaves: only the hidden old copy
    # and the new temporary folder.
    old = student.with_name(f".{student.name}.old-{DEAD_PID}")
    tmp = student.with_name(f".{student.name}.tmp-{DEAD_PID}-x1y2")
    os.replace(student, old)
    tmp.mkdir()
    with caplog.at_level(logging.WARNING, logger="textdistill.core.io"):
        loaded = load_model(student)
    assert loaded.label_names and not old.exists() and not tmp.exists()
    assert "restored the previous version" in caplog.text
    assert "removed an unfinished temporary folder" in caplog.text


def test_leftovers_of_live_processes_are_left_alone(tmp_path: Path) -> None:
    target = tmp_path / "model"
    live = os.getppid()  # the test runner's parent is running
    entries = [
        tmp_path / f".model.tmp-{live}-abc",
        tmp_path / f".model.old-{live}",
        tmp_path / ".model.json.tmp",  # not a leftover of ours: a different name
        tmp_path / ".models.tmp-1-x",  # another target's name
    ]
    for e in entries[:2]:
        e.mkdir()
    for e in entries[2:]:
        e.write_text("x")
    repair_interrupted(target)
    assert all(e.exists() for e in entries) and not target.exists()


def test_stale_temporary_files_and_folders_are_removed_by_the_next_write(tmp_path: Path) -> None:
    stale = [tmp_path / f".out.tmp-{DEAD_PID}-q", tmp_path / f".out.old-{DEAD_PID}"]
    for s in stale:
        s.mkdir()
    (tmp_path / "out").mkdir()
    stale_file = tmp_path / f".a.json.{DEAD_PID}.k3j.tmp"
    stale_file.write_text("half")
    with atomic_dir(tmp_path / "out") as tmp:
        (tmp / "x").write_text("new")
    write_json(tmp_path / "a.json", {"ok": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "out"]
    assert (tmp_path / "out" / "x").read_text() == "new"


def test_a_failed_second_rename_puts_the_old_version_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "out"
    target.mkdir()
    (target / "v").write_text("1")
    real = os.replace
    calls = []

    def replace(src: str | Path, dst: str | Path) -> None:
        calls.append(Path(src).name)
        if ".tmp-" in Path(src).name:
            raise OSError(errno.EIO, "I/O error")
        real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="I/O error"), atomic_dir(target) as tmp:
        (tmp / "v").write_text("2")
    assert (target / "v").read_text() == "1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


# ------------------------------------------------------------------------ huge texts

_HUGE_TEXT_PROBE = """
import resource, sys
from textdistill.data.tokenization import encode
from textdistill.inference.load import load

model = load(sys.argv[1])
huge = "球" * 1_000_000
model.predict(["球队 比赛"] * 4)
encode(model.tokenizer, ["球队 比赛"] * 4, model.max_len)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
(prediction,) = model.predict([huge])
enc = encode(model.tokenizer, [huge], model.max_len)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
assert prediction.label is not None and int(enc.lengths[0]) == model.max_len
print((after - before) / 1024)
"""


@pytest.mark.slow
def test_a_million_character_text_costs_no_more_memory_than_a_short_one(
    tiny_student: Path,
) -> None:
    # Peak memory of a fresh process (the tokenizer's Rust allocations included): before the
    # per-text cap, predicting this one text took 1.05 GB and encoding it for training more.
    import sys

    done = subprocess.run(
        [sys.executable, "-c", _HUGE_TEXT_PROBE, str(tiny_student)],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    growth_mb = float(done.stdout.strip().splitlines()[-1])
    assert growth_mb < 50, f"peak memory grew by {growth_mb:.0f} MB"


def test_a_checkpoint_whose_pickle_holds_code_is_refused(tmp_path: Path) -> None:
    from transformers import BertConfig, BertForSequenceClassification

    from textdistill.models.teacher import load_classifier

    cfg = BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
        id2label={0: "a", 1: "b"},
        label2id={"a": 0, "b": 1},
    )
    model = BertForSequenceClassification(cfg)
    model.save_pretrained(tmp_path / "hf")
    (tmp_path / "hf" / WEIGHTS_FILE).unlink()
    marker = tmp_path / "pwned"
    state = {**model.state_dict(), "payload": _Payload(str(marker))}
    torch.save(state, tmp_path / "hf" / "pytorch_model.bin")
    with pytest.raises(UserError, match=r"refused its pickled weights file.*nothing was unpickled"):
        load_classifier(str(tmp_path / "hf"), ["a", "b"], trained=True)
    assert not marker.exists()


class _Payload:
    """Unpickling this would create a file: the proof that code ran."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (Path.write_text, (Path(self.path), "code ran"))  # type: ignore[return-value]
