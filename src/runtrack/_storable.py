"""What every registry can store: text and JSON checks shared by the models and the manager.

The stores differ in what they refuse: PostgreSQL has no NUL character in text or JSON,
MariaDB checks JSON (no lone surrogate, at most 32 levels of nesting), and nothing encodes a
lone surrogate as UTF-8. runtrack holds every backend to the strictest of them, so a run
behaves the same wherever it is recorded:

- ids, names, tags and parameters with such values are refused at submission;
- a result with one makes the run FAILED with ``error_type="ResultNotStorable"``;
- error and progress messages, which are for people to read, are escaped and bounded.
"""

from __future__ import annotations

import re
from typing import Any, Final

__all__ = [
    "MAX_DEPTH",
    "MAX_ERROR_MESSAGE",
    "MAX_PROGRESS_MESSAGE",
    "UNSTORABLE",
    "ResultNotStorable",
    "is_storable",
    "json_problem",
    "storable_text",
    "text_problem",
]

#: Most JSON containers nested in one another that every registry stores (MariaDB refuses
#: 32: its documented depth limit of 32 counts the scalar at the bottom).
MAX_DEPTH: Final = 31
#: Longest error message recorded, in characters; longer ones are cut (the end is kept).
MAX_ERROR_MESSAGE: Final = 16_384
#: Longest progress message recorded, in characters; longer ones are cut.
MAX_PROGRESS_MESSAGE: Final = 1_024


class ResultNotStorable(ValueError):
    """Recorded as a run's error when its result is something no registry can store."""


#: Characters no registry stores faithfully: NUL (PostgreSQL text refuses it) and
#: surrogates, which have no UTF-8 form (a str holds them only unpaired, e.g. from
#: ``bytes.decode(errors="surrogateescape")``).
UNSTORABLE: Final = re.compile("[\x00\ud800-\udfff]")


def is_storable(text: str) -> bool:
    """Whether ``text`` holds neither NUL nor a surrogate (the ASCII case is one memchr)."""
    return "\x00" not in text if text.isascii() else UNSTORABLE.search(text) is None


def text_problem(text: str) -> str | None:
    """Why ``text`` cannot be stored as it is (a NUL or a lone surrogate), or None."""
    if is_storable(text):
        return None
    if "\x00" in text:
        return "a NUL character (\\x00), which PostgreSQL cannot store"
    return "a lone surrogate (an unpaired \\ud800-\\udfff), which is not valid UTF-8"


def json_problem(value: Any, where: str) -> str | None:
    """Why the JSON value ``value`` cannot be stored everywhere, or None.

    Looks at every key and string (see `text_problem`) and at the nesting depth
    (`MAX_DEPTH`). ``where`` names the value in the answer, e.g. ``"result"``.
    """
    stack: list[tuple[Any, str, int]] = [(value, where, 0)]
    while stack:
        item, path, depth = stack.pop()
        if isinstance(item, str):
            problem = text_problem(item)
            if problem is not None:
                return f"{path} holds {problem}"
        elif isinstance(item, dict | list):
            if depth >= MAX_DEPTH:
                return f"{path} is nested more than {MAX_DEPTH} levels deep"
            if isinstance(item, dict):
                for key, child in item.items():
                    if isinstance(key, str):
                        problem = text_problem(key)
                        if problem is not None:
                            return f"a key of {path} holds {problem}"
                    stack.append((child, f"{path}[{key!r}]", depth + 1))
            else:
                stack.extend((child, f"{path}[{i}]", depth + 1) for i, child in enumerate(item))
    return None


def storable_text(text: str, limit: int) -> str:
    """``text`` as every registry can store it: NUL and lone surrogates escaped, then cut.

    The escapes read as Python writes them (a backslash, then ``x00`` or ``ud800``); a text
    longer than ``limit`` characters is cut, with a note of how much was cut.
    """
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    if not text.isascii():
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    if len(text) > limit:
        cut = len(text) - limit
        text = f"{text[:limit]}... ({cut} more characters cut)"
    return text
