"""The gradient-health widgets: the gradient norm with the worst layer (first page), the per-layer bars, the
gradient heatmap and the activation table (health page). Each is fed from above (the app sets data); every
colour and word of a verdict comes from tuilm.train.verdict, the rule the monitor's alerts use."""

from __future__ import annotations

import math

import numpy as np
from rich.style import Style
from rich.text import Text
from textual.app import ComposeResult
from textual.color import Gradient
from textual.containers import Vertical
from textual.reactive import reactive
from textual.widget import Widget
from textual.widgets import DataTable, Sparkline, Static

from tuilm.config import HealthConfig
from tuilm.formatting import fmt_sci
from tuilm.train import events as ev
from tuilm.train.verdict import judge_layers, update_verdict, worst_update_layer


class GradNorm(Vertical):
    """The global gradient norm of recent steps against the clipping threshold, and the layer whose update/weight
    ratio is furthest from the healthy band."""

    limits: reactive[HealthConfig] = reactive(HealthConfig)

    def compose(self) -> ComposeResult:
        yield Static(Text("gradient norm: waiting for the first step", style="dim"), id="grad-label")
        yield Static(Text("worst layer: waiting for the first health measurement", style="dim"), id="grad-worst")
        yield Sparkline([], id="grad-spark")

    def show_worst(self, h: ev.Health) -> None:
        worst = worst_update_layer(h, self.limits)
        if worst is None:
            return
        name, ratio = worst
        verdict = update_verdict(ratio, self.limits)
        style = {"healthy": "green", "warn": "yellow", "bad": "bold red"}[verdict.level]
        label = Text.assemble(("worst layer ", "dim"), (name, "bold"), ("  log10 Δw/w ", "dim"))
        label.append(f"{ratio:.2f}", style=style)
        label.append(f" {verdict.level}", style=style)  # the word as well as the colour
        if verdict.rule:  # which rule tripped: inside the band near its edge and outside it are both warnings
            label.append(f": {verdict.rule}", style=style)
        label.append(f"  (band {self.limits.update_low:g}..{self.limits.update_high:g}, step {h.step})", style="dim")
        self.query_one("#grad-worst", Static).update(label, layout=False)

    def show(self, norms: np.ndarray, clipped: np.ndarray, clip: float) -> None:
        norms = norms[np.isfinite(norms)]
        if not len(norms):
            return
        label = Text.assemble(
            ("now ", "dim"), fmt_sci(float(norms[-1])), ("  max ", "dim"), fmt_sci(float(norms.max()))
        )
        if clip:
            share = float(clipped.mean()) if len(clipped) else 0.0
            label.append("  clip ", style="dim")
            label.append(f"{clip:g}", style="bold red" if norms[-1] > clip else "bold")
            label.append(f"  {share:.0%} of {len(clipped)} steps clipped", style="dim")
        else:
            label.append("  no clipping", style="dim")
        self.query_one("#grad-label", Static).update(label, layout=False)
        self.query_one("#grad-spark", Sparkline).data = norms.tolist()


