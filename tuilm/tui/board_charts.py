"""The board's shared charts: the picked runs' curves overlaid (train loss, val bits/char, learning rate, gradient
norm) over one x axis (steps, tokens, FLOPs or training time), each run in its colour, the table's. Runs that
differ only in the seed can be folded into one line, their mean, between two dim lines, their min and max."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from tuilm.tui.board_data import Detail, seedless
from tuilm.tui.charts import Series
from tuilm.tui.store import downsample

AXES = ("steps", "tokens", "flops", "time")
AXIS_TITLES = {"steps": "step", "tokens": "tokens", "flops": "FLOPs", "time": "training s"}
METRICS = {"loss": "train loss", "val": "val bits/char", "lr": "learning rate", "grad_norm": "gradient norm"}
# Colour-blind-safe first (Okabe-Ito), then more; a run keeps its colour for the life of the board.
PALETTE = [
    (86, 180, 233),
    (230, 159, 0),
    (0, 158, 115),
    (240, 228, 66),
    (204, 121, 167),
    (213, 94, 0),
    (0, 114, 178),
    (200, 200, 200),
    (255, 130, 130),
    (160, 220, 120),
    (180, 150, 255),
    (120, 220, 220),
]
MARKS = "●■▲◆✚★"  # beside the colour in the table and the legend: a run reads without colour too
BAND_MARK = "·"


def colour(index: int) -> tuple[int, int, int]:
    return PALETTE[index % len(PALETTE)]


def mark(index: int) -> str:
    return MARKS[index % len(MARKS)]


def dim(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    return tuple(int(c * 0.55) for c in rgb)


@dataclass(frozen=True)
class Line:
    """One line of the charts: a run, or a fold of runs that differ only in the seed (leader first)."""

    details: tuple[Detail, ...]

    @property
    def leader(self) -> Detail:
        return self.details[0]


def lines(details: list[Detail], fold: bool) -> list[Line]:
    if not fold:
        return [Line((d,)) for d in details]
    groups: dict[tuple, list[Detail]] = {}
    for d in details:
        groups.setdefault(seedless(d.run.config), []).append(d)
    return [Line(tuple(g)) for g in groups.values()]


def xy(detail: Detail, metric: str, axis: str) -> tuple[np.ndarray, np.ndarray]:
    """One run's curve of `metric` over `axis`."""
    store = detail.store
    column = "loss" if metric == "val" else metric
    step, tokens, elapsed, y = store.step_series("tokens", "elapsed", column)
    if axis == "steps":
        x = step
    elif axis == "tokens":
        x = tokens
    elif axis == "flops":
        started = detail.run.started
        x = tokens * float(started.flops_per_token if started and started.flops_per_token else np.nan)
    else:
        x = elapsed
    if metric != "val":
        return x, y
    evals = store.eval_series()
    if not len(step):  # evaluations before any step was read: only a step axis places them
        return (evals["step"], evals["val_bpc"]) if axis == "steps" else (np.array([]), np.array([]))
    return np.interp(evals["step"], step, x), evals["val_bpc"]


def fold_band(curves: list[tuple[np.ndarray, np.ndarray]], points: int):
    """Mean, min and max of curves on one grid (NaN where no run has reached yet)."""
    curves = [(x, y) for x, y in curves if len(x)]
    if not curves:
        return np.array([]), np.array([]), np.array([]), np.array([])
    lo = min(float(np.nanmin(x)) for x, _ in curves)
    hi = max(float(np.nanmax(x)) for x, _ in curves)
    grid = np.linspace(lo, hi, max(2, points)) if hi > lo else np.array([lo])
    ys = np.full((len(curves), len(grid)), np.nan)
    for i, (x, y) in enumerate(curves):
        keep = np.isfinite(x) & np.isfinite(y)
        if keep.sum() >= 1:
            xs, ysrc = x[keep], y[keep]
            inside = (grid >= xs.min()) & (grid <= xs.max())
            ys[i, inside] = np.interp(grid[inside], xs, ysrc)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: no run there yet
        return grid, np.nanmean(ys, axis=0), np.nanmin(ys, axis=0), np.nanmax(ys, axis=0)


def series(
    chart_lines: list[Line], metric: str, axis: str, points: int, band: bool = True, marks: bool = False
) -> list[Series]:
    """The Series of one chart: per line, its curve (a fold: the mean, and its min and max, dim). `marks`
    (NO_COLOR): each line drawn in its run's mark, the table's, so the lines tell apart without colour."""
    out = []
    for line in chart_lines:
        rgb = colour(line.leader.run.index)
        marker = mark(line.leader.run.index) if marks else "hd"
        curves = [xy(d, metric, axis) for d in line.details]
        if len(curves) == 1:
            x, y = downsample(*curves[0], points)
            out.append(Series(None, x, y, rgb, marker=marker))
            continue
        grid, mean, low, high = fold_band(curves, points)
        if band:
            out.append(Series(None, grid, low, dim(rgb), marker=BAND_MARK))
            out.append(Series(None, grid, high, dim(rgb), marker=BAND_MARK))
        out.append(Series(None, grid, mean, rgb, marker=marker))
    return out
