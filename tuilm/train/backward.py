"""A step's gradients: forward and backward over its micro-batches, the exact token-weighted loss, clipping, and
the out-of-memory retry that halves the micro-batch. Functions of the Trainer (tuilm/train/trainer.py), kept
apart so the loop itself reads in one sitting."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from tuilm.data.pipeline import IGNORE, Batch
from tuilm.device import free_memory
from tuilm.train import distributed
from tuilm.train import events as ev
from tuilm.train.batches import to_device
from tuilm.train.health import nonfinite_action
from tuilm.train.losses import z_loss_sum

MAX_SKIPS = 10  # non-finite steps in a row before a `skip` policy gives up
# A run that ends inside a streak this long has not recovered from it (its weights may be finite but useless, the
# val loss 1e10 after lr=1e6): it ends diverged, not completed. One bad last batch alone does not count.
ENDING_STREAK = 3


def healing_backward(trainer, micro_batches: list[Batch], n_targets: int, health_step: bool, lean: bool = False):
    """forward_backward; on an out-of-memory error, free, halve the micro-batch and redo the step (its rows,
    hence its exact gradient, stay the same).

    Under DDP the ranks agree through the gradient all-reduce itself (train/overlap.py): it runs during the last
    micro-batch's backward pass, and its last bucket carries a flag per rank; a rank that ran out of memory still
    sends every bucket, so no rank waits in a collective that another never joins. If any rank ran out of
    memory, every rank halves and redoes the step, else the gradients are already averaged and the step goes on."""
    dist = trainer.dist
    while True:
        failed = False
        try:
            loss_sum = accumulate(trainer, micro_batches, n_targets, health_step)
        except torch.OutOfMemoryError:
            if not dist.active and trainer.batches.micro <= 1:
                raise
            failed = True
            trainer.optimizer.zero_grad(set_to_none=True)
            free_memory(trainer.device)
        ranks = trainer.reducer.finish(failed) if trainer.reducer else ([0] if failed else [])
        if not ranks:
            return finish_grads(trainer, loss_sum, health_step, lean)
        old = trainer.batches.micro
        where = f" on rank {', '.join(map(str, ranks))}" if dist.active else ""
        if old <= 1:
            raise torch.OutOfMemoryError(f"out of memory{where} at micro-batch 1 row, step {trainer.step + 1}")
        trainer.optimizer.zero_grad(set_to_none=True)
        micro_batches = trainer.batches.halve()
        message = f"out of memory{where} at micro-batch {old} rows: now {old // 2}, step {trainer.step + 1} redone"
        trainer.emit(ev.Log(trainer.step + 1, message, "warning"))


def accumulate(trainer, micro_batches: list[Batch], n_targets: int, health_step: bool) -> torch.Tensor:
    """Forward and backward over the step's micro-batches; returns this rank's summed loss (on the device):
    the step's gradients, before trainer.reducer averages them over the ranks and finish_grads clips them.

    The loss is the sum over every target token of the step divided by their count (all ranks' together),
    whatever the padding or accumulation: each micro-batch adds its summed loss / the step's total, so the
    gradient is exactly the full batch's (times the world size, which the mean over ranks divides out).
    Under DDP DDP's own reducer is off (no_sync): the last micro-batch's backward pass sends the gradients through
    trainer.reducer instead, bucket by bucket as they are ready (healing_backward waits for them).
    """
    if trainer.workers and len(micro_batches) > 1 and not health_step:
        return concurrent_accumulate(trainer, micro_batches, n_targets)
    loss_sum = None
    model = trainer.ddp if health_step else trainer.forward  # hooks need the eager module
    weight = trainer.dist.world / n_targets
    with trainer.health.activation_hooks(health_step):
        for i, batch in enumerate(micro_batches):
            trainer.last_batch = batch = to_device(batch, trainer.device)
            if trainer.reducer and i == len(micro_batches) - 1:
                trainer.reducer.arm()
            with distributed.no_sync(trainer.ddp):
                loss, scaled = micro_loss(trainer, model, batch, weight)
                (trainer.scaler.scale(scaled) if trainer.scaler else scaled).backward()
            loss_sum = loss.detach() if loss_sum is None else loss_sum + loss.detach()
    return loss_sum


def micro_loss(trainer, model, batch, weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed cross-entropy, the loss to differentiate: that times `weight`, plus z-loss) of one micro-batch."""
    x, y, pos, doc = batch
    with trainer.precision.autocast(trainer.device):
        logits = model(x, pos_ids=pos, doc_ids=doc)
    loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), ignore_index=IGNORE, reduction="sum")
    scaled = loss * weight
    if trainer.tcfg.z_loss:  # reported losses stay the cross-entropy alone
        scaled = scaled + z_loss_sum(logits, y, trainer.tcfg.z_loss) * weight
    return loss, scaled


