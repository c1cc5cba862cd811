"""Corpus-built WordPiece tokenizer, ``encode`` and the on-disk encode cache.

The tokenizer is BERT's recipe trained on the task corpus: BERT normalisation (Chinese
characters padded with spaces, optional lowercasing and accent stripping), BERT
pre-tokenisation (so every CJK character is its own word), a WordPiece vocabulary with the
``##`` continuation prefix and the ``[CLS] $A [SEP]`` template. It is wrapped in a
``transformers`` fast tokenizer, so ``save_pretrained`` writes a folder that
``AutoTokenizer.from_pretrained`` loads back unchanged.

Encodings are fixed-width ``int32`` arrays (right-padded with the pad id) plus the real
lengths; the same ids feed the teacher and every student, so one cache entry serves both.
Every text is first cut to :data:`textdistill.core.text.MAX_TEXT_CHARS` characters
(:func:`~textdistill.core.text.clip_text`, the cap ``predict`` uses too), so one huge text
costs the tokenizer no more time or memory than a long one.

A cache entry stores a sha256 of its arrays next to them and is verified when read: a
checksum that does not match, ids outside the vocabulary, lengths out of range or padding
that is not the pad id mean a damaged entry, which is logged and re-encoded, never used.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import zipfile
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import (
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
)
from tokenizers.trainers import WordPieceTrainer
from transformers import (  # type: ignore[attr-defined]
    AutoTokenizer,
    BertTokenizerFast,  # a lazy alias in transformers 5, invisible to type checkers
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from textdistill.core.errors import UserError
from textdistill.core.io import atomic_write, texts_sha256
from textdistill.core.paths import textdistill_home
from textdistill.core.progress import progress
from textdistill.core.text import clip_text

log = logging.getLogger(__name__)

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_TOKENS = (PAD, UNK, CLS, SEP, MASK)
"""In id order: ``[PAD]`` is 0, as BERT checkpoints and the collate default expect."""

CONTINUING_PREFIX = "##"
PROGRESS_MIN_TEXTS = 10_000
"""Show a progress bar only for corpora at least this large (and only at INFO logging)."""

_CACHE_FORMAT = 2
"""Bump when the cache file layout or the encoding rules change, to orphan old entries.
2: texts clipped to ``MAX_TEXT_CHARS`` before tokenizing; a sha256 of the arrays stored."""

_SPECIAL_ATTRS = ("pad_token", "unk_token", "cls_token", "sep_token", "mask_token")


# --------------------------------------------------------------------------- tokenizer


def build_tokenizer(
    texts: Iterable[str],
    *,
    vocab_size: int = 21128,
    min_frequency: int = 1,
    lowercase: bool = True,
    model_max_length: int = 512,
) -> PreTrainedTokenizerFast:
    """Train a BERT-style WordPiece tokenizer on ``texts``.

    ``vocab_size`` is an upper bound: a small corpus yields fewer tokens, and every
    character seen in the corpus is kept even if that exceeds it (the WordPiece trainer
    never drops the alphabet). ``min_frequency`` is the number of occurrences a merged
    piece needs to enter the vocabulary. Accents are stripped exactly when ``lowercase``
    is set, as in the original BERT.
    """
    _check_vocab_options(vocab_size, min_frequency)

    corpus = [str(t) for t in texts]
    if not corpus:
        raise UserError("cannot build a tokenizer from an empty corpus; check the training data")
    vocab = _train_wordpiece_vocab(corpus, vocab_size, min_frequency, lowercase)
    backend = _bert_backend(lowercase, vocab)
    backend.add_special_tokens(list(SPECIAL_TOKENS))
    cls_id, sep_id = backend.token_to_id(CLS), backend.token_to_id(SEP)
    backend.post_processor = processors.TemplateProcessing(
        single=f"{CLS} $A {SEP}",
        pair=f"{CLS} $A {SEP} $B:1 {SEP}:1",
        special_tokens=[(CLS, cls_id), (SEP, sep_id)],
    )
    tok = BertTokenizerFast(
        tokenizer_object=backend,
        do_lower_case=lowercase,
        tokenize_chinese_chars=True,
        strip_accents=None,  # None: follow do_lower_case, as BERT does
        unk_token=UNK,
        sep_token=SEP,
        pad_token=PAD,
        cls_token=CLS,
        mask_token=MASK,
        model_max_length=model_max_length,
    )
    log.debug("built a WordPiece tokenizer: %d tokens from %d texts", len(tok), len(corpus))
    return tok


def _check_vocab_options(vocab_size: int, min_frequency: int) -> None:
    if vocab_size <= len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must exceed the {len(SPECIAL_TOKENS)} special tokens")
    if min_frequency < 1:
        raise ValueError("min_frequency must be at least 1")


def _train_wordpiece_vocab(
    corpus: list[str], vocab_size: int, min_frequency: int, lowercase: bool
) -> dict[str, int]:
    """Run the WordPiece trainer so that the same corpus always gives the same vocabulary.

    The trainer creates the ``##x`` continuation tokens in hash-map order and breaks ties
    between equally frequent merges by token id, so a plain run can pick different merges
    from one run to the next (huggingface/tokenizers#1794). Declaring every continuation
    token up front, sorted, pins their ids. They are declared as trainer "special tokens"
    only to get them into the vocabulary first; the caller builds the final tokenizer from
    the vocabulary alone, so they end up as ordinary WordPiece entries.
    """
    backend = _bert_backend(lowercase)
    trainer = WordPieceTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[*SPECIAL_TOKENS, *_continuation_tokens(backend, corpus)],
        continuing_subword_prefix=CONTINUING_PREFIX,
        show_progress=False,
    )
    backend.train_from_iterator(corpus, trainer=trainer, length=len(corpus))
    vocab: dict[str, int] = backend.get_vocab(with_added_tokens=False)
    return vocab


def _continuation_tokens(backend: Tokenizer, corpus: list[str]) -> list[str]:
    """``##c`` for every character ``c`` seen after the first position of a word, sorted."""
    normalizer, pre_tokenizer = backend.normalizer, backend.pre_tokenizer
    assert normalizer is not None and pre_tokenizer is not None
    chars: set[str] = set()
    for text in corpus:
        for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)):
            chars.update(word[1:])
    return [CONTINUING_PREFIX + c for c in sorted(chars)]


