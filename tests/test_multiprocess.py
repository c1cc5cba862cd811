"""Two processes (CPU, gloo) give what one process gives: teacher training, soft-target
caching, distillation, and resuming a killed run.

Every multi-process run goes through the command users type, ``accelerate launch
--multi_gpu --num_processes 2 -m textdistill ...``: on a machine without CUDA (and here CUDA
is hidden, so the test means the same everywhere) that starts two CPU processes joined by
gloo. ``accelerate launch --cpu`` would start only one process: Accelerate runs several CPU
processes only through ``mpirun``. The single-process reference runs are the same CLI
commands, in the test process to save the interpreter start-up.

Tolerances. A cache is computed from the same batches in both set-ups, so it must be equal
up to rounding (``1e-6``). Training differs in one thing only: the gradient of a batch is
the mean of two half-batch means (DDP's all-reduce) instead of one mean, a difference in
the last float32 bits that Adam's normalisation enlarges over the steps; the runs here end
``3e-5`` (teacher) and ``1e-6`` (student) apart. Any real desynchronisation (another batch
split, duplicated or dropped rows, a missed all-reduce) moves the weights by about the
learning rate, ``1e-2``, in a single step, so ``TRAIN_ATOL = 1e-3`` separates the two with
a margin of ten either way. Resuming on the
same number of processes repeats the same operations, so the killed-and-resumed run must
match the uninterrupted one to ``1e-6``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from launch import launch_command
from safetensors.torch import load_file

from textdistill.core import distributed

pytestmark = pytest.mark.slow  # every test here launches processes

TRAIN_ATOL = 1e-3
"""Weights of a 2-process and a 1-process training run (see the module docstring)."""
EXACT_ATOL = 1e-6
"""Values that come from the same operations: caches, and a resumed versus a whole run."""

TRAIN_ROWS, DEV_ROWS = 96, 21  # 3 classes x 32 and x 7
BATCH = 8
"""Global batch: 96 rows make 12 full steps per epoch, so no epoch ends with a partial
batch (which Accelerate would fill up with rows from the start of the epoch). The 21 dev
rows end with an uneven batch that gather_for_metrics must trim."""
STUDENT_STEPS = 24  # 2 epochs x 12
KILL_AT_STEP = 16  # a mid-epoch checkpoint of the second epoch (checkpoint_every 4)

CONFIG = {
    "tokenizer": {"max_len": 16},
    "teacher": {
        "scratch": "custom",
        "layers": 1,
        "hidden": 32,
        "heads": 2,
        "intermediate": 64,
        # Dropout draws differ between set-ups (each process has its own RNG stream), so
        # equal results are only defined without it.
        "dropout": 0.0,
        "train": {
            "epochs": 1,
            "batch_size": BATCH,
            "lr": 0.01,
            "warmup_ratio": 0.0,
            "patience": 0,
            "seed": 3,
            "progress": False,
        },
    },
    "student": {
        "arch": "bilstm",
        "options": {"embed_dim": 16, "hidden_dim": 16, "dropout": 0.0},
        "train": {
            "epochs": 2,
            "batch_size": BATCH,
            "lr": 0.01,
            "patience": 0,
            "seed": 5,
            "checkpoint_every": 4,
            "progress": False,
        },
    },
    "distill": {"mode": "soft"},
}

# Runs the CLI like ``-m textdistill`` but ends every process abruptly right after the
# checkpoint of step $TEXTDISTILL_TEST_KILL_AT_STEP is complete: a kill at a known point.
KILL_LAUNCHER = """\
import os

from textdistill.training import loop as train
_STEP = int(os.environ["TEXTDISTILL_TEST_KILL_AT_STEP"])
_save = train._Trainer._save_checkpoint


def _save_then_die(self):
    _save(self)
    if self.state.step >= _STEP:
        os._exit(17)


train._Trainer._save_checkpoint = _save_then_die

from textdistill.cli import main

