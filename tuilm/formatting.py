"""Numbers as people read them, shared by the dashboard, the chat banner and sweep tables."""

from __future__ import annotations


def human(n: float) -> str:
    """1.33M, 12.5k, 3B: three significant digits and a unit."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.3g}{unit}"
    return f"{n:g}"