def _bert_backend(lowercase: bool, vocab: dict[str, int] | None = None) -> Tokenizer:
    """BERT's normaliser, pre-tokenizer and decoder around a WordPiece model."""
    backend = Tokenizer(
        models.WordPiece(vocab, unk_token=UNK, continuing_subword_prefix=CONTINUING_PREFIX)
    )
    backend.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase
    )
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece(prefix=CONTINUING_PREFIX)
    return backend


CHAR_SPLIT = r"."
"""The character tokenizer's pattern, after whitespace is split off: every character alone."""


def build_char_tokenizer(
    texts: Iterable[str],
    *,
    vocab_size: int = 21128,
    min_frequency: int = 1,
    lowercase: bool = True,
    model_max_length: int = 512,
) -> PreTrainedTokenizerFast:
    """A character-level tokenizer built from ``texts``: one token per character.

    The static student's own featurisation (its n-grams are hashed from these ids): Chinese
    text needs no segmentation, Latin words become their letters, whose bigrams and
    trigrams the student hashes. Whitespace separates and is dropped; there are no
    ``[CLS]``/``[SEP]`` around a text (nothing uses them), so an empty text has no tokens.
    The vocabulary is the special tokens, then the characters seen at least
    ``min_frequency`` times, most frequent first (ties by code point) - the order the
    static student's ``zipf`` weighting reads as frequency ranks - cut at ``vocab_size``;
    other characters are ``[UNK]``. ``lowercase`` lowercases first, as the WordPiece
    tokenizer does (no accent stripping: a character is kept as it is).
    """
    _check_vocab_options(vocab_size, min_frequency)
    backend = _char_backend(lowercase, {t: i for i, t in enumerate(SPECIAL_TOKENS)})
    normalizer, split = backend.normalizer, backend.pre_tokenizer
    assert split is not None
    counts: Counter[str] = Counter()
    n_texts = 0
    for text in texts:
        n_texts += 1
        norm = normalizer.normalize_str(str(text)) if normalizer is not None else str(text)
        counts.update(piece for piece, _ in split.pre_tokenize_str(norm))
    if not n_texts:
        raise UserError("cannot build a tokenizer from an empty corpus; check the training data")
    chars = sorted(
        (c for c, n in counts.items() if n >= min_frequency and c not in SPECIAL_TOKENS),
        key=lambda c: (-counts[c], c),
    )[: vocab_size - len(SPECIAL_TOKENS)]
    vocab = {t: i for i, t in enumerate([*SPECIAL_TOKENS, *chars])}
    backend = _char_backend(lowercase, vocab)
    backend.add_special_tokens(list(SPECIAL_TOKENS))
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token=UNK,
        sep_token=SEP,
        pad_token=PAD,
        cls_token=CLS,
        mask_token=MASK,
        model_max_length=model_max_length,
    )
    log.debug("built a character tokenizer: %d tokens from %d texts", len(tok), n_texts)
    return tok


