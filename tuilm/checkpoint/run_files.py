"""The checkpoint files of one run directory: last and best weights, the step checkpoints train.keep_checkpoints
keeps, and the training state that goes with last (the resume point), saved and loaded as one unit.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from tuilm.checkpoint.header import read_header
from tuilm.checkpoint.metadata import read_metadata
from tuilm.checkpoint.model import read_weights, save_checkpoint
from tuilm.checkpoint.paths import BEST, LAST, NEXT_STATE, STATE, step_checkpoints, step_file_name
from tuilm.checkpoint.train_state import load_train_state, save_train_state
from tuilm.errors import CheckpointError
from tuilm.model.weights import load_weights


class RunFiles:
    """Checkpoints of one run directory. The resume point is the pair last.safetensors + train_state.safetensors.

    A save is one unit whose commit point is the rename of last.safetensors (every write is atomic): the new state
    is written complete as train_state.next.safetensors first, then last.safetensors, then the state takes its
    name. Killed before the commit, the previous pair is intact (the next state is ignored); killed after it, the
    next state is the one of the same step as last, and loading promotes it. So whenever the process dies, the
    directory holds a matching pair, and `load_resume_point` picks it.
    """

    def __init__(self, run_dir: Path, tokenizer, run_config: dict):
        self.run_dir = Path(run_dir)
        self.tokenizer, self.run_config = tokenizer, run_config  # the same in every checkpoint of the run
        self.last, self.best, self.state = (self.run_dir / name for name in (LAST, BEST, STATE))
        self.next_state = self.run_dir / NEXT_STATE

    def save_model(self, path: Path, model, meta: dict) -> None:
        save_checkpoint(path, model, self.tokenizer, self.run_config, **meta)

    def keep_step(self, model, meta: dict, keep: int) -> None:
        """train.keep_checkpoints: the weights as step-<STEP>.safetensors (atomic), then only the `keep` newest
        step files stay. 0 keeps none and deletes none."""
        if keep <= 0:
            return
        self.save_model(self.run_dir / step_file_name(meta["step"]), model, meta)
        steps = step_checkpoints(self.run_dir)
        for step in sorted(steps)[:-keep]:
            steps[step].unlink(missing_ok=True)

    def save_resume_point(self, model, optimizer, meta: dict, extra: dict, device, averaged=None) -> None:
        """`averaged`: train.ema's weights by name, saved in the training state."""
        rng = {"torch": torch.get_rng_state()}
        if device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(device)
        try:
            save_train_state(self.next_state, optimizer, extra, rng, averaged)
            self.save_model(self.last, model, meta)  # the commit point
        except Exception:  # a write that failed (a full disk) raises before its rename: nothing was committed
            self.next_state.unlink(missing_ok=True)  # so the previous pair (if any) stands alone. Not on a second
            raise  # Ctrl-C, which may land after the commit: the next start settles that (_settle)
        os.replace(self.next_state, self.state)

    def load_resume_point(self, model, optimizer, device, average=None) -> dict[str, Any]:
        """Weights into `model`, state into `optimizer` (and `average`, train.ema's WeightAverage), the RNG
        restored; returns the saved extra dict (the TrainState's keys and whatever the trainer saved beside them)."""
        meta = read_metadata(self.last)
        saved_step = int(meta.get("step", "-1"))
        self._settle(saved_step)
        load_weights(model, read_weights(self.last), self.last)
        extra, rng = load_train_state(self.state, optimizer, average)
        if extra["step"] != saved_step:
            raise CheckpointError(
                f"{self.run_dir}: last.safetensors (step {saved_step}) and train_state.safetensors "
                f"(step {extra['step']}) disagree; they were not written by one tuilm save"
            )
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], device)
        return extra

    def _settle(self, step: int) -> None:
        """Finish (or forget) a save that was cut off: the next state becomes the state when it is last's."""
        if not self.next_state.is_file():
            return
        if state_step(self.next_state) == step and state_step(self.state) != step:
            os.replace(self.next_state, self.state)
        else:
            self.next_state.unlink(missing_ok=True)  # killed before last.safetensors was written: not committed


def state_step(path: Path) -> int | None:
    """The step a training-state file was saved at, from its header alone; None when it is missing or unreadable."""
    try:
        step = json.loads(read_header(path).metadata["state"])["step"]
    except (CheckpointError, OSError, KeyError, TypeError, ValueError):
        return None
    return step if isinstance(step, int) else None
