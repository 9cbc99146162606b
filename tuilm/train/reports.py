"""What a trainer says about itself: the RunStarted and Finished events and the metadata of every checkpoint.

Plain functions of the trainer's public state, kept out of the loop so that the loop reads as one.
"""

from __future__ import annotations

import time
from pathlib import Path

from tuilm.device import memory_mb
from tuilm.train import events as ev
from tuilm.train.state import finite_or_none


def checkpoint_meta(trainer, weights: str = "model") -> dict:
    """Written into every .safetensors beside the weights: where the run stood, and on what data; `weights`:
    the model's own, or their moving average (ema, train.ema)."""
    last, s = trainer.last_eval, trainer.state
    return {
        "step": s.step,
        "tokens": s.tokens,
        "epoch": round(trainer.rules.epochs_done(s), 4),
        "val_loss": last.val_loss if last else None,
        "val_bpc": last.val_bpc if last else None,
        "best_val_loss": finite_or_none(s.best_val_loss),
        "data_fingerprint": trainer.dataset.corpus.fingerprint,
        "data": trainer.dataset.summary(),
        "run": trainer.name,
        "recipe": trainer.config.recipe,
        "weights": weights,
    }


def started_event(trainer) -> ev.RunStarted:
    model = trainer.model
    return ev.RunStarted(
        run_dir=str(trainer.run_dir),
        name=trainer.name,
        recipe=trainer.config.recipe,
        config=trainer.config.to_dict(),
        params=model.num_params(),
        params_no_embeddings=model.num_params(embeddings=False),
        device=str(trainer.device),
        dtype=trainer.precision.name,
        data=trainer.dataset.summary(),
        max_steps=trainer.rules.step_limit(),
        resumed_step=trainer.resumed_step,
        time=time.time(),
        flops_per_token=trainer.flops.per_token,
        peak_flops=trainer.flops.peak,
        ranks=trainer.dist.world,
    )


def step_event(trainer, n_targets: int, loss: float, lr: float, step_time: float, grad_norm: float, skipped: bool):
    s, clip, progress = trainer.state, trainer.tcfg.grad_clip, trainer.progress
    scale = float(trainer.scaler.get_scale()) if trainer.scaler else None
    epoch, memory = round(trainer.rules.epochs_done(s), 4), memory_mb(trainer.device)
    return ev.measured_step(
        s.step,
        epoch,
        s.tokens,
        loss,
        lr,
        n_targets,
        step_time,
        grad_norm,
        clip,
        s.elapsed,
        progress,
        loss_scale=scale,
        memory_mb=memory,
        skipped=skipped,
        mfu=trainer.flops.mfu(n_targets / step_time if step_time > 0 else 0.0),
    )


# How each stopping reason counts as an outcome; every other reason (max_steps, time, early_stop...) completed.
STATUS_OF = {
    **dict.fromkeys(("nonfinite", "loss_spike", "rewinds"), "diverged"),  # health stops (health.on_spike)
    "stopped": "stopped",  # "target" (train.stop_at_target) completed
    "interrupted": "stopped",
}


def eval_event(step: int, result, averaged, weights: str, best_val_loss: float, is_best: bool, train_loss, seconds):
    """The Eval event of an evaluation: the model's scores (`result`), the weight average's (`averaged`, or None)
    and which of the two `weights` the best checkpoint would hold."""
    return ev.Eval(
        step=step,
        val_loss=result.loss,
        val_ppl=result.ppl,
        val_bpc=result.bpc,
        val_bpb=result.bpb,
        best_val_loss=best_val_loss,
        is_best=is_best,
        train_loss=train_loss,
        seconds=seconds,
        ema_val_loss=averaged.loss if averaged else None,
        ema_val_bpc=averaged.bpc if averaged else None,
        ema_val_bpb=averaged.bpb if averaged else None,
        weights=weights,
    )


def finished_event(trainer, reason: str, last: Path | None) -> ev.Finished:
    s, last_eval, best = trainer.state, trainer.last_eval, trainer.files.best
    rate = session_rate(trainer)
    return ev.Finished(
        step=s.step,
        reason=reason,
        status=STATUS_OF.get(reason, "completed"),
        elapsed=s.elapsed,
        tokens=s.tokens,
        best_val_loss=finite_or_none(s.best_val_loss),
        best_val_bpc=finite_or_none(s.best_val_bpc),
        last_val_loss=last_eval.val_loss if last_eval else None,
        last_val_bpc=last_eval.val_bpc if last_eval else None,
        tokens_per_s=rate,
        last_checkpoint=str(last) if last else None,
        best_checkpoint=str(best) if best.exists() else None,
        peak_memory_mb=memory_mb(trainer.device) if trainer.device.type != "mps" else None,
        mfu=trainer.flops.mfu(rate),
        eval_seconds=trainer.apart["eval"],
        checkpoint_seconds=trainer.apart["checkpoint"],
        compile_seconds=trainer.apart["compile"],
        best_weights=s.best_weights,
        target=trainer.tcfg.target or None,
        target_reached=s.target_hit,
    )


def session_rate(trainer) -> float:
    """Tokens per second of training since this run() started (a resumed run's earlier sessions aside)."""
    tokens, elapsed = trainer.session_start
    seconds = trainer.state.elapsed - elapsed
    return (trainer.state.tokens - tokens) / seconds if seconds > 0 else 0.0
