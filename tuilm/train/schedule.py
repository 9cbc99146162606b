"""Where a run stands against its stopping criteria, and which batches it trains on next."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from tuilm.config import TrainConfig
from tuilm.data.dataset import Dataset
from tuilm.data.pipeline import Batch, collate, epoch_batches
from tuilm.train.state import TrainState


@dataclass(frozen=True)
class StopRules:
    """max_steps, max_tokens, epochs and the time budget: whichever comes first ends the run."""

    max_steps: int
    max_tokens: int
    epochs: float
    time_budget: float  # seconds; 0 for none
    steps_per_epoch: int

    @classmethod
    def of(cls, t: TrainConfig, steps_per_epoch: int) -> StopRules:
        return cls(t.max_steps or 0, t.max_tokens or 0, t.epochs or 0, t.time_budget, steps_per_epoch)

    def epochs_done(self, s: TrainState) -> float:
        return s.epoch + s.batch_in_epoch / max(1, self.steps_per_epoch)

    def reason(self, s: TrainState) -> str | None:
        if self.max_steps and s.step >= self.max_steps:
            return "max_steps"
        if self.max_tokens and s.tokens >= self.max_tokens:
            return "max_tokens"
        if self.epochs and self.epochs_done(s) >= self.epochs:
            return "epochs"
        if self.time_budget and s.elapsed >= self.time_budget:
            return "time"
        return None

    def progress(self, s: TrainState) -> float:
        """0..1 towards the first stopping criterion to be reached; nan when none is set."""
        fractions = [
            s.step / self.max_steps if self.max_steps else None,
            s.tokens / self.max_tokens if self.max_tokens else None,
            self.epochs_done(s) / self.epochs if self.epochs else None,
            s.elapsed / self.time_budget if self.time_budget else None,
        ]
        known = [f for f in fractions if f is not None]
        return max(known) if known else math.nan

    def step_limit(self) -> int | None:
        """The step count the run will end at, when steps or epochs decide it (for a progress bar's total)."""
        candidates = [self.max_steps or None, math.ceil(self.epochs * self.steps_per_epoch) if self.epochs else None]
        known = [c for c in candidates if c]
        return min(known) if known else None


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


class BatchSource:
    """The training rows of each step, shuffled per epoch by (seed, epoch) so that a resume continues exactly."""

    def __init__(self, dataset: Dataset, rows_per_step: int, micro: int, seed: int, doc_mask: bool, shard=None):
        self.rows = dataset.train_rows
        self.shard = shard  # under DDP: a step's row indices -> this rank's slice (distributed.Dist.shard)
        self.eos_id = dataset.tokenizer.eos_id
        self.rows_per_step, self.micro, self.seed = rows_per_step, micro, seed
        self.doc_mask = doc_mask and self.rows.policy == "pack"
        self.steps_per_epoch = len(epoch_batches(self.rows, rows_per_step, seed, 0))
        self._epoch_cache: tuple[int, list[np.ndarray]] | None = None

    def next_index(self, s: TrainState) -> np.ndarray:
        """The row indices of the next step; advances the state's epoch position."""
        if self._epoch_cache is None or self._epoch_cache[0] != s.epoch:
            self._epoch_cache = (s.epoch, epoch_batches(self.rows, self.rows_per_step, self.seed, s.epoch))
        batches = self._epoch_cache[1]
        index = batches[s.batch_in_epoch]
        s.batch_in_epoch += 1
        if s.batch_in_epoch >= len(batches):
            s.epoch, s.batch_in_epoch = s.epoch + 1, 0
        return index

    def collate(self, index: np.ndarray) -> Batch:
        return collate(self.rows, index, eos_id=self.eos_id, doc_mask=self.doc_mask, trim=self.rows.policy == "bucket")

    def next_step(self, s: TrainState) -> list[Batch]:
        """The next step's micro-batches (this rank's share of them under DDP)."""
        index = self.next_index(s)
        if self.shard is not None:
            index = self.shard(index)
        self.last_index = index
        return self.split(index)

    def split(self, index: np.ndarray) -> list[Batch]:
        """A step's rows in micro-batches of `micro` rows (again, smaller, after an out-of-memory error)."""
        return [self.collate(index[i : i + self.micro]) for i in range(0, len(index), self.micro)]


def to_device(batch: Batch, device: torch.device):
    """(inputs, targets, pos_ids, doc_ids) as tensors on `device`; None stays None."""

    pin = device.type == "cuda"  # page-locked host memory makes the non-blocking copy truly asynchronous
    host = device.type == "cpu"  # the numpy arrays' own memory: no copy, and no .to() call to dispatch

    def put(a):
        if a is None:
            return None
        t = torch.from_numpy(a)
        return t if host else (t.pin_memory() if pin else t).to(device, non_blocking=True)

    return put(batch.inputs), put(batch.targets), put(batch.pos_ids), put(batch.doc_ids)
