"""Numbers (and setting values) as people read them: every formatter the dashboard, the progress lines, the chat
banner and the sweep tables share."""

from __future__ import annotations

import math
from typing import Any


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


def show_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    return "auto" if value is None else str(value)


def percent(progress: float) -> str:
    """` (42%)`, or nothing when no stopping criterion gives a fraction."""
    return f" ({progress:.0%})" if math.isfinite(progress) else ""
