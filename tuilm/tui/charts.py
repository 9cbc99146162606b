"""Line charts over training steps (plotext), shared by the dashboard, the comparison overlay and `tuilm board`."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from rich.text import Text
from textual.reactive import reactive
from textual_plotext import PlotextPlot

from tuilm.formatting import fmt_tick


@dataclass(frozen=True)
class Series:
    label: str | None
    x: np.ndarray
    y: np.ndarray
    color: tuple[int, int, int]
    yside: str = "left"
    marker: str = "hd"  # plotext's; another run compared with this one has its own (not colour alone)


class LineChart(PlotextPlot):
    """Lines over training steps. The data comes in pre-thinned; the plot is built only when the widget is drawn,
    so a chart on a hidden page costs nothing."""

    log_scale: reactive[bool] = reactive(False)

    def __init__(self, *, empty: str = "waiting for data", **kwargs):
        super().__init__(**kwargs)
        self.empty = empty
        self.series: list[Series] = []

    def show(self, series: list[Series]) -> None:
        self.series = series
        self.refresh()

    def watch_log_scale(self) -> None:
        self.refresh()

    def render(self):
        width, height = self.size
        series = []
        for s in self.series:
            keep = np.isfinite(s.x) & np.isfinite(s.y)  # plotext fails on NaN (a diverged run's last eval)
            if keep.any():
                series.append(Series(s.label, s.x[keep], s.y[keep], s.color, s.yside, s.marker))
        if not series or width < 12 or height < 4:
            return Text(self.empty, style="dim")
        plt = self.plt
        plt.clear_figure()
        log = self.log_scale and all((s.y > 0).all() for s in series)
        # Axes on the bottom and the sides in use only: every row counts in a small chart.
        plt.frame(False)
        plt.xaxes(True, False)
        plt.yaxes(True, any(s.yside == "right" for s in series))
        xs = np.concatenate([s.x for s in series])
        plt.xticks(*_ticks(float(xs.min()), float(xs.max()), max(2, width // 12), integer=True))
        for side in ("left", "right"):
            ys = [s.y for s in series if s.yside == side]
            if ys:  # plotext fails on a log scale for a side without data
                y = np.concatenate(ys)
                plt.yscale("log" if log else "linear", yside=side)
                plt.yticks(*_ticks(float(y.min()), float(y.max()), max(2, height // 3), log=log), yside=side)
        for s in series:
            plt.plot(s.x.tolist(), s.y.tolist(), label=s.label, color=s.color, marker=s.marker, yside=s.yside)
        return super().render()


def _ticks(lo: float, hi: float, count: int, *, log: bool = False, integer: bool = False):
    """Round tick values and short labels (plotext's own print every digit: 64907.0)."""
    if not hi > lo:
        return [lo], [fmt_tick(lo)]
    if log and hi / lo >= 10:
        decades = range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
        ticks = [m * 10.0**d for d in decades for m in (1, 2, 5) if lo <= m * 10.0**d <= hi]
        ticks = ticks[:: max(1, math.ceil(len(ticks) / count))]
    else:
        raw = (hi - lo) / max(1, count - 1)
        magnitude = 10 ** math.floor(math.log10(raw))
        step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
        if integer:
            step = max(1.0, round(step))
        first = math.ceil(lo / step) * step
        ticks = [first + k * step for k in range(max(0, int((hi - first) / step + 1e-9) + 1))]
    if len(ticks) < 2:
        ticks = [lo, hi] if not integer else [round(lo), round(hi)]
    return ticks, [fmt_tick(t) for t in ticks]
