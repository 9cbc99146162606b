"""The learning-rate range test (Smith 2015, as fastai's lr_find): train from the initial weights while the
learning rate grows exponentially from `start` to `end` over `steps` steps, smooth the loss with a debiased
exponential moving average, and stop once it diverges (the smoothed loss over `diverge` times its minimum, or
non-finite). The suggestion is one tenth of the learning rate at the smoothed minimum (the loss is still falling
fast there, and a tenth leaves room for the schedule's peak), the minimum before the loss first rises 15% above
it; the learning rate of the steepest descent is reported beside it.

The model, optimizer, batches and precision are a Trainer's, so the test sees what training would; the loop here
is its own (no schedule, no evaluation, no checkpoints) and nothing is written to the run directory.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from tuilm.data.pipeline import IGNORE
from tuilm.train.batches import to_device

RULES = ("min/10", "steepest")
DIVERGE = 4.0  # the test stops once the smoothed loss passes this many times its minimum
RISE = 0.15  # a rise of the smoothed loss by this fraction of its lowest so far ends the search for the minimum


@dataclass
class RangeTest:
    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)  # raw loss of each step
    smoothed: list[float] = field(default_factory=list)  # debiased EMA
    stopped: str = "end"  # end (reached `end`) | diverged | nonfinite

    @property
    def min_index(self) -> int:
        """Where the smoothed loss is lowest before it first rises RISE above its lowest so far.

        Past such a rise training has already been unstable, and a lower loss further on is luck: on one tiny
        model the global minimum moved 8x between one and two threads, the first one stayed put."""
        smoothed = np.array(self.smoothed, dtype=float)
        lowest = np.fmin.accumulate(np.where(np.isfinite(smoothed), smoothed, np.inf))
        rose = np.flatnonzero(smoothed > lowest * (1 + RISE))
        upto = int(rose[0]) if len(rose) else len(smoothed)
        return int(np.nanargmin(smoothed[: max(1, upto)]))

    @property
    def lr_at_min(self) -> float:
        return self.lrs[self.min_index]

    @property
    def steepest_lr(self) -> float:
        """The learning rate where the smoothed loss falls fastest per decade (before the minimum)."""
        upto = self.min_index + 1
        if upto < 3:
            return self.lrs[0]
        slopes = np.gradient(np.array(self.smoothed[:upto]), np.log10(np.array(self.lrs[:upto])))
        return self.lrs[int(np.argmin(slopes))]

    def suggestion(self, rule: str = "min/10") -> float:
        return self.lr_at_min / 10 if rule == "min/10" else self.steepest_lr


def lr_range_test(
    trainer,
    *,
    start: float,
    end: float,
    steps: int,
    beta: float = 0.9,
    diverge: float = DIVERGE,
    on_step: Callable[[int, float, float], None] | None = None,
) -> RangeTest:
    """Run the test on `trainer`'s model (its weights change: build a trainer for it alone). The learning rates
    and step count are the command's (`tuilm lr-find`'s options hold their defaults)."""
    model, optimizer, device = trainer.model, trainer.optimizer, trainer.device
    clip = trainer.tcfg.grad_clip
    result = RangeTest()
    model.train()
    avg = 0.0
    best = math.inf
    for i in range(steps):
        lr = start * (end / start) ** (i / max(1, steps - 1))
        trainer.set_lr(lr)
        micro_batches = trainer.batches.next_step(trainer.state)
        n_targets = max(1, sum(b.n_targets for b in micro_batches))
        total = 0.0
        for batch in micro_batches:
            x, y, pos, doc = to_device(batch, device)
            with trainer.precision.autocast(device):
                logits = model(x, pos_ids=pos, doc_ids=doc)
            loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), ignore_index=IGNORE, reduction="sum")
            (loss / n_targets).backward()
            total += float(loss.detach())
        value = total / n_targets
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        trainer.state.step += 1
        result.lrs.append(lr)
        result.losses.append(value)
        if not math.isfinite(value):
            result.smoothed.append(math.nan)
            result.stopped = "nonfinite"
            break
        avg = beta * avg + (1 - beta) * value
        smooth = avg / (1 - beta ** (i + 1))
        result.smoothed.append(smooth)
        best = min(best, smooth)
        if on_step is not None:
            on_step(i, lr, smooth)
        if i > 10 and smooth > diverge * best:
            result.stopped = "diverged"
            break
    if not any(math.isfinite(s) for s in result.smoothed):
        from tuilm.errors import TuilmError

        raise TuilmError(f"the loss was non-finite from the first step (lr {result.lrs[0]:.1e}); lower --start")
    return result
