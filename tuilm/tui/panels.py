"""The slow panels (charts, sparkline, per-layer health): when to redraw them, and the redraw itself.

Every millisecond the UI spends drawing holds the GIL, or a core, that the trainer does not get; so a redraw
waits until what the last one cost the UI thread (its CPU time until the next pull, the frame included) is at
most PANEL_SHARE of one core, and none comes sooner than PANEL_MIN_INTERVAL.
"""

from __future__ import annotations

import math
import time

import numpy as np

from tuilm.formatting import fmt_mfu
from tuilm.train import events as ev
from tuilm.tui.charts import LineChart, Series
from tuilm.tui.compare import Overlay
from tuilm.tui.health_panels import ActivationTable, GradHeatmap, GradNorm, LayerBars
from tuilm.tui.layout import TITLES
from tuilm.tui.store import RunStore, debiased_ema, downsample, windowed_rate

# A redraw that cost 30 ms waits three seconds.
PANEL_SHARE = 0.01
PANEL_MIN_INTERVAL = 0.5
GRAD_WINDOW = 400  # steps in the gradient-norm sparkline
SPEED_WINDOW = 25  # steps over which tokens/s is measured for its chart
# Weight of the smoothed loss's EMA per point drawn (the chart holds about two points a column; each is already
# the mean of the steps it covers, so the smoothing is relative to the chart's width, as in TensorBoard).
SMOOTHING = 0.9
CYAN, ORANGE, MAGENTA, GREEN, YELLOW = (0, 190, 255), (255, 150, 0), (230, 60, 200), (120, 210, 40), (240, 200, 0)
DIM_CYAN = (0, 85, 115)  # the raw train loss behind its smoothed line


class PanelPacer:
    """Whether the slow panels are due: something changed, and the last redraw's cost is paid off."""

    def __init__(self, settle: float):
        self.settle = settle  # seconds after a redraw before its cost is read (the frame has been rendered)
        self.dirty = False
        self._at = -math.inf  # monotonic time of the last redraw
        self._cpu: float | None = None  # the UI thread's CPU time then, until the cost is known
        self.cost = 0.0  # CPU seconds the last redraw took

    def pulled(self, now: float) -> None:
        if self._cpu is not None and now - self._at >= self.settle:
            self.cost = time.thread_time() - self._cpu
            self._cpu = None

    def due(self, force: bool = False) -> bool:
        if not self.dirty:
            return False
        now = time.monotonic()
        if not force and now - self._at < max(PANEL_MIN_INTERVAL, self.cost / PANEL_SHARE):
            return False
        self._at, self._cpu = now, time.thread_time()
        self.dirty = False
        return True


