"""Matching keys for names people type: intervention and outcome-measure spellings, registry aliases."""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Iterable

_SPACES = re.compile(r"\s+")
#: Characters that show nothing (zero-width space and joiners, soft hyphen, direction marks, BOM, tag
#: characters: Unicode category Cf): two spellings that differ only by them look the same and are one
#: name; so are control characters (Cc) other than whitespace, which is collapsed. The same set as a
#: pyarrow (RE2) pattern, with every control character: what the loader removes from a delivered name
#: before anything reads it (extracts), so no text hides in a name.
_INVISIBLE = dict.fromkeys(i for i in (*range(0x10000), *range(0xE0000, 0xE1000))  # where such text has them
                           if unicodedata.category(chr(i)) == "Cf"
                           or (unicodedata.category(chr(i)) == "Cc" and not chr(i).isspace()))
INVISIBLE_PATTERN = r"[\p{Cf}\p{Cc}]"


def visible(text: str) -> str:
    """``text`` without its invisible characters (format, and controls other than whitespace): what a page may
    show of a name."""
    return str(text).translate(_INVISIBLE)


def match_key(text: str) -> str:
    """The key two spellings of one name share: NFKC, invisible characters dropped, whitespace
    collapsed and trimmed, case-folded.

    "Reading Boost", "reading boost", "Reading  Boost", "Reading\u200b Boost" and "ＲＥＡＤＩＮＧ boost"
    all give "reading boost".
    """
    text = unicodedata.normalize("NFKC", str(text)).translate(_INVISIBLE)
    return _SPACES.sub(" ", text).strip().casefold()


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
