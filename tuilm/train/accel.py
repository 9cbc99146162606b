"""What the trainer does for the device it runs on (issue 12): `micro_batch_size = "auto"`, the largest
micro-batch that fits, searched before training; `compile = "auto"`; and the one-line notices at start (a
feature the device lacks, native bf16 on this CPU). Functions of the Trainer (tuilm/train/trainer.py).

The search runs a forward and backward pass of full-length rows through the eager model (no DDP collectives,
the RNG state put back after) for micro-batch sizes ceil(rows / k), the fewest micro-batches first, bisecting
between the sizes that fit and those that do not; under DDP every rank searches and all take the smallest
answer. The optimizer's state is not yet allocated then, so a first step can still run out of memory: the
halving in train/backward.py takes over from there.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tuilm.device import cpu_native_bf16, free_memory, pick_device, pick_precision
from tuilm.train import distributed
from tuilm.train import events as ev


def setup_device(t, dist) -> tuple[torch.device, object]:
    """(device, precision) of this rank for the TrainConfig `t` (its threads: train/workers.py)."""
    device = distributed.rank_device(pick_device(t.device), dist)
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32 matmuls for whatever autocast leaves in fp32
    return device, pick_precision(device, t.dtype)


SEARCH_DEVICES = ("cuda", "mps")  # on the CPU "auto" means no accumulation: memory is rarely what runs out


def wants_compile(setting: bool | str, device: torch.device) -> bool:
    return device.type == "cuda" if setting == "auto" else bool(setting)


def compiled(module: torch.nn.Module, setting: bool | str, device: torch.device) -> torch.nn.Module:
    return torch.compile(module) if wants_compile(setting, device) else module


def candidates(rows: int) -> list[int]:
    """Every micro-batch size ceil(rows / k) for k = 1..rows, largest first (O(sqrt(rows)) of them)."""
    sizes, k = [], 1
    while k <= rows:
        size = -(-rows // k)
        sizes.append(size)
        if size == 1:
            break
        k = -(-rows // (size - 1))  # the fewest micro-batches with a smaller size
    return sizes


def largest_fitting(sizes: list[int], fits) -> int | None:
    """The largest size in `sizes` (descending) for which fits(size) holds, assuming that whatever fits, any
    smaller size fits too; None when not even the smallest does. Bisects after the first size fails."""
    if fits(sizes[0]):
        return sizes[0]
    if len(sizes) == 1:
        return None
    lo, hi = 1, len(sizes) - 1  # sizes[lo - 1] does not fit; the answer is at index lo..hi, if any
    known: dict[int, bool] = {}
    while lo < hi:
        mid = (lo + hi) // 2
        known[mid] = fits(sizes[mid])
        if known[mid]:
            hi = mid
        else:
            lo = mid + 1
    ok = known[lo] if lo in known else fits(sizes[lo])
    return sizes[lo] if ok else None


def probe(trainer, rows: int) -> bool:
    """Whether a forward and backward pass of `rows` full-length rows fits in the device's memory."""
    try:
        _forward_backward(trainer, rows)
        return True
    except torch.OutOfMemoryError:
        return False
    finally:  # the pass's tensors are gone with its frame: hand their memory back before the next size
        trainer.optimizer.zero_grad(set_to_none=True)
        free_memory(trainer.device)


def _forward_backward(trainer, rows: int) -> None:
    x = torch.zeros((rows, trainer.config.model.seq_len), dtype=torch.long, device=trainer.device)
    with trainer.precision.autocast(trainer.device):
        logits = trainer.model(x)
    F.cross_entropy(logits.flatten(0, 1).float(), x.flatten(), reduction="sum").backward()


def search_micro_batch(trainer) -> int:
    """The largest micro-batch that fits on every rank; OutOfMemoryError when not even one row does."""
    rows = trainer.batches.rows_per_rank
    rng = torch.random.fork_rng(devices=[trainer.device] if trainer.device.type == "cuda" else [])
    with rng:  # dropout draws from the RNG: the run must continue as if no probe had happened
        found = largest_fitting(candidates(rows), lambda n: probe(trainer, n))
    found = trainer.dist.min_int(found or 0, trainer.device)
    if not found:
        raise torch.OutOfMemoryError(f"out of memory with a micro-batch of 1 row of {trainer.config.model.seq_len}")
    return found


def start(trainer) -> None:
    """At the start of run(): the notices for this device, then the micro-batch search when it is due."""
    t, device = trainer.tcfg, trainer.device
    for note in notices(trainer):
        trainer.emit(ev.Log(trainer.step, note))
    if t.micro_batch_size == "auto" and device.type in SEARCH_DEVICES:
        micro = search_micro_batch(trainer)
        rows = trainer.batches.rows_per_rank
        trainer.batches.micro = micro
        per = "per rank" if trainer.dist.active else "per step"
        message = f"micro-batch auto: {micro} rows per forward pass, {-(-rows // micro)} per step ({rows} rows {per})"
        trainer.emit(ev.Log(trainer.step, message))


def notices(trainer) -> list[str]:
    t, device = trainer.tcfg, trainer.device
    out = [trainer.precision.note] if trainer.precision.note else []
    if trainer.cores.why:
        out.append(trainer.cores.why)
    if trainer.forward is not trainer.ddp:
        out.append("torch.compile: the first step compiles the model, which takes a while (off: --no-compile)")
    if device.type == "mps":
        if t.compile is True:
            out.append("MPS: torch.compile is experimental on MPS; if it fails, train with --no-compile")
        out.append("MPS: no fused AdamW and no pinned memory here; foreach AdamW and plain copies instead")
    if device.type == "cpu" and trainer.precision.name == "fp32" and cpu_native_bf16():
        out.append("this CPU has native bf16 (AVX512-BF16/AMX): --set train.dtype=bf16 trains under bf16 autocast")
    return out