class LayerBars(Widget):
    """Per layer group: gradient norm (log scale across layers) and log10 update/weight ratio, each coloured by
    the verdict the health monitor's alerts use (tuilm.train.verdict). Layers with a recent alert are marked."""

    COMPONENT_CLASSES = {"layer-bars--healthy", "layer-bars--warn", "layer-bars--bad", "layer-bars--alerted"}

    health: reactive[ev.Health | None] = reactive(None)
    limits: reactive[HealthConfig] = reactive(HealthConfig)
    alerted: reactive[frozenset[str]] = reactive(frozenset())

    def watch_health(self, old: ev.Health | None, new: ev.Health | None) -> None:
        # A new layout (the whole screen reflowed, charts rebuilt) only when the number of rows changes.
        if (old and len(old.layers)) != (new and len(new.layers)):
            self.refresh(layout=True)

    def get_content_height(self, container, viewport, width: int) -> int:
        return 1 + (len(self.health.layers) if self.health else 0)

    def render(self) -> Text:
        h = self.health
        if h is None:
            return Text("waiting for the first health measurement", style="dim")
        styles = {k: self.get_component_rich_style(f"layer-bars--{k}") for k in ("healthy", "warn", "bad")}
        marked = self.get_component_rich_style("layer-bars--alerted")
        name_w = max(len(name) for name in h.layers) + 2
        numbers = self.size.width - name_w - 18 >= 8  # room for grad-norm values besides bars of 4 or more
        bar_w = max(2, (self.size.width - name_w - (18 if numbers else 9)) // 2)
        finite = [math.log10(g) for g in h.grad_norm if math.isfinite(g) and g > 0]
        lo, hi = (min(finite) - 1, max(finite)) if finite else (0.0, 1.0)
        text = Text(no_wrap=True, overflow="crop")
        first = "grad norm" if numbers else "grad"
        text.append(f"{'':<{name_w}}{first:<{bar_w + (11 if numbers else 2)}}log10 Δw/w\n", style="dim")
        verdicts = judge_layers(h, self.limits)  # the monitor's own rule: the colours are its alerts' severities
        for i, (name, g, r, v) in enumerate(zip(h.layers, h.grad_norm, h.update_ratio, verdicts, strict=True)):
            if i:
                text.append("\n")
            text.append(f"{name:<{name_w}}", style=marked if _alerted(name, self.alerted) else "")
            level = math.log10(g) if math.isfinite(g) and g > 0 else lo
            grad_fill = 1.0 if not math.isfinite(g) else (level - lo) / max(hi - lo, 1e-9)
            text.append(_bar(grad_fill, bar_w), style=styles[v.grad.level])
            if numbers:
                text.append(f" {fmt_sci(g):>8}")
            ratio_fill = (r + 6) / 6 if math.isfinite(r) else 1.0  # 10^-6 (frozen) .. 10^0 (rewritten each step)
            text.append(f"  {_bar(ratio_fill, bar_w)}", style=styles[v.update.level])
            text.append(f" {r:>6.2f}")
        return text


def _alerted(layer: str, alerted: frozenset[str]) -> bool:
    # Alerts name a group ("block1.attn") or a part of one ("block1.mlp" for dead units).
    return layer in alerted or any(a.startswith(layer + ".") or layer.startswith(a + ".") for a in alerted)


def _bar(fill: float, width: int) -> str:
    cells = min(1.0, max(0.0, fill)) * width
    full = int(cells)
    part = " ▏▎▍▌▋▊▉"[int((cells - full) * 8)] if full < width else ""
    return ("█" * full + part).ljust(width)


HEAT = Gradient((0.0, "#1d1f4f"), (0.35, "#26828e"), (0.7, "#b5de2b"), (1.0, "#fde725"))
# Styles made once: parsing a colour per cell made a redraw of a 30x8 map cost 30 ms.
NONFINITE = Style(color="red", bold=True)
HEAT_LEVELS = [Style(color=HEAT.get_color(i / 31).rich_color) for i in range(32)]
HEAT_GLYPHS = "░▒▓█"  # quarters of the log scale, lowest first


def heat_legend(lo: float, hi: float, width: int) -> Text:
    """The heatmap's key: each shade (in its colour) with the gradient norm its quarter of the log scale starts at,
    then the top of the scale and `×` for non-finite; right-aligned under the map where it fits."""

    def e(x: float) -> str:
        return f"{x:.0e}".replace("e-0", "e-").replace("e+0", "e")

    legend = Text(style="dim")
    for k, glyph in enumerate(HEAT_GLYPHS):
        legend.append(glyph, style=HEAT_LEVELS[k * 8 + 4])
        legend.append(f"{e(10 ** (lo + (hi - lo) * k / 4))} ", style="dim")
    legend.append(f"..{e(10**hi)} ×nan", style="dim")
    legend.pad_left(max(0, width - len(legend)))
    return legend


class GradHeatmap(Widget):
    """Gradient norm per layer group (rows) over time (columns, binned to the width), log colour scale."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.history: list[ev.Health] = []
        self.scale: tuple[float, float] | None = None  # log10 range shared with another map (tuilm board), else own

    def show(self, history: list[ev.Health]) -> None:
        rows = len(self.history[-1].layers) if self.history else 0
        self.history = history
        self.refresh(layout=rows != (len(history[-1].layers) if history else 0))

    def get_content_height(self, container, viewport, width: int) -> int:
        return 2 + (len(self.history[-1].layers) if self.history else 0)

    def render(self) -> Text:
        if not self.history:
            return Text("waiting for the first health measurement", style="dim")
        layers = self.history[-1].layers
        rows = [h for h in self.history if h.layers == layers]
        name_w = max(len(name) for name in layers) + 1
        cols = max(1, self.size.width - name_w)
        with np.errstate(divide="ignore", invalid="ignore"):
            logs = np.log10(np.array([h.grad_norm for h in rows], dtype=float)).T  # (layers, time)
        bins = np.array_split(np.arange(logs.shape[1]), min(cols, logs.shape[1]))
        finite = logs[np.isfinite(logs)]
        lo, hi = self.scale or ((float(finite.min()), float(finite.max())) if len(finite) else (0.0, 1.0))
        starts = np.array([b[0] for b in bins])
        with np.errstate(invalid="ignore"):
            means = np.add.reduceat(logs, starts, axis=1) / np.array([len(b) for b in bins])
        # Fewer measurements than columns (early in a run): each one is drawn wider, so the map fills the panel.
        means = np.repeat(means, max(1, cols // means.shape[1]), axis=1)
        levels = np.clip((means - lo) / max(hi - lo, 1e-9) * 31, 0, 31)
        text = Text(no_wrap=True, overflow="crop")
        for i, name in enumerate(layers):
            text.append(f"{name:<{name_w}}")
            for level in levels[i]:
                if np.isfinite(level):
                    # A shade per quarter of the scale as well as the colour: the map reads without colour too.
                    text.append(HEAT_GLYPHS[int(level) // 8], style=HEAT_LEVELS[int(level)])
                else:
                    text.append("×", style=NONFINITE)
            text.append("\n")
        first, last = f"step {rows[0].step}", f"{rows[-1].step}"
        span = levels.shape[1]
        if len(rows) == 1:
            axis = first
        elif span > len(first) + len(last):
            axis = first + last.rjust(span - len(first))
        else:
            axis = f"steps {first[5:]}-{last}"
        text.append(" " * name_w + axis + "\n", style="dim")
        text.append_text(heat_legend(lo, hi, min(self.size.width, name_w + span)))
        return text


class ActivationTable(DataTable):
    """Per block: output activation std, MLP hidden std, fraction of dead ReLU units, attention entropy."""

    def on_mount(self) -> None:
        self.cursor_type = "none"
        self.zebra_stripes = True
        self.add_columns("block", "out std", "mlp std", "dead", "attn entropy")

    def show(self, h: ev.Health) -> None:
        rows = [tuple(h.block_cells(i, ".3f", ".0%")) for i in range(len(h.blocks))]
        if [str(key.value) for key in self.rows] != h.blocks:
            # Only a new set of blocks changes the table's height: otherwise cells change in place (no reflow).
            self.clear()
            for row in rows:
                self.add_row(*row, key=row[0])
            return
        for row in rows:
            for column, value in zip(self.ordered_columns, row, strict=True):
                self.update_cell(row[0], column.key, value)
