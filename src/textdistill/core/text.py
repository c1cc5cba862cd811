"""What counts as a text: the visible-character test and the per-text character cap.

Both are shared by data validation, training encodes, ``predict`` and the service, so a
text is empty, or cut, the same way everywhere.
"""

from __future__ import annotations

import unicodedata

MAX_TEXT_CHARS = 4096
"""Characters of a text kept before tokenizing. Far above what any ``max_len`` up to 512
tokens consumes (a CJK character is one token, a Latin word several characters), and it
bounds the tokenizer's time and memory: a million-character text costs what 4,096 do."""

_INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zs", "Zl", "Zp"})
"""Control, format (zero-width space, BOM, joiners), surrogate, private-use, unassigned and
separator characters: a text made only of these shows nothing a model could classify."""


def is_visible(char: str) -> bool:
    """True for a character that shows something (a letter, digit, mark, symbol, ...)."""
    return unicodedata.category(char) not in _INVISIBLE_CATEGORIES


def has_visible_text(text: str) -> bool:
    """True when ``text`` holds at least one visible character (see :func:`is_visible`).

    ``""``, whitespace, zero-width spaces (U+200B), a BOM (U+FEFF) and control characters
    (U+0000, U+0001, ...) alone are not text.
    """
    return any(is_visible(c) for c in text)


def clip_text(text: str, max_chars: int = MAX_TEXT_CHARS) -> str:
    """``text`` cut to its first ``max_chars`` characters (the same text when shorter)."""
    return text if len(text) <= max_chars else text[:max_chars]
