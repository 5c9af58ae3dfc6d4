"""The text the full-text indexes hold: scripts written without spaces cut into bigrams. Pure.

A word index finds words, and a word is what lies between spaces and punctuation. Chinese,
Japanese and Thai put no spaces between words, and Korean glues particles to nouns, so a
whole run such as ``みんな見て`` or ``방탄소년단이`` would be one "word": ``見て`` or
``방탄소년단`` would find nothing. As Lucene's CJK analyzer does, every run of these scripts
is indexed as its overlapping character bigrams (``みん んな な見 見て``) and each search
word is cut the same way and looked up as a phrase of its bigrams, so any substring of two
characters or more is found, in one index lookup per bigram. Other text passes unchanged
(the tokenizer splits it into words as before).

One function does the cutting for both stores: :func:`index_form`. SQLite calls it through
an SQL function on the writer connection, for indexing and for removing index entries
alike (an external-content FTS5 index must be given the very text it indexed to remove
it); PostgreSQL indexes the same form through an SQL function built from the same
:data:`RANGES` (:func:`postgres_function`), and a test checks the two agree on real
tweets. A one-character run has no bigram: it is indexed as itself, and a search word
holding a lone character of these scripts is matched as a substring by a scan instead
(:func:`needs_scan`), under the query time limit.
"""

from __future__ import annotations

import operator
import re

RANGES: tuple[tuple[int, int], ...] = (
    (0x0E00, 0x0EFF),  # Thai, Lao
    (0x1000, 0x109F),  # Myanmar
    (0x1100, 0x11FF),  # Hangul Jamo
    (0x1780, 0x17FF),  # Khmer
    (0x2E80, 0x2FDF),  # CJK and Kangxi radicals
    (0x3005, 0x3007),  # iteration mark, closing mark, ideographic zero
    (0x3041, 0x309F),  # Hiragana
    (0x30A1, 0x30FA),  # Katakana (the middle dot ・ U+30FB is punctuation)
    (0x30FC, 0x30FF),  # ー and Katakana iteration marks
    (0x3105, 0x318F),  # Bopomofo, Hangul compatibility Jamo
    (0x31A0, 0x31BF),  # Bopomofo extended
    (0x31F0, 0x31FF),  # Katakana phonetic extensions
    (0x3400, 0x4DBF),  # CJK extension A
    (0x4E00, 0x9FFF),  # CJK unified ideographs
    (0xA960, 0xA97F),  # Hangul Jamo extended A
    (0xAC00, 0xD7FF),  # Hangul syllables, Jamo extended B
    (0xF900, 0xFAFF),  # CJK compatibility ideographs
    (0xFF66, 0xFFDC),  # halfwidth Katakana and Hangul
    (0x20000, 0x3FFFF),  # CJK extensions B and later
)
"""Code points of the scripts cut into bigrams (Lucene's CJK set plus the Southeast
Asian scripts written without spaces)."""


def _python_class() -> str:
    return "".join(f"{chr(low)}-{chr(high)}" for low, high in RANGES)


def _postgres_escape(code: int) -> str:
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


_RUN = re.compile(f"[{_python_class()}]+")


def _bigrams(run: str) -> str:
    if len(run) == 1:
        return f" {run} "
    return " " + " ".join(map(operator.add, run, run[1:])) + " "


def index_form(text: str) -> str:
    """``text`` with every run of the :data:`RANGES` scripts replaced by its overlapping
    bigrams, spaced apart; the rest unchanged. What both stores index, and what each
    search word is turned into before it is looked up (as a phrase)."""
    return _RUN.sub(lambda match: _bigrams(match.group()), text)


def needs_scan(word: str) -> bool:
    """Whether a search word holds a run of one character of these scripts: no bigram
    holds it alone, so the word is matched as a substring by a scan instead."""
    return any(len(match.group()) == 1 for match in _RUN.finditer(word))


def postgres_function(name: str) -> str:
    """``CREATE FUNCTION name(text)``: :func:`index_form` in PostgreSQL's SQL, immutable
    so that an expression index can use it. Lengths and ``substr`` count characters in a
    UTF-8 database, as Python does."""
    cls = "".join(f"{_postgres_escape(low)}-{_postgres_escape(high)}" for low, high in RANGES)
    pattern = f"([^{cls}]+)|([{cls}]+)"
    return (
        f"CREATE OR REPLACE FUNCTION {name}(t text) RETURNS text "
        "LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $f$ "
        "SELECT coalesce(string_agg(CASE "
        "WHEN m[2] IS NULL THEN m[1] "
        "WHEN length(m[2]) = 1 THEN ' ' || m[2] || ' ' "
        "ELSE ' ' || (SELECT string_agg(substr(m[2], i, 2), ' ' ORDER BY i) "
        "FROM generate_series(1, length(m[2]) - 1) AS i) || ' ' "
        "END, '' ORDER BY n), '') "
        f"FROM regexp_matches(t, '{pattern}', 'g') WITH ORDINALITY AS r(m, n) $f$"
    )
