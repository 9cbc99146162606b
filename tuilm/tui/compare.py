"""The comparison overlay: another run's loss and val curves drawn over the dashboard's own (`--compare RUN`, or
the `c` key), in other markers as well as other colours, with a legend naming both runs.

The other run is re-read in a worker thread every COMPARE_INTERVAL seconds (a stat call when nothing changed),
so a run still training elsewhere grows on the chart too; the UI thread only draws what was read.
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.suggester import SuggestFromList
from textual.widgets import Input, Static

from tuilm.errors import ConfigError
from tuilm.train import events as ev
from tuilm.train.comparison import OtherRun, axis_for, compare_metrics
from tuilm.tui.charts import Series
from tuilm.tui.store import downsample

COMPARE_INTERVAL = 2.0  # seconds between looks at the other run's metrics.jsonl
OWN_MARK, TRAIN_MARK, VAL_MARK = "▞", "·", "•"  # the own run's lines are plotext's hd blocks
OTHER_TRAIN, OTHER_VAL = (150, 160, 190), (235, 200, 150)


class Overlay:
    """Which other run is compared (if any) and whether its curves are shown; the series the charts add."""

    def __init__(self, metrics: Path | None = None):
        self.other = OtherRun(metrics) if metrics is not None else None
        self.shown = self.other is not None

    def start(self, app) -> None:
        if self.other is not None:
            other = self.other
            app.run_worker(lambda: self._follow(other), thread=True, exclusive=True, group="compare")

    @staticmethod
    def _follow(other: OtherRun) -> None:
        from textual.worker import get_current_worker

        worker = get_current_worker()
        while not worker.is_cancelled:
            if not other.refresh():
                deadline = time.monotonic() + COMPARE_INTERVAL
                while time.monotonic() < deadline and not worker.is_cancelled:
                    time.sleep(0.1)

    def state(self) -> tuple:
        """Changes whenever the overlay would draw differently: the charts compare it with what they drew."""
        other = self.other
        return (self.shown, id(other), other.version if other else -1)

    def axis(self, run: ev.RunStarted | None) -> str:
        if not self.shown or self.other is None:
            return "step"
        return axis_for(run.config if run else None, self.other.config)

    def loss_series(self, axis: str, points: int) -> list:
        if not self.shown or self.other is None:
            return []
        step, tokens, loss = self.other.steps()
        if not len(step):
            return []
        val = self.other.evals()
        x = step if axis == "step" else tokens
        return [
            Series(None, *downsample(x, loss, points), OTHER_TRAIN, marker=TRAIN_MARK),
            Series(None, val[axis], val["val_loss"], OTHER_VAL, marker=VAL_MARK),
        ]

    def val_series(self, axis: str) -> list:
        if not self.shown or self.other is None:
            return []
        val = self.other.evals()
        return [Series(None, val[axis], val["val_bpc"], OTHER_VAL, marker=VAL_MARK)] if len(val["step"]) else []

    def legend(self, own: str, axis: str) -> str:
        """The charts' subtitle: both runs' names with their marks, and what the x-axis counts."""
        if not self.shown or self.other is None:
            return ""
        return f"{OWN_MARK} {own}  {TRAIN_MARK}{VAL_MARK} {self.other.name}  x: {axis}s"

    def key(self, app) -> None:
        """The `c` key: show or hide the overlay; with nothing compared yet, ask which run to compare with."""
        if self.other is None:
            here = own_dir(app)
            app.push_screen(ComparePrompt(sibling_runs(here), here), lambda metrics: self.pick(app, metrics))
            return
        self.shown = not self.shown
        app.notify(f"comparison with {self.other.name} {'shown' if self.shown else 'hidden'} (c toggles)")

    def pick(self, app, metrics: Path | None) -> None:
        if metrics is None:
            return
        self.other, self.shown = OtherRun(metrics), True
        self.start(app)


def own_dir(app) -> Path | None:
    """The dashboard's run directory, seen from here (a followed file's folder; else what the run said)."""
    followed = getattr(app.source, "path", None)
    if followed is not None:
        return Path(followed).parent
    return Path(app.store.run.run_dir) if app.store.run is not None else None


def sibling_runs(run_dir: Path | None) -> list[Path]:
    """The other run directories beside `run_dir` (those with a metrics.jsonl), the newest first."""
    if run_dir is None or not run_dir.parent.is_dir():
        return []
    here = run_dir.resolve()
    found = [p.parent for p in run_dir.parent.glob("*/metrics.jsonl") if p.parent.resolve() != here]
    return sorted(found, key=lambda p: (p / "metrics.jsonl").stat().st_mtime, reverse=True)


class ComparePrompt(ModalScreen[Path | None]):
    """Asks for the run to compare with, offering the newest sibling run (Enter takes it, → completes others)."""

    BINDINGS = [Binding("escape", "cancel", "Cancel", show=False)]

    def __init__(self, siblings: list[Path], own: Path | None = None):
        super().__init__()
        self.runs, self.own = siblings, own

    def compose(self) -> ComposeResult:
        names = [str(p) for p in self.runs]
        with Vertical(id="dialog"):
            yield Static("Compare with which run? (its directory; Enter compares, Esc cancels)", classes="title")
            yield Input(
                value=names[0] if names else "",
                placeholder="runs/<other run>",
                suggester=SuggestFromList(names, case_sensitive=True),
                id="compare-path",
            )
            others = ", ".join(p.name for p in self.runs[1:6])
            yield Static(Text(f"other runs here: {others}" if others else "", style="dim"), id="compare-hint")

    def on_input_submitted(self, message: Input.Submitted) -> None:
        try:
            metrics = compare_metrics(Path(message.value.strip()), self.own)
        except ConfigError as e:
            self.query_one("#compare-hint", Static).update(Text(str(e), style="bold red"))
            return
        self.dismiss(metrics)

    def action_cancel(self) -> None:
        self.dismiss(None)
