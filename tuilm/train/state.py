"""The training state and the run directory's checkpoint files.

`TrainState` is every counter a resume must restore (the weights and optimizer aside), named once: saving writes
its `to_dict()` and resuming reads `from_dict()`, so the two can never list different keys. `RunFiles` is the
checkpoint I/O of one run directory: last/best weights, and the train_state file that goes with last.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tuilm.checkpoint import (
    load_train_state,
    load_weights,
    read_header,
    read_metadata,
    read_weights,
    save_checkpoint,
    save_train_state,
    step_checkpoints,
    step_file_name,
)
from tuilm.errors import CheckpointError

LAST, BEST, STATE = "last.safetensors", "best.safetensors", "train_state.safetensors"
NEXT_STATE = "train_state.next.safetensors"  # the state of a save whose last.safetensors may not be written yet
INFINITE = ("best_val_loss", "best_val_bpc")  # inf until the first evaluation; JSON has no inf, so None


@dataclass
class TrainState:
    step: int = 0
    tokens: int = 0  # target tokens trained on
    epoch: int = 0
    batch_in_epoch: int = 0  # position in the epoch's shuffled batches
    elapsed: float = 0.0  # seconds spent in training steps: evaluation, saving and pauses do not count
    best_val_loss: float = math.inf
    best_val_bpc: float = math.inf
    evals_since_best: int = 0
    train_losses: list[float] = field(default_factory=list)  # since the last evaluation
    decay_start: float | None = None  # wsd: the progress its decay began at (schedule.wsd_start)
    best_weights: str = "model"  # which weights best.safetensors holds: model, or ema (train.ema)
    target_hit: dict | None = None  # train.target: step, tokens, seconds and flops where it was first reached

    def record_eval(self, val_loss: float, val_bpc: float, weights: str = "model") -> bool:
        """Count an evaluation towards early stopping; True when it is the best so far."""
        if val_loss < self.best_val_loss:
            self.best_val_loss, self.best_val_bpc, self.evals_since_best = val_loss, val_bpc, 0
            self.best_weights = weights
            return True
        self.evals_since_best += 1
        return False

    def take_train_loss(self) -> float:
        """The mean training loss since the last evaluation (nan when none), starting the next mean afresh."""
        losses, self.train_losses = self.train_losses, []
        return float(np.mean(losses)) if losses else math.nan

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in INFINITE:
            data[key] = finite_or_none(data[key])
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainState:
        # A state saved before a field existed (decay_start, best_weights, target_hit) takes its default.
        values = {f.name: data[f.name] for f in fields(cls) if f.name in data}
        for key in INFINITE:
            values[key] = math.inf if values[key] is None else values[key]
        values["train_losses"] = list(values["train_losses"])
        return cls(**values)


def finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None


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
