"""The dashboard's widgets and where they sit: three pages of panels, the outcome bar and the footer."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Footer, RichLog, Static, Tab, Tabs

from tuilm.train import events as ev
from tuilm.tui.alerts import PAGE_OF, Highlight
from tuilm.tui.charts import LineChart
from tuilm.tui.event_lines import failed_lines, finished_note, outcome_text
from tuilm.tui.header import RunHeader
from tuilm.tui.health_panels import ActivationTable, GradHeatmap, GradNorm, LayerBars
from tuilm.tui.system import SystemPanel

MIN_SIZE = (60, 18)
PAGES = {"train": "1 train", "health": "2 health", "events": "3 events"}
TITLES = {
    "loss": "loss (train, val)",
    "val": "bpc ◂ val ▸ ppl",
    "speed": "tokens/s",
    "lr": "learning rate",
    "grad": "gradient norm, worst layer",
    "layers-box": "layers",
    "heatmap-box": "grad norm per layer over time",
    "acts": "activations",
    "system": "system",
    "alerts": "alerts",
    "samples": "samples",
    "log": "log",
}
# Clicking these opens the page with more of the same (tabs are clickable too).
CLICK_PAGES = {"header": "events", "grad-label": "health", "grad-worst": "health", "grad-spark": "health"}


def widgets(read_only: bool) -> ComposeResult:
    with Vertical(id="dashboard"):
        yield RunHeader(id="header")
        yield Tabs(*(Tab(label, id=page) for page, label in PAGES.items()), id="tabs")
        with Horizontal(id="pages"):
            with Vertical(id="page-train", classes="page -active"):
                # The gradient norm is on the first page at every size: watching it is what tuilm is opened for.
                yield GradNorm(id="grad", classes="panel")
                yield LineChart(id="loss", classes="panel", empty="loss: waiting for the first step")
                with Horizontal(id="small-charts"):
                    yield LineChart(id="val", classes="panel", empty="waiting for the first evaluation")
                    yield LineChart(id="speed", classes="panel")
                    yield LineChart(id="lr", classes="panel")
            with Vertical(id="page-health", classes="page"):
                with Horizontal(id="layer-row"):
                    with Vertical(id="layers-box", classes="panel"):
                        yield LayerBars(id="layers")
                    with Vertical(id="heatmap-box", classes="panel"):
                        yield GradHeatmap(id="heatmap")
                yield ActivationTable(id="acts", classes="panel")
            with Vertical(id="page-events", classes="page"):
                yield SystemPanel(id="system", classes="panel")
                yield RichLog(id="alerts", classes="panel", wrap=True, min_width=20, max_lines=500)
                yield RichLog(id="samples", classes="panel", wrap=True, min_width=20, max_lines=500)
                yield RichLog(id="log", classes="panel", wrap=True, min_width=20, max_lines=1000)
        yield Static(id="outcome")
        with Horizontal(id="footer-bar"):
            yield Footer(show_command_palette=False)
            if read_only:
                yield Static("read-only: watching, no controls", id="read-only")
    yield Static(
        f"The terminal is too small for the dashboard: it needs at least {MIN_SIZE[0]}x{MIN_SIZE[1]}.\n"
        "Enlarge the window, or press q to quit.",
        id="too-small",
    )


def show_highlight(app, now: Highlight, shown: Highlight) -> None:
    """Colour the panels (and their page's tab) `now` highlights, and mark its layers; `shown` is what is on
    screen, so that nothing is touched while nothing changes."""
    if now.panels != shown.panels:
        for panel in PAGE_OF:
            severity = now.panels.get(panel)
            widget = app.query_one(f"#{panel}-box" if panel in ("layers", "heatmap") else f"#{panel}")
            widget.set_class(severity == "bad", "-alert-bad")
            widget.set_class(severity == "warn", "-alert-warn")
        for page in PAGES:
            tab = app.query_one(f"#{page}", Tab)
            tab.set_class(now.pages.get(page) == "bad", "-alert-bad")
            tab.set_class(now.pages.get(page) == "warn", "-alert-warn")
    if now.layers != shown.layers:
        app.query_one(LayerBars).alerted = now.layers


def clear(app) -> None:
    """A new run in the same directory: empty the panes, the outcome bar and the header's end and alerts."""
    for log in app.query(RichLog):
        log.clear()
    app.query_one("#outcome").set_class(False, "-shown")
    header = app.query_one(RunHeader)
    header.end = None
    header.alert(None)


def show_end(app, end: ev.Finished | ev.Failed, chat: str | None, note) -> None:
    """The run is over: its last lines into the log (through `note`) and the outcome bar under the panels."""
    for line in failed_lines(end) if isinstance(end, ev.Failed) else [finished_note(end, chat)]:
        note(line)
    outcome = app.query_one("#outcome", Static)
    outcome.update(outcome_text(end, chat, app.read_only))
    outcome.set_class(isinstance(end, ev.Failed) or end.status == "diverged", "-failed")
    outcome.set_class(True, "-shown")
