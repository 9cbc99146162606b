"""Files shipped with tuilm: recipes (baseline/) and trained tokenizers (vocab/).

They live at the top of the repository, where people read them; a wheel carries them under tuilm/_data/.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def shipped_dirs(name: str) -> list[Path]:
    """Existing folders named `name` ("baseline" or "vocab"): the wheel's copy first, then a source checkout's."""
    return [d for d in (_PACKAGE / "_data" / name, _PACKAGE.parent / name) if d.is_dir()]


def recipe_names() -> list[str]:
    return sorted({p.stem for d in shipped_dirs("baseline") for p in d.glob("*.toml")})


def recipe_path(name: str) -> Path | None:
    for d in shipped_dirs("baseline"):
        path = d / f"{name}.toml"
        if path.is_file():
            return path
    return None
