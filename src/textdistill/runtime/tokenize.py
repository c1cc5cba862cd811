"""Tokenization fast path: a batch of texts straight to numpy ``int64`` ids and mask.

:class:`FastEncoder` reads an exported folder's ``tokenizer.json`` with the Rust
``tokenizers`` library (no ``transformers``, no torch) and gives the ids that
``transformers.AutoTokenizer.from_pretrained(folder)(texts, truncation=True,
max_length=max_len, padding=True)`` gives, as ``(B, T)`` arrays, ``T`` the longest row of
the batch.

How it is fast:

- The tokenizer is configured once, at construction, on a private ``Tokenizer`` instance:
  truncation to ``max_len`` on the folder's ``truncation_side``; nothing is changed per call,
  so one encoder serves several threads (``encode_batch`` releases the GIL and only reads
  the tokenizer).
- ``encode_batch_fast`` (tokenizers >= 0.21) skips the character offsets nobody uses.
- The Rust side does not pad: padding there makes every row ``T`` long, and each row's ids
  *and* attention mask then cross into Python as lists. Instead each row's real ids cross
  once, are flattened into one ``np.fromiter`` and scattered into a pad-filled ``(B, T)``
  array through the mask ``arange(T) < length``. The mask comes from the lengths, never from
  ``ids != pad``: a text may hold the pad token itself (``"[PAD]"`` in a title is the pad id,
  with mask 1, on the Hugging Face path too). ``benchmarks/tokenize_speed.py`` measures
  this against padding in Rust (``np.fromiter`` or ``np.array`` over the padded rows).

Threads inside the tokenizer: ``encode_batch`` splits a batch over the Rayon thread pool
unless ``TOKENIZERS_PARALLELISM`` is false-like (``false``, ``0``, ``off``, ``no``, ...; read
on every call); ``RAYON_NUM_THREADS`` sizes that pool once, when it is first used.

Every text is first cut to :data:`textdistill.core.text.MAX_TEXT_CHARS` characters
(:func:`~textdistill.core.text.clip_text`), as training encodes and ``predict`` do.

**Character tokenizers** (the static student's, ``build_char_tokenizer``: optional
lowercasing, whitespace dropped, every other character one ``WordLevel`` token, no special
tokens around a text) skip the Rust call altogether: :class:`CharTable` maps each code point
straight to its id in one numpy lookup over the whole batch. The table is *derived from the
Rust tokenizer itself* at load (its normaliser lowercases, and its pre-tokenizer splits, one
string holding every code point of the table's range), not from Python's own Unicode rules,
so the two agree by construction; a batch holding anything the table cannot answer for (a
code point past its range, a surrogate, a character whose lowercase is two, the first
character of an added token such as ``[PAD]``) goes to the Rust tokenizer as before.
``tests/test_fast_tokenize.py`` checks the ids are identical on the same generated titles.

This module is part of the torch-free runtime: it imports only the standard library, numpy,
``tokenizers`` and :mod:`textdistill.core.text`.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Callable, Sequence
from operator import attrgetter
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Encoding, Tokenizer, pre_tokenizers

from textdistill.core.text import clip_text

log = logging.getLogger(__name__)

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
TRUNCATION_SIDES = ("right", "left")

_ids = attrgetter("ids")
_flatten = itertools.chain.from_iterable


class FastEncoder:
    """Encodes texts for an exported model folder: ids and attention mask (B, T) int64.

    Build one with :meth:`from_folder` (a folder written by ``save_pretrained``) or
    :meth:`from_json` (a ``tokenizer.json`` string), then call :meth:`encode`.
    """

    vocab_size: int
    """Length of the vocabulary including added tokens (rows an embedding matrix needs)."""
    max_len: int
    """Most tokens per row, special tokens included."""
    pad_id: int
    """The id that fills the padding (the mask is 0 there)."""
    truncation_side: str
    """``right`` keeps the start of a long text, ``left`` its end (the special tokens stay)."""

    def __init__(
        self, tokenizer: Tokenizer, max_len: int, *, pad_id: int, truncation_side: str
    ) -> None:
        """Take ``tokenizer`` over (it is re-configured: no padding, truncation to
        ``max_len``); prefer :meth:`from_folder` or :meth:`from_json`."""
        if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 1:
            raise ValueError(f"max_len must be a positive int, got {max_len!r}")
        if truncation_side not in TRUNCATION_SIDES:
            raise ValueError(
                f"truncation_side must be one of {TRUNCATION_SIDES}, got {truncation_side!r}"
            )
        specials = _special_tokens_added(tokenizer)
        if max_len < specials:
            raise ValueError(
                f"max_len {max_len} leaves no room for the {specials} special tokens "
                "the tokenizer adds to every text"
            )
        self.vocab_size = int(tokenizer.get_vocab_size(with_added_tokens=True))
        if isinstance(pad_id, bool) or not isinstance(pad_id, int):
            raise ValueError(f"pad_id must be an int, got {pad_id!r}")
        if tokenizer.id_to_token(pad_id) is None:
            raise ValueError(f"pad_id {pad_id} is not in the vocabulary of {self.vocab_size}")
        self.max_len = max_len
        self.pad_id = pad_id
        self.truncation_side = truncation_side
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_len, direction=truncation_side)
        self._tokenizer = tokenizer
        # encode_batch_fast (tokenizers >= 0.21) skips the offsets; same ids otherwise.
        self._encode_batch: Callable[..., list[Encoding]] = getattr(
            tokenizer, "encode_batch_fast", tokenizer.encode_batch
        )
        self.chars = CharTable.for_tokenizer(tokenizer)
        """The character fast path, for a character tokenizer; None for any other."""
        log.debug(
            "fast encoder: %d tokens, max_len %d, pad id %d, truncation %s",
            self.vocab_size,
            max_len,
            pad_id,
            truncation_side,
        )

    @classmethod
    def from_folder(cls, folder: str | Path, max_len: int) -> FastEncoder:
        """The encoder of a tokenizer folder (``tokenizer.json`` + ``tokenizer_config.json``).

        The pad id is the config's ``pad_token`` looked up in the vocabulary, the truncation
        side its ``truncation_side`` (default ``right``), and ``split_special_tokens: true``
        is honoured as ``transformers`` does (special tokens written in a text are then
        tokenized as text). Raises ``FileNotFoundError`` for a missing file and
        ``ValueError`` for one that cannot serve (no pad token, one not in the vocabulary).
        """
        root = Path(folder)
        tok_path, cfg_path = root / TOKENIZER_FILE, root / TOKENIZER_CONFIG_FILE
        for path in (tok_path, cfg_path):
            if not path.is_file():
                raise FileNotFoundError(f"{path}: not found; expected a tokenizer folder")
        try:
            config = json.loads(cfg_path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{cfg_path}: not valid JSON ({err})") from None
        if not isinstance(config, dict):
            raise ValueError(f"{cfg_path}: expected a JSON object")
        try:
            tokenizer = Tokenizer.from_file(str(tok_path))
        except Exception as err:  # tokenizers raises plain Exception for a bad file
            raise ValueError(f"{tok_path}: not a tokenizers file ({err})") from None
        pad_token = _token_text(config.get("pad_token"))
        if pad_token is None:
            raise ValueError(f"{cfg_path}: no pad_token; padding a batch needs one")
        pad_id = tokenizer.token_to_id(pad_token)
        if pad_id is None:
            raise ValueError(f"{cfg_path}: pad_token {pad_token!r} is not in {tok_path.name}")
        tokenizer.encode_special_tokens = bool(config.get("split_special_tokens", False))
        side = config.get("truncation_side") or "right"
        return cls(tokenizer, max_len, pad_id=int(pad_id), truncation_side=str(side))

    @classmethod
    def from_json(
        cls,
        tokenizer_json: str,
        max_len: int,
        *,
        pad_id: int,
        truncation_side: str = "right",
        split_special_tokens: bool = False,
    ) -> FastEncoder:
        """The encoder of a serialized ``tokenizers.Tokenizer`` (the text of ``tokenizer.json``).

        Any truncation or padding stored in the JSON is replaced: truncation to ``max_len``
        on ``truncation_side``, padding to the longest row with ``pad_id``.
        ``split_special_tokens`` as in ``transformers`` (special tokens written in a text
        are tokenized as text).
        """
        tokenizer = Tokenizer.from_str(tokenizer_json)
        tokenizer.encode_special_tokens = split_special_tokens
        return cls(tokenizer, max_len, pad_id=pad_id, truncation_side=truncation_side)

    def encode(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """``(input_ids, attention_mask)``, both ``np.int64`` of shape (B, T).

        B = ``len(texts)``; T = the longest row of this batch (at most ``max_len``, and 0 for
        an empty batch). Rows are ``[CLS] tokens [SEP]`` (the tokenizer's template),
        right-padded with the pad id; the mask is 1 for real tokens, special ones included,
        0 for padding. Safe to call from several threads at once.
        """
        if isinstance(texts, str):
            raise TypeError("encode takes a sequence of texts, not one str; wrap it in a list")
        clipped = list(map(clip_text, texts))
        if not clipped:
            empty = np.zeros((0, 0), dtype=np.int64)
            return empty, empty.copy()
        if self.chars is not None:
            fast = self.chars.encode(clipped, self.max_len, self.pad_id, self.truncation_side)
            if fast is not None:
                return fast
        rows: list[list[int]] = list(
            map(_ids, self._encode_batch(clipped, add_special_tokens=True))
        )
        if len(rows) == 1:  # nothing to pad: skips the scatter's fixed cost (~15 us)
            ids = np.array(rows, dtype=np.int64)
            return ids, np.ones(ids.shape, dtype=np.int64)
        lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
        width = int(lengths.max())
        real = np.arange(width)[None, :] < lengths[:, None]  # (B, T) bool
        ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        # Row-major boolean assignment fills each row's first `length` cells, in order.
        ids[real] = np.fromiter(_flatten(rows), dtype=np.int64, count=int(lengths.sum()))
        return ids, real.astype(np.int64)

    def __repr__(self) -> str:
        return (
            f"FastEncoder(vocab_size={self.vocab_size}, max_len={self.max_len}, "
            f"pad_id={self.pad_id}, truncation_side={self.truncation_side!r})"
        )


# --------------------------------------------------------------------------- characters

_CHAR_PRE_TOKENIZER = {
    "type": "Sequence",
    "pretokenizers": [
        {"type": "WhitespaceSplit"},
        {"type": "Split", "pattern": {"Regex": "."}, "behavior": "Isolated", "invert": False},
    ],
}
_DROP, _ASK_RUST = -1, -2
TABLE_SIZE = 0x30000
"""Code points the table covers: the BMP and the two planes after it (every CJK block,
emoji). Rarer ones send their batch to the Rust tokenizer."""


class CharTable:
    """Code point -> token id for a character tokenizer, or -1 (whitespace, dropped) or -2
    (ask the Rust tokenizer). Build with :meth:`for_tokenizer`."""

    def __init__(self, table: np.ndarray) -> None:
        self.table = table

    @classmethod
    def for_tokenizer(cls, tokenizer: Tokenizer) -> CharTable | None:
        """The table of ``tokenizer`` if it is a character tokenizer, else None."""
        state = json.loads(tokenizer.to_str())
        model = state.get("model") or {}
        if model.get("type") != "WordLevel" or state.get("pre_tokenizer") != _CHAR_PRE_TOKENIZER:
            return None
        if state.get("normalizer") not in (None, {"type": "Lowercase"}):
            return None
        if _special_tokens_added(tokenizer):
            return None
        vocab: dict[str, int] = tokenizer.get_vocab(with_added_tokens=False)
        unk = vocab.get(str(model.get("unk_token")))
        if unk is None:
            return None
        points = np.arange(TABLE_SIZE, dtype=np.uint32)
        plain = (points < 0xD800) | (points > 0xDFFF)  # surrogates cannot reach Rust
        chars = points[plain].astype("<u4").tobytes().decode("utf-32-le")
        lowered, single = _normalize_each(tokenizer.normalizer, chars)  # (N,) code points
        # The pre-tokenizer's first step drops whitespace; the second isolates every other
        # character ("." matches all but a newline, itself whitespace).
        kept = np.ones(len(chars), dtype=bool)
        kept[np.searchsorted(points[plain], _rust_whitespace())] = False
        id_of = np.full(TABLE_SIZE, unk, dtype=np.int64)
        for token, i in vocab.items():
            if len(token) == 1 and ord(token) < TABLE_SIZE:
                id_of[ord(token)] = i
        ids = id_of[np.minimum(lowered, TABLE_SIZE - 1)]
        ids[lowered >= TABLE_SIZE] = unk  # lowercase past the table: not in it, so unknown
        values = np.where(kept, ids, _DROP)
        values[~single] = _ASK_RUST
        table = np.full(TABLE_SIZE, _ASK_RUST, dtype=np.int64)
        table[plain] = values
        for added in tokenizer.get_added_tokens_decoder().values():
            if added.content:  # an added token starts here: the Rust side matches it
                table[ord(added.content[0])] = _ASK_RUST
        return cls(table)

    def encode(
        self, texts: list[str], max_len: int, pad_id: int, side: str
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """Ids and mask as :meth:`FastEncoder.encode` gives them; None: ask Rust."""
        try:
            joined = "".join(texts).encode("utf-32-le")
        except UnicodeEncodeError:  # a lone surrogate: Rust refuses it, as it should
            return None
        points = np.frombuffer(joined, dtype="<u4")
        if points.size and int(points.max()) >= TABLE_SIZE:
            return None
        values = self.table[points]  # (chars,)
        if values.size and int(values.min()) == _ASK_RUST:
            return None
        n = len(texts)
        chars = np.fromiter(map(len, texts), dtype=np.int64, count=n)
        row = np.repeat(np.arange(n), chars)
        keep = values >= 0
        ids, row = values[keep], row[keep]
        counts = np.bincount(row, minlength=n)  # tokens per text, before truncation
        pos = np.arange(ids.size) - (np.cumsum(counts) - counts)[row]
        if side == "left":  # keep the last max_len tokens
            pos = pos - np.maximum(counts - max_len, 0)[row]
        sel = (pos >= 0) & (pos < max_len)
        lengths = np.minimum(counts, max_len)
        width = int(lengths.max()) if n else 0
        out = np.full((n, width), pad_id, dtype=np.int64)
        out[row[sel], pos[sel]] = ids[sel]
        mask = (np.arange(width)[None, :] < lengths[:, None]).astype(np.int64)
        return out, mask


_WHITESPACE_CANDIDATES = (*range(0x100), 0x1680, 0x180E, *range(0x2000, 0x2070), 0x3000, 0xFEFF)
"""Where Unicode's White_Space characters live (Latin-1, Ogham, Mongolian, General
Punctuation, the ideographic space, the BOM): the ones asked of the Rust pre-tokenizer."""


def _rust_whitespace() -> np.ndarray:
    """The candidates Rust's ``WhitespaceSplit`` drops: each sits between two ``a`` in one
    probe string, so a dropped one is the gap between two pieces."""
    probe = "".join("a" + chr(c) for c in _WHITESPACE_CANDIDATES) + "a"
    covered = np.zeros(len(probe), dtype=bool)
    for _piece, (start, end) in pre_tokenizers.WhitespaceSplit().pre_tokenize_str(probe):
        covered[start:end] = True
    dropped = ~covered[1::2][: len(_WHITESPACE_CANDIDATES)]
    return np.asarray(_WHITESPACE_CANDIDATES, dtype=np.uint32)[dropped]


def _normalize_each(normalizer: Any, chars: str, chunk: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Each character of ``chars`` through ``normalizer`` (the Rust one): its code point
    after, and whether it stayed one character. Chunks whose length changes (a character
    lowercasing to two) are redone one character at a time."""
    out = np.frombuffer(chars.encode("utf-32-le"), dtype="<u4").astype(np.int64)
    single = np.ones(len(chars), dtype=bool)
    if normalizer is None:
        return out, single
    for start in range(0, len(chars), chunk):
        piece = chars[start : start + chunk]
        done = normalizer.normalize_str(piece)
        if len(done) == len(piece):
            out[start : start + len(piece)] = np.frombuffer(done.encode("utf-32-le"), "<u4")
            continue
        for i, c in enumerate(piece, start):
            each = normalizer.normalize_str(c)
            single[i] = len(each) == 1
            out[i] = ord(each[0]) if each else 0
    return out, single


def _special_tokens_added(tokenizer: Tokenizer) -> int:
    """Tokens the post-processor adds to one text (2 for ``[CLS] $A [SEP]``; 0 without one)."""
    post = tokenizer.post_processor
    return int(post.num_special_tokens_to_add(False)) if post is not None else 0


def _token_text(value: Any) -> str | None:
    """A token as ``tokenizer_config.json`` writes it: a string, or an AddedToken object."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return str(value["content"])
    return None
