"""Matching keys for names people type: intervention and outcome-measure spellings, registry aliases."""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Iterable

_SPACES = re.compile(r"\s+")


def match_key(text: str) -> str:
    """The key two spellings of one name share: NFKC, whitespace collapsed and trimmed, case-folded.

    "Reading Boost", "reading boost", "Reading  Boost" and "ＲＥＡＤＩＮＧ boost" all give "reading boost".
    """
    return _SPACES.sub(" ", unicodedata.normalize("NFKC", str(text))).strip().casefold()


def display_name(spellings: Iterable[tuple[str, int]]) -> str:
    """The spelling to publish for one key: the most common (by rows), ties broken alphabetically.

    ``spellings`` holds (spelling, rows) pairs; the chosen spelling is NFKC-normalised with
    whitespace collapsed, so stray double spaces never reach a published name.
    """
    counts: Counter[str] = Counter()
    for spelling, rows in spellings:
        counts[_SPACES.sub(" ", unicodedata.normalize("NFKC", str(spelling))).strip()] += int(rows)
    if not counts:
        raise ValueError("display_name needs at least one spelling")
    return min(counts, key=lambda s: (-counts[s], s))
