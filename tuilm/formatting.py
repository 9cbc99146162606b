"""Numbers (and setting values) as people read them: every formatter the dashboard, the progress lines, the chat
banner and the sweep tables share; and text made safe to show on a terminal and to hand to the tokenizer, shared
by `tuilm sample` and `tuilm chat`."""

from __future__ import annotations

import contextlib
import math
import re
from typing import Any

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


def shown(value: Any) -> Any:
    """Text from outside tuilm (a run's metrics.jsonl, a folder's name on disk) as it may reach a terminal: valid
    UTF-8 and no control characters, so an untrusted run cannot retitle or clear the screen; strings inside
    lists and dicts too. The one sanitiser: `sample` and `chat` show model text through `visible` as well."""
    if isinstance(value, str):
        return visible(valid_text(value)[0])
    if isinstance(value, list):
        return [shown(v) for v in value]
    if isinstance(value, dict):
        return {shown(k): shown(v) for k, v in value.items()}
    return value


def short(value: Any, limit: int = 60) -> str:
    """A value for an error line: its repr on one line, never pages long (a forged file can hold anything)."""
    text = " ".join(repr(value).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def human(n: float) -> str:
    """1.33M, 12.5k, 3B: three significant digits and a unit."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.3g}{unit}"
    return f"{n:g}"


def fmt_duration(seconds: float) -> str:
    """45s, 3m07s, 1h02m; ? when unknown."""
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def fmt(value: float | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-" if value is None else str(value)
    if abs(value) >= 1e6:  # a diverged run's loss, or its perplexity
        return f"{value:.3g}"
    return f"{value:.{digits}f}"


def fmt_rate(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:,.0f}"


def fmt_bytes(n: float) -> str:
    """512 MiB, 1.21 GiB: binary units, as memory is sold and as top shows it."""
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n:.0f} B"


def fmt_mfu(mfu: float | None) -> str:
    """`  MFU 12.3%` (two significant digits below 10%), or nothing when the device's peak is unknown."""
    if mfu is None or not math.isfinite(mfu):
        return ""
    return f"  MFU {mfu:.1%}" if mfu >= 0.1 else f"  MFU {100 * mfu:.2g}%"


def show_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    return "auto" if value is None else str(value)


def percent(progress: float) -> str:
    """` (42%)`, or nothing when no stopping criterion gives a fraction."""
    return f" ({progress:.0%})" if math.isfinite(progress) else ""


def fmt_sci(x: float | None) -> str:
    """1.23e-05, 0.0421, 12.5: three significant digits, in scientific notation outside 0.01..10,000."""
    if x is None or not math.isfinite(x):
        return str(x)
    return f"{x:.2e}" if x and not 1e-2 <= abs(x) < 1e4 else f"{x:.3g}"


def fmt_tick(x: float) -> str:
    """A chart axis's label: 0, 0.25, 5e-3, 12.5k (plotext's own print every digit: 64907.0)."""
    if x == 0:
        return "0"
    if abs(x) >= 1000:
        return human(x)
    if abs(x) < 0.01:
        return f"{x:.0e}".replace("e-0", "e-")
    return f"{x:.3g}"
