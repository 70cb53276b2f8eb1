"""Words the messages of every part share: the indefinite article ("an adapter", "a model").

A message that names a kind, a peft type or any other word it only knows at run time
writes ``with_article(word)``, never a fixed "a" before the placeholder (which wrote "a
adapter"): tests/e2e/test_grammar.py refuses that anywhere in the source.
"""

from __future__ import annotations

_VOWELS = "aeiou"


def article(word: str) -> str:
    """``an`` before a vowel sound, else ``a``, by spelling: an adapter, an IA3, a model, a UNILORA, a user."""
    w = word.lower()
    if not w or w[0] not in _VOWELS:
        return "a"
    # "u" said "you" (a unique, a user, a UNILORA), told from "uh" (an update, an unknown) by the next letters
    if w[0] == "u" and w[1:2] in ("n", "s", "t") and w[2:3] in ("i", "e", "u", "a"):
        return "a"
    return "an"


def with_article(word: str) -> str:
    """``word`` behind its article: ``with_article("adapter") == "an adapter"``."""
    return f"{article(word)} {word}"
