"""Events as lines of text, shared by every front end (progress bar, dashboard, sweep) so they read alike."""

from __future__ import annotations

from tuilm.formatting import fmt_duration, fmt_mfu
from tuilm.train import events as ev


def eval_summary(e: ev.Eval, ppl: bool = True) -> str:
    """`val loss 1.2345  ppl 3.44  bits/char 1.2345  bits/byte 1.2000` (without the perplexity where space is
    short; without bits/byte where the byte count is unknown)."""
    perplexity = f"  ppl {e.val_ppl:.2f}" if ppl else ""
    per_byte = f"  bits/byte {e.val_bpb:.4f}" if e.val_bpb is not None else ""
    ema = f"  ema {e.ema_val_loss:.4f} ({e.ema_val_bpc:.4f} bits/char)" if e.ema_val_loss is not None else ""
    return f"val loss {e.val_loss:.4f}{perplexity}  bits/char {e.val_bpc:.4f}{per_byte}{ema}"


def finished_line(e: ev.Finished) -> str:
    best = f"; best val loss {e.best_val_loss:.4f} (bits/char {e.best_val_bpc:.4f})" if e.best_val_loss else ""
    why = f" ({e.reason})" if e.reason != e.status else ""
    return (
        f"{e.status}{why} at step {e.step} after {fmt_duration(e.elapsed)} of training, "
        f"{e.tokens_per_s:,.0f} tok/s{fmt_mfu(e.mfu)}{best}{' of the ema weights' if e.best_weights == 'ema' else ''}"
        f"{target_text(e)}{time_apart(e)}"
    )


def target_text(e: ev.Finished) -> str:
    """`; target 2.2 reached at step 300 (41.2 s, 1.2M tokens, 3.4e+13 FLOPs)`, or not reached; "" for none."""
    hit = e.target_reached
    if not e.target:
        return ""
    if hit is None:
        return f"; target {e.target} not reached"
    return (
        f"; target {e.target} reached at step {hit['step']:,} ({hit['seconds']:.1f} s, {hit['tokens']:,} tokens, "
        f"{hit['flops']:.3g} FLOPs)"
    )


def time_apart(e: ev.Finished) -> str:
    """`` (apart: evaluation 1.2s, checkpoints 0.3s)``: what the training time and tokens/s leave out."""
    parts = [
        f"{what} {seconds:.1f}s"
        for what, seconds in (
            ("evaluation", e.eval_seconds),
            ("checkpoints", e.checkpoint_seconds),
            ("compile", e.compile_seconds),
        )
        if seconds >= 0.05
    ]
    return f" (apart: {', '.join(parts)})" if parts else ""


def best_summary(e: ev.Finished) -> str:
    if e.best_val_loss is None:
        return "no evaluation"
    return f"best val loss {e.best_val_loss:.4f}" + (" (ema weights)" if e.best_weights == "ema" else "")


VERBS = {"completed": "✔ finished", "stopped": "■ stopped", "diverged": "✘ diverged"}
