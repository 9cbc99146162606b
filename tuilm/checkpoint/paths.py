"""Where a run's checkpoints lie, and what a checkpoint argument names.

A run directory holds last.safetensors (with train_state.safetensors, the resume point), best.safetensors and,
with train.keep_checkpoints, step-<STEP>.safetensors. `--model-path` and friends take a checkpoint file, a run
directory (its best checkpoint, else its last) or RUN@STEP (the run's checkpoint of that step).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from tuilm.checkpoint.header import check_regular, read_header
from tuilm.errors import CheckpointError

LAST, BEST, STATE = "last.safetensors", "best.safetensors", "train_state.safetensors"
NEXT_STATE = "train_state.next.safetensors"  # the state of a save whose last.safetensors may not be written yet
STEP_FILE = re.compile(r"step-(\d+)\.safetensors")


def step_file_name(step: int) -> str:
    return f"step-{step}.safetensors"


def step_checkpoints(run_dir: Path) -> dict[int, Path]:
    """The step-numbered checkpoints of a run directory (train.keep_checkpoints), by step."""
    found = {}
    for path in Path(run_dir).glob("step-*.safetensors"):
        match = STEP_FILE.fullmatch(path.name)
        if match and path.is_file():
            found[int(match.group(1))] = path
    return found


def resolve_step(path: Path) -> Path | None:
    """`runs/x@1200`: run x's checkpoint of step 1200 (a step-1200.safetensors, or last/best when saved at that
    step); None when `path` is no RUN@STEP (or is a file or directory of that name)."""
    run, sep, step_text = str(path).rpartition("@")
    if not sep or not step_text.isdigit() or path.exists():
        return None
    run_dir, step = Path(run), int(step_text)
    if not run_dir.is_dir():
        raise CheckpointError(f"{path}: no run directory {run_dir}")
    steps = step_checkpoints(run_dir)
    if step in steps:
        return steps[step]
    for name in (LAST, BEST):
        saved = _saved_step(run_dir / name) if (run_dir / name).is_file() else None
        if saved == step:
            return run_dir / name
        if saved is not None:
            steps.setdefault(saved, run_dir / name)
    listed = ", ".join(str(s) for s in sorted(steps)) or "none"
    raise CheckpointError(
        f"{path}: {run_dir} has no checkpoint of step {step}; steps it has: {listed} "
        "(train.keep_checkpoints = N keeps the N newest step checkpoints)"
    )


def _saved_step(path: Path) -> int | None:
    try:
        step = json.loads(read_header(path).metadata.get("step", "null"))
    except (CheckpointError, OSError, ValueError):
        return None
    return step if isinstance(step, int) else None


def resolve_model_path(path: Path) -> Path:
    """A checkpoint file, a run directory's best checkpoint (its last one when there is no best yet), or
    RUN@STEP, the run's checkpoint of that step (resolve_step)."""
    path = Path(path).expanduser()
    at_step = resolve_step(path)
    if at_step is not None:
        check_regular(at_step)
        return at_step
    if path.is_dir():
        for name in (BEST, LAST):
            if (path / name).is_file():
                return path / name
        raise CheckpointError(f"{path}: no {BEST} or {LAST} in this run directory")
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file or run directory")
    check_regular(path)
    return path
