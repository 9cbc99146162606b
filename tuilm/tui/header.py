"""The dashboard's header: what is training, how far it is, and the alerts so far (in view from every page)."""

from __future__ import annotations

import math
from pathlib import Path

from rich.console import Group
from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

from tuilm.formatting import fmt_duration, human
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
