"""The learning-rate schedule: linear warmup, then cosine, linear, constant or warmup-stable-decay (wsd) towards
min_lr, as the run progresses towards its nearest stopping limit (train.stops)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from tuilm.config import TrainConfig

if TYPE_CHECKING:
    from tuilm.train.state import TrainState


def lr_at(step: int, progress: float, cfg, decay_start: float | None = None) -> float:
    """Linear warmup over `warmup_steps`, then decay towards min_lr as training progresses.

    `progress` (0..1) is how far the first stopping criterion is (steps, tokens, epochs or time), so the same
    schedule serves a step budget and a time budget; without any criterion (nan) the rate stays constant.
    wsd holds lr until `decay_start` (default 1 - decay_fraction; see wsd_start), then decays.
    """
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / (cfg.warmup_steps + 1)
    if cfg.schedule == "constant" or math.isnan(progress):
        return cfg.lr
    p = min(max(progress, 0.0), 1.0)
    if cfg.schedule == "wsd":
        start = 1 - cfg.decay_fraction if decay_start is None else decay_start
        if p <= start:
            return cfg.lr
        q = min(1.0, (p - start) / (1 - start))  # 0..1 through the decay
        return cfg.min_lr + (cfg.lr - cfg.min_lr) * (1 - (math.sqrt(q) if cfg.decay_shape == "sqrt" else q))
    if cfg.schedule == "linear":
        return cfg.lr + (cfg.min_lr - cfg.lr) * p
    return cfg.min_lr + 0.5 * (1 + math.cos(math.pi * p)) * (cfg.lr - cfg.min_lr)


def wsd_start(t: TrainConfig, s: TrainState, progress: float, resumed_progress: float) -> float | None:
    """Where a wsd run's decay starts (progress 0..1); None for the other schedules.

    1 - decay_fraction of the run, unless the run was resumed from its stable phase past that point (a cooldown
    branch: resumed with a nearer limit), when the decay runs from the resume to the new end. Once the decay has
    begun, its start is kept in the state, so a resume during the decay continues the same decay.
    """
    if t.schedule != "wsd":
        return None
    if s.decay_start is None:
        start = 1 - t.decay_fraction
        if not math.isnan(resumed_progress) and resumed_progress > start:
            start = min(resumed_progress, 1.0)
        if progress >= start and s.step >= t.warmup_steps:
            s.decay_start = start
        return start
    return s.decay_start
