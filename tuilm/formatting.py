"""Numbers as people read them, shared by the dashboard, the chat banner and sweep tables; text made safe to
show on a terminal and to hand to the tokenizer, shared by `tuilm sample` and `tuilm chat`."""

from __future__ import annotations

import contextlib
import re

# A model can sample control characters (an undertrained one often does); sent raw to a terminal, ESC starts
# escape sequences that move the cursor or recolour the screen. Show them as Unicode control pictures instead.
VISIBLE = {c: 0x2400 + c for c in range(32) if chr(c) not in "\n\t"} | {0x7F: 0x2421}
VISIBLE |= dict.fromkeys(range(0x80, 0xA0), 0xFFFD)  # C1 controls: some terminals act on CSI (0x9B) too
_SURROGATES = re.compile("[\ud800-\udfff]")


def visible(text: str) -> str:
    """Control characters (but newline and tab) as harmless visible characters."""
    return text.translate(VISIBLE)


def valid_text(text: str) -> tuple[str, bool]:
    """(text, changed): bytes that were not UTF-8 (which Python passes on as lone surrogates, from argv say)
    become U+FFFD, so that the tokenizer and the terminal can take the text."""
    if not _SURROGATES.search(text):
        return text, False
    with contextlib.suppress(UnicodeEncodeError):  # argv, surrogateescape streams: the bytes, decoded anew
        text = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return _SURROGATES.sub("\ufffd", text), True


def human(n: float) -> str:
    """1.33M, 12.5k, 3B: three significant digits and a unit."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.3g}{unit}"
    return f"{n:g}"
