import random

from textdistill.data.tokenization import build_tokenizer
from textdistill.distill.augment import UNK, augment_text, augment_texts

# Invented titles, shaped like news headlines (a digit, full-width punctuation, a space).
TITLES = ["北方理工学院：今年仅2个专业扩招女生", "某影星客串新片 复古发型引热议(图)"]


def test_copies_are_deterministic_and_copy_major() -> None:
    a = augment_texts(TITLES, 3, seed=5)
    assert a == augment_texts(TITLES, 3, seed=5)
    assert a != augment_texts(TITLES, 3, seed=6)
    assert len(a) == 6
    assert augment_texts(TITLES, 0, seed=5) == []


def test_mask_prob_one_masks_every_character() -> None:
    out = augment_text("新闻标题", random.Random(0), mask_prob=0.999999, ngram_prob=0.0)
    assert out.split() == [UNK] * 4


def test_ngram_keeps_a_contiguous_span() -> None:
    rng = random.Random(1)
    for _ in range(50):
        out = augment_text(TITLES[0], rng, mask_prob=0.0, ngram_prob=1.0)
        assert out in TITLES[0]
        assert len(TITLES[0]) // 2 <= len(out) < len(TITLES[0])


def test_masked_characters_become_unknown_tokens() -> None:
    tok = build_tokenizer(TITLES)
    out = augment_text(TITLES[0], random.Random(3), mask_prob=0.3, ngram_prob=0.0)
    tokens = tok.tokenize(out)
    assert tokens.count(UNK) == out.count(UNK) > 0
    assert len(tokens) == len(TITLES[0])
