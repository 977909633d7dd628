"""Make concept-stripped prompts: remove every concept word or phrase, not just one."""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache

_VOWEL_SOUND = re.compile(r"^[aeiou]", re.IGNORECASE)


def _phrase_pattern(phrases: Iterable[str]) -> re.Pattern[str]:
    return _compiled(tuple(phrases))


@lru_cache(maxsize=4096)  # a task checks every prompt against the same phrases
def _compiled(phrases: tuple[str, ...]) -> re.Pattern[str]:
    # Longest first, so "in the style of Van Gogh" goes before "Van Gogh".
    ordered = sorted({p.strip() for p in phrases if p.strip()}, key=len, reverse=True)
    alternatives = [r"\s+".join(re.escape(part) for part in p.split()) for p in ordered]
    return re.compile(r"(?<![\w'])(?:" + "|".join(alternatives) + r")(?![\w])", re.IGNORECASE)


_REMOVED = "\x00"
_FUNCTION_WORDS = frozenset(
    "on in at of with by under over near and or during from to into beside behind above".split()
)


def _fix_articles(text: str) -> str:
    """Re-choose a/an only where a removed word used to follow the article."""

    def repair(match: re.Match[str]) -> str:
        article, word = match.group(1), match.group(2)
        if word.lower() in _FUNCTION_WORDS:  # "a <church> on a hill" -> "on a hill"
            return word
        if article.lower() == "the":
            return f"{article} {word}"
        wants_an = bool(_VOWEL_SOUND.match(word))
        fixed = "an" if wants_an else "a"
        if article[0].isupper():
            fixed = fixed.capitalize()
        return f"{fixed} {word}"

    text = re.sub(r"\b(an?|An?|the|The)\s*\x00[\s\x00,]*([A-Za-z]\w*)", repair, text)
    # An article left with nothing after it ("a village with a <church>") goes too.
    return re.sub(r"\b(?:an?|An?|the|The)\s*\x00[\s\x00]*(?=[,.;:!?]|$)", " ", text)


def strip_concept(prompt: str, words: Iterable[str]) -> str:
    """Remove all occurrences of all concept words/phrases, then tidy spaces and articles.

    IGMU's official code removed one word per copy of the prompt and joined the copies, so the
    text it scored still contained the concept; here every occurrence of every word goes.
    """
    pattern = _phrase_pattern(words)
    previous = None
    text = prompt
    while previous != text:  # removing one phrase can bring two others together
        previous = text
        text = pattern.sub(f" {_REMOVED} ", text)
    text = _fix_articles(text).replace(_REMOVED, " ")
    text = re.sub(r"\s+([,.;:!?])", r"\1", text)
    text = re.sub(r"\b(an?|An?|the|The)\s*,\s*", r"\1 ", text)
    text = re.sub(r"([,;:])\s*(?=[,;:.!?]|$)", "", text)
    return re.sub(r"\s{2,}", " ", text).strip(" ,;:")


def concept_words_in(text: str, words: Iterable[str]) -> list[str]:
    """The concept words or phrases still present in ``text`` (whole words, any case)."""
    found = []
    for phrase in words:
        if _phrase_pattern([phrase]).search(text):
            found.append(phrase)
    return found
