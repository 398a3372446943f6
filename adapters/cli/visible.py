"""Text for a terminal: characters that would steer it (ESC, CR, BEL, backspace, C1 controls,
bidirectional overrides, line separators, undecodable bytes) are shown as escapes instead.

Reasons, actors, descriptions, names read from XML and paths come from users and other programs;
printed raw, `\\x1b]0;...` retitles the window and `\\r` writes over a line. output.py passes every
such value through `visible` and every line it prints through `visible_lines`; JSON output is
left alone (json.dumps already escapes all of them).
"""

from __future__ import annotations

import re
from typing import Any

# C0 and C1 controls and DEL; lone surrogates (bytes that were not UTF-8); Unicode's line and
# paragraph separators; the bidirectional marks, embeddings, overrides and isolates.
_OTHERS = r"\x7f-\x9f\ud800-\udfff\u2028\u2029\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"
_ANY = re.compile(rf"[\x00-\x1f{_OTHERS}]")
_BUT_LAYOUT = re.compile(rf"[\x00-\x08\x0b-\x1f{_OTHERS}]")  # newline and tab stay
_NAMED = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 (Python's surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def visible(text: str) -> str:
    """One value, on one line: every steering character escaped (newlines and tabs too)."""
    if text.isprintable():  # the usual case, checked in C
        return text
    return _ANY.sub(_escape, text)


def visible_lines(text: str) -> str:
    """Text made of lines: the same, except that newlines and tabs stay."""
    if text.isprintable():
        return text
    return _BUT_LAYOUT.sub(_escape, text)


def visible_data(value: Any) -> Any:
    """A document (dicts, lists, strings, numbers) with every string, keys included, visible."""
    if isinstance(value, str):
        return visible(value)
    if isinstance(value, dict):
        return {visible_data(k): visible_data(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [visible_data(v) for v in value]
    return value