def concurrent_accumulate(trainer, micro_batches: list[Batch], n_targets: int) -> torch.Tensor:
    """accumulate() with the micro-batches on trainer.workers at once (train/workers.py). Each returns its own
    gradients, added here in micro-batch order: the sum the sequential backward passes accumulate, exactly."""
    weight = trainer.dist.world / n_targets
    batches = [to_device(b, trainer.device) for b in micro_batches]
    trainer.last_batch = batches[0]
    params = trainer.params

    def one(batch):
        loss, scaled = micro_loss(trainer, trainer.forward, batch, weight)
        return loss.detach(), torch.autograd.grad(scaled, params, allow_unused=True)

    results = trainer.workers.map(one, batches)
    loss_sum = results[0][0]
    for loss, _ in results[1:]:
        loss_sum = loss_sum + loss
    for i, p in enumerate(params):
        grad = None
        for _, grads in results:
            if grads[i] is not None:
                grad = grads[i] if grad is None else grad + grads[i]
        p.grad = grad
    return loss_sum


def finish_grads(trainer, loss_sum: torch.Tensor, health_step: bool, lean: bool):
    """Unscale, record and clip the step's gradients; returns (loss_sum, gradient norm before clipping).
    `lean`: the norm stays a device tensor and clipping happens whatever it is (a non-finite step is skipped)."""
    if trainer.scaler:
        trainer.scaler.unscale_(trainer.optimizer)
    if health_step:
        trainer.health.record_grads()
    grads = [p.grad for p in trainer.params if p.grad is not None]
    grouped = len({(g.device, g.dtype) for g in grads}) <= 1
    # Norm first, clip after the finiteness check: clipping by a NaN norm would turn every gradient into
    # NaN and hide which parameter was the source.
    norm = total_norm(grads, grouped)
    if lean:
        if trainer.tcfg.grad_clip:
            clip_(grads, trainer.tcfg.grad_clip, norm, grouped)
        return loss_sum, norm
    grad_norm = float(norm)
    if trainer.tcfg.grad_clip and math.isfinite(grad_norm):
        clip_(grads, trainer.tcfg.grad_clip, norm, grouped)
    return loss_sum, grad_norm


# torch.nn.utils.get_total_norm and clip_grads_with_norm_ do the same arithmetic, but first group the tensors by
# device and dtype through two decorated calls, a tenth of a small model's step; a model's gradients share one
# device and dtype (`grouped`), and only where they do not is torch's grouping needed.


def total_norm(grads: list[torch.Tensor], grouped: bool) -> torch.Tensor:
    """The L2 norm of all gradients together, as a device tensor."""
    if not grads:
        return torch.zeros(())
    if not grouped:
        return torch.nn.utils.get_total_norm(grads, foreach=True)
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))


def clip_(grads: list[torch.Tensor], max_norm: float, norm: torch.Tensor, grouped: bool) -> None:
    """Scale the gradients down to total norm `max_norm` when `norm` is above it (in place)."""
    if not grouped:
        torch.nn.utils.clip_grads_with_norm_(grads, max_norm, norm, foreach=True)
        return
    torch._foreach_mul_(grads, (max_norm / (norm + 1e-6)).clamp(max=1.0))


def clear_grads(trainer) -> None:
    """optimizer.zero_grad(set_to_none=True) without its profiler and dynamo wrappers (some 40 us a step)."""
    for p in trainer.params:
        p.grad = None


def non_finite(trainer, loss_value: float, grad_norm: float) -> bool:
    """A NaN/Inf loss or gradient: alert, then skip the step, or stop (health.nonfinite = stop); under
    health.on_spike = rewind the step is skipped and the trainer then rewinds (tuilm/train/rewind.py).

    Skipping helps with a rare bad batch; when every step is non-finite the weights themselves are gone,
    so after MAX_SKIPS in a row training stops as diverged instead of spinning.
    """
    trainer.nonfinite_streak += 1
    h = trainer.config.health
    policy = "rewind" if h.on_spike == "rewind" and h.nonfinite != "stop" else h.nonfinite
    action, stop = nonfinite_action(policy, trainer.nonfinite_streak, MAX_SKIPS)
    x, _, pos, doc = trainer.last_batch
    trainer.health.non_finite(
        trainer.step + 1, loss_value, grad_norm, action, lambda: trainer.model(x, pos_ids=pos, doc_ids=doc)
    )
    if stop:
        trainer.stop("nonfinite")
    return True


def apply_update(trainer) -> None:
    """The optimizer step (through the GradScaler under fp16), after gradients passed every check."""
    if trainer.scaler:
        trainer.scaler.step(trainer.optimizer)
        trainer.scaler.update()
    else:
        trainer.optimizer.step()
