"""The exact text of a JSON member, so ``--json`` writes a tweet byte for byte as the relay
encoded it."""

from __future__ import annotations

import json
import re

_DECODER = json.JSONDecoder()
_SPACE = re.compile(r"[ \t\n\r]*")


def member_text(document: str, key: str) -> str | None:
    """The exact text of the value of ``key`` in the JSON object ``document`` (the last
    one when the key repeats), or None when the object has no such member or is not an
    object. ``--json`` writes the tweet this way, as the relay encoded it, instead of
    decoding and encoding it again."""
    try:
        at = _SPACE.match(document).end()  # type: ignore[union-attr]
        if document[at : at + 1] != "{":
            return None
        at = _SPACE.match(document, at + 1).end()  # type: ignore[union-attr]
        found = None
        while document[at : at + 1] == '"':
            name, at = _DECODER.raw_decode(document, at)
            at = _SPACE.match(document, at).end()  # type: ignore[union-attr]
            if document[at : at + 1] != ":":
                return None
            start = _SPACE.match(document, at + 1).end()  # type: ignore[union-attr]
            _, end = _DECODER.raw_decode(document, start)
            if name == key:
                found = document[start:end]
            at = _SPACE.match(document, end).end()  # type: ignore[union-attr]
            if document[at : at + 1] != ",":
                break
            at = _SPACE.match(document, at + 1).end()  # type: ignore[union-attr]
        return found
    except json.JSONDecodeError:
        return None
