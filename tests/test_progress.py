"""Progress lines for logs that are not terminals (nohup, CI) and bars for terminals."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from textdistill.core.progress import LogProgress, progress


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_log_progress_writes_one_line_per_tenth_with_rate_and_time_left(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    caplog.set_level(logging.INFO, logger="textdistill.core.progress")
    bar = LogProgress(total=1000, desc="train", unit="step", clock=clock)
    for _ in range(1000):
        clock.t += 0.1  # 10 steps/s: a tenth every 10 s
        bar.update(1)
        bar.set_postfix(loss="0.5000")
    bar.close()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 10  # 100, 200, ..., 1000; close adds nothing new
    assert lines[2] == "train: 300/1,000 step (30%), 10.0 step/s, 0:01:10 left, loss=0.5000"
    assert lines[-1] == "train: 1,000/1,000 step (100%), 10.0 step/s, 0:01:40 in all, loss=0.5000"


def test_a_fast_job_writes_only_its_closing_line(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    caplog.set_level(logging.INFO, logger="textdistill.core.progress")
    with LogProgress(total=9, desc="teacher", unit="batch", clock=clock) as bar:
        for _ in range(9):
            clock.t += 0.01
            bar.update(1)
    assert [r.getMessage() for r in caplog.records] == [
        "teacher: 9/9 batch (100%), 100.0 batch/s, 0:00:00 in all"
    ]


def test_log_progress_time_rule_bounds_the_gap_between_lines(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    caplog.set_level(logging.INFO, logger="textdistill.core.progress")
    bar = LogProgress(total=10_000, desc="slow", unit="batch", clock=clock, every_s=60)
    for _ in range(50):  # 5 s a batch, far below 10 % in 60 s
        clock.t += 5
        bar.update(1)
    assert bar.lines == 4  # at 60, 120, 180, 240 s
    assert "50/10,000 batch (0%), 0.20 batch/s" in bar.line()


def test_log_progress_counts_from_a_resumed_position_and_flushes_the_tail(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    caplog.set_level(logging.INFO, logger="textdistill.core.progress")
    with LogProgress(total=100, initial=50, desc="resumed", clock=clock) as bar:
        for _ in range(5):
            clock.t += 1
            bar.update(1)
    # 55 crossed no tenth (50 -> 55), so only the closing line; its rate counts 5 in 5 s.
    assert [r.getMessage() for r in caplog.records] == [
        "resumed: 55/100 it (55%), 1.0 it/s, 0:00:45 left"
    ]


def test_log_progress_over_an_iterable_and_without_total(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    caplog.set_level(logging.INFO, logger="textdistill.core.progress")
    assert list(LogProgress(range(20), desc="rows", clock=clock)) == list(range(20))
    assert caplog.records[-1].getMessage().startswith("rows: 20/20 it (100%)")
    caplog.clear()
    gen = LogProgress((i for i in range(3)), desc="gen", clock=clock)
    assert list(gen) == [0, 1, 2]
    assert [r.getMessage() for r in caplog.records] == ["gen: 3 it, 0.00 it/s"]


def test_disabled_log_progress_writes_nothing(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="textdistill.core.progress")
    with LogProgress(total=10, desc="off", disable=True) as bar:
        for _ in range(10):
            bar.update(1)
    assert caplog.records == []


def test_progress_picks_a_bar_only_for_a_terminal() -> None:
    assert isinstance(progress(total=3, desc="x", interactive=False), LogProgress)
    assert not isinstance(progress(total=3, desc="x", interactive=True), LogProgress)


@pytest.mark.slow
def test_a_training_log_under_a_pipe_has_no_carriage_returns(
    tmp_path: Path, tiny_corpus: Path
) -> None:
    """What `nohup textdistill ... > log` writes: whole lines, none of tqdm's redraws."""
    out = tmp_path / "student"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "textdistill",
            "distill",
            "--data",
            str(tiny_corpus),
            "--mode",
            "none",
            "--student",
            "bilstm",
            "--epochs",
            "1",
            "--out",
            str(out),
            "--embed-dim",
            "8",
            "--hidden-dim",
            "8",
            "--batch-size",
            "8",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stderr
    assert "distill-none: 4/4 step (100%)" in proc.stderr
