"""The tiny BiLSTM folder the service tests serve, and a real server process for it
(tests/test_serve.py, tests/test_schema.py, tests/test_page.py)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerFast

from textdistill.data.tokenization import build_tokenizer
from textdistill.models.folders import save_student
from textdistill.models.students import build_student

CLASSES = ["sports", "finance", "game"]
CORPUS = ["球队比赛冠军进球联赛", "银行基金利率投资理财", "游戏玩家网游副本公测", "新闻今日消息"]


def serving_tokenizer() -> PreTrainedTokenizerFast:
    return build_tokenizer(CORPUS * 2 + [str(i) for i in range(10)], vocab_size=100)


def save_serving_student(out: Path, tokenizer: PreTrainedTokenizerFast) -> Path:
    """An untrained 8-wide BiLSTM over ``tokenizer`` (seeded: the same weights every time)."""
    torch.manual_seed(0)
    model = build_student("bilstm", "small", len(tokenizer), 3, embed_dim=8, hidden_dim=8)
    save_student(out, model, tokenizer, CLASSES, max_len=16, metrics={"accuracy": 0.5})
    return out


@contextlib.contextmanager
def running_server(model: Path, log_file: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``textdistill serve MODEL`` in its own process on a free port, once ``/healthz``
    answers 200: yields (base URL, process); killed at the end if still running."""
    import httpx
    from launch import free_port

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "textdistill", "serve", "--model", str(model)]
    cmd += ["--port", str(port), "--max-wait-ms", "2", "--threads", "1"]
    with open(log_file, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
    try:
        deadline = time.monotonic() + 45
        while True:
            assert proc.poll() is None, log_file.read_text(errors="replace")
            assert time.monotonic() < deadline, "server not ready in 45 s"
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        yield base, proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
