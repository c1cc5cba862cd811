"""Transfer-set augmentation for distillation (Tang et al., 2019, "Distilling
Task-Specific Knowledge from BERT into Simple Neural Networks").

A student learns the teacher's function best where it sees the teacher's outputs, and a
cached teacher can label any number of extra texts at once. Perturbed copies of the
training texts give it more such points near the data: each copy masks some characters
with the tokenizer's unknown token and, with some probability, keeps only a random
contiguous n-gram of the text. The copies carry no gold label (the perturbation may change
the class); they are learned from the teacher's soft targets only.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

UNK = "[UNK]"


def augment_text(text: str, rng: random.Random, *, mask_prob: float, ngram_prob: float) -> str:
    """One perturbed copy of ``text``: characters masked with ``[UNK]``, maybe an n-gram."""
    chars = list(text)
    if len(chars) > 3 and rng.random() < ngram_prob:
        n = rng.randint(max(2, len(chars) // 2), len(chars) - 1)
        start = rng.randint(0, len(chars) - n)
        chars = chars[start : start + n]
    out = [UNK if (not c.isspace() and rng.random() < mask_prob) else c for c in chars]
    # Masked characters become separate tokens; spaces keep [UNK] from merging with ASCII.
    return "".join(f" {c} " if c == UNK else c for c in out).strip()


def augment_texts(
    texts: Sequence[str],
    copies: int,
    *,
    seed: int,
    mask_prob: float = 0.1,
    ngram_prob: float = 0.25,
) -> list[str]:
    """``copies`` perturbed copies of every text (copy-major order), deterministic in seed.

    Copies identical to their source text are kept: they still add weight to the
    teacher's view of that text, and dropping them would make the row count data-dependent.
    """
    if copies <= 0:
        return []
    rng = random.Random(seed)
    return [
        augment_text(t, rng, mask_prob=mask_prob, ngram_prob=ngram_prob)
        for _ in range(copies)
        for t in texts
    ]
