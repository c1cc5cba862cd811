"""The runtime's tokenization fast path (``textdistill.runtime.tokenize.FastEncoder``).

It must give exactly the ids and mask of today's path, the Hugging Face fast tokenizer call
in ``TorchClassifier.encode`` (``AutoTokenizer.from_pretrained(folder)(texts,
truncation=True, max_length=L, padding=True, return_tensors="pt")``), on THUCNews-like
titles full of edge cases, and it must run without torch or transformers installed.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import textwrap
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from transformers import AutoTokenizer, BertTokenizerFast  # type: ignore[attr-defined]

from textdistill.core.text import MAX_TEXT_CHARS, clip_text
from textdistill.data.tokenization import build_char_tokenizer, build_tokenizer
from textdistill.runtime.tokenize import TABLE_SIZE, FastEncoder

N_TITLES = 3000
MAX_LENS = (8, 32, 64)
BATCH_SIZES = (1, 7, 64, None)  # None: the whole list in one batch
ONE_BY_ONE = 400
"""Batch size 1 runs over the first texts only (every edge case is among them)."""

_HANZI = (
    "中国经济市场股票基金银行公司发布新闻体育比赛球队冠军游戏玩家科技手机电脑教育高考学"
    "生大学房产楼市价格上涨下跌时尚明星电影娱乐社会政策改革国际美国日本首次曝光今日最新"
)
_LATIN = ("iPhone", "NBA", "CEO", "CBA", "GDP", "iPad", "Windows", "MBA", "F1", "CPI", "App")
_PUNCT = "，。！？：；“”《》【】（）、·…—"
_RARE = "\ufffd😀🏀🔥①Ⅻ㈱ｱ"

EDGE_TEXTS: tuple[str, ...] = (
    "",
    " ",
    "\t\n  \u3000",
    "\u200b",
    "\x00\x01",
    "\ufffd",
    "标题\ufffd\ufffd测试\ufffd",
    "🏀NBA总决赛🔥今晚开打",
    "iPhone 15 Pro发布 售价7999元",
    "2024年10月1日 GDP增长5.2%",
    "２０２４年全角数字ＡＢＣ",
    "a    b\t\t\tc   \n\n  d",
    "，。！？【】《》“引号”",
    "Café naïve ÉCOLE",
    "苹果CEO库克：iPad销量创新高",
    "[PAD] 标题里的 [PAD] 记号",
    "[CLS][SEP][MASK][UNK]",
    "##续接 ## ###",
    "x" * 150,  # one word longer than WordPiece's 100 characters: [UNK]
    "长" * 250,
    "新闻" * 120 + "NBA" * 20,
    "字" * (MAX_TEXT_CHARS - 1) + "尾巴",  # crosses the character cap
    "超长标题" * 25_000,  # 100,000 characters
)


def thucnews_like_titles(n: int, seed: int = 0) -> list[str]:
    """``n`` generated news titles: hanzi, digits, Latin words, punctuation, rare characters,
    whitespace runs; the :data:`EDGE_TEXTS` first, then one every 97 titles."""
    rng = random.Random(seed)
    titles = list(EDGE_TEXTS)
    while len(titles) < n:
        if len(titles) % 97 == 0:
            titles.append(rng.choice(EDGE_TEXTS))
            continue
        parts = []
        for _ in range(rng.randint(1, 6)):
            kind = rng.random()
            if kind < 0.55:
                parts.append("".join(rng.choices(_HANZI, k=rng.randint(1, 8))))
            elif kind < 0.70:
                parts.append(f"{rng.randint(1, 2025)}{rng.choice('年月日元亿%')}")
            elif kind < 0.82:
                parts.append(rng.choice(_LATIN))
            elif kind < 0.92:
                parts.append(rng.choice(_PUNCT))
            elif kind < 0.96:
                parts.append(rng.choice(_RARE))
            else:
                parts.append(rng.choice((" ", "  ", "\t", "\u3000", "   ")))
        titles.append("".join(parts))
    return titles


@pytest.fixture(scope="module")
def titles() -> list[str]:
    return thucnews_like_titles(N_TITLES)


@pytest.fixture(scope="module")
def corpus_folder(tmp_path_factory: pytest.TempPathFactory, titles: list[str]) -> Path:
    """Our own tokenizer (``build_tokenizer``) trained on the titles, saved as a folder."""
    folder = tmp_path_factory.mktemp("corpus-tokenizer")
    # Train on a part only, so that unseen characters give [UNK] in the rest.
    build_tokenizer(titles[: N_TITLES // 2], vocab_size=2000).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Hugging Face BERT vocab folder: ``BertTokenizerFast`` from a written vocab.txt,
    with ``[PAD]`` at id 3 and cased (no lowercasing)."""
    root = tmp_path_factory.mktemp("bert-vocab")
    specials = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]
    chars = sorted(set(_HANZI + _PUNCT + "0123456789年月日元亿%"))
    words = ["iphone", "ip", "##hone", "##ad", "nb", "##a", "ceo", "C", "##BA", "GD", "##P"]
    (root / "vocab.txt").write_text(
        "\n".join(specials + chars + ["##" + c for c in chars[:40]] + words) + "\n",
        encoding="utf-8",
    )
    folder = root / "saved"
    BertTokenizerFast(vocab=str(root / "vocab.txt"), do_lower_case=False).save_pretrained(folder)
    return folder


