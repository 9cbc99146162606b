"""Where data files are looked for: $TUILM_DATA_DIR first (a folder the user fills, e.g. to work offline), then
the user cache (~/.cache/tuilm/datasets), which is also where a download goes. Named sources and named corpora
both find their files here, each with its own check of a file it finds."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

DATA_DIR_ENV = "TUILM_DATA_DIR"


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "tuilm"


def candidates(filename: str) -> list[Path]:
    """Where `filename` is looked for, in order; the last is the cache, where a download of it goes."""
    places = []
    if os.environ.get(DATA_DIR_ENV):
        places.append(Path(os.environ[DATA_DIR_ENV]).expanduser() / filename)
    places.append(cache_dir() / "datasets" / filename)
    return places


def find_local(filename: str, accept: Callable[[Path], bool]) -> Path | None:
    """The first of the candidates that is a file and that `accept` takes (it may raise instead, to refuse)."""
    for path in candidates(filename):
        if path.is_file() and accept(path):
            return path
    return None
