"""The lean step loop (train.log_interval > 1): between logged steps nothing is read back from the device.

A *logged step* is every log_interval-th step, and also each health-measurement step, each step an evaluation or
checkpoint follows, each step a rewind copy is kept at, the max_steps step and the run's last step: the one Step event of a logged step carries the
token-weighted mean loss, the tokens/s and the mean step time of every step since the previous logged step (its
grad_norm is its own). Steps in between keep their loss, token count and non-finite flag on the device, and skip
a non-finite update on the device too: fused Adam/AdamW take a `found_inf` tensor (as under a GradScaler) and
leave the weights, moments and step count untouched when it is 1. The per-step checks (loss spikes, exploding
gradients) see the logged steps' values.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace

import torch

from tuilm.data.pipeline import Batch
from tuilm.train.backward import clear_grads, healing_backward
from tuilm.train.reports import step_event


def lean_possible(optimizer, scaler, dist, log_interval: int) -> bool:
    """The lean path needs an optimizer that can skip on the device, and one process (under DDP the step's
    all-reduce is a sync anyway)."""
    fused = bool(optimizer.defaults.get("fused")) and isinstance(optimizer, torch.optim.Adam | torch.optim.AdamW)
    return log_interval > 1 and scaler is None and not dist.active and fused


def step_on_device(optimizer, loss_sum: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
    """optimizer.step(), skipped on the device when the loss or the gradient is not finite; returns that flag."""
    bad = (~(torch.isfinite(norm) & torch.isfinite(loss_sum))).float()
    optimizer.found_inf = bad
    try:
        optimizer.step()
    finally:
        optimizer.found_inf = None
    return bad


@dataclass
class Pending:
    """The unlogged steps since the last logged one (device tensors, summed)."""

    loss: torch.Tensor | None = None
    bad: torch.Tensor | None = None
    tokens: int = 0
    steps: int = 0
    seconds: float = 0.0

    def add(self, loss_sum: torch.Tensor, bad: torch.Tensor, tokens: int, seconds: float) -> None:
        self.loss = loss_sum if self.loss is None else self.loss + loss_sum
        self.bad = bad if self.bad is None else self.bad + bad
        self.tokens, self.steps, self.seconds = self.tokens + tokens, self.steps + 1, self.seconds + seconds

    def take(self) -> tuple[float, int, int, float, int]:
        """(summed loss, tokens, steps, seconds, non-finite steps skipped), reading the device once; then empty."""
        if not self.steps:
            return 0.0, 0, 0, 0.0, 0
        loss, bad = torch.stack([self.loss.float(), self.bad.float()]).tolist()
        out = (loss, self.tokens, self.steps, self.seconds, int(bad))
        self.loss, self.bad, self.tokens, self.steps, self.seconds = None, None, 0, 0, 0.0
        return out


# -- the Trainer's lean steps (tuilm/train/trainer.py calls these with itself) --------------------------------


def logged(trainer, step: int) -> bool:
    t = trainer.tcfg
    return (
        step % t.log_interval == 0
        or step % t.eval_interval == 0
        or step % t.checkpoint_interval == 0
        or (step == trainer.rules.max_steps)
        or trainer.guard.due(step)  # health.on_spike = rewind keeps only a state it has judged
    )


def lean_step(trainer, micro_batches: list[Batch], n_targets: int, t0: float) -> None:
    """A step between logged steps: nothing is read back from the device (train/lean.py)."""
    s = trainer.state
    loss_sum, norm = healing_backward(trainer, micro_batches, n_targets, False, lean=True)
    trainer.set_lr(trainer.lr_now(s.step))
    bad = step_on_device(trainer.optimizer, loss_sum, norm)
    if trainer.ema:
        trainer.ema.update(s.step + 1)
    clear_grads(trainer)
    s.step += 1
    s.tokens += n_targets
    trainer.clock = time.perf_counter()
    step_time = trainer.clock - t0
    s.elapsed += step_time
    trainer.pending.add(loss_sum, bad, n_targets, step_time)


def flush(trainer) -> None:
    """The Step event of unlogged lean steps, when the run stops (or is asked for something) between two."""
    loss, tokens, steps, seconds, bad = trainer.pending.take()
    if steps:
        lr = trainer.lr_now(trainer.step - 1)
        event = step_event(trainer, tokens, loss / max(1, tokens), lr, seconds, math.nan, bad > 0)
        trainer.emit(replace(event, step_time=seconds / steps))
