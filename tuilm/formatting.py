"""Numbers as people read them, shared by the dashboard, the chat banner and sweep tables."""

from __future__ import annotations

import math


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