def _char_backend(lowercase: bool, vocab: dict[str, int]) -> Tokenizer:
    backend = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    if lowercase:
        backend.normalizer = normalizers.Lowercase()
    # Whitespace (Unicode White_Space) separates and is dropped; what is left, one by one.
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex(CHAR_SPLIT), "isolated")]
    )
    return backend


def load_tokenizer(path_or_name: str | Path) -> PreTrainedTokenizerBase:
    """Load a fast tokenizer from a folder (or a Hugging Face hub id)."""
    name = str(path_or_name)
    if not Path(name).exists() and looks_like_path(path_or_name):
        raise UserError(f"tokenizer folder not found: {name}")
    try:
        tok = AutoTokenizer.from_pretrained(name, use_fast=True)
    except (OSError, ValueError) as err:
        raise UserError(
            f"could not load a tokenizer from {name}: {err}\n"
            "expected a folder written by save_pretrained (tokenizer.json) or a hub model id"
        ) from None
    if not tok.is_fast:
        raise UserError(
            f"{name}: only fast (Rust) tokenizers are supported; "
            "save one with tokenizer.json, e.g. via the tokenizers library"
        )
    return tok


def looks_like_path(p: str | Path) -> bool:
    """Hub ids are ``name`` or ``org/name``; anything else is meant as a local path."""
    if isinstance(p, Path):
        return True
    return os.path.isabs(p) or p.startswith((".", "~")) or p.count("/") > 1 or "\\" in p


