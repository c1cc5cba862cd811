"""The tiny BiLSTM folder the service tests serve (tests/test_serve.py, tests/test_schema.py)."""

from __future__ import annotations

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
