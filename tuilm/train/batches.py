"""Which rows each step trains on: shuffled per epoch by (seed, epoch), split into micro-batches, moved to the
device."""

from __future__ import annotations

import numpy as np
import torch

from tuilm.data.dataset import Dataset
from tuilm.data.pipeline import Batch, collate, epoch_batches
from tuilm.train.state import TrainState


def rows_per_rank(rows_per_step: int, world: int) -> int:
    """Each rank's share of a step's rows, rounded up (distributed.Dist.shard deals them out)."""
    return -(-rows_per_step // world)


def initial_micro(micro_batch_size: int | str, per_rank: int, workers: int = 1) -> int:
    """Rows per forward pass before any search (train/accel.py): all of a rank's rows for 0 and "auto" (a share
    of them for each thread when the rows are split over threads: train/workers.py)."""
    if micro_batch_size == "auto" or not micro_batch_size:
        return -(-per_rank // workers)
    return min(int(micro_batch_size), per_rank)


class BatchSource:
    """The training rows of each step, shuffled per epoch by (seed, epoch) so that a resume continues exactly, and
    split into micro-batches of `micro` rows (the micro-batch size: set by the search in train/accel.py, halved
    on an out-of-memory error by train/backward.py). It owns the step's rows and this rank's share of them."""

    def __init__(
        self,
        dataset: Dataset,
        rows_per_step: int,
        micro_batch_size: int | str,
        seed: int,
        doc_mask: bool,
        dist=None,
        workers: int = 1,
    ):
        self.rows = dataset.train_rows
        self.shard = dist.shard if dist else None  # under DDP: a step's row indices -> this rank's slice
        self.eos_id = dataset.tokenizer.eos_id
        self.rows_per_step, self.seed = rows_per_step, seed
        self.rows_per_rank = rows_per_rank(rows_per_step, dist.world if dist else 1)
        self.micro = initial_micro(micro_batch_size, self.rows_per_rank, workers)  # rows per forward pass
        self.doc_mask = doc_mask and self.rows.policy == "pack"
        self.steps_per_epoch = len(epoch_batches(self.rows, rows_per_step, seed, 0))
        self.last_index: np.ndarray | None = None  # the rows of the last step (this rank's), for a redo
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
        """A step's rows in micro-batches of `micro` rows."""
        return [self.collate(index[i : i + self.micro]) for i in range(0, len(index), self.micro)]

    def halve(self) -> list[Batch]:
        """After an out-of-memory error: half the micro-batch size, and the last step's rows split again."""
        self.micro //= 2
        return self.split(self.last_index)


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