class Panels:
    """The slow panels' widgets, redrawn from the store."""

    def __init__(self, app, overlay: Overlay):
        self.overlay = overlay
        self.overlay_drawn = overlay.state()
        self.charts = {chart.id: chart for chart in app.query(LineChart)}
        self.grad = app.query_one(GradNorm)
        self.layers, self.acts, self.heatmap = (
            app.query_one(LayerBars),
            app.query_one(ActivationTable),
            app.query_one(GradHeatmap),
        )
        self.health: ev.Health | None = None  # the latest measurement, not yet drawn
        self.evals_drawn: tuple = ()
        self.smooth = False  # the smoothed train loss over the raw one (key m)

    def overlay_due(self) -> bool:
        """The compared run has news, or was shown or hidden, since the last redraw."""
        return self.overlay.state() != self.overlay_drawn

    def overlay_news(self) -> bool:
        """The overlay was shown, hidden or switched, or its run's first lines arrived: drawn at once, whatever
        the pacer's wait (a redraw of 150 ms would otherwise keep a user's `c` or --compare waiting 15 s)."""
        (shown, other, version), drawn = self.overlay.state(), self.overlay_drawn
        return (shown, other) != drawn[:2] or (version > 0 and drawn[2] <= 0)

    def toggle(self, what: str, store: RunStore) -> None:
        """Key l (`log`): the loss chart's log scale; key m (`smooth`): its smoothed train loss. Redrawn at once."""
        loss = self.charts["loss"]
        if what == "log":
            loss.log_scale = not loss.log_scale
        else:
            self.smooth = not self.smooth
        self.draw(store)

    def clear(self) -> None:
        self.layers.health = None
        self.heatmap.show([])
        self.acts.clear()
        self.evals_drawn = ()

    def draw(self, store: RunStore) -> None:
        if self.health is not None:
            self.layers.health = self.health
            self.acts.show(self.health)
            self.heatmap.show(store.health_history())
            self.grad.show_worst(self.health)
            self.health = None
        run = store.run
        clip = float(run.config.get("train", {}).get("grad_clip", 0) or 0) if run else 0.0
        _, norms, clipped = store.step_series("grad_norm", "clipped", last=GRAD_WINDOW)
        self.grad.show(norms, clipped, clip)
        charts = self.charts
        width = max(c.size.width for c in charts.values())  # none before the first layout
        points = 2 * width if width else 200  # two dots per cell
        step, loss, lr, tokens, elapsed = store.step_series("loss", "lr", "tokens", "elapsed")
        val = store.eval_series()
        overlay, self.overlay_drawn = self.overlay, self.overlay.state()
        # Compared with a run of another batch shape, both runs are drawn over tokens (comparison.axis_for).
        axis = overlay.axis(run) if len(step) else "step"
        x, val_x = (step, val["step"]) if axis == "step" else (tokens, np.interp(val["step"], step, tokens))
        x, y = downsample(x, loss, points)
        train = [Series("train", x, y, CYAN)]
        smoothed = debiased_ema(y, SMOOTHING) if self.smooth else None
        if smoothed is not None:
            train = [Series(None, x, y, DIM_CYAN), Series("smoothed", x, smoothed, CYAN)]
        charts["loss"].show([*train, Series("val", val_x, val["val_loss"], ORANGE), *overlay.loss_series(axis, points)])
        charts["loss"].border_title = loss_title(charts["loss"].log_scale, smoothed)
        legend = overlay.legend(run.name if run else "this run", axis)
        charts["loss"].border_subtitle = charts["val"].border_subtitle = legend
        if (len(val["step"]), self.overlay_drawn) != self.evals_drawn:  # the dearest chart (two axes): at evals
            self.evals_drawn = (len(val["step"]), self.overlay_drawn)
            charts["val"].show(
                [
                    Series("bits/char", val_x, val["val_bpc"], ORANGE),
                    *ema_series(val_x, val["ema_val_bpc"]),
                    Series("ppl", val_x, val["val_ppl"], MAGENTA, yside="right"),
                    *overlay.val_series(axis),
                ]
            )
        speed = windowed_rate(tokens, elapsed, SPEED_WINDOW)
        charts["speed"].show([Series(None, *downsample(step, speed, points), GREEN)])
        last = store.last_step
        charts["speed"].border_title = TITLES["speed"] + fmt_mfu(last.mfu if last else None).replace("  ", " · ")
        charts["lr"].show([Series(None, *downsample(step, lr, points), YELLOW)])


def ema_series(x, ema_bpc) -> list[Series]:
    """train.ema: the averaged weights' bits/char beside the weights' own (none with it off)."""
    return [Series("ema bits/char", x, ema_bpc, GREEN)] if np.isfinite(ema_bpc).any() else []


def loss_title(log: bool, smoothed) -> str:
    """`loss (train, val), log scale · smoothed 2.3456`: the chart's state, and the smoothed loss now."""
    scale = ", log scale" if log else ""
    now = f" · smoothed {smoothed[-1]:.4f}" if smoothed is not None and len(smoothed) else ""
    return TITLES["loss"] + scale + now
