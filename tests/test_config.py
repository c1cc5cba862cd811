"""Config files and overrides: YAML floats, finite numbers, epochs, weights, error messages."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from textdistill.cli import app
from textdistill.core.config import Config, ConfigError, apply_overrides, load_config

runner = CliRunner()


def yaml_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def config_error(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(yaml_file(tmp_path, text))
    return str(info.value)


def override_error(overrides: dict[str, object]) -> str:
    with pytest.raises(ConfigError) as info:
        apply_overrides(Config(), overrides)
    return str(info.value)


# --------------------------------------------------------------------------------------
# YAML numbers
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "value"),
    [
        ("1e-3", 1e-3),
        ("5e-5", 5e-5),
        ("1E-4", 1e-4),
        (".5e-3", 0.5e-3),
        ("+2e+1", 20.0),
        ("2.5e-4", 2.5e-4),
        ("1.0e5", 1e5),
        ("0.001", 0.001),  # YAML 1.1 floats keep working
    ],
)
def test_yaml_exponent_floats_are_floats(tmp_path: Path, written: str, value: float) -> None:
    cfg = load_config(yaml_file(tmp_path, f"distill:\n  beta: {written}\n"))
    assert isinstance(cfg.distill.beta, float) and cfg.distill.beta == pytest.approx(value)


def test_yaml_lr_1e3_from_the_issue(tmp_path: Path) -> None:
    cfg = load_config(
        yaml_file(tmp_path, "teacher:\n  train: {lr: 5e-5}\nstudent:\n  train:\n    lr: 1e-3\n")
    )
    assert cfg.teacher.train.lr == 5e-5 and cfg.student.train.lr == 1e-3


def test_yaml_negative_exponent_float_is_still_range_checked(tmp_path: Path) -> None:
    # -2e+1 parses as the float -20.0, which lr (> 0) then rejects with the key.
    msg = config_error(tmp_path, "student:\n  train:\n    lr: -2e+1\n")
    assert (
        msg
        == f"{tmp_path / 'cfg.yaml'}: student.train.lr: Input should be greater than 0 (got -20.0)"
    )


def test_yaml_ints_strings_and_dates_are_unchanged(tmp_path: Path) -> None:
    cfg = load_config(
        yaml_file(
            tmp_path, "student:\n  train:\n    epochs: 7\n    seed: 1_000\ndata:\n  dir: '1e-3'\n"
        )
    )
    assert cfg.student.train.epochs == 7 and cfg.student.train.seed == 1000
    assert cfg.data.dir == "1e-3"  # quoted: a string
    # An exponent float is not an integer: strict int fields still say so.
    msg = config_error(tmp_path, "student:\n  train:\n    epochs: 1e3\n")
    assert "student.train.epochs: Input should be a valid integer" in msg


def test_yaml_loader_stays_safe(tmp_path: Path) -> None:
    msg = config_error(tmp_path, "data: !!python/object/apply:os.system ['true']\n")
    assert "not valid YAML" in msg


# --------------------------------------------------------------------------------------
# Finite numbers
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("written", [".inf", "-.inf", ".nan", ".NaN"])
def test_yaml_inf_and_nan_are_rejected(tmp_path: Path, written: str) -> None:
    msg = config_error(tmp_path, f"distill:\n  temperature: {written}\n")
    assert msg.startswith(f"{tmp_path / 'cfg.yaml'}: distill.temperature: ")
    assert "finite number" in msg or "greater than 0" in msg


@pytest.mark.parametrize(
    "key",
    [
        "distill.temperature",
        "distill.temperature_end",
        "distill.beta",
        "distill.alpha",
        "student.train.lr",
        "teacher.train.max_grad_norm",
    ],
)
def test_overrides_reject_inf_and_nan(key: str) -> None:
    for bad in (float("inf"), float("nan")):
        msg = override_error({key: bad})
        assert msg.startswith(f"command line: {key}: Input should be a finite number")


def test_finite_values_still_pass() -> None:
    cfg = apply_overrides(
        Config(), {"distill.temperature": 4.0, "distill.temperature_end": 1.0, "distill.beta": 0.0}
    )
    assert (cfg.distill.temperature, cfg.distill.temperature_end, cfg.distill.beta) == (
        4.0,
        1.0,
        0.0,
    )


# --------------------------------------------------------------------------------------
# Epochs and teacher weights
# --------------------------------------------------------------------------------------


def test_student_needs_at_least_one_epoch(tmp_path: Path) -> None:
    msg = config_error(tmp_path, "student:\n  train:\n    epochs: 0\n")
    assert msg == (
        f"{tmp_path / 'cfg.yaml'}: student.train.epochs: a student trains for at least 1 epoch "
        "(got 0)"
    )
    assert override_error({"student.train.epochs": 0}).startswith(
        "command line: student.train.epochs: a student trains for at least 1 epoch"
    )
    assert apply_overrides(Config(), {"student.train.epochs": 1}).student.train.epochs == 1


def test_teacher_and_mlm_zero_epochs_stay_valid() -> None:
    # teacher.train.epochs 0: import teacher.model without fine-tuning; mlm.epochs 0: no MLM.
    cfg = apply_overrides(Config(), {"teacher.model": "some/checkpoint", "teacher.train.epochs": 0})
    assert cfg.teacher.train.epochs == 0 and cfg.teacher.mlm.epochs == 0


def test_teacher_weights_must_be_finite_non_negative_and_not_all_zero(tmp_path: Path) -> None:
    assert override_error({"distill.teacher_weights": [-1.0]}) == (
        "command line: distill.teacher_weights.0: Input should be greater than or equal to 0 "
        "(got -1.0)"
    )
    assert "distill.teacher_weights.1: Input should be a finite number" in override_error(
        {"distill.teacher_weights": [1.0, float("inf")]}
    )
    assert override_error({"distill.teacher_weights": [0.0, 0.0]}) == (
        "command line: distill.teacher_weights: weights must not all be zero (got [0.0, 0.0])"
    )
    cfg = apply_overrides(Config(), {"distill.teacher_weights": [2.0, 0.0, 1.0]})
    assert cfg.distill.teacher_weights == [2.0, 0.0, 1.0]
    msg = config_error(
        tmp_path,
        "pipeline:\n  ensembles:\n    - {name: e, members: [teacher, s], weights: [1, -1]}\n",
    )
    assert msg.startswith(f"{tmp_path / 'cfg.yaml'}: pipeline.ensembles.0.weights.1: ")


def test_section_errors_drop_the_value_error_prefix(tmp_path: Path) -> None:
    # A check over a whole section names the section, without pydantic's prefix and without
    # echoing the section's every value.
    assert config_error(tmp_path, "teacher:\n  scratch: null\n") == (
        f"{tmp_path / 'cfg.yaml'}: teacher: set teacher.model (a checkpoint) or "
        "teacher.scratch (a preset)"
    )


# --------------------------------------------------------------------------------------
# The same checks through the CLI flags (they fail before any data is read or trained)
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--beta", "inf"], "command line: distill.beta: Input should be a finite number"),
        (["-T", "nan"], "command line: distill.temperature: Input should be a finite number"),
        (
            ["--temperature-end", "inf"],
            "command line: distill.temperature_end: Input should be a finite number",
        ),
        (
            ["--teacher-weight", "-1"],
            "command line: distill.teacher_weights.0: Input should be greater than or equal to 0",
        ),
        (["--epochs", "0"], "command line: student.train.epochs: a student trains for at least"),
    ],
)
def test_distill_flags_are_validated(tmp_path: Path, args: list[str], expected: str) -> None:
    result = runner.invoke(
        app,
        ["distill", "-o", str(tmp_path / "s"), "-t", str(tmp_path / "teacher"),
         "-d", str(tmp_path / "no-data"), *args],
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert expected in " ".join(result.output.split())
    assert not (tmp_path / "s").exists()


def test_config_file_errors_name_the_file_through_the_cli(tmp_path: Path) -> None:
    cfg = yaml_file(tmp_path, "distill:\n  temperature: .inf\n")
    result = runner.invoke(
        app, ["distill", "-o", str(tmp_path / "s"), "-c", str(cfg), "--mode", "none"]
    )
    assert result.exit_code == 2
    assert f"{cfg}: distill.temperature: Input should be a finite number" in " ".join(
        result.output.split()
    )


def test_data_labels_key_and_flag(tmp_path: Path) -> None:
    cfg = load_config(yaml_file(tmp_path, "data:\n  dir: corpus\n  labels: corpus/labels.txt\n"))
    assert cfg.data.labels == "corpus/labels.txt"
    assert Config().data.labels is None
