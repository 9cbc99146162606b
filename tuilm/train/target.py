"""Time to target (train.target): the first evaluation at or below a val score, and what training cost to get there.

Training seconds (evaluation excluded), target tokens, steps and FLOPs (tokens x the model's training FLOPs per
token, tuilm/flops.py): the numbers a speedrun record is stated in.
"""

from __future__ import annotations

import math

from tuilm.train import events as ev
from tuilm.values import TARGET_UNITS, parse_target

FIELD = {"bpc": "val_bpc", "loss": "val_loss", "bpb": "val_bpb"}  # the Eval event's field of each unit


def score(event: ev.Eval, unit: str) -> float:
    """The evaluation's score in `unit`: the better of the weights and their average (train.ema)."""
    values = [getattr(event, FIELD[unit]), getattr(event, "ema_" + FIELD[unit])]
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return min(finite) if finite else math.nan


def reached(target: str, event: ev.Eval, tokens: int, seconds: float, flops_per_token: int) -> dict | None:
    """The record of `event` reaching `target` (None when it does not): what Finished and `tuilm runs` show."""
    unit, value = parse_target(target)
    got = score(event, unit)
    if not got <= value:  # nan never reaches it
        return None
    return {
        "step": event.step,
        "tokens": tokens,
        "seconds": round(seconds, 3),
        "flops": tokens * flops_per_token,
        "score": got,
    }


def describe(target: str) -> str:
    unit, value = parse_target(target)
    return f"{TARGET_UNITS[unit]} <= {value:g}"
