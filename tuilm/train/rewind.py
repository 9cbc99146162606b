"""What a loss spike does (health.on_spike): nothing but the alert (`none`), drop the step's update (`skip`), end
the run (`stop`), or go back to the last good state past the batches that broke it (`rewind`).

Rewind is PaLM's practice (Chowdhery et al. 2022, section 5.1: restart before the spike and skip the batches
around it), without a trip to disk. Every `health.rewind_interval` steps, at every checkpoint save and when
run() starts (fresh or resumed), a copy of the weights, the optimizer and scaler state, the RNG and the training
counters is kept on the training device (memory: about 3x the weights with Adam). A loss spike (the loss_spike
rule of tuilm/train/health.py) or a non-finite step (unless health.nonfinite = stop) at step B restores the copy
of step S and skips the batches of steps S+1..B: the counters go back to S, the data position stays where it is,
after B's batch. So the skipped batches are part of TrainState (its epoch and batch_in_epoch), a checkpoint
after a rewind resumes exactly, and a resumed run holds the same copy as one that was never stopped (the copy of
the step it resumed from). What happened meanwhile stays: the training time, and the evaluations' best and
patience counts (best.safetensors may be a model of the discarded steps, still the best evaluated).

A bad batch's update often shows only in the next step's loss, so a copy taken at an interval step is kept as
pending and becomes the good state only once the step after it is judged healthy (a spike then rewinds past it
to the good state before). A spike right after a rewind rewinds to the same state again, skipping more
batches; MAX_REWINDS rewinds with no new good state in between stop the run (reason `rewinds`) there.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, fields
from typing import Any

import torch

from tuilm.errors import ConfigError
from tuilm.train import events as ev
from tuilm.train.remedies import REMEDIES
from tuilm.train.state import TrainState

MAX_REWINDS = 5  # in a row, with no new good state in between
EMAS = ("grad_ema", "loss_ema", "seen")  # the health monitor's per-step averages go back with the weights
KEPT = ("epoch", "batch_in_epoch", "elapsed", "best_val_loss", "best_val_bpc", "evals_since_best")


@dataclass
class Snapshot:
    state: TrainState
    model: dict[str, torch.Tensor]
    optimizer: dict
    scaler: dict | None
    health: dict
    rng: dict
    averaged: dict | None = None  # train.ema's weights


def clone(tree: Any) -> Any:
    """A deep copy whose tensors are fresh copies on their own device (optimizer state dicts hold references)."""
    if isinstance(tree, torch.Tensor):
        return tree.detach().clone()
    if isinstance(tree, dict):
        return {k: clone(v) for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        return type(tree)(clone(v) for v in tree)
    return copy.deepcopy(tree)


class SpikeGuard:
    """The trainer's side of health.on_spike; `trainer` is a tuilm.train.trainer.Trainer."""

    def __init__(self, cfg, dist):
        self.policy, self.interval = cfg.on_spike, cfg.rewind_interval
        if self.policy == "skip" and dist.active:  # each rank judges its own loss before the update: they'd differ
            raise ConfigError("health.on_spike = skip needs one process; under torchrun use rewind or stop")
        self.snapshot: Snapshot | None = None
        self.pending: Snapshot | None = None  # taken at an interval step; good once the next step is healthy
        self.in_a_row = 0

    @property
    def rewinds(self) -> bool:
        return self.policy == "rewind"

    def skips(self, trainer, loss: float) -> bool:
        """on_spike = skip: True when this step's loss spikes, so its update is not applied."""
        return self.policy == "skip" and trainer.health.is_spike(loss)

    def due(self, step: int) -> bool:
        """A step whose state is kept (the lean loop logs it, so it is judged before it is kept)."""
        return self.rewinds and step % self.interval == 0

    def after_step(self, trainer, spiked: bool, nonfinite: bool) -> bool:
        """After a step's events: stop, rewind or keep the state as the policy says; True when it rewound."""
        if spiked and self.policy == "stop":
            trainer.emit(ev.Log(trainer.step, f"loss spike at step {trainer.step}: stopped (health.on_spike)"))
            trainer.stop("loss_spike")
        if not self.rewinds:
            return False
        if spiked or (nonfinite and trainer.config.health.nonfinite != "stop"):
            self.pending = None
            return self.rewind(trainer, "loss_spike" if spiked else "nonfinite")
        if self.pending is not None and self.pending.state.step < trainer.step:
            self.snapshot, self.pending, self.in_a_row = self.pending, None, 0
        if self.due(trainer.step):
            self.pending = self._copy(trainer)
        return False

    def keep(self, trainer) -> None:
        """Copy the trainer's state as the last good one (on rewind only): at the start of run() and at a
        checkpoint, the state a resume would start from."""
        if not self.rewinds:
            return
        self.snapshot, self.pending, self.in_a_row = self._copy(trainer), None, 0

    def _copy(self, trainer) -> Snapshot:
        rng = {"torch": torch.get_rng_state()}
        if trainer.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(trainer.device)
        return Snapshot(
            state=copy.deepcopy(trainer.state),
            model={k: v.detach().clone() for k, v in trainer.model.state_dict().items()},
            optimizer=clone(trainer.optimizer.state_dict()),
            scaler=trainer.scaler.state_dict() if trainer.scaler else None,
            health={k: v for k, v in trainer.health.state_dict().items() if k in EMAS},
            rng=rng,
            averaged=clone(trainer.ema.tensors()) if trainer.ema else None,
        )

    def rewind(self, trainer, cause: str) -> bool:
        snap, bad = self.snapshot, trainer.state
        if snap is None:  # keep() runs when run() starts; a trainer driven another way has none yet
            return False
        bad_step = bad.step
        self.in_a_row += 1
        trainer.model.load_state_dict(snap.model)  # copied into the parameters: a compiled graph stays valid
        trainer.optimizer.load_state_dict(clone(snap.optimizer))  # a copy: the optimizer updates it in place
        trainer.optimizer.zero_grad(set_to_none=True)
        if trainer.ema and snap.averaged:  # the average forgets the discarded steps too
            trainer.ema.load(snap.averaged)
        if trainer.scaler and snap.scaler:
            trainer.scaler.load_state_dict(snap.scaler)
        trainer.health.load_state_dict({**trainer.health.state_dict(), **snap.health})
        torch.set_rng_state(snap.rng["torch"])
        if "cuda" in snap.rng:
            torch.cuda.set_rng_state(snap.rng["cuda"], trainer.device)
        restored = copy.deepcopy(snap.state)
        for f in fields(TrainState):  # in place: whoever holds trainer.state sees the rewound one
            setattr(bad, f.name, getattr(bad if f.name in KEPT else restored, f.name))
        trainer.nonfinite_streak = 0
        event = self._event(cause, bad_step, snap.state.step)
        trainer.emit(event)
        remedy, panel = REMEDIES["rewind"]
        trainer.emit(ev.Alert(event.step, "rewind", "warn", event.message, None, float(event.in_a_row), remedy, panel))
        if self.in_a_row >= MAX_REWINDS:
            message = (
                f"{self.in_a_row} rewinds in a row without a new good state after step {snap.state.step}: "
                "training stopped there; lower train.lr or lengthen train.warmup_steps"
            )
            trainer.emit(ev.Log(snap.state.step, message, "error"))
            trainer.stop("rewinds")
        return True

    def _event(self, cause: str, step: int, to_step: int) -> ev.Rewind:
        what = "loss spike" if cause == "loss_spike" else "non-finite step"
        message = (
            f"{what} at step {step}: rewound to step {to_step}, skipping the batches of steps "
            f"{to_step + 1}..{step} (rewind {self.in_a_row} of at most {MAX_REWINDS} in a row)"
        )
        return ev.Rewind(step, to_step, step - to_step, cause, self.in_a_row, message)
