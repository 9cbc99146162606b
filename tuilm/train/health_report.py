"""`tuilm health RUN`: a run's gradient health from its metrics.jsonl, finished or still running."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from tuilm.config import HealthConfig
from tuilm.train import events as ev
from tuilm.train.remedies import REMEDIES
from tuilm.train.verdict import update_verdict

BARS = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float], width: int = 24, log: bool = True) -> str:
    """The last `width` values (log-scaled: norms span decades) as block characters; blanks where not finite."""
    values = values[-width:]
    scaled = [math.log10(v) if log and v > 0 else (v if not log else math.nan) for v in values]
    finite = [v for v in scaled if math.isfinite(v)]
    if not finite:
        return ""
    lo, hi = min(finite), max(finite)
    span = hi - lo or 1.0
    return "".join(BARS[round((v - lo) / span * (len(BARS) - 1))] if math.isfinite(v) else " " for v in scaled)


STYLES = {"healthy": "green", "warn": "yellow", "bad": "red"}


def ratio_style(r: float, limits: HealthConfig) -> str:
    return STYLES[update_verdict(r, limits).level]


def summarize(events: list[ev.Event]) -> dict:
    health = [e for e in events if isinstance(e, ev.Health)]
    alerts = [e for e in events if isinstance(e, ev.Alert)]
    started = next((e for e in events if isinstance(e, ev.RunStarted)), None)
    end = next((e for e in reversed(events) if isinstance(e, ev.Finished | ev.Failed)), None)
    steps = [e for e in events if isinstance(e, ev.Step)]
    return {"health": health, "alerts": alerts, "started": started, "end": end, "steps": steps}


def run_state(summary: dict) -> str:
    """The end event's status (completed, stopped, diverged), failed, or without an end the run's liveness
    (running or dead, tuilm.train.metrics_file.liveness) that the caller put in summary["live"]."""
    end = summary["end"]
    if end is None:
        return summary.get("live", "running")
    return end.status if isinstance(end, ev.Finished) else "failed"


def render(run: Path, summary: dict, console: Console) -> None:
    started, health, steps = summary["started"], summary["health"], summary["steps"]
    name = started.name if started else run.name
    state = run_state(summary)
    last_step = steps[-1].step if steps else 0
    title = Text.assemble((name, "bold"), f"  {state} at step {last_step}")
    parts: list = [title]
    if steps:
        grads = [s.grad_norm for s in steps]
        clipped = sum(s.clipped for s in steps)
        parts.append(
            Text(
                f"global grad norm: median {statistics.median(grads):.3g}, last {grads[-1]:.3g}, "
                f"clipped on {clipped} of {len(steps)} steps   {sparkline(grads, 40)}"
            )
        )
    if health:
        layers = health[-1].layers
        limits = HealthConfig.of_run(started.config) if started else HealthConfig()  # the run's own thresholds
        table = Table(title=f"per layer ({len(health)} measurements)", title_justify="left")
        for column in ("layer", "median grad norm", "grad norm history", "log10 update/weight", "weight norm"):
            table.add_column(column, justify="left" if column in ("layer", "grad norm history") else "right")
        for i, layer in enumerate(layers):
            history = [h.grad_norm[i] for h in health if i < len(h.grad_norm)]
            ratio = health[-1].update_ratio[i]
            table.add_row(
                layer,
                f"{statistics.median(history):.3g}",
                sparkline(history),
                Text(f"{ratio:.2f}", style=ratio_style(ratio, limits)),
                f"{health[-1].weight_norm[i]:.3g}",
            )
        parts.append(table)
        last = health[-1]
        blocks = Table(title=f"activations at step {last.step}", title_justify="left")
        for column in ("block", "output std", "max |a|", "MLP hidden std", "dead fraction", "attention entropy"):
            blocks.add_column(column, justify="left" if column == "block" else "right")
        for i in range(len(last.blocks)):
            blocks.add_row(*last.block_cells(i, ".3g", ".1%", with_max=True))
        parts.append(blocks)
    else:
        parts.append(Text("no per-layer measurements yet (health.interval steps apart)", style="dim"))
    alerts = summary["alerts"]
    if alerts:
        table = Table(title=f"alerts ({len(alerts)})", title_justify="left")
        for column in ("step", "kind", "layer", "message", "remedy", "panel"):
            table.add_column(column, justify="right" if column == "step" else "left")
        for a in alerts:
            style = "red" if a.severity == "bad" else "yellow"
            remedy, panel = a.remedy, a.panel
            if not remedy:  # a metrics.jsonl from before alerts carried their remedy
                remedy, panel = REMEDIES.get(a.code, ("", ""))
            table.add_row(str(a.step), Text(a.code, style=style), a.layer or "", a.message, remedy, panel)
        parts.append(table)
    else:
        parts.append(Text("no alerts raised", style="green"))
    console.print(Group(*parts))