main()
"""


# ------------------------------------------------------------------------------ helpers


@dataclass
class Workspace:
    root: Path
    data: Path
    config: Path
    env: dict[str, str]

    def run_one(self, args: Sequence[str]) -> None:
        """The single-process reference run of ``textdistill ARGS``.

        In this process (no interpreter start-up) on one thread, like each launched process,
        so the same kernels run; where CUDA exists it is a CPU subprocess instead, since this
        process may already have put Accelerate on the GPU.
        """
        if torch.cuda.is_available():
            self.launch(args)
            return
        from typer.testing import CliRunner

        from textdistill.cli import app

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with pytest.MonkeyPatch.context() as mp:
                mp.setenv("TEXTDISTILL_HOME", self.env["TEXTDISTILL_HOME"])
                result = CliRunner().invoke(app, list(args))
        finally:
            torch.set_num_threads(threads)
        if result.exit_code != 0:
            error = result.exception
            trace = "".join(traceback.format_exception(error)) if error is not None else ""
            pytest.fail(f"textdistill {' '.join(args)} failed:\n{result.output[-4000:]}\n{trace}")

    def launch(
        self,
        args: Sequence[str],
        *,
        processes: int = 2,
        script: Path | None = None,
        extra_env: dict[str, str] | None = None,
        expect_ok: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``textdistill ARGS`` (or ``script ARGS``) in ``processes`` new processes."""
        target = [str(script)] if script is not None else ["-m", "textdistill"]
        cmd = launch_command(processes, [*target, *args])
        done = subprocess.run(
            cmd,
            env={**self.env, **(extra_env or {})},
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )
        if expect_ok and done.returncode != 0:
            pytest.fail(
                f"{' '.join(cmd)} exited with {done.returncode}\n"
                f"stdout:\n{done.stdout[-4000:]}\nstderr:\n{done.stderr[-6000:]}"
            )
        return done

    def teacher_copy(self, name: str, teacher: Path) -> Path:
        """A copy of ``teacher`` without its soft-target caches: a run that builds its own."""
        out = self.root / name
        shutil.copytree(teacher, out, ignore=shutil.ignore_patterns("soft_targets"))
        return out


def _clean_env(root: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        # Nothing of an outer launcher may leak into the runs.
        if k not in {"RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"}
        and not k.startswith(("ACCELERATE_", "TORCHELASTIC_"))
    }
    env.update(
        CUDA_VISIBLE_DEVICES="",  # CPU processes with gloo, on any machine
        OMP_NUM_THREADS="1",  # two processes on two cores, and the same kernels everywhere
        HF_HOME=str(root / "hf"),  # no user-wide `accelerate config` file applies
        TEXTDISTILL_HOME=str(root / "home"),
        PYTHONUNBUFFERED="1",
    )
    return env


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def _assert_same_weights(a: Path, b: Path, atol: float) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    worst = max(float((wa[k].double() - wb[k].double()).abs().max()) for k in wa)
    assert worst <= atol, f"weights of {a.name} and {b.name} differ by up to {worst:.3g}"
    # The runs did train: a run that never stepped would match trivially.
    assert any(not torch.equal(wa[k], torch.zeros_like(wa[k])) for k in wa)


def _meta(folder: Path) -> dict[str, object]:
    data: dict[str, object] = json.loads((folder / "textdistill.json").read_text("utf-8"))
    return data


def _assert_same_dev_metrics(a: Path, b: Path) -> None:
    ma, mb = _meta(a)["dev_metrics"], _meta(b)["dev_metrics"]
    assert isinstance(ma, dict) and isinstance(mb, dict)
    assert ma["accuracy"] == mb["accuracy"]
    assert ma["macro_f1"] == mb["macro_f1"]
    assert ma["loss"] == pytest.approx(mb["loss"], abs=TRAIN_ATOL)


def _evals(folder: Path) -> list[dict[str, object]]:
    lines = (folder / "metrics.jsonl").read_text("utf-8").splitlines()
    return [e for e in map(json.loads, lines) if "eval" in e]


def _only_cache(root: Path, *, pooled: bool) -> Path:
    """The one cache folder under ``root``, checking that nothing else was left there."""
    entries = sorted(root.iterdir())
    assert len(entries) == 1, f"expected one cache folder in {root}, found {entries}"
    expected = ["logits.npy", "manifest.json", *(["pooled.npy"] if pooled else [])]
    assert sorted(p.name for p in entries[0].iterdir()) == expected
    return entries[0]


def _manifest(cache: Path, *, teacher_paths: bool = True) -> dict[str, object]:
    manifest: dict[str, object] = json.loads((cache / "manifest.json").read_text("utf-8"))
    if not teacher_paths:  # the runs used copies of one teacher folder
        teachers = manifest["teachers"]
        assert isinstance(teachers, list)
        manifest["teachers"] = [{k: v for k, v in t.items() if k != "path"} for t in teachers]
    return manifest


def _assert_same_cache(a: Path, b: Path, *, same_teacher_path: bool = True) -> None:
    assert a.name == b.name  # the same cache key
    paths = same_teacher_path
    assert _manifest(a, teacher_paths=paths) == _manifest(b, teacher_paths=paths)
    for name in ("logits.npy", "pooled.npy"):
        if (a / name).is_file() or (b / name).is_file():
            np.testing.assert_allclose(
                np.load(a / name).astype(np.float64),
                np.load(b / name).astype(np.float64),
                atol=EXACT_ATOL,
                rtol=0,
                err_msg=name,
            )


