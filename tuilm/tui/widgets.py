"""The dashboard's widgets. Each shows one thing and is fed from above: the app sets data, no widget reads the
store or the trainer. Colours and sizes live in dashboard.tcss."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Group
from rich.style import Style
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.color import Gradient
from textual.containers import Vertical
from textual.reactive import reactive
from textual.screen import ModalScreen
from textual.widget import Widget
from textual.widgets import DataTable, Sparkline, Static
from textual_plotext import PlotextPlot

from tuilm.config import HealthConfig
from tuilm.formatting import fmt_bytes, fmt_duration, human
from tuilm.sysinfo import SystemSample
from tuilm.train import events as ev
from tuilm.train.progress import eta_seconds, leading_limit, limit_text

STATES = {
    "starting": ("○", "dim"),
    "running": ("●", "green"),
    "paused": ("‖", "yellow"),
    "pausing": ("‖", "yellow"),
    "evaluating": ("◆", "cyan"),
    "saving": ("◆", "cyan"),
    "stopping": ("■", "magenta"),
    "finished": ("✔", "bold green"),
    "failed": ("✘", "bold red"),
}


def sci(x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return str(x)
    return f"{x:.2e}" if x and not 1e-2 <= abs(x) < 1e4 else f"{x:.3g}"


class RunHeader(Widget):
    """Three lines: what is training (run, recipe, data, model, device), how far it is, and the alerts so far
    with the newest one, so that an alert is in view from every page."""

    run: reactive[ev.RunStarted | None] = reactive(None)
    step: reactive[ev.Step | None] = reactive(None)
    state: reactive[str] = reactive("starting")
    end: reactive[ev.Finished | ev.Failed | None] = reactive(None)
    alerts: reactive[int] = reactive(0)
    newest: reactive[ev.Alert | None] = reactive(None)

    def render(self) -> Group:
        return Group(self._identity(), self._progress(), self._alert_line())

    def alert(self, event: ev.Alert | None) -> None:
        """One more alert (None: none any more, a new run)."""
        self.alerts, self.newest = (self.alerts + 1, event) if event else (0, None)

    def _alert_line(self) -> Text:
        text = Text(no_wrap=True, overflow="ellipsis")
        if not self.alerts:
            text.append("alerts 0", style="dim")
            return text
        # The count says it in words and a mark too: colour is never the only channel.
        text.append(f"▲ alerts {self.alerts}", style="bold red")
        a = self.newest
        if a is not None:
            text.append("  newest: ", style="dim")
            text.append(f"step {a.step} {a.severity}: {a.message}")
        return text

    def _identity(self) -> Text:
        r = self.run
        if r is None:
            return Text("tuilm  waiting for the run to start…", style="bold", no_wrap=True, overflow="ellipsis")
        model, data = r.config.get("model", {}), r.data
        source = Path(str(data.get("source", "?"))).name
        pad = data.get("padding_fraction") or 0
        policy = f"{data.get('policy', '?')} {model.get('seq_len', '?')}" + (f" ({pad:.0%} pad)" if pad else "")
        parts = [
            (r.name, "bold"),
            f"recipe {r.recipe}",
            f"data {source}",
            f"{human(r.params)} params",
            f"{r.device} {r.dtype}",
            f"seq {policy}",
        ]
        text = Text(no_wrap=True, overflow="ellipsis")
        for i, part in enumerate(parts):
            if i:
                text.append(" · ", style="dim")
            if isinstance(part, tuple):
                text.append(*part)
            else:
                text.append(part)
        return text

    def _progress(self) -> Text:
        s, r = self.step, self.run
        symbol, style = STATES.get(self.state, ("●", ""))
        status = Text.assemble((f"{symbol} {self.state}", style))
        if s is None:
            return status
        # The limit that ends the run first (steps, tokens, epochs or time) sets the count and the bar.
        limit = leading_limit(r.config if r else None, s)
        fraction = limit.fraction if limit else s.progress
        known = fraction is not None and math.isfinite(fraction)
        count = f"step {limit_text(s, limit)}"
        elapsed = self.end.elapsed if isinstance(self.end, ev.Finished) else s.elapsed
        eta = fmt_duration(eta_seconds(s)) if self.end is None else "done" if isinstance(self.end, ev.Finished) else "-"
        tail = f"  epoch {s.epoch:.2f}  elapsed {fmt_duration(elapsed)}  eta {eta}   "
        percent = f" {min(fraction, 1.0):4.0%}" if known else ""  # a time budget is checked between steps
        bar_width = max(0, min(40, self.size.width - len(count) - len(percent) - len(tail) - len(status) - 2))
        text = Text(count, style="bold", no_wrap=True, overflow="ellipsis")
        if known and bar_width >= 5:
            done = round(min(1.0, max(0.0, fraction)) * bar_width)
            text.append(" ")
            text.append("━" * done, style="green")
            text.append("━" * (bar_width - done), style="dim")
        text.append(percent)
        text.append(tail)
        text.append_text(status)
        return text


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
        return [lo], [short(lo)]
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
    return ticks, [short(t) for t in ticks]


def short(x: float) -> str:
    if x == 0:
        return "0"
    if abs(x) >= 1000:
        return human(x)
    if abs(x) < 0.01:
        return f"{x:.0e}".replace("e-0", "e-")
    return f"{x:.3g}"


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
        verdict = self.limits.judge_update(ratio)
        style = {"healthy": "green", "warn": "yellow", "bad": "bold red"}[verdict]
        label = Text.assemble(("worst layer ", "dim"), (name, "bold"), ("  log10 Δw/w ", "dim"))
        label.append(f"{ratio:.2f}", style=style)
        label.append(f" {verdict}", style=style)  # the word as well as the colour
        label.append(f"  (band {self.limits.update_low:g}..{self.limits.update_high:g}, step {h.step})", style="dim")
        self.query_one("#grad-worst", Static).update(label, layout=False)

    def show(self, norms: np.ndarray, clipped: np.ndarray, clip: float) -> None:
        norms = norms[np.isfinite(norms)]
        if not len(norms):
            return
        label = Text.assemble(("now ", "dim"), sci(float(norms[-1])), ("  max ", "dim"), sci(float(norms.max())))
        if clip:
            share = float(clipped.mean()) if len(clipped) else 0.0
            label.append("  clip ", style="dim")
            label.append(f"{clip:g}", style="bold red" if norms[-1] > clip else "bold")
            label.append(f"  {share:.0%} of {len(clipped)} steps clipped", style="dim")
        else:
            label.append("  no clipping", style="dim")
        self.query_one("#grad-label", Static).update(label, layout=False)
        self.query_one("#grad-spark", Sparkline).data = norms.tolist()


def worst_update_layer(h: ev.Health, limits: HealthConfig) -> tuple[str, float] | None:
    """(layer, log10 update/weight ratio) of the layer furthest from the middle of the healthy band; a non-finite
    ratio is the worst of all."""
    if not h.layers:
        return None
    middle = (limits.update_low + limits.update_high) / 2

    def distance(item: tuple[str, float]) -> float:
        return abs(item[1] - middle) if math.isfinite(item[1]) else math.inf

    return max(zip(h.layers, h.update_ratio, strict=True), key=distance)


class LayerBars(Widget):
    """Per layer group: gradient norm (log scale across layers) and log10 update/weight ratio, each coloured by
    the health monitor's own thresholds. Layers with a recent alert are marked."""

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
        median = sorted(h.grad_norm)[len(h.grad_norm) // 2] if h.grad_norm else 0.0
        text = Text(no_wrap=True, overflow="crop")
        first = "grad norm" if numbers else "grad"
        text.append(f"{'':<{name_w}}{first:<{bar_w + (11 if numbers else 2)}}log10 Δw/w\n", style="dim")
        for i, (name, g, r) in enumerate(zip(h.layers, h.grad_norm, h.update_ratio, strict=True)):
            if i:
                text.append("\n")
            text.append(f"{name:<{name_w}}", style=marked if _alerted(name, self.alerted) else "")
            level = math.log10(g) if math.isfinite(g) and g > 0 else lo
            grad_fill = 1.0 if not math.isfinite(g) else (level - lo) / max(hi - lo, 1e-9)
            text.append(_bar(grad_fill, bar_w), style=styles[self.limits.judge_grad(g, median)])
            if numbers:
                text.append(f" {sci(g):>8}")
            ratio_fill = (r + 6) / 6 if math.isfinite(r) else 1.0  # 10^-6 (frozen) .. 10^0 (rewritten each step)
            text.append(f"  {_bar(ratio_fill, bar_w)}", style=styles[self.limits.judge_update(r)])
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


class ConfirmQuit(ModalScreen[bool]):
    BINDINGS = [
        Binding("y,q,enter", "answer(True)", "Quit", show=False),
        Binding("n,escape", "answer(False)", "Keep training", show=False),
    ]

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static("Stop training and quit?", classes="title")
            yield Static("The current step finishes and last.safetensors is saved first.")
            yield Static("[b]y[/b]/[b]q[/b] quit    [b]n[/b]/[b]esc[/b] keep training", classes="keys")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


HELP = """\
[b]Keys[/b]
  [b]p[/b]        pause / resume training
  [b]s[/b]        save a checkpoint now
  [b]g[/b]        generate a sample now (from the recipe's prompt)
  [b]e[/b]        evaluate on the validation set now
  [b]l[/b]        loss chart: log / linear scale
  [b]c[/b]        compare with another run (asks which; then on/off)
  [b]m[/b]        loss chart: smoothed train loss (debiased EMA) on / off
  [b]1 2 3[/b]    pages, on a small terminal
  [b]enter[/b]    after training: chat with the best checkpoint
  [b]q[/b]        stop, save last.safetensors and quit (asks first)
  [b]ctrl+c[/b]   the same without asking; twice: leave at once

[b]Panels[/b]
  [b]layers[/b]   grad norm per layer group, and log10 update/weight
           (near -3 is healthy): green fine, yellow drifting,
           red where the health monitor raises alerts
  [b]heatmap[/b]  grad norm per layer over time, log scale: shades
           ░▒▓█ (and colours) low to high, the key below it
  [b]mouse[/b]    tabs; the gradient panel opens page 2, the header 3
  [b]alerts[/b]   the panel an alert concerns is outlined for 100 steps
  [b]system[/b]   page 3: CPU, RAM and (CUDA, nvidia-ml-py) GPU use

Any key closes this help."""


class HelpScreen(ModalScreen[None]):
    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static(HELP)

    def on_key(self, event) -> None:
        event.stop()
        self.dismiss()


def system_lines(sample: SystemSample | None, note: str = "") -> Text:
    """The system panel's text: CPU, RAM and (on CUDA) GPU lines, or `note` when there is nothing to show."""
    if sample is None:
        return Text(note or "waiting for the first sample", style="dim")
    text = Text(no_wrap=True, overflow="ellipsis")
    load = f" · load {sample.load:.2f}" if sample.load is not None else ""
    text.append("CPU  ", style="bold")
    text.append(f"process {sample.process_cpu:.0f}% · system {sample.system_cpu:.0f}% of {sample.cores} cores{load}")
    share = sample.memory_used / sample.memory_total if sample.memory_total else 0.0
    text.append("\nRAM  ", style="bold")
    text.append(f"process {fmt_bytes(sample.process_rss)} · system ")
    text.append(f"{fmt_bytes(sample.memory_used)}/{fmt_bytes(sample.memory_total)} ({share:.0%})")
    g = sample.gpu
    if g is not None:
        text.append("\nGPU  ", style="bold")
        text.append(
            f"{g.name} {g.utilization:.0f}% busy · memory {fmt_bytes(g.memory_used)}/{fmt_bytes(g.memory_total)}"
        )
        if g.power_w is not None:
            limit = f"/{g.power_limit_w:.0f}" if g.power_limit_w else ""
            text.append(f" · power {g.power_w:.0f}{limit} W")
    elif sample.gpu_note:
        text.append("\nGPU  ", style="bold")
        text.append(sample.gpu_note, style="dim")
    return text


class SystemPanel(Static):
    """CPU, RAM and GPU figures of the machine training the run (fed by tuilm.tui.system)."""

    def show(self, sample: SystemSample | None, note: str = "") -> None:
        self.update(system_lines(sample, note))