def with_truncation_side(folder: Path, side: str, dest: Path) -> Path:
    """A copy of a tokenizer folder whose tokenizer_config.json says ``truncation_side``
    (transformers 5's save_pretrained does not write it)."""
    dest.mkdir()
    for f in folder.iterdir():
        (dest / f.name).write_bytes(f.read_bytes())
    cfg_path = dest / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    cfg["truncation_side"] = side
    cfg_path.write_text(json.dumps(cfg, ensure_ascii=False), encoding="utf-8")
    return dest


def hf_encode(tok: Any, texts: Sequence[str], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Today's path (``TorchClassifier.encode``) on the clipped texts, as int64 arrays."""
    enc = tok(
        [clip_text(t) for t in texts],
        truncation=True,
        max_length=max_len,
        padding=True,
        return_tensors="pt",
    )
    return enc["input_ids"].numpy().astype(np.int64), enc["attention_mask"].numpy().astype(np.int64)


def assert_same_as_hf(folder: Path, texts: Sequence[str], max_len: int, side: str) -> None:
    hf = AutoTokenizer.from_pretrained(folder)
    assert hf.truncation_side == side  # the reference really truncates on that side
    fast = FastEncoder.from_folder(folder, max_len)
    assert fast.truncation_side == side
    assert fast.vocab_size == len(hf)
    for size in BATCH_SIZES:
        pool = texts[:ONE_BY_ONE] if size == 1 else texts
        step = size or len(pool)
        for start in range(0, len(pool), step):
            batch = pool[start : start + step]
            ids, mask = fast.encode(batch)
            want_ids, want_mask = hf_encode(hf, batch, max_len)
            where = f"size {size}, batch at {start}, max_len {max_len}, {side}"
            assert ids.dtype == np.int64 and mask.dtype == np.int64, where
            assert ids.shape == want_ids.shape, where
            np.testing.assert_array_equal(ids, want_ids, err_msg=where)
            np.testing.assert_array_equal(mask, want_mask, err_msg=where)


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("max_len", MAX_LENS)
def test_same_ids_as_hf_on_corpus_tokenizer(
    corpus_folder: Path, titles: list[str], tmp_path: Path, max_len: int, side: str
) -> None:
    folder = (
        corpus_folder
        if side == "right"
        else with_truncation_side(corpus_folder, side, tmp_path / "t")
    )
    assert_same_as_hf(folder, titles, max_len, side)


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("max_len", MAX_LENS)
def test_same_ids_as_hf_on_bert_vocab_folder(
    bert_folder: Path, titles: list[str], tmp_path: Path, max_len: int, side: str
) -> None:
    folder = (
        bert_folder if side == "right" else with_truncation_side(bert_folder, side, tmp_path / "t")
    )
    assert FastEncoder.from_folder(folder, max_len).pad_id == 3
    assert_same_as_hf(folder, titles, max_len, side)


# ------------------------------------------------------------ character tokenizers


@pytest.fixture(scope="module", params=[True, False], ids=["lowercase", "cased"])
def char_folder(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, titles: list[str]
) -> Path:
    """The static student's character tokenizer, trained on half the titles."""
    folder = tmp_path_factory.mktemp("char-tokenizer")
    tok = build_char_tokenizer(titles[: N_TITLES // 2], lowercase=request.param)
    tok.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("max_len", MAX_LENS)
def test_same_ids_as_hf_on_char_tokenizer(
    char_folder: Path, titles: list[str], tmp_path: Path, max_len: int, side: str
) -> None:
    folder = (
        char_folder if side == "right" else with_truncation_side(char_folder, side, tmp_path / "t")
    )
    fast = FastEncoder.from_folder(folder, max_len)
    assert fast.chars is not None  # the numpy path is the one under test
    # Most batches take it (the others hold "[PAD]"-like text or a rare code point).
    taken = [
        fast.chars.encode(titles[i : i + 64], max_len, fast.pad_id, side) is not None
        for i in range(0, len(titles), 64)
    ]
    assert sum(taken) > 0.5 * len(taken)
    assert_same_as_hf(folder, titles, max_len, side)


def test_char_table_agrees_with_rust_on_every_code_point(char_folder: Path) -> None:
    points = [c for c in range(TABLE_SIZE) if not 0xD800 <= c <= 0xDFFF]
    random.Random(3).shuffle(points)
    # 20 code points per text, whitespace and all, so every one meets the table once.
    texts = ["".join(map(chr, points[i : i + 20])) for i in range(0, len(points), 20)]
    texts += ["ΑΣ ΟΔΟΣ", "İstanbul", "[PAD]x[MASK]", "\U000e0001tag", "\U00030000"]
    hf = AutoTokenizer.from_pretrained(char_folder)
    fast = FastEncoder.from_folder(char_folder, 16)
    for start in range(0, len(texts), 256):
        batch = texts[start : start + 256]
        ids, mask = fast.encode(batch)
        want_ids, want_mask = hf_encode(hf, batch, 16)
        np.testing.assert_array_equal(ids, want_ids, err_msg=f"batch at {start}")
        np.testing.assert_array_equal(mask, want_mask, err_msg=f"batch at {start}")


def test_only_character_tokenizers_get_the_table(corpus_folder: Path, bert_folder: Path) -> None:
    assert FastEncoder.from_folder(corpus_folder, 8).chars is None
    assert FastEncoder.from_folder(bert_folder, 8).chars is None


def test_shapes_mask_and_edge_rows(corpus_folder: Path) -> None:
    enc = FastEncoder.from_folder(corpus_folder, 16)
    ids, mask = enc.encode(["", "中国经济", "长" * 300, "[PAD]"])
    assert ids.shape == mask.shape == (4, 16)  # T: the longest row, capped at max_len
    assert mask.sum(axis=1).tolist() == [2, 6, 16, 3]
    assert (ids[mask == 0] == enc.pad_id).all()
    assert ids[3, 1] == enc.pad_id and mask[3, 1] == 1  # the pad token inside a text is real
    short_ids, short_mask = enc.encode(["", "球"])
    assert short_ids.shape == (2, 3)  # padded to this batch's longest row only
    assert short_mask.tolist() == [[1, 1, 0], [1, 1, 1]]


def test_clips_long_texts_before_tokenizing(corpus_folder: Path) -> None:
    enc = FastEncoder.from_folder(corpus_folder, 32)
    huge = "中国" + "NBA " * 200_000
    left = FastEncoder.from_json(
        (corpus_folder / "tokenizer.json").read_text(encoding="utf-8"),
        32,
        pad_id=enc.pad_id,
        truncation_side="left",
    )
    for e in (enc, left):
        got = e.encode([huge])
        want = e.encode([clip_text(huge)])
        np.testing.assert_array_equal(got[0], want[0])
    # Left truncation keeps the end of the *clipped* text, as predict and training do.
    assert left.encode([huge])[0].shape == (1, 32)


def test_empty_batch_and_one_text(corpus_folder: Path) -> None:
    enc = FastEncoder.from_folder(corpus_folder, 8)
    ids, mask = enc.encode([])
    assert ids.shape == mask.shape == (0, 0) and ids.dtype == mask.dtype == np.int64
    ids, mask = enc.encode(("体育",))
    assert ids.shape == (1, 4) and mask.tolist() == [[1, 1, 1, 1]]
    with pytest.raises(TypeError, match="not one str"):
        enc.encode("体育")


def test_from_json_matches_from_folder(corpus_folder: Path, titles: list[str]) -> None:
    by_folder = FastEncoder.from_folder(corpus_folder, 32)
    by_json = FastEncoder.from_json(
        (corpus_folder / "tokenizer.json").read_text(encoding="utf-8"),
        32,
        pad_id=by_folder.pad_id,
    )
    assert (by_json.vocab_size, by_json.max_len) == (by_folder.vocab_size, 32)
    for a, b in zip(by_folder.encode(titles[:500]), by_json.encode(titles[:500]), strict=True):
        np.testing.assert_array_equal(a, b)


def test_json_truncation_and_padding_are_replaced(corpus_folder: Path) -> None:
    """A tokenizer.json that stores its own truncation/padding does not change the output."""
    state = json.loads((corpus_folder / "tokenizer.json").read_text(encoding="utf-8"))
    plain = FastEncoder.from_json(json.dumps(state), 8, pad_id=0)
    state["truncation"] = {
        "direction": "Left",
        "max_length": 3,
        "strategy": "LongestFirst",
        "stride": 0,
    }
    state["padding"] = {
        "strategy": {"Fixed": 20},
        "direction": "Left",
        "pad_to_multiple_of": None,
        "pad_id": 1,
        "pad_type_id": 0,
        "pad_token": "[UNK]",
    }
    stored = FastEncoder.from_json(json.dumps(state), 8, pad_id=0)
    texts = ["中国经济市场股票基金银行公司", "球"]
    for a, b in zip(plain.encode(texts), stored.encode(texts), strict=True):
        np.testing.assert_array_equal(a, b)


def test_split_special_tokens_is_honoured(corpus_folder: Path, tmp_path: Path) -> None:
    folder = tmp_path / "split"
    hf = AutoTokenizer.from_pretrained(corpus_folder, split_special_tokens=True)
    hf.save_pretrained(folder)
    cfg = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    if not cfg.get("split_special_tokens"):
        cfg["split_special_tokens"] = True
        (folder / "tokenizer_config.json").write_text(json.dumps(cfg), encoding="utf-8")
    texts = ["[PAD] 标题 [CLS]", "中国"]
    ids, mask = FastEncoder.from_folder(folder, 32).encode(texts)
    want_ids, want_mask = hf_encode(AutoTokenizer.from_pretrained(folder), texts, 32)
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_array_equal(mask, want_mask)
    assert 0 not in ids[0, mask[0] == 1].tolist()  # "[PAD]" was split into pieces


def test_bad_settings_are_errors(corpus_folder: Path, tmp_path: Path) -> None:
    text = (corpus_folder / "tokenizer.json").read_text(encoding="utf-8")
    with pytest.raises(ValueError, match="special tokens"):
        FastEncoder.from_json(text, 1, pad_id=0)
    with pytest.raises(ValueError, match="positive"):
        FastEncoder.from_json(text, 0, pad_id=0)
    with pytest.raises(ValueError, match="truncation_side"):
        FastEncoder.from_json(text, 8, pad_id=0, truncation_side="middle")
    with pytest.raises(ValueError, match="not in the vocabulary"):
        FastEncoder.from_json(text, 8, pad_id=10**6)
    with pytest.raises(FileNotFoundError, match=r"tokenizer\.json"):
        FastEncoder.from_folder(tmp_path, 8)
    broken = with_truncation_side(corpus_folder, "right", tmp_path / "nopad")
    cfg = json.loads((broken / "tokenizer_config.json").read_text(encoding="utf-8"))
    del cfg["pad_token"]
    (broken / "tokenizer_config.json").write_text(json.dumps(cfg), encoding="utf-8")
    with pytest.raises(ValueError, match="no pad_token"):
        FastEncoder.from_folder(broken, 8)
    cfg["pad_token"] = {"content": "<nope>"}
    (broken / "tokenizer_config.json").write_text(json.dumps(cfg), encoding="utf-8")
    with pytest.raises(ValueError, match=r"not in tokenizer\.json"):
        FastEncoder.from_folder(broken, 8)


def test_encode_is_thread_safe(corpus_folder: Path, titles: list[str]) -> None:
    """Four threads encoding at once (each from another starting batch) get what one does."""
    enc = FastEncoder.from_folder(corpus_folder, 32)
    batches = [titles[i : i + 37] for i in range(0, 1480, 37)]
    want = [enc.encode(b) for b in batches]
    n_threads, n = 4, len(batches)
    got: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(n_threads)

    def work(k: int) -> None:
        try:
            start.wait()
            got[k] = [enc.encode(batches[(i + 10 * k) % n]) for i in range(n)]
        except BaseException as err:  # reported by the main thread
            errors.append(err)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(got) == list(range(n_threads))
    for k, results in got.items():
        for i, (ids, mask) in enumerate(results):
            ref_ids, ref_mask = want[(i + 10 * k) % n]
            np.testing.assert_array_equal(ids, ref_ids)
            np.testing.assert_array_equal(mask, ref_mask)


def test_imports_no_torch_or_transformers(corpus_folder: Path) -> None:
    """The module works in a process where importing torch or transformers fails."""
    texts = ["中国经济", "", "iPhone 15 发布\ufffd"]
    script = textwrap.dedent(
        """
        import json, sys
        import importlib.abc

        BLOCKED = ("torch", "transformers")

        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError(f"{name} is blocked in this test")
                return None

        sys.meta_path.insert(0, Block())
        from textdistill.runtime.tokenize import FastEncoder

        enc = FastEncoder.from_folder(sys.argv[1], 16)
        ids, mask = enc.encode(json.loads(sys.argv[2]))
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
        ours = sorted(m for m in sys.modules if m.startswith("textdistill."))
        print(json.dumps({"ids": ids.tolist(), "mask": mask.tolist(),
                          "loaded": loaded, "ours": ours}))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(corpus_folder), json.dumps(texts)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["loaded"] == []
    assert "textdistill.runtime.tokenize" in out["ours"]
    outside = [
        m for m in out["ours"] if not m.startswith(("textdistill.core", "textdistill.runtime"))
    ]
    assert outside == []
    ids, mask = FastEncoder.from_folder(corpus_folder, 16).encode(texts)
    assert out["ids"] == ids.tolist() and out["mask"] == mask.tolist()
