"""Events for tests, built by name: the fields a test is about as keywords, plausible defaults for the rest (a
Step has eleven required fields, an Eval eight; written out positionally they read as a row of numbers)."""

from __future__ import annotations

from tuilm.train import events as ev

STEP_DEFAULTS = {
    "step": 1,
    "epoch": 0.1,
    "tokens": 64,
    "loss": 3.0,
    "lr": 1e-3,
    "tokens_per_s": 1e4,
    "step_time": 0.01,
    "grad_norm": 0.5,
    "clipped": False,
    "elapsed": 0.02,
    "progress": 0.1,
}
EVAL_DEFAULTS = {
    "step": 1,
    "val_loss": 2.0,
    "val_ppl": 7.4,
    "val_bpc": 1.5,
    "best_val_loss": 2.0,
    "is_best": True,
    "train_loss": 2.0,
    "seconds": 0.1,
}


def make_step(**fields) -> ev.Step:
    """A Step event: STEP_DEFAULTS with `fields` in their place (any Step field, the optional ones too)."""
    return ev.Step(**{**STEP_DEFAULTS, **fields})


def make_eval(**fields) -> ev.Eval:
    """An Eval event: EVAL_DEFAULTS with `fields` in their place (any Eval field, the optional ones too)."""
    return ev.Eval(**{**EVAL_DEFAULTS, **fields})
