"""Tokenizer building, save/load, fingerprinting, encode() and the encode cache."""

from __future__ import annotations

import logging
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from textdistill.core import paths
from textdistill.core.errors import UserError
from textdistill.core.io import texts_sha256
from textdistill.core.text import MAX_TEXT_CHARS
from textdistill.data import tokenization
from textdistill.data.tokenization import (
    Encoded,
    build_char_tokenizer,
    build_tokenizer,
    encode,
    encode_cache_path,
    encode_cached,
    load_tokenizer,
    pretrained_vocab_size,
    tokenizer_fingerprint,
)

CORPUS = [
    "中华女子学院招男生",
    "北京大学发布新的招生计划",
    "女子足球队赢得比赛",
    "Python 教程：学习 running 和 runs",
    "Café prices rise in Paris",
    "新学期学院招生",
]
TITLE = "中华女子学院招男生"


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer(CORPUS)


@pytest.fixture
def counting_encode(monkeypatch):
    """Count real encodes, to tell cache hits from misses."""
    calls: list[int] = []
    real = tokenization.encode

    def wrapper(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(tokenization, "encode", wrapper)
    return calls


# --------------------------------------------------------------------------- building


def test_cjk_title_is_one_token_per_character(tok):
    ids = tok(TITLE)["input_ids"]
    tokens = tok.convert_ids_to_tokens(ids)
    assert tokens == ["[CLS]", *TITLE, "[SEP]"]
    assert len(ids) == 9 + 2
    assert tok.unk_token_id not in ids


def test_special_token_ids(tok):
    assert (tok.pad_token_id, tok.unk_token_id, tok.cls_token_id) == (0, 1, 2)
    assert (tok.sep_token_id, tok.mask_token_id) == (3, 4)
    assert tok.convert_ids_to_tokens([0, 1, 2, 3, 4]) == [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
    ]


def test_unseen_character_is_unk(tok):
    assert tok.convert_ids_to_tokens(tok("龘")["input_ids"]) == ["[CLS]", "[UNK]", "[SEP]"]


def test_lowercase_strips_accents_like_bert():
    lower = build_tokenizer(["Café RUNNING"])
    assert lower.tokenize("Café RUNNING") == ["cafe", "running"]
    cased = build_tokenizer(["Café RUNNING"], lowercase=False)
    assert cased.tokenize("Café RUNNING") == ["Café", "RUNNING"]
    assert tokenizer_fingerprint(lower) != tokenizer_fingerprint(cased)


def test_decode_joins_wordpieces(tok):
    ids = tok("running runs")["input_ids"]
    assert tok.decode(ids, skip_special_tokens=True) == "running runs"


def test_vocab_size_is_an_upper_bound_on_merges():
    corpus = ["abcd abce abcf bcde " * 3, "dcba"]
    # 5 specials + 6 letters + 6 "##" letters = 17 tokens before any merge.
    assert len(build_tokenizer(corpus, vocab_size=20)) == 20
    assert len(build_tokenizer(corpus, vocab_size=50)) < 50
    assert len(build_tokenizer(corpus, vocab_size=50)) > 20


def test_min_frequency_keeps_rare_words_in_pieces():
    corpus = ["world peace", "world news", "world cup", "hello there"]
    assert build_tokenizer(corpus, min_frequency=1).tokenize("hello world") == ["hello", "world"]
    pieces = build_tokenizer(corpus, min_frequency=2).tokenize("hello world")
    assert pieces == ["h", "##e", "##l", "##l", "##o", "world"]


def test_training_is_deterministic():
    # A plain WordPieceTrainer run picks different merges between runs on this corpus
    # (huggingface/tokenizers#1794); build_tokenizer must not.
    fingerprints = {tokenizer_fingerprint(build_tokenizer(CORPUS)) for _ in range(8)}
    assert len(fingerprints) == 1


def test_only_the_five_special_tokens_are_special(tok):
    assert sorted(tok.all_special_tokens) == sorted(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    assert len(tok.get_added_vocab()) == 5
    # Continuation pieces are ordinary vocabulary: "##s" in text is two "#" (unseen) and "s".
    assert "##s" in tok.get_vocab()
    assert tok.tokenize("##s") == ["[UNK]", "[UNK]", "s"]


def test_build_rejects_empty_corpus_and_tiny_vocab():
    with pytest.raises(UserError, match="empty corpus"):
        build_tokenizer([])
    with pytest.raises(ValueError, match="vocab_size"):
        build_tokenizer(CORPUS, vocab_size=5)


def test_build_accepts_a_generator():
    tok = build_tokenizer(t for t in CORPUS)
    assert tok.tokenize("招生") == ["招", "生"]


def test_pretrained_vocab_size_covers_every_id(tok):
    assert pretrained_vocab_size(tok) == len(tok.get_vocab())
    assert max(tok.get_vocab().values()) == pretrained_vocab_size(tok) - 1


# --------------------------------------------------------------------------- save/load


def test_save_load_round_trip(tok, tmp_path):
    tok.save_pretrained(tmp_path / "tok")
    loaded = load_tokenizer(tmp_path / "tok")
    assert loaded.is_fast
    texts = [*CORPUS, "", "龘 unknown WORDS"]
    assert loaded(texts)["input_ids"] == tok(texts)["input_ids"]
    assert tokenizer_fingerprint(loaded) == tokenizer_fingerprint(tok)
    assert loaded.pad_token_id == 0
    assert loaded.model_max_length == tok.model_max_length == 512


def test_saved_folder_loads_with_auto_tokenizer(tok, tmp_path):
    from transformers import AutoTokenizer

    tok.save_pretrained(tmp_path / "tok")
    auto = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert auto(TITLE)["input_ids"] == tok(TITLE)["input_ids"]


def test_load_tokenizer_missing_folder_is_user_error(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_tokenizer(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="could not load a tokenizer"):
        load_tokenizer(tmp_path / "empty")


def test_fingerprint_ignores_truncation_state(tok):
    before = tokenizer_fingerprint(tok)
    tok(["中华女子学院招男生"], truncation=True, max_length=4, padding="max_length")
    assert tokenizer_fingerprint(tok) == before


def test_fingerprint_depends_on_vocabulary(tok):
    other = build_tokenizer([*CORPUS, "另一个语料"])
    assert tokenizer_fingerprint(other) != tokenizer_fingerprint(tok)
    assert tokenizer_fingerprint(build_tokenizer(CORPUS)) == tokenizer_fingerprint(tok)


# --------------------------------------------------------------------------- encode


def test_encode_pads_truncates_and_keeps_sep(tok):
    enc = encode(tok, [TITLE, "", "学院"], max_len=6)
    cls, sep = tok.cls_token_id, tok.sep_token_id
    zhong, hua, nv, zi, xue, yuan = tok.convert_tokens_to_ids(list("中华女子学院"))
    assert enc.ids.dtype == np.int32 and enc.lengths.dtype == np.int32
    np.testing.assert_array_equal(
        enc.ids,
        [
            [cls, zhong, hua, nv, zi, sep],  # truncated: [SEP] survives
            [cls, sep, 0, 0, 0, 0],
            [cls, xue, yuan, sep, 0, 0],
        ],
    )
    np.testing.assert_array_equal(enc.lengths, [6, 2, 4])


def test_encode_matches_tokenizer_and_batch_size_does_not_matter(tok):
    texts = CORPUS * 3
    full = encode(tok, texts, max_len=32)
    small = encode(tok, texts, max_len=32, batch_size=4)
    np.testing.assert_array_equal(full.ids, small.ids)
    np.testing.assert_array_equal(full.lengths, small.lengths)
    for i, text in enumerate(texts):
        assert full.row(i).tolist() == tok(text)["input_ids"]
        assert (full.ids[i, full.lengths[i] :] == 0).all()


def test_encode_follows_left_truncation_side():
    tok = build_tokenizer(CORPUS)
    tok.truncation_side = "left"
    enc = encode(tok, [TITLE], max_len=5)
    assert tok.convert_ids_to_tokens(enc.row(0).tolist()) == ["[CLS]", "招", "男", "生", "[SEP]"]


def test_encode_empty_list(tok):
    enc = encode(tok, [], max_len=8)
    assert len(enc) == 0 and enc.ids.shape == (0, 8)


def test_encode_rejects_max_len_without_room_for_specials(tok):
    with pytest.raises(ValueError, match="max_len"):
        encode(tok, ["x"], max_len=1)


def test_encoded_row_take_and_validation():
    enc = Encoded(np.array([[2, 7, 3, 0], [2, 3, 0, 0]], np.int32), np.array([3, 2], np.int32))
    assert len(enc) == 2 and enc.max_len == 4
    assert enc.row(0).tolist() == [2, 7, 3]
    taken = enc.take([1, 0])
    assert taken.ids.tolist() == [[2, 3, 0, 0], [2, 7, 3, 0]]
    assert taken.lengths.tolist() == [2, 3]
    with pytest.raises(ValueError, match="lengths"):
        Encoded(np.zeros((2, 4), np.int32), np.zeros(3, np.int32))


# --------------------------------------------------------------------------- cache


def test_encode_cache_hit_and_misses(tok, tmp_path, counting_encode, caplog):
    texts = CORPUS
    first = encode_cached(tok, texts, 16, cache_dir=tmp_path)
    assert len(counting_encode) == 1
    with caplog.at_level(logging.DEBUG, logger="textdistill.data.tokenization"):
        again = encode_cached(tok, texts, 16, cache_dir=tmp_path)
    assert len(counting_encode) == 1
    assert "encode cache hit" in caplog.text
    np.testing.assert_array_equal(first.ids, again.ids)
    np.testing.assert_array_equal(first.lengths, again.lengths)
    assert again.ids.dtype == np.int32

    encode_cached(tok, texts, 8, cache_dir=tmp_path)  # other max_len
    assert len(counting_encode) == 2
    encode_cached(tok, [*texts[:-1], "改了一个字"], 16, cache_dir=tmp_path)  # other text
    assert len(counting_encode) == 3
    cased = build_tokenizer(CORPUS, lowercase=False)
    encode_cached(cased, texts, 16, cache_dir=tmp_path)  # other tokenizer
    assert len(counting_encode) == 4
    assert len(list(tmp_path.glob("*.npz"))) == 4
    assert not [p for p in tmp_path.iterdir() if p.suffix != ".npz"]  # no temp files left


def test_encode_cache_survives_save_load(tok, tmp_path, counting_encode):
    encode_cached(tok, CORPUS, 16, cache_dir=tmp_path / "cache")
    tok.save_pretrained(tmp_path / "tok")
    encode_cached(load_tokenizer(tmp_path / "tok"), CORPUS, 16, cache_dir=tmp_path / "cache")
    assert len(counting_encode) == 1


def test_encode_cache_explicit_key_replaces_text_hash(tok, tmp_path, counting_encode):
    first = encode_cached(tok, CORPUS, 16, cache_dir=tmp_path, key="data-sha")
    # Same key and row count: trusted as the same data without hashing the texts.
    second = encode_cached(tok, list(reversed(CORPUS)), 16, cache_dir=tmp_path, key="data-sha")
    assert len(counting_encode) == 1
    np.testing.assert_array_equal(first.ids, second.ids)
    encode_cached(tok, CORPUS, 16, cache_dir=tmp_path, key="other-sha")
    assert len(counting_encode) == 2


def test_encode_cache_default_folder_follows_textdistill_home(tok, tmp_path, monkeypatch):
    monkeypatch.setenv("TEXTDISTILL_HOME", str(tmp_path / "home"))
    assert paths.textdistill_home() == tmp_path / "home"
    encode_cached(tok, CORPUS, 16, cache_dir=None)
    path = encode_cache_path(tok, CORPUS, 16)
    assert path.parent == tmp_path / "home" / "encoded"
    assert path.is_file()


def test_damaged_cache_entry_is_re_encoded(tok, tmp_path, counting_encode, caplog):
    good = encode_cached(tok, CORPUS, 16, cache_dir=tmp_path)
    path = encode_cache_path(tok, CORPUS, 16, cache_dir=tmp_path)
    path.write_bytes(b"not an npz file")
    with caplog.at_level(logging.WARNING):
        again = encode_cached(tok, CORPUS, 16, cache_dir=tmp_path)
    assert "unreadable encode cache" in caplog.text
    assert len(counting_encode) == 2
    np.testing.assert_array_equal(good.ids, again.ids)
    assert encode_cached(tok, CORPUS, 16, cache_dir=tmp_path).ids.shape == (len(CORPUS), 16)
    assert len(counting_encode) == 2  # the rewritten entry is good again


def test_unwritable_cache_still_encodes(tok, tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder should be")
    with caplog.at_level(logging.WARNING):
        enc = encode_cached(tok, CORPUS, 16, cache_dir=blocker / "sub")
    assert len(enc) == len(CORPUS)
    assert "could not write the encode cache" in caplog.text


def test_texts_hash_is_unambiguous():
    assert texts_sha256(["a\nb"]) != texts_sha256(["a", "b"])
    assert texts_sha256(["ab", ""]) != texts_sha256(["a", "b"])
    assert texts_sha256(["中文"]) == texts_sha256(iter(["中文"]))


def test_cache_file_loads_without_pickle(tok, tmp_path):
    encode_cached(tok, CORPUS, 16, cache_dir=tmp_path)
    path: Path = encode_cache_path(tok, CORPUS, 16, cache_dir=tmp_path)
    with np.load(path, allow_pickle=False) as data:
        assert sorted(data.files) == ["ids", "lengths", "sha256"]
        assert data["sha256"].dtype.kind == "U"  # a plain string, not a pickled object


# ------------------------------------------------------------------ per-text character cap


def test_a_million_character_text_is_clipped_before_tokenizing(tok):
    # Left truncation keeps a text's last tokens, so the result shows which text was
    # tokenized: the first MAX_TEXT_CHARS characters (as predict clips), not the whole one.
    left = build_tokenizer(CORPUS)
    left.truncation_side = "left"
    head = "学院" * (MAX_TEXT_CHARS // 2)
    huge = head + "女子足球队" * 200_000  # 1,004,096 characters
    enc = encode(left, [huge, TITLE], max_len=8)
    clipped = encode(left, [huge[:MAX_TEXT_CHARS], TITLE], max_len=8)
    np.testing.assert_array_equal(enc.ids, clipped.ids)
    np.testing.assert_array_equal(enc.lengths, clipped.lengths)
    assert "球" not in left.convert_ids_to_tokens(enc.row(0).tolist())
    # Its cost (0.015 s against 3.7 s unclipped) is measured in benchmarks/check_cost.py; the
    # memory bound is pinned by tests/test_faults.py.


def test_the_cap_leaves_normal_texts_alone(tok):
    texts = [*CORPUS, "球" * (MAX_TEXT_CHARS - 1)]
    enc = encode(tok, texts, max_len=16)
    for i, text in enumerate(texts):
        assert enc.row(i).tolist() == tok(text, truncation=True, max_length=16)["input_ids"]


# ------------------------------------------------------------------ damaged cache entries


def _forge(path: Path, ids: np.ndarray, lengths: np.ndarray) -> None:
    """An entry whose checksum matches its (wrong) arrays: only the content checks catch it."""
    digest = np.array(tokenization._arrays_sha256(ids, lengths))
    np.savez(path, ids=ids, lengths=lengths, sha256=digest)


def _flip_byte(path: Path) -> None:
    # A byte inside the ids array (the zip stores them uncompressed), not the zip header.
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0x01
    path.write_bytes(bytes(data))


def _reverse_rows(path: Path) -> None:
    with np.load(path) as data:
        ids, lengths, digest = data["ids"], data["lengths"], data["sha256"]
    np.savez(path, ids=ids[::-1], lengths=lengths[::-1], sha256=digest)


def _pickled(path: Path) -> None:
    with np.load(path) as data:
        ids, lengths = data["ids"], data["lengths"]
    np.savez(path, ids=ids.astype(object), lengths=lengths, sha256=np.array("x"))


def _old_format(path: Path) -> None:
    with np.load(path) as data:
        np.savez(path, ids=data["ids"], lengths=data["lengths"])  # no checksum


def _id_outside_vocab(path: Path, tok) -> None:
    with np.load(path) as data:
        ids, lengths = data["ids"].copy(), data["lengths"]
    ids[0, 1] = len(tok) + 5
    _forge(path, ids, lengths)


def _length_too_long(path: Path) -> None:
    with np.load(path) as data:
        ids, lengths = data["ids"], data["lengths"].copy()
    lengths[0] = ids.shape[1] + 1
    _forge(path, ids, lengths)


def _bad_padding(path: Path) -> None:
    with np.load(path) as data:
        ids, lengths = data["ids"].copy(), data["lengths"]
    ids[1, -1] = 7  # CORPUS[1] is shorter than 16 tokens: this cell is padding
    _forge(path, ids, lengths)


DAMAGE: dict[str, tuple[Callable[..., None], str]] = {
    "truncated": (lambda p, tok: p.write_bytes(p.read_bytes()[:100]), "unreadable"),
    "garbage": (lambda p, tok: p.write_bytes(b"not an npz file"), "unreadable"),
    "pickled bytes": (lambda p, tok: p.write_bytes(pickle.dumps({"ids": [1]})), "unreadable"),
    "pickled array": (lambda p, tok: _pickled(p), "unreadable"),
    "no checksum": (lambda p, tok: _old_format(p), "unreadable"),
    "flipped byte": (lambda p, tok: _flip_byte(p), "CRC"),  # the zip's own check
    "reversed rows": (lambda p, tok: _reverse_rows(p), "sha256"),
    "id outside vocab": (_id_outside_vocab, "vocabulary"),
    "length too long": (lambda p, tok: _length_too_long(p), "lengths outside"),
    "bad padding": (lambda p, tok: _bad_padding(p), "pad id"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_entry_is_re_encoded_with_a_warning(
    tok, tmp_path, counting_encode, caplog, damage
):
    good = encode_cached(tok, CORPUS, 16, cache_dir=tmp_path)
    path = encode_cache_path(tok, CORPUS, 16, cache_dir=tmp_path)
    spoil, says = DAMAGE[damage]
    spoil(path, tok)
    with caplog.at_level(logging.WARNING, logger="textdistill.data.tokenization"):
        again = encode_cached(tok, CORPUS, 16, cache_dir=tmp_path)
    assert len(counting_encode) == 2, "the damaged entry was used"
    said = " ".join(r.getMessage().replace(str(path), "PATH") for r in caplog.records)
    assert "re-encoding" in said and says in said, said
    np.testing.assert_array_equal(again.ids, good.ids)
    np.testing.assert_array_equal(again.lengths, good.lengths)
    # The entry was rewritten and is trusted again.
    encode_cached(tok, CORPUS, 16, cache_dir=tmp_path)
    assert len(counting_encode) == 2


# --------------------------------------------------------------------------- characters


def test_char_tokenizer_vocabulary_is_specials_then_characters_by_frequency():
    tok = build_char_tokenizer(["北北北京京人", "京 北 A a"], lowercase=True)
    vocab = tok.convert_ids_to_tokens(list(range(len(tok))))
    # 北 x4, 京 x3, a x2 (A lowercased), 人 x1; whitespace is no token.
    assert vocab == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "北", "京", "a", "人"]
    assert tok.pad_token_id == 0 and tok.unk_token_id == 1 and tok.mask_token_id == 4


def test_char_tokenizer_min_frequency_and_size_cap():
    texts = ["北北北京京人"]
    assert len(build_char_tokenizer(texts, min_frequency=2)) == 5 + 2  # 北, 京
    assert len(build_char_tokenizer(texts, vocab_size=6)) == 6  # only 北 fits
    with pytest.raises(ValueError, match="special tokens"):
        build_char_tokenizer(texts, vocab_size=5)
    with pytest.raises(UserError, match="empty corpus"):
        build_char_tokenizer([])


def test_char_tokenizer_encodes_one_id_per_character_without_specials(tmp_path):
    tok = build_char_tokenizer(CORPUS)
    enc = encode(tok, ["中华 女子\t学院", "", "   ", "CAFÉ", "☃"], 6)
    vocab = tok.get_vocab()
    assert enc.row(0).tolist() == [vocab[c] for c in "中华女子学院"]
    assert enc.lengths.tolist() == [6, 0, 0, 4, 1]
    assert enc.row(3).tolist() == [vocab[c] for c in "café"]  # lowercased, accent kept
    assert enc.row(4).tolist() == [tok.unk_token_id]
    tok.save_pretrained(tmp_path)
    again = load_tokenizer(tmp_path)
    assert tokenizer_fingerprint(again) == tokenizer_fingerprint(tok)
    assert np.array_equal(encode(again, CORPUS, 12).ids, encode(tok, CORPUS, 12).ids)


def test_char_tokenizer_is_deterministic():
    a, b = build_char_tokenizer(CORPUS), build_char_tokenizer(list(reversed(CORPUS)))
    assert a.get_vocab() == b.get_vocab()
