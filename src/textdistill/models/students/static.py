"""Static-embedding student: fastText's recipe, distilled.

A text is a bag of features: its tokens and the hashed n-grams of consecutive tokens
(bigrams and trigrams by default, as fastText's ``-wordNgrams``; for Chinese characters
these are the words a segmenter would have found, and more). Each feature has a row in an
embedding table - tokens in ``embedding`` (one row per vocabulary entry, so it can be
initialised from the teacher's), n-grams in ``ngrams`` (``buckets`` rows shared by all
orders, collisions and all, as fastText does). The sentence vector is the weighted mean of
the feature rows, optionally passed through one hidden layer, then a linear classifier.

**Hashing in the graph.** The n-gram ids are computed from ``input_ids`` inside
``forward`` with integer multiply, add and modulo: training, evaluation, the ONNX export
and the runtime therefore featurise a text in exactly one way, and an exported folder
needs nothing but the token ids the tokenizer gives. The recurrence keeps every
intermediate below ``buckets * HASH_PRIME + vocab_size`` (far from int64's limit)::

    h_1 = id_t,    h_n = (h_{n-1}(t) * HASH_PRIME + id_{t+n-1}) mod buckets

An n-gram counts iff all its tokens are real (not padding), so a row's output does not
depend on how far its batch was padded.

**Weighting.** ``mean``: every real feature weighs 1. ``zipf``: a token of frequency rank
r (its id: the vocabulary the static student builds is ordered by corpus frequency, special
tokens first) weighs ``a / (a + p_r)`` with Zipf's ``p_r = 1 / ((r + 1) H_V)`` and
``a = 1e-3`` - the smooth inverse frequency of Arora et al. (2017) that Model2Vec applies,
with the frequency estimated from the rank; n-grams weigh 1.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from textdistill.models.output import ClassifierOutput
from textdistill.models.students.base import StudentModel, StudentSpecError, check_positive

HASH_PRIME = 1_000_003
"""Multiplier of the n-gram hash (a prime above any vocabulary, so ids do not alias)."""

WEIGHTINGS = ("mean", "zipf")
SIF_A = 1e-3


def zipf_weights(vocab_size: int, a: float = SIF_A) -> Tensor:
    """``w_r = a / (a + p_r)`` with ``p_r = 1 / ((r + 1) * H_V)``, r = 0 .. V-1 -> (V,).

    ``H_V = sum_{k=1..V} 1/k`` normalises Zipf's law into probabilities, so the most
    frequent token (r = 0) has ``p = 1 / H_V`` and the weight falls towards 0 for frequent
    tokens and towards 1 for rare ones.
    """
    ranks = torch.arange(1, vocab_size + 1, dtype=torch.float64)  # r + 1
    p = 1.0 / (ranks * (1.0 / ranks).sum())
    return (a / (a + p)).to(torch.float32)


def ngram_chain(
    input_ids: Tensor, attention_mask: Tensor, max_order: int, buckets: int
) -> Iterator[tuple[int, Tensor, Tensor]]:
    """``(n, ids, valid)`` for n = 2 .. ``max_order``, each order built on the one before
    (one pass for all orders): bucket ids and validity, (B, T - n + 1) each.

    Position t holds the n-gram of tokens t .. t + n - 1; it is valid iff all of them are
    real tokens. For T < n both are empty (B, 0).
    """
    ids = input_ids.long()  # (B, T)
    real = attention_mask > 0  # (B, T)
    h, valid = ids, real
    for n in range(2, max_order + 1):
        h = (h[:, :-1] * HASH_PRIME + ids[:, n - 1 :]) % buckets  # (B, T - n + 1)
        valid = valid[:, :-1] & real[:, n - 1 :]  # (B, T - n + 1)
        yield n, h, valid


def ngram_ids(
    input_ids: Tensor, attention_mask: Tensor, order: int, buckets: int
) -> tuple[Tensor, Tensor]:
    """Bucket ids and validity of every n-gram of ``order`` (>= 2) -> (B, T - order + 1)."""
    *_, (_, ids, valid) = ngram_chain(input_ids, attention_mask, order, buckets)
    return ids, valid


class StaticStudent(StudentModel):
    """Token + hashed n-gram embeddings -> weighted mean -> [ReLU layer] -> linear.

    Args:
        vocab_size: rows of the token embedding (the student's tokenizer).
        num_labels: classes C.
        embed_dim: width E of every feature's embedding.
        buckets: rows of the n-gram table (shared by all orders).
        ngram_orders: n-gram orders besides single tokens, e.g. ``[2, 3]``; ``[]`` for a
            plain bag of tokens.
        hidden_dim: width of one hidden ReLU layer over the mean; 0 for none (fastText's
            linear model). The sentence vector is that layer's output, else the mean.
        weighting: ``mean`` or ``zipf`` (see the module docstring).
        dropout: on the sentence vector before the classifier.
        pad_id: padding token id.
    """

    def __init__(
        self,
        vocab_size: int,
        num_labels: int,
        embed_dim: int = 64,
        buckets: int = 50_000,
        ngram_orders: Sequence[int] = (2,),
        hidden_dim: int = 0,
        weighting: str = "mean",
        dropout: float = 0.1,
        pad_id: int = 0,
    ) -> None:
        super().__init__()
        check_positive(vocab_size=vocab_size, num_labels=num_labels, embed_dim=embed_dim)
        orders = sorted({int(n) for n in ngram_orders})
        if orders and (orders[0] < 2 or orders[-1] > 5):
            raise StudentSpecError(f"ngram_orders must lie in 2..5, got {list(ngram_orders)}")
        if orders:
            check_positive(buckets=buckets)
        if hidden_dim < 0:
            raise StudentSpecError(
                f"hidden_dim must be >= 0 (0: no hidden layer), got {hidden_dim}"
            )
        if weighting not in WEIGHTINGS:
            raise StudentSpecError(
                f"unknown weighting '{weighting}'; valid: {', '.join(WEIGHTINGS)}"
            )
        self.config: dict[str, Any] = {
            "arch": "static",
            "vocab_size": vocab_size,
            "num_labels": num_labels,
            "embed_dim": embed_dim,
            "buckets": buckets,
            "ngram_orders": orders,
            "hidden_dim": hidden_dim,
            "weighting": weighting,
            "dropout": dropout,
            "pad_id": pad_id,
        }
        self.orders = tuple(orders)
        self.buckets = buckets
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=pad_id)
        # One row per bucket; zero at the start, so the first steps see the (possibly
        # teacher-initialised) tokens alone, and learnt from there like fastText's rows.
        self.ngrams = nn.Embedding(buckets if orders else 1, embed_dim)
        nn.init.zeros_(self.ngrams.weight)
        weights = zipf_weights(vocab_size) if weighting == "zipf" else torch.ones(vocab_size)
        # A buffer, saved with the weights: exports and the runtime weigh exactly alike.
        self.token_weight: Tensor
        self.register_buffer("token_weight", weights, persistent=True)
        self.hidden = nn.Linear(embed_dim, hidden_dim) if hidden_dim else None
        self.hidden_size = hidden_dim or embed_dim
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(self.hidden_size, num_labels)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> ClassifierOutput:
        dtype = self.embedding.weight.dtype
        real = (attention_mask > 0).to(dtype)  # (B, T)
        w = self.token_weight[input_ids] * real  # (B, T)
        total = (self.embedding(input_ids) * w.unsqueeze(-1)).sum(dim=1)  # (B, E)
        norm = w.sum(dim=1)  # (B,)
        max_order = self.orders[-1] if self.orders else 1
        for order, ids, valid in ngram_chain(input_ids, attention_mask, max_order, self.buckets):
            if order not in self.orders:
                continue
            v = valid.to(dtype)  # (B, T - order + 1), as ids
            total = total + (self.ngrams(ids) * v.unsqueeze(-1)).sum(dim=1)  # (B, E)
            norm = norm + v.sum(dim=1)
        pooled = total / norm.clamp(min=1e-6).unsqueeze(-1)  # (B, E); 0 for an empty row
        hidden = torch.relu(self.hidden(pooled)) if self.hidden is not None else pooled  # (B, H)
        logits = self.classifier(self.dropout(hidden))  # (B, C)
        return ClassifierOutput(logits=logits, hidden=hidden)


STATIC_PRESETS: dict[str, dict[str, Any]] = {
    # 4.6M parameters with bert-base-chinese's 21,128-token vocabulary, 3.5M with the ~4,000
    # characters of Chinese news titles: under 5 % of a bert-base either way.
    # Bigrams only: on the THUCNews selection holdout they beat bigrams + trigrams (85.9 vs
    # 85.4 % for `none` at lr 0.01; docs/BENCHMARKS.md), trigrams mostly adding collisions.
    "small": {
        "embed_dim": 64,
        "buckets": 50_000,
        "ngram_orders": [2],
        "hidden_dim": 0,
        "weighting": "mean",
        "dropout": 0.1,
    },
    # fastText's size for Chinese titles (Chinese-Text-Classification-Pytorch: 250,499
    # buckets, 300 dims would be 80M; 128 dims here): accuracy first, ~34M parameters.
    "large": {
        "embed_dim": 128,
        "buckets": 250_000,
        "ngram_orders": [2, 3],
        "hidden_dim": 0,
        "weighting": "mean",
        "dropout": 0.1,
    },
}
