"""Data-parallel training on torch.distributed: the process group, each rank's shard of a step, and the few
collectives the trainer needs.

A run under `torchrun` (or `tuilm train --nproc N`, which launches torchrun) has WORLD_SIZE > 1 in its
environment; `init()` then joins the process group (nccl on CUDA, gloo elsewhere) with a bounded collective
timeout, so a rank that dies or hangs ends the job instead of blocking it. One process is `Dist()` with
world 1: every helper here is then a no-op, and the trainer's code path is the same.

What settings mean under DDP (the same as in one process):
- `batch_size` is the global rows of a step; each rank takes a contiguous slice of the step's shuffled rows
  (`shard`), and `micro_batch_size` is the rows a rank puts through one forward pass.
- The loss is the token-weighted mean of the whole global step: the step's target count is all-reduced
  before the backward pass, each rank's summed loss is divided by it, and DDP's gradient mean is undone by
  multiplying by the world size. So 2 ranks x 16 rows give the gradient of 1 process x 32 rows.
- Stops are agreed: one all-reduce after every step carries the summed loss, any rank's stop request and
  rank 0's training time, so all ranks stop at the same step (a time budget is rank 0's clock).
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from tuilm.errors import ConfigError
from tuilm.train import events as ev

DEFAULT_TIMEOUT_S = 120  # a collective that waits longer than this ends the job (TUILM_DIST_TIMEOUT overrides)


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def shard(self, index: np.ndarray) -> np.ndarray:
        """This rank's contiguous slice of a step's row indices (sizes differ by at most one row)."""
        if not self.active:
            return index
        return np.array_split(index, self.world)[self.rank]

    def check_batch(self, rows_per_step: int) -> None:
        if rows_per_step < self.world:
            raise ConfigError(
                f"batch_size {rows_per_step} is smaller than the {self.world} ranks; every rank needs a row"
            )

    def sum_int(self, value: int, device: torch.device) -> int:
        """The sum of an integer over all ranks (the step's target tokens)."""
        if not self.active:
            return value
        t = torch.tensor([value], dtype=torch.int64, device=device)
        torch.distributed.all_reduce(t)
        return int(t.item())

    def min_int(self, value: int, device: torch.device) -> int:
        """The smallest of an integer over all ranks (the micro-batch every rank can afford)."""
        if not self.active:
            return value
        t = torch.tensor([value], dtype=torch.int64, device=device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MIN)
        return int(t.item())

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """All-reduce (sum) in place; returns the tensor."""
        if self.active:
            torch.distributed.all_reduce(tensor)
        return tensor

    def agree(self, loss_sum: torch.Tensor, stop: bool, elapsed: float) -> tuple[torch.Tensor, bool, float]:
        """After a step: the global loss sum, whether any rank asked to stop, and rank 0's training time."""
        if not self.active:
            return loss_sum, stop, elapsed
        packed = torch.stack(
            [
                loss_sum.detach().to(torch.float64).reshape(()),
                torch.tensor(float(stop), dtype=torch.float64, device=loss_sum.device),
                torch.tensor(elapsed if self.main else 0.0, dtype=torch.float64, device=loss_sum.device),
            ]
        )
        torch.distributed.all_reduce(packed)
        total, any_stop, main_elapsed = packed.tolist()
        return torch.tensor(total, device=loss_sum.device), any_stop > 0, main_elapsed

    def broadcast(self, obj):
        """Rank 0's value of a picklable object, on every rank."""
        if not self.active:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.active:
            torch.distributed.barrier()

    @contextlib.contextmanager
    def main_first(self):
        """Rank 0 runs the block (downloads, tokenizer training, caches) before the others do."""
        if not self.main:
            self.barrier()
        yield
        if self.main:
            self.barrier()


_current = Dist()


def current() -> Dist:
    return _current


def from_env() -> Dist:
    """The ranks torchrun announced in the environment (world 1 when there are none)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return Dist(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))


def init(device_name: str = "auto") -> Dist:
    """Join the process group when launched by torchrun; returns this process's Dist (world 1 otherwise)."""
    global _current
    dist = from_env()
    if not dist.active or torch.distributed.is_initialized():
        _current = dist
        return dist
    cuda = device_name.startswith("cuda") or (device_name == "auto" and torch.cuda.is_available())
    if cuda:
        torch.cuda.set_device(dist.local_rank)
    backend = "nccl" if cuda else "gloo"
    timeout = datetime.timedelta(seconds=float(os.environ.get("TUILM_DIST_TIMEOUT", DEFAULT_TIMEOUT_S)))
    torch.distributed.init_process_group(backend, timeout=timeout)
    _current = dist
    return dist


def shutdown() -> None:
    global _current
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    _current = Dist()


def rank_device(device: torch.device, dist: Dist) -> torch.device:
    """One CUDA device per rank: cuda:LOCAL_RANK under DDP."""
    if dist.active and device.type == "cuda":
        return torch.device("cuda", dist.local_rank)
    return device


def wrap(model: torch.nn.Module, device: torch.device, dist: Dist) -> torch.nn.Module:
    """The model as DDP sees it (the module itself in one process)."""
    if not dist.active:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def reducer(params: list[torch.Tensor], dist: Dist):
    """The gradient all-reduce that overlaps the backward pass and carries the out-of-memory agreement
    (train/overlap.py); None in one process."""
    if not dist.active:
        return None
    from tuilm.train.overlap import OverlappedReducer

    return OverlappedReducer(params, dist.rank, dist.world)


def no_sync(ddp: torch.nn.Module):
    """DDP's own gradient all-reduce off: a rank that ran out of memory would never join it, and the others would
    wait in it until the timeout; train/overlap.py does the same all-reduce in a way every rank can finish."""
    if not isinstance(ddp, DistributedDataParallel):  # not hasattr: a module's failed lookup raises, slowly
        return contextlib.nullcontext()
    return ddp.no_sync()


def refused(trainer, what: str) -> bool:
    """Under DDP, a dashboard key that one rank alone cannot act on (pause, evaluate now: the other ranks would
    wait in a collective) is refused with a warning; True when refused."""
    if not trainer.dist.active:
        return False
    trainer.emit(ev.Log(trainer.step, f"{what} is not available under DDP (quit, save and sample are)", "warning"))
    return True


# What a gloo collective raises on a rank whose peer process is gone (killed, or failed and exited).
PEER_LOST = ("Connection reset by peer", "Connection closed by peer", "Broken pipe", "Socket closed")


def peer_lost(error: BaseException) -> bool:
    """A collective failed because another rank died: that rank (or the launcher, for a kill) says why."""
    return any(text in str(error) for text in PEER_LOST)


def launch(nproc: int, args: list[str]) -> int:
    """torch's elastic launcher with `nproc` ranks of `tuilm train ARGS` on this machine; the job's exit status.

    The agent runs in this process, not as a child of it: torch starts each rank in a session of its own, so a
    SIGINT, SIGTERM or SIGHUP reaches this process alone, and the agent sends it on to every rank once, waits while
    they stop and save, and only then does this process end, with 128 + the signal (130, 143, 129). A rank that
    fails has said why in its own one line, and its exit status is the job's; one killed by a signal is named here,
    in one line, instead of torch's ChildFailedError traceback."""
    import logging
    import signal

    from torch.distributed.elastic.multiprocessing import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    from tuilm.errors import print_error

    for name in list(logging.root.manager.loggerDict):  # each sets its own level: its reports repeat the ranks' lines
        if name.startswith("torch.distributed.elastic"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    # torchrun gives each rank one thread, with a warning, unless told: the cores shared out is what it means.
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    argv = ["--standalone", f"--nproc-per-node={nproc}", "-m", "tuilm", "train", *args]
    try:
        run(get_args_parser().parse_args(argv))
    except SignalException as e:
        return 128 + int(e.sigval)
    except ChildFailedError as e:
        # A rank killed by a signal said nothing; the ranks that lost it in a collective keep quiet too
        # (peer_lost), so the killed one is named here, whichever failure torch recorded first.
        # The agent ends the other ranks with SIGTERM once one has died: the one that died first is the news.
        killed = [(f.exitcode == -signal.SIGTERM, f.timestamp, r, f) for r, f in e.failures.items() if f.exitcode <= 0]
        if not killed:
            return e.get_first_failure()[1].exitcode
        *_, rank, failure = min(killed, key=lambda k: k[:3])
        name = signal.Signals(-failure.exitcode).name if failure.exitcode < 0 else "no exit status"
        print_error(f"rank {rank} was killed ({name}); the other ranks were stopped: resume with --resume")
        return 1
    return 0
