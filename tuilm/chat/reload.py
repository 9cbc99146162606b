"""Chatting with a run that is still training: notice, between prompts, when a newer best checkpoint appears.

Only the file's modification time is looked at before each prompt (a stat, no reading), and its header (step and
validation loss) once per new version; nothing happens while the user types or a reply streams.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

BEST = "best.safetensors"


@dataclass
class BestWatch:
    run_dir: Path
    seen: int  # st_mtime_ns of the best checkpoint loaded or last announced; 0: none yet

    @classmethod
    def after_loading(cls, run_dir: Path, loaded: Path) -> BestWatch:
        best = Path(run_dir) / BEST
        same = Path(loaded).resolve() == best.resolve()
        return cls(Path(run_dir), _mtime(best) if same else 0)

    def check(self) -> str | None:
        """A one-line notice when the best checkpoint is newer than the one loaded or last announced, once."""
        mtime = _mtime(self.run_dir / BEST)
        if mtime <= self.seen:
            return None
        about = describe(self.run_dir / BEST)
        if about is None:  # unreadable for now (being replaced, say): ask again before the next prompt
            return None
        self.seen = mtime
        return f"{BEST} is newer ({about}): /reload to load it"

    def loaded(self) -> None:
        self.seen = _mtime(self.run_dir / BEST)


def watch_if_training(model_path: Path, loaded: Path) -> BestWatch | None:
    """A watch on `model_path` when it is a run directory a live process is training into, else None."""
    from tuilm.runlock import holder

    path = Path(model_path).expanduser()
    if not path.is_dir() or holder(path) is None:
        return None
    return BestWatch.after_loading(path, loaded)


def describe(path: Path) -> str | None:
    """`step 1,200, val 1.873` from a checkpoint's header, or None when it cannot be read."""
    import json

    from tuilm.checkpoint import read_metadata
    from tuilm.errors import TuilmError

    try:
        meta = read_metadata(path)
    except (TuilmError, OSError):
        return None
    parts = []
    try:
        step, val = json.loads(meta.get("step", "null")), json.loads(meta.get("val_loss", "null"))
    except ValueError:
        step = val = None
    if isinstance(step, int):
        parts.append(f"step {step:,}")
    if isinstance(val, int | float):
        parts.append(f"val {val:.3f}")
    return ", ".join(parts) or "no step recorded"


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return 0
