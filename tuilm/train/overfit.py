"""Overfit one batch, the first check of Karpathy's recipe ("A Recipe for Training Neural Networks", 2019): a
model, loss and optimizer that work drive the loss of one fixed batch to ~0 within a few hundred steps. When they
do not, something is wrong before any long run could be right: the learning rate, the labels, the loss, or the
model's capacity.

The model, optimizer, precision and loss are a Trainer's (the step is train/backward.py's, z-loss and clipping
included), so the check exercises what training would run; the loop here is its own: the first training batch
every step, a constant learning rate after a short warmup, no evaluation, no checkpoints, no health events.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from tuilm.train.backward import apply_update, healing_backward
from tuilm.train.schedule import lr_at

ABSOLUTE_TARGET = 0.05  # nats/token: what "~0" means for a small vocabulary
RELATIVE_TARGET = 0.01  # of ln(vocab): for a large one, where 0.05 would ask for more than one batch needs


def default_target(vocab_size: int) -> float:
    """The loss under which the batch counts as memorised: 0.05 nats/token or 1% of ln(vocab), the larger."""
    return max(ABSOLUTE_TARGET, RELATIVE_TARGET * math.log(vocab_size))


@dataclass
class OverfitResult:
    passed: bool
    steps: int  # optimizer steps taken
    max_steps: int
    target: float  # nats/token
    initial_loss: float  # step 1's loss, to compare with ln(vocab)
    final_loss: float
    best_loss: float
    ln_vocab: float
    lr: float  # the constant rate after warmup
    rows: int
    tokens: int  # target tokens in the batch
    stopped: str  # target (reached it) | steps (ran out) | nonfinite
    causes: list[str] = field(default_factory=list)  # likely causes of a failure, most likely first
    losses: list[float] = field(default_factory=list)  # every step's loss


def overfit_batch(
    trainer,
    *,
    steps: int = 200,
    target: float | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> OverfitResult:
    """Train `trainer`'s model on its first training batch for at most `steps` steps, or until the loss is under
    `target` (default_target), and judge the outcome. The model's weights change: build a trainer for it alone."""
    vocab = trainer.config.model.vocab_size
    target = default_target(vocab) if target is None else target
    tcfg = trainer.tcfg
    # A warmup as long as a recipe's (100 steps) would eat half the budget; a short one still spares Adam's
    # first, badly scaled steps. No decay: a shrinking rate would hide an lr that is too high.
    schedule = replace(tcfg, schedule="constant", warmup_steps=min(tcfg.warmup_steps, steps // 10))
    micro_batches = trainer.batches.next_step(trainer.state)
    n_targets = sum(b.n_targets for b in micro_batches)
    trainer.model.train()
    losses: list[float] = []
    stopped = "steps"
    for i in range(steps):
        trainer.set_lr(lr_at(i, math.nan, schedule))
        loss_sum, grad_norm = healing_backward(trainer, micro_batches, n_targets, health_step=False)
        loss = float(loss_sum) / max(1, n_targets)
        losses.append(loss)
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            stopped = "nonfinite"
            trainer.optimizer.zero_grad(set_to_none=True)
            break
        apply_update(trainer)
        trainer.optimizer.zero_grad(set_to_none=True)
        trainer.state.step += 1
        if on_step is not None:
            on_step(i + 1, loss)
        if loss < target:
            stopped = "target"
            break
    finite = [x for x in losses if math.isfinite(x)]
    result = OverfitResult(
        passed=stopped == "target",
        steps=trainer.state.step,
        max_steps=steps,
        target=target,
        initial_loss=losses[0],
        final_loss=losses[-1],
        best_loss=min(finite) if finite else math.nan,
        ln_vocab=math.log(vocab),
        lr=tcfg.lr,
        rows=sum(len(b.inputs) for b in micro_batches),
        tokens=n_targets,
        stopped=stopped,
        losses=losses,
    )
    if not result.passed:
        result.causes = likely_causes(result, dropout=trainer.config.model.dropout)
    return result


def likely_causes(r: OverfitResult, *, dropout: float = 0.0) -> list[str]:
    """What most likely kept the loss of one batch from going to ~0, judged from the loss curve's shape."""
    causes = []
    if abs(r.initial_loss - r.ln_vocab) > 0.5 * r.ln_vocab and math.isfinite(r.initial_loss):
        causes.append(
            f"step 1's loss {r.initial_loss:.3g} is far from ln(vocab) = {r.ln_vocab:.3g}: the init, the loss "
            "or the labels are wrong"
        )
    if r.stopped == "nonfinite":
        at = len(r.losses)
        return [*causes, f"the loss went non-finite at step {at}: lr {r.lr:.2g} too high, or a bug in the loss"]
    fell = (r.initial_loss - r.best_loss) / max(r.initial_loss, 1e-12)
    if fell < 0.1:
        causes.append(
            f"the loss barely moved ({r.initial_loss:.3g} -> {r.best_loss:.3g}): lr {r.lr:.2g} too low, or the "
            "gradients do not reach the weights (a detached loss, frozen parameters)"
        )
    elif r.final_loss > 1.1 * r.best_loss and r.final_loss - r.best_loss > r.target:
        causes.append(
            f"the loss fell to {r.best_loss:.3g}, then rose to {r.final_loss:.3g}: lr {r.lr:.2g} too high "
            "(or too little warmup)"
        )
    else:
        causes.append(
            f"the loss fell to {r.best_loss:.3g} but not under {r.target:.3g} in {r.steps} steps: lr {r.lr:.2g} "
            "too low, too small a model, more --steps, or labels the inputs cannot predict (misaligned targets)"
        )
    if dropout > 0:
        causes.append(f"dropout {dropout:g} keeps the model from memorising: --set dropout=0")
    return causes