def tokenizer_fingerprint(tok: PreTrainedTokenizerBase) -> str:
    """A sha256 over what decides the ids: the backend pipeline and the special tokens.

    The backend's truncation and padding state is left out: ``transformers`` changes it on
    every call with ``truncation=``/``padding=``, and :func:`encode` does its own padding.
    """
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        raise UserError("only fast tokenizers are supported (no backend_tokenizer)")
    state = json.loads(backend.to_str())
    state.pop("truncation", None)
    state.pop("padding", None)
    specials = {attr: getattr(tok, attr, None) for attr in _SPECIAL_ATTRS}
    specials["pad_token_id"] = tok.pad_token_id
    payload = json.dumps(
        {"backend": state, "specials": specials}, sort_keys=True, ensure_ascii=False
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def pretrained_vocab_size(tok: PreTrainedTokenizerBase) -> int:
    """Rows an embedding matrix needs: the vocabulary plus any added tokens."""
    return len(tok)


def pad_token_id(tok: PreTrainedTokenizerBase) -> int:
    """The pad id, or 0 for tokenizers without one (padding is masked out anyway)."""
    pid = tok.pad_token_id
    return int(pid) if pid is not None else 0


# --------------------------------------------------------------------------- encoding


@dataclass(eq=False)  # arrays have no single truth value; compare fields explicitly
class Encoded:
    """Token ids of N texts, right-padded to one width.

    ``ids``: (N, max_len) int32, padded with the tokenizer's pad id. ``lengths``: (N,) int32,
    the real tokens of each row including the special tokens.
    """

    ids: np.ndarray
    lengths: np.ndarray

    def __post_init__(self) -> None:
        if self.ids.ndim != 2 or self.lengths.ndim != 1:
            raise ValueError(
                f"ids must be (N, T) and lengths (N,); got {self.ids.shape}, {self.lengths.shape}"
            )
        if self.ids.shape[0] != self.lengths.shape[0]:
            raise ValueError(f"{self.ids.shape[0]} id rows but {self.lengths.shape[0]} lengths")

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    @property
    def max_len(self) -> int:
        return int(self.ids.shape[1])

    def row(self, i: int) -> np.ndarray:
        """The real ids of row ``i`` (no padding)."""
        return self.ids[i, : self.lengths[i]]

    def take(self, indices: Sequence[int] | np.ndarray) -> Encoded:
        """The rows at ``indices``, in that order (a copy)."""
        idx = np.asarray(indices, dtype=np.int64)
        return Encoded(self.ids[idx], self.lengths[idx])


def encode(
    tok: PreTrainedTokenizerBase,
    texts: Sequence[str],
    max_len: int,
    batch_size: int = 4096,
) -> Encoded:
    """Encode ``texts`` with special tokens, truncated to ``max_len`` tokens.

    Each text is clipped to its first ``MAX_TEXT_CHARS`` characters first (as ``predict``
    does), then truncation keeps the trailing ``[SEP]`` (Hugging Face truncation cuts the
    text, not the special tokens), so a truncated row is ``[CLS] t1 .. t(max_len-2) [SEP]``.
    An empty text becomes ``[CLS] [SEP]``.
    """
    if max_len < 2:
        raise ValueError(f"max_len must leave room for the special tokens, got {max_len}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    n = len(texts)
    ids = np.full((n, max_len), pad_token_id(tok), dtype=np.int32)
    lengths = np.zeros(n, dtype=np.int32)
    backend = _truncating_backend(tok, max_len)
    # encode_batch_fast skips the offsets we never use (tokenizers >= 0.21).
    encode_batch = getattr(backend, "encode_batch_fast", backend.encode_batch)
    quiet = n < PROGRESS_MIN_TEXTS or not log.isEnabledFor(logging.INFO)
    with progress(total=n, desc="encoding", unit="text", disable=quiet) as bar:
        for start in range(0, n, batch_size):
            # Clipped before the tokenizer sees it: the Rust tokenizer normalises and splits
            # a whole text before truncating, so a million-character title would cost
            # hundreds of MB for the max_len tokens that are kept.
            chunk = [clip_text(str(t)) for t in texts[start : start + batch_size]]
            rows = [e.ids for e in encode_batch(chunk, add_special_tokens=True)]
            end = start + len(rows)
            lengths[start:end] = [len(r) for r in rows]
            # Row-major boolean assignment fills each row's first `length` cells in order.
            real = np.arange(max_len)[None, :] < lengths[start:end, None]
            ids[start:end][real] = np.fromiter(itertools.chain.from_iterable(rows), np.int32)
            bar.update(len(rows))
    return Encoded(ids, lengths)


def _truncating_backend(tok: PreTrainedTokenizerBase, max_len: int) -> Tokenizer:
    """A private copy of the Rust tokenizer that truncates to ``max_len`` and never pads.

    A copy, because ``transformers`` re-configures the shared backend on every call; the
    Rust truncation leaves room for the special tokens, exactly as ``tok(...)`` does.
    """
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        raise UserError("only fast tokenizers are supported (no backend_tokenizer)")
    copy = Tokenizer.from_str(backend.to_str())
    copy.no_padding()
    copy.enable_truncation(max_len, direction=getattr(tok, "truncation_side", "right"))
    return copy


# --------------------------------------------------------------------------- cache


def encode_cache_path(
    tok: PreTrainedTokenizerBase,
    texts: Sequence[str],
    max_len: int,
    *,
    cache_dir: Path | None = None,
    key: str | None = None,
) -> Path:
    """Where :func:`encode_cached` keeps (or would keep) this encoding."""
    root = Path(cache_dir) if cache_dir is not None else textdistill_home() / "encoded"
    parts = {
        "format": _CACHE_FORMAT,
        "tokenizer": tokenizer_fingerprint(tok),
        "max_len": max_len,
        "texts": key if key is not None else texts_sha256(texts),
        "rows": len(texts),
    }
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()
    return root / f"enc-{digest[:32]}.npz"


def encode_cached(
    tok: PreTrainedTokenizerBase,
    texts: Sequence[str],
    max_len: int,
    *,
    cache_dir: Path | None = None,
    key: str | None = None,
) -> Encoded:
    """:func:`encode` through an on-disk cache.

    The entry is keyed by the tokenizer fingerprint, ``max_len``, the number of rows and a
    hash of the texts; pass ``key`` (e.g. the data files' sha256) to skip hashing the texts.
    ``cache_dir`` defaults to ``<textdistill_home()>/encoded``. A damaged entry (unreadable,
    a checksum that does not match, ids or lengths that this tokenizer cannot produce) is
    logged as a warning and re-encoded.
    """
    path = encode_cache_path(tok, texts, max_len, cache_dir=cache_dir, key=key)
    cached = _load_entry(path, len(texts), max_len, tok)
    if cached is not None:
        log.debug("encode cache hit: %s", path)
        return cached
    log.debug("encode cache miss: %s", path)
    enc = encode(tok, texts, max_len)
    try:
        _save_entry(path, enc)
    except OSError as err:
        # A read-only or full cache folder only costs speed next time; the run goes on.
        log.warning("could not write the encode cache %s: %s", path, err)
    return enc


def _arrays_sha256(ids: np.ndarray, lengths: np.ndarray) -> str:
    """A sha256 over the shapes, dtypes and bytes of an entry's arrays."""
    h = hashlib.sha256()
    for arr in (ids, lengths):
        h.update(f"{arr.dtype.str}{arr.shape}".encode())
        h.update(np.ascontiguousarray(arr).reshape(-1).view(np.uint8).data)
    return h.hexdigest()


def _load_entry(
    path: Path, rows: int, max_len: int, tok: PreTrainedTokenizerBase
) -> Encoded | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            ids, lengths, digest = data["ids"], data["lengths"], data["sha256"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        # BadZipFile/EOFError: truncated, not a zip or a bad CRC; KeyError: an array is
        # missing (an entry of format 1 had no checksum); ValueError: not an .npy member,
        # or a pickled (object) array, which allow_pickle=False refuses.
        log.warning("ignoring unreadable encode cache entry %s (%s); re-encoding", path, err)
        return None
    problem = _entry_problem(ids, lengths, digest, rows, max_len, tok)
    if problem is not None:
        log.warning("ignoring damaged encode cache entry %s (%s); re-encoding", path, problem)
        return None
    return Encoded(ids, lengths)


def _entry_problem(
    ids: np.ndarray,
    lengths: np.ndarray,
    digest: np.ndarray,
    rows: int,
    max_len: int,
    tok: PreTrainedTokenizerBase,
) -> str | None:
    """What is wrong with a cache entry's arrays, or None when they are what encode() gives."""
    if ids.dtype != np.int32 or lengths.dtype != np.int32:
        return f"dtypes {ids.dtype}/{lengths.dtype}, expected int32"
    if ids.shape != (rows, max_len) or lengths.shape != (rows,):
        return f"shape {ids.shape}/{lengths.shape}, expected ({rows}, {max_len})/({rows},)"
    if digest.shape != () or str(digest) != _arrays_sha256(ids, lengths):
        return "the arrays do not match their recorded sha256"
    # The checksum proves the bytes are the ones written; these prove they are an encoding
    # this tokenizer could have made (an entry written by other code under the same key).
    if rows == 0:
        return None
    shortest = tok.num_special_tokens_to_add(pair=False)
    if int(lengths.min()) < shortest or int(lengths.max()) > max_len:
        return f"lengths outside [{shortest}, {max_len}]"
    if int(ids.min()) < 0 or int(ids.max()) >= len(tok):
        return f"ids outside the vocabulary [0, {len(tok)})"
    padding = np.arange(max_len)[None, :] >= lengths[:, None]
    if not (ids[padding] == pad_token_id(tok)).all():
        return "padding after the real tokens is not the pad id"
    return None


def _save_entry(path: Path, enc: Encoded) -> None:
    """Write via a temporary file and a rename, so readers never see half an entry."""
    digest = np.array(_arrays_sha256(enc.ids, enc.lengths))  # a unicode scalar: no pickle
    with atomic_write(path) as f:
        np.savez(f, ids=enc.ids, lengths=enc.lengths, sha256=digest)
