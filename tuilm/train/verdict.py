"""The one health verdict on a layer: its gradient norm and its update/weight ratio, judged the same way for the
monitor's alerts (tuilm.train.health), the dashboard's colours (tuilm.tui.health_panels) and `tuilm health`.
docs/health.md states the rule in words.

A verdict's level is "healthy", "warn" or "bad". Where the monitor raises an alert for it, `alert` names the alert's
code and the alert's severity is the level; a "warn" without an alert is a value near a threshold (within 100x of
a vanishing threshold, within a decade of an edge of the update band), shown so that a drift is seen before it
alerts. `rule` says which rule tripped, in words: a warning near the band's edge and one outside the band look
alike in colour.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tuilm.config import HealthConfig
    from tuilm.train import events as ev

NEAR = 100.0  # a gradient norm this close (as a factor) to a vanishing threshold warns without an alert


@dataclass(frozen=True)
class Verdict:
    level: str  # healthy | warn | bad
    rule: str = ""  # which rule tripped ("below 1e-08"); empty when healthy
    alert: str | None = None  # the code of the alert the monitor raises for it (None: no alert from this layer)


HEALTHY = Verdict("healthy")


@dataclass(frozen=True)
class LayerVerdict:
    layer: str
    grad: Verdict
    update: Verdict


def grad_median(norms: Sequence[float]) -> float:
    """The median layer's gradient norm that relative vanishing is judged against (the upper median of an even
    count), over the finite norms only: NaN has no place in a sorted order (every comparison with it is False, so
    where it lands depends on its neighbours), and an infinite layer would lift the median until healthy layers
    looked vanishing. A non-finite layer is judged by itself instead (bad)."""
    finite = sorted(g for g in norms if math.isfinite(g))
    return finite[len(finite) // 2] if finite else 0.0


def grad_verdict(g: float, median: float, cfg: HealthConfig) -> Verdict:
    """A layer's gradient norm, given the median layer's (grad_median)."""
    if not math.isfinite(g):
        return Verdict("bad", "not finite")  # the step's `nonfinite` alert names where it starts
    if g < cfg.vanish_floor:
        return Verdict("bad", f"below {cfg.vanish_floor:g}", "vanishing")
    if median > 0 and g < cfg.vanish_ratio * median:
        times = f"{median / g:.0f}x" if g > 0 else "infinitely"
        return Verdict("warn", f"{times} below the median layer's", "vanishing")
    if g > cfg.explode_limit:
        # The global norm is at least any layer's: the step's `exploding` alert has fired for it.
        return Verdict("bad", f"above the limit {cfg.explode_limit:g}")
    if g < NEAR * cfg.vanish_floor:
        return Verdict("warn", f"within {NEAR:g}x of the floor {cfg.vanish_floor:g}")
    if g < NEAR * cfg.vanish_ratio * median:
        return Verdict("warn", f"within {NEAR:g}x of {cfg.vanish_ratio:g} of the median layer's")
    return HEALTHY


def update_verdict(r: float, cfg: HealthConfig) -> Verdict:
    """A layer's log10 update/weight ratio against the band update_low..update_high (healthy is near -3)."""
    if not math.isfinite(r):
        return Verdict("bad", "not finite", "update_ratio")
    if r < cfg.update_low:
        return Verdict("warn", "below the band: the layer barely moves", "update_ratio")
    if r > cfg.update_high:
        return Verdict("warn", "above the band: the layer is being overwritten", "update_ratio")
    # Near: within a decade (1 in log10) of an edge. Short words: the first page's line has about 60 columns.
    if r < cfg.update_low + 1:
        return Verdict("warn", f"near the band's edge {cfg.update_low:g}")
    if r > cfg.update_high - 1:
        return Verdict("warn", f"near the band's edge {cfg.update_high:g}")
    return HEALTHY


def judge_layers(h: ev.Health, cfg: HealthConfig, warmup_steps: int = 0) -> list[LayerVerdict]:
    """Every layer of one measurement. The update ratio raises no alert during warmup (the lr ramps up from near
    0, so small updates are by design) nor for a layer whose gradient is below the floor or not finite (that
    layer's own verdict says more); its level stays, so the colour does not depend on the step."""
    median = grad_median(h.grad_norm)
    verdicts = []
    for layer, g, r in zip(h.layers, h.grad_norm, h.update_ratio, strict=True):
        update = update_verdict(r, cfg)
        if update.alert and (h.step <= warmup_steps or not g >= cfg.vanish_floor):
            update = replace(update, alert=None)
        verdicts.append(LayerVerdict(layer, grad_verdict(g, median, cfg), update))
    return verdicts


def worst_update_layer(h: ev.Health, cfg: HealthConfig) -> tuple[str, float] | None:
    """(layer, log10 update/weight ratio) of the layer furthest from the middle of the healthy band; a non-finite
    ratio is the worst of all."""
    if not h.layers:
        return None
    middle = (cfg.update_low + cfg.update_high) / 2

    def distance(item: tuple[str, float]) -> float:
        return abs(item[1] - middle) if math.isfinite(item[1]) else math.inf

    return max(zip(h.layers, h.update_ratio, strict=True), key=distance)
