"""Sweep and comparison plots: PNG files through matplotlib (an optional extra) and terminal charts through
plotext. Both draw the same two things: best val loss against each swept key, and learning curves by value."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.text import Text

from tuilm.formatting import show_value
from tuilm.sweep.results import OK, Row
from tuilm.sweep.runinfo import RunSummary

MAX_SERIES = 8  # lines in a val-loss-vs-key plot; more are averaged into one
POOLED = "mean over the other settings (± std)"
MAX_POINTS = 400  # per curve: more is invisible at terminal or PNG resolution and slows plotting down
MARKERS = "•x+o*#@%"  # told apart without colour (output piped to a file)
COLORS = ("blue", "red", "green", "orange", "magenta", "cyan", "gray", "yellow")


# -- the data both renderers draw ----------------------------------------------------------------------------------


def value_of(row: Row, key: str) -> Any:
    return row.seed if key == "seed" else row.values.get(key)


def axis_values(rows: list[Row], key: str) -> list[Any]:
    seen: list[Any] = []
    for row in rows:
        value = value_of(row, key)
        if value not in seen:
            seen.append(value)
    return seen


def is_numeric(values: Sequence[Any]) -> bool:
    return all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)


def log_scale(values: Sequence[Any]) -> bool:
    # Learning rates and sizes are swept in multiples; a spread of 8x or more reads better on a log axis.
    return is_numeric(values) and min(values) > 0 and max(values) / min(values) >= 8


def loss_vs_key(rows: list[Row], keys: list[str], key: str) -> list[tuple[str, list[Any], list[float], list[float]]]:
    """Series (one per combination of the other keys, or their average when there are more than MAX_SERIES) of
    (label, x values, mean best val loss, std over seeds or the averaged runs)."""
    others = [k for k in keys if k != key]
    series: dict[str, dict[Any, list[float]]] = {}
    for row in rows:
        if row.status != OK or row.best_val_loss is None or not math.isfinite(row.best_val_loss):
            continue
        label = ", ".join(f"{k.split('.')[-1]}={show_value(row.values.get(k))}" for k in others) or "best val loss"
        series.setdefault(label, {}).setdefault(value_of(row, key), []).append(row.best_val_loss)
    order = axis_values(rows, key)
    if len(series) > MAX_SERIES:
        # A line per combination of the other keys would be a tangle: show the key's effect averaged over them.
        pooled: dict[Any, list[float]] = {}
        for by_value in series.values():
            for value, losses in by_value.items():
                pooled.setdefault(value, []).extend(losses)
        series = {POOLED: pooled}
    out = []
    for label, by_value in series.items():
        xs = [v for v in order if v in by_value]
        means = [sum(by_value[v]) / len(by_value[v]) for v in xs]
        stds = [_std(by_value[v]) for v in xs]
        out.append((label, xs, means, stds))
    return out if sum(len(xs) for _, xs, _, _ in out) > 1 else []  # one point is no plot


def _std(xs: list[float]) -> float:
    if len(xs) < 2:
        return 0.0
    mean = sum(xs) / len(xs)
    return math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1))


def smooth(points: list[tuple[int, float]], limit: int = MAX_POINTS) -> tuple[list[int], list[float]]:
    """An exponential moving average (per-step loss is noisy), thinned to at most `limit` points."""
    if not points:
        return [], []
    alpha = min(1.0, 20 / len(points)) if len(points) > 20 else 1.0
    xs, ys, avg = [], [], points[0][1]
    for step, loss in points:
        avg = alpha * loss + (1 - alpha) * avg
        xs.append(step)
        ys.append(avg)
    stride = max(1, math.ceil(len(xs) / limit))
    keep = list(range(0, len(xs), stride))
    if keep[-1] != len(xs) - 1:
        keep.append(len(xs) - 1)
    return [xs[i] for i in keep], [ys[i] for i in keep]


def curve_rows(rows: list[Row]) -> list[Row]:
    # A diverged run's losses run to millions and would flatten every other curve; results.md lists it.
    return [
        r for r in rows if r.summary is not None and r.status != "diverged" and (r.summary.train or r.summary.evals)
    ]


def val_curve(summary: RunSummary) -> tuple[list[int], list[float]]:
    evals = [e for e in summary.evals if math.isfinite(e.val_loss)]
    return [e.step for e in evals], [e.val_loss for e in evals]


def file_label(key: str, labels: dict[str, str]) -> str:
    return labels.get(key, key).replace(".", "_")


# -- PNG ---------------------------------------------------------------------------------------------------------


def matplotlib_missing() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return True
    return False


def write_pngs(folder: Path, rows: list[Row], keys: list[str], labels: dict[str, str]) -> list[str]:
    """The plots as PNG files in `folder`; their names. Call only when matplotlib is importable."""
    # Figure objects, not pyplot: no global state, no GUI backend, safe next to a running dashboard.
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullLocator

    written = []
    plot_keys = keys or ["seed"]
    for key in keys:
        data = loss_vs_key(rows, keys, key)
        if not data:
            continue
        fig = Figure(figsize=(6.4, 4.2), layout="constrained")
        ax = fig.add_subplot()
        order = axis_values(rows, key)
        numeric = is_numeric(order)
        for label, xs, means, stds in data:
            pos = xs if numeric else [order.index(x) for x in xs]
            ax.errorbar(pos, means, yerr=stds if any(stds) else None, marker="o", capsize=3, label=label)
        if log_scale(order):
            # Ticks at the values tried, as typed: 10^-3-style minor labels ran into each other.
            ax.set_xscale("log")
            ax.set_xticks(order, [show_value(v) for v in order])
            ax.xaxis.set_minor_locator(NullLocator())
        if not numeric:
            ax.set_xticks(range(len(order)), [show_value(v) for v in order])
        ax.set_xlabel(labels.get(key, key))
        ax.set_ylabel("best val loss")
        ax.set_title(f"best val loss vs {labels.get(key, key)}")
        ax.grid(alpha=0.3)
        if len(data) > 1 or data[0][0] == POOLED:
            ax.legend(fontsize="small")
        name = f"val_loss_vs_{file_label(key, labels)}.png"
        fig.savefig(folder / name, dpi=110)
        written.append(name)
    for key in plot_keys:
        name = f"curves_by_{file_label(key, labels)}.png"
        if _png_curves(folder / name, rows, key, labels.get(key, key)):
            written.append(name)
    return written


def _png_curves(path: Path, rows: list[Row], key: str, label: str) -> bool:
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    runs = curve_rows(rows)
    if not runs:
        return False
    order = axis_values(runs, key)
    if is_numeric(order) and len(order) > 1:
        ranks = {v: i for i, v in enumerate(sorted(order))}
        cmap = colormaps["viridis"]
        colour = {v: cmap(0.9 * ranks[v] / (len(order) - 1)) for v in order}
    else:
        cmap = colormaps["tab10"]
        colour = {v: cmap(i % 10) for i, v in enumerate(order)}
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    train_ax, val_ax = fig.subplots(1, 2)
    labelled: set[str] = set()
    for row in runs:
        value = value_of(row, key)
        legend = f"{label}={show_value(value)}"
        kwargs = {"color": colour[value], "label": None if legend in labelled else legend}
        labelled.add(legend)
        train_ax.plot(*smooth(row.summary.train), linewidth=1.2, **kwargs)
        val_ax.plot(*val_curve(row.summary), marker=".", linewidth=1.2, color=colour[value])
    for ax, what in ((train_ax, "train loss (smoothed)"), (val_ax, "val loss")):
        ax.set_xlabel("step")
        ax.set_ylabel(what)
        ax.grid(alpha=0.3)
    train_ax.set_title(f"learning curves by {label}")
    train_ax.legend(fontsize="small")
    fig.savefig(path, dpi=110)
    return True


# -- terminal ----------------------------------------------------------------------------------------------------


def _canvas(console: Console, title: str, xlabel: str, ylabel: str):
    import plotext as plt

    plt.clear_figure()
    plt.plotsize(min(console.width, 100), 18)
    plt.title(title)
    plt.xlabel(xlabel)
    plt.ylabel(ylabel)
    return plt


def _show(console: Console, plt) -> None:
    # plotext builds a string with ANSI colours; rich keeps them on a terminal and drops them elsewhere.
    console.print(Text.from_ansi(plt.build()), soft_wrap=True)


def _style(console: Console, i: int) -> dict[str, str]:
    marker = "braille" if console.is_terminal else MARKERS[i % len(MARKERS)]
    return {"color": COLORS[i % len(COLORS)], "marker": marker}


def terminal_sweep_plots(console: Console, rows: list[Row], keys: list[str], labels: dict[str, str]) -> None:
    for key in keys:
        data = loss_vs_key(rows, keys, key)
        if not data:
            continue
        label = labels.get(key, key)
        plt = _canvas(console, f"best val loss vs {label}", label, "best val loss")
        order = axis_values(rows, key)
        numeric = is_numeric(order)
        for i, (name, xs, means, _) in enumerate(data):
            pos = xs if numeric else [order.index(x) for x in xs]
            style = _style(console, i)
            plt.plot(pos, means, label=name if len(data) > 1 else None, **style)
            plt.scatter(pos, means, color=style["color"], marker="●" if console.is_terminal else style["marker"])
        if log_scale(order):
            plt.xscale("log")
        if not numeric:
            plt.xticks(list(range(len(order))), [show_value(v) for v in order])
        _show(console, plt)
    for key in keys or ["seed"]:
        label = labels.get(key, key)
        runs = [r for r in curve_rows(rows) if val_curve(r.summary)[0]]
        if not runs:
            continue
        plt = _canvas(console, f"val loss by {label}", "step", "val loss")
        order = axis_values(runs, key)
        labelled: set[Any] = set()
        for row in runs:
            value = value_of(row, key)
            legend = None if value in labelled else f"{label}={show_value(value)}"
            labelled.add(value)
            plt.plot(*val_curve(row.summary), label=legend, **_style(console, order.index(value)))
        _show(console, plt)


def terminal_overlay(console: Console, runs: list[tuple[str, RunSummary]]) -> None:
    """Val loss and train loss against step, one line per run (tuilm compare)."""
    for title, curve in (("val loss", val_curve), ("train loss (smoothed)", lambda s: smooth(s.train))):
        curves = [(label, curve(summary)) for label, summary in runs]
        if not any(xs for _, (xs, _) in curves):
            console.print(f"no {title.split(' (')[0]} recorded yet")
            continue
        plt = _canvas(console, title, "step", "loss")
        for i, (label, (xs, ys)) in enumerate(curves):
            if xs:
                plt.plot(xs, ys, label=label, **_style(console, i))
        _show(console, plt)