def _said_once(done: subprocess.CompletedProcess[str], text: str) -> None:
    """Only the main process prints the result line."""
    assert done.stdout.count(text) == 1, done.stdout


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory, corpus_builder: Callable[..., Path]) -> Workspace:
    root = tmp_path_factory.mktemp("multiprocess")
    data = corpus_builder(
        root / "data", per_class={"train": TRAIN_ROWS // 3, "dev": DEV_ROWS // 3, "test": 2}
    )
    config = root / "config.yaml"
    config.write_text(yaml.safe_dump(CONFIG), encoding="utf-8")
    return Workspace(root=root, data=data, config=config, env=_clean_env(root))


@pytest.fixture(scope="module")
def teacher_1p(ws: Workspace) -> Path:
    out = ws.root / "teacher-1p"
    ws.run_one(["teacher", "train", "-c", str(ws.config), "-d", str(ws.data), "-o", str(out)])
    return out


@pytest.fixture(scope="module")
def student_2p(
    ws: Workspace, teacher_1p: Path
) -> tuple[Path, Path, subprocess.CompletedProcess[str]]:
    """A whole 2-process distillation; its teacher copy keeps the cache that run built."""
    teacher = ws.teacher_copy("teacher-for-2p", teacher_1p)
    out = ws.root / "student-2p"
    done = ws.launch(
        ["distill", "-c", str(ws.config), "-d", str(ws.data), "-t", str(teacher), "-o", str(out)]
    )
    return out, teacher, done


# --------------------------------------------------------------------------------- tests


def test_teacher_training_on_two_processes_matches_one(ws: Workspace, teacher_1p: Path) -> None:
    out = ws.root / "teacher-2p"
    done = ws.launch(["teacher", "train", "-c", str(ws.config), "-d", str(ws.data), "-o", str(out)])
    _said_once(done, "teacher saved to")
    _assert_same_weights(teacher_1p, out, TRAIN_ATOL)
    _assert_same_dev_metrics(teacher_1p, out)
    # Every process built the same tokenizer from the corpus.
    assert (out / "tokenizer.json").read_bytes() == (teacher_1p / "tokenizer.json").read_bytes()
    # Evaluation gathered every dev row once, although 21 rows split unevenly.
    assert [e["rows"] for e in _evals(out)] == [DEV_ROWS]
    assert [e["step"] for e in _evals(out)] == [TRAIN_ROWS // BATCH]
    # One writer: no work folder or temporary sibling left behind.
    assert sorted(p.name for p in ws.root.glob("*teacher-2p*")) == ["teacher-2p"]


def test_cache_built_by_two_processes_equals_one(ws: Workspace, teacher_1p: Path) -> None:
    # 96 rows in batches of 11: 9 batches, 5 for the main process and 4 for the other.
    common = ["teacher", "cache", "-t", str(teacher_1p), "-d", str(ws.data), "--batch-size", "11"]
    ws.run_one([*common, "--cache-dir", str(ws.root / "cache-1p")])
    done = ws.launch([*common, "--cache-dir", str(ws.root / "cache-2p")])
    _said_once(done, "soft targets for 96 rows")
    _assert_same_cache(
        _only_cache(ws.root / "cache-1p", pooled=True),
        _only_cache(ws.root / "cache-2p", pooled=True),
    )


def test_distillation_on_two_processes_matches_one(
    ws: Workspace,
    teacher_1p: Path,
    student_2p: tuple[Path, Path, subprocess.CompletedProcess[str]],
) -> None:
    teacher = ws.teacher_copy("teacher-for-1p", teacher_1p)
    out = ws.root / "student-1p"
    ws.run_one(
        ["distill", "-c", str(ws.config), "-d", str(ws.data), "-t", str(teacher), "-o", str(out)]
    )
    out_2p, teacher_2p, done = student_2p
    _said_once(done, "student saved to")
    _assert_same_weights(out, out_2p, TRAIN_ATOL)
    _assert_same_dev_metrics(out, out_2p)
    assert [e["rows"] for e in _evals(out_2p)] == [DEV_ROWS, DEV_ROWS]
    # The 2-process run built its cache itself, in one batch of 256 that left the second
    # process without rows, and got the single-process cache.
    _assert_same_cache(
        _only_cache(teacher / "soft_targets", pooled=False),
        _only_cache(teacher_2p / "soft_targets", pooled=False),
        same_teacher_path=False,
    )


def test_two_process_distillation_resumes_after_a_kill(
    ws: Workspace,
    student_2p: tuple[Path, Path, subprocess.CompletedProcess[str]],
    records_close: Callable[..., None],
) -> None:
    whole, teacher, _ = student_2p
    out = ws.root / "student-2p-killed"
    args = ["distill", "-c", str(ws.config), "-d", str(ws.data), "-t", str(teacher), "-o", str(out)]
    cache_mtime = _only_cache(teacher / "soft_targets", pooled=False).stat().st_mtime_ns
    launcher = ws.root / "kill_after_checkpoint.py"
    launcher.write_text(KILL_LAUNCHER, encoding="utf-8")

    killed = ws.launch(
        args,
        script=launcher,
        extra_env={"TEXTDISTILL_TEST_KILL_AT_STEP": str(KILL_AT_STEP)},
        expect_ok=False,
    )
    assert killed.returncode != 0
    assert not out.exists()
    state = json.loads((ws.root / "student-2p-killed.work/train/checkpoint/state.json").read_text())
    assert state["state"]["step"] == KILL_AT_STEP
    assert state["fingerprint"]["num_processes"] == 2

    resumed = ws.launch([*args, "--resume"])
    assert "resuming from" in resumed.stderr
    _assert_same_weights(whole, out, EXACT_ATOL)
    evals = _evals(out)
    assert [e["step"] for e in evals] == [STUDENT_STEPS // 2, STUDENT_STEPS]
    expected = [e["eval"] for e in _evals(whole)]
    records_close([e["eval"] for e in evals], expected, abs=EXACT_ATOL)
    # Both halves found the cache the uninterrupted run had built and kept it.
    assert _only_cache(teacher / "soft_targets", pooled=False).stat().st_mtime_ns == cache_mtime


# ------------------------------------------------------------- in-process, single process


def test_single_process_helpers() -> None:
    assert distributed.num_processes() == 1
    assert distributed.is_main_process() and not distributed.is_distributed()
    assert distributed.process_index() == 0
    assert distributed.shard([10, 11, 12]) == [10, 11, 12]
    assert distributed.broadcast_object({"a": 1}) == {"a": 1}
    assert distributed.on_main(lambda: "saved") == "saved"
    distributed.wait_for_everyone()
    with distributed.main_process_first():
        pass


def test_shard_is_round_robin_and_covers_everything(monkeypatch: pytest.MonkeyPatch) -> None:
    items = list(range(7))
    monkeypatch.setattr(distributed, "num_processes", lambda: 3)
    shares = []
    for rank in range(3):
        monkeypatch.setattr(distributed, "process_index", lambda rank=rank: rank)
        shares.append(distributed.shard(items))
    assert shares == [[0, 3, 6], [1, 4], [2, 5]]
    monkeypatch.setattr(distributed, "num_processes", lambda: 9)
    monkeypatch.setattr(distributed, "process_index", lambda: 8)
    assert distributed.shard(items) == []


@pytest.mark.parametrize(
    ("env", "rank"),
    [
        ({}, 0),
        ({"RANK": "3"}, 3),
        ({"OMPI_COMM_WORLD_RANK": "2"}, 2),
        ({"RANK": "1", "PMI_RANK": "5"}, 1),
        ({"RANK": "x"}, 0),
    ],
)
def test_launched_rank_reads_the_launcher_environment(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], rank: int
) -> None:
    for name in ("RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "MV2_COMM_WORLD_RANK"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert distributed.launched_rank() == rank


def test_use_cpu_follows_accelerate_use_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")
    assert distributed.use_cpu()
    monkeypatch.setenv("ACCELERATE_USE_CPU", "false")
    assert distributed.use_cpu() == (not torch.cuda.is_available())


def test_batch_size_must_split_evenly_across_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    from textdistill.core.config import TrainConfig
    from textdistill.core.errors import UserError
    from textdistill.training.loop import make_accelerator

    monkeypatch.setattr(distributed, "num_processes", lambda: 4)
    with pytest.raises(UserError, match=r"batch size 10 is the global batch.*multiple of 4"):
        make_accelerator(TrainConfig(batch_size=10))


def test_non_main_processes_log_warnings_only(monkeypatch: pytest.MonkeyPatch) -> None:
    import logging

    from textdistill.cli import common

    root = logging.getLogger("textdistill")
    level, quiet = root.level, common.console.quiet
    try:
        monkeypatch.setenv("RANK", "1")
        common.setup_logging(verbose=True)
        assert root.level == logging.WARNING and common.console.quiet
        monkeypatch.setenv("RANK", "0")
        common.setup_logging(verbose=False)
        assert root.level == logging.INFO and not common.console.quiet
    finally:
        root.setLevel(level)
        common.console.quiet = quiet
