"""The board's two comparisons of picked runs: their settings that differ (`d`) and two runs' per-layer gradient
health side by side (`h`), with the layers whose health differs most marked. Esc (or q) comes back."""

from __future__ import annotations

import re

import numpy as np
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from tuilm.formatting import show_value
from tuilm.sweep.runinfo import differing_keys
from tuilm.train import events as ev
from tuilm.tui.board_charts import colour, mark
from tuilm.tui.board_data import BoardRun, Detail
from tuilm.tui.health_panels import GradHeatmap

MARKED = 3  # layers marked as differing most
RECENT = 20  # health measurements compared (the newest of each run)


class Back(Screen[None]):
    BINDINGS = [Binding("escape,q", "app.pop_screen", "Back")]


class DiffScreen(Back):
    """The settings in which the picked runs differ, one column per run."""

    def __init__(self, runs: list[BoardRun]):
        super().__init__()
        self.runs = runs

    def compose(self) -> ComposeResult:
        keys = differing_keys([r.config for r in self.runs], ignore=("description",))
        title = (
            f"settings that differ between {len(self.runs)} runs" if keys else "the picked runs have the same settings"
        )
        yield Static(Text(title, style="bold"), id="diff-title")
        table = DataTable(id="diff", cursor_type="row", zebra_stripes=True)
        table.add_column("setting")
        for run in self.runs:
            table.add_column(Text(f"{mark(run.index)} {run.name}", style=f"rgb{colour(run.index)}"))
        for key in keys:
            table.add_row(key, *[show_value(r.config[key]) if key in r.config else "unset" for r in self.runs])
        yield table
        yield Footer()


def layer_levels(history: list[ev.Health]) -> dict[str, float]:
    """Each layer's mean log10 gradient norm over the newest measurements."""
    if not history:
        return {}
    layers = history[-1].layers
    rows = [h.grad_norm for h in history[-RECENT:] if h.layers == layers]
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.log10(np.array(rows, dtype=float))
    logs[~np.isfinite(logs)] = np.nan
    with np.errstate(all="ignore"):
        means = np.nanmean(logs, axis=0) if np.isfinite(logs).any() else np.full(len(layers), np.nan)
    return dict(zip(layers, means.tolist(), strict=True))


def differing_layers(a: list[ev.Health], b: list[ev.Health], count: int = MARKED) -> list[tuple[str, float]]:
    """The layers both runs have, by how far apart their gradient norms are (decades), most first."""
    la, lb = layer_levels(a), layer_levels(b)
    gaps = [(name, abs(la[name] - lb[name])) for name in la if name in lb and np.isfinite(la[name] - lb[name])]
    return sorted(gaps, key=lambda g: -g[1])[:count]


def shared_scale(*histories: list[ev.Health]) -> tuple[float, float] | None:
    """The log10 range of every gradient norm in both runs."""
    norms = np.array([g for history in histories for h in history for g in h.grad_norm], dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.log10(norms)
    logs = logs[np.isfinite(logs)]
    return (float(logs.min()), float(logs.max())) if len(logs) else None


class MarkedHeatmap(GradHeatmap):
    """The dashboard's heatmap with some layer names in reverse video (reads without colour)."""

    def __init__(self, marked: set[str], **kwargs):
        super().__init__(**kwargs)
        self.marked = marked

    def render(self) -> Text:
        text = super().render()
        for name in self.marked:
            text.highlight_regex(rf"(?m)^{re.escape(name)}(?= )", style="reverse bold")
        return text


class HealthScreen(Back):
    """Two runs' gradient-norm heatmaps side by side."""

    def __init__(self, a: Detail, b: Detail):
        super().__init__()
        self.pair = (a, b)
        self.histories = (a.store.health_history(), b.store.health_history())
        self.gaps = differing_layers(*self.histories)

    def compose(self) -> ComposeResult:
        marked = {name for name, _ in self.gaps}
        with Horizontal(id="heatmaps"):
            for detail in self.pair:
                run = detail.run
                with Vertical(classes="heat-side"):
                    title = Text(f"{mark(run.index)} {run.name}", style=f"bold rgb{colour(run.index)}")
                    yield Static(title, classes="heat-title")
                    yield MarkedHeatmap(marked, classes="heat")
        yield Static(self._gap_text(), id="heat-gaps")
        yield Footer()

    def on_mount(self) -> None:
        scale = shared_scale(*self.histories)
        for widget, history in zip(self.query(MarkedHeatmap), self.histories, strict=True):
            widget.scale = scale  # one colour scale: the same shade is the same gradient norm in both maps
            widget.show(history)

    def _gap_text(self) -> Text:
        if not self.gaps:
            return Text("no layers to compare yet (the runs need health measurements of the same layers)", style="dim")
        text = Text("differ most (gradient norm, decades apart): ", style="dim")
        for i, (name, gap) in enumerate(self.gaps):
            text.append(("  " if i else "") + name, style="reverse bold")
            text.append(f" {gap:.2f}")
        return text
