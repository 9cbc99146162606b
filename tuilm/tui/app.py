"""The live training dashboard (`tuilm train` in a terminal) and `tuilm watch` (the same, read-only, following a
metrics.jsonl written by another process).

Threads: the trainer runs in its own thread and hands every event to a `RunStore` (a lock and an append, never a
wait on the UI). The UI drains the store on a timer, four times a second; the rare events worth showing at
once (eval, alert, end of training) also post one message to wake it. Each pull updates the header and appends to
the panes; the panels that cost real time to draw (charts, sparkline, per-layer health) are redrawn at a pace set
by what the charts cost (PANEL_SHARE), because every millisecond the UI spends holding the GIL, or a core, is one
the trainer does not get.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from rich.console import Group
from rich.text import Text
from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import Footer, RichLog, Static, Tab, Tabs
from textual.worker import get_current_worker

from tuilm.errors import TuilmError
from tuilm.train import events as ev
from tuilm.tui.store import MetricsTail, RunStore, downsample, windowed_rate
from tuilm.tui.widgets import (
    ActivationTable,
    ConfirmQuit,
    GradHeatmap,
    GradNorm,
    HelpScreen,
    LayerBars,
    Limits,
    LineChart,
    RunHeader,
    Series,
)

# Seconds between UI updates: four a second, however fast steps come. At ten a second (and PANEL_SHARE 1.5%) the
# UI thread took 3.8% of a core, at four 2.1%; with torch on every core each millisecond the UI holds a core or
# the GIL stalls a training step: see benchmarks/dashboard_overhead.py. Keys are handled at once regardless.
PULL_INTERVAL = 0.25
# The slow panels (charts, sparkline, per-layer health) are paced by what their last redraw cost the UI thread
# (its CPU time until the next pull, the frame included): at most this share of one core, so a redraw that cost
# 30 ms waits three seconds, and none comes sooner than PANEL_MIN_INTERVAL.
PANEL_SHARE = 0.01
PANEL_MIN_INTERVAL = 0.5
GRAD_WINDOW = 400  # steps in the gradient-norm sparkline
SPEED_WINDOW = 25  # steps over which tokens/s is measured for its chart
ALERT_STEPS = 100  # a panel stays highlighted this many steps after an alert about it (the monitor's repeat gap)
FOLLOW_INTERVAL = 0.25  # seconds between looks at a watched metrics.jsonl
MIN_SIZE = (60, 18)

# Which panels an alert concerns, by its code; an alert naming a layer also concerns the per-layer panels.
ALERT_PANELS = {
    "nonfinite": ("grad",),
    "exploding": ("grad",),
    "vanishing": ("layers", "heatmap"),
    "update_ratio": ("layers",),
    "loss_spike": ("loss",),
    "overfitting": ("val",),
    "dead_units": ("acts",),
}
PAGE_OF = {
    "loss": "train",
    "val": "train",
    "speed": "train",
    "lr": "train",
    "grad": "health",
    "layers": "health",
    "heatmap": "health",
    "acts": "health",
}
PAGES = {"train": "1 train", "health": "2 health", "events": "3 events"}
CYAN, ORANGE, MAGENTA, GREEN, YELLOW = (0, 190, 255), (255, 150, 0), (230, 60, 200), (120, 210, 40), (240, 200, 0)


class Dashboard(App[str | None]):
    """Live view of a `Trainer` (with controls), or of a run followed through its metrics.jsonl (read-only)."""

    CSS_PATH = "dashboard.tcss"
    TITLE = "tuilm"
    HORIZONTAL_BREAKPOINTS = [(0, "-too-narrow"), (MIN_SIZE[0], "-narrow"), (140, "-wide")]
    VERTICAL_BREAKPOINTS = [(0, "-too-short"), (MIN_SIZE[1], "-short"), (40, "-tall")]
    BINDINGS = [
        Binding("p", "pause", "Pause"),
        Binding("s", "request('save')", "Save"),
        Binding("g", "request('sample')", "Sample"),
        Binding("e", "request('eval')", "Eval"),
        Binding("l", "log_scale", "Log"),
        Binding("question_mark", "help", "Help", key_display="?"),
        Binding("q", "quit_dashboard", "Quit"),
        Binding("enter", "chat", "Chat", priority=True),
        # Textual binds ctrl+c to a hint about ctrl+q; here both stop training and quit without asking.
        Binding("ctrl+c,ctrl+q", "stop_now", "Quit", show=False, priority=True),
        Binding("1", "page('train')", show=False),
        Binding("2", "page('health')", show=False),
        Binding("3", "page('events')", show=False),
    ]

    class Wake(Message):
        """Something worth showing at once arrived (posted from the trainer's thread)."""

    def __init__(self, trainer=None, *, follow: Path | None = None, store: RunStore | None = None):
        """`trainer`: a Trainer, started on mount unless already running. `follow`: a metrics.jsonl to tail.
        Neither: show what `store` already holds (a recorded run; what the snapshot tests do)."""
        super().__init__()
        self.trainer = trainer
        self.follow = follow
        self.store = store or RunStore()
        self.read_only = trainer is None
        self.stopping = False
        self.ended = False
        self._seen = (-1, -1)  # (generation, version) of the store at the last pull
        self._steps_seen = -1
        self._panels_dirty = False
        self._health: ev.Health | None = None  # the latest measurement, not yet drawn
        self._panels_at = -math.inf  # monotonic time of the last redraw of the slow panels
        self._panels_cpu: float | None = None  # the UI thread's CPU time then, until the cost is known
        self._panels_cost = 0.0  # CPU seconds the last redraw took
        self._evals_drawn = -1
        self._wake_pending = False
        self._pulled_at = -math.inf
        self._pulling = False
        self._lines: dict[str, list[str | Text]] = {}  # pane -> lines waiting for the end of the pull
        self._alerts: dict[str, tuple[int, str]] = {}  # panel -> (step, severity) of its latest alert
        self._highlighted: dict[str, str] = {}  # panel -> severity, as shown
        self._alerted_layers: dict[str, int] = {}
        self._last_status = "running"
        if trainer is not None:
            trainer.bus.subscribe(self.store)

    # -- layout -----------------------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        with Vertical(id="dashboard"):
            yield RunHeader(id="header")
            yield Tabs(*(Tab(label, id=page) for page, label in PAGES.items()), id="tabs")
            with Horizontal(id="pages"):
                with Vertical(id="page-train", classes="page -active"):
                    yield LineChart(id="loss", classes="panel", empty="loss: waiting for the first step")
                    with Horizontal(id="small-charts"):
                        yield LineChart(id="val", classes="panel", empty="waiting for the first evaluation")
                        yield LineChart(id="speed", classes="panel")
                        yield LineChart(id="lr", classes="panel")
                with Vertical(id="page-health", classes="page"):
                    yield GradNorm(id="grad", classes="panel")
                    with Horizontal(id="layer-row"):
                        with Vertical(id="layers-box", classes="panel"):
                            yield LayerBars(id="layers")
                        with Vertical(id="heatmap-box", classes="panel"):
                            yield GradHeatmap(id="heatmap")
                    yield ActivationTable(id="acts", classes="panel")
                with Vertical(id="page-events", classes="page"):
                    yield RichLog(id="alerts", classes="panel", wrap=True, min_width=20, max_lines=500)
                    yield RichLog(id="samples", classes="panel", wrap=True, min_width=20, max_lines=500)
                    yield RichLog(id="log", classes="panel", wrap=True, min_width=20, max_lines=1000)
            yield Static(id="outcome")
            with Horizontal(id="footer-bar"):
                yield Footer(show_command_palette=False)
                if self.read_only:
                    yield Static("read-only: watching, no controls", id="read-only")
        yield Static(
            f"The terminal is too small for the dashboard: it needs at least {MIN_SIZE[0]}x{MIN_SIZE[1]}.\n"
            "Enlarge the window, or press q to quit.",
            id="too-small",
        )

    def on_mount(self) -> None:
        titles = {
            "loss": "loss (train, val)",
            "val": "bpc ◂ val ▸ ppl",
            "speed": "tokens/s",
            "lr": "learning rate",
            "grad": "gradient norm",
            "layers-box": "layers",
            "heatmap-box": "grad norm per layer over time",
            "acts": "activations",
            "alerts": "alerts",
            "samples": "samples",
            "log": "log",
        }
        for id_, title in titles.items():
            self.query_one(f"#{id_}").border_title = title
        # Looked up once: a query walks the DOM, and these are used at every pull.
        self._header = self.query_one(RunHeader)
        self._charts = {chart.id: chart for chart in self.query(LineChart)}
        self.store.on_rare = self._wake
        self._pull_timer = self.set_interval(PULL_INTERVAL, self.pull)
        if self.follow is not None:
            self._follow(self.follow)
        if self.trainer is not None and self.trainer.thread is None:
            self.trainer.start()
        self.pull()

    def on_unmount(self) -> None:
        self.store.on_rare = None
        if self.trainer is not None:
            self.trainer.bus.unsubscribe(self.store)

    def on_tabs_tab_activated(self, message: Tabs.TabActivated) -> None:
        for name in PAGES:
            self.query_one(f"#page-{name}").set_class(name == message.tab.id, "-active")

    # -- from the store to the widgets -------------------------------------------------------------------------

    def _wake(self, event: ev.Event) -> None:
        # The trainer's thread: post at most one wake-up until the UI has pulled (post_message never blocks).
        if not self._wake_pending:
            self._wake_pending = True
            self.post_message(self.Wake())

    def on_dashboard_wake(self) -> None:
        # At once, unless the last pull was just now: a storm of alerts must not outpace the timer.
        if time.monotonic() - self._pulled_at >= PULL_INTERVAL:
            self.pull()
            self._pull_timer.reset()

    def pull(self) -> None:
        self._wake_pending = False
        self._pulled_at = time.monotonic()
        if self._panels_cpu is not None and self._pulled_at - self._panels_at >= PULL_INTERVAL / 2:
            # A pull after the redraw: the frame that drew the panels has been rendered since.
            self._panels_cost = time.thread_time() - self._panels_cpu
            self._panels_cpu = None
        store = self.store
        if (store.generation, store.version) == self._seen:
            self._draw_panels_if_due()
            return
        self._pulling = True
        try:
            self._pull(store)
        finally:
            self._pulling = False
            self._flush_lines()

    def _pull(self, store: RunStore) -> None:
        drained = store.drain()
        if drained.generation != self._seen[0] and self._seen[0] >= 0:
            self._restart()
        self._seen = (drained.generation, drained.version)
        header = self._header
        if drained.dropped:
            self._note(Text(f"({drained.dropped} events skipped: the display fell behind)", style="dim"))
        for event in drained.events:
            self._show_event(event)
        if drained.health is not None:
            self._health = drained.health
            self._panels_dirty = True
        step = drained.last_step
        header.step = step
        header.state = self._state()
        if drained.steps != self._steps_seen:
            self._steps_seen = drained.steps
            self._panels_dirty = True
        if step is not None:
            self._expire_alerts(step.step)
        self._draw_panels_if_due(force=any(isinstance(e, ev.Finished | ev.Failed) for e in drained.events))

    def _state(self) -> str:
        state = self.store.status
        if self.stopping and state not in ("finished", "failed"):
            return "stopping"
        if self.trainer is not None and self.trainer.paused and state == "running":
            return "pausing"
        return state

    def _show_event(self, event: ev.Event) -> None:
        if isinstance(event, ev.RunStarted):
            self.query_one(RunHeader).run = event
            self.query_one(LayerBars).limits = Limits.from_config(event.config)
            resumed = f", resuming at step {event.resumed_step:,}" if event.resumed_step else ""
            self._note(f"run {event.name} started: {event.params:,} parameters on {event.device}{resumed}")
            self._note(Text(f"run directory: {event.run_dir}", style="dim"))
        elif isinstance(event, ev.Status):
            if event.state in ("paused", "running") and event.state != self._last_status:
                if event.state == "paused" or self._last_status == "paused":
                    self._note(f"step {event.step}: {'paused' if event.state == 'paused' else 'resumed'}")
                self._last_status = event.state
        elif isinstance(event, ev.Eval):
            self._panels_dirty = True
            best = Text(" best", style="bold green") if event.is_best else ""
            self._note(
                Text.assemble(
                    f"step {event.step}: val loss {event.val_loss:.4f}  ppl {event.val_ppl:.2f}  "
                    f"bits/char {event.val_bpc:.4f}  train {event.train_loss:.4f}",
                    best,
                )
            )
        elif isinstance(event, ev.Alert):
            self._show_alert(event)
        elif isinstance(event, ev.Sample):
            prompt = event.prompt.replace("\n", "⏎")
            self._write(
                "samples",
                Text.assemble((f"step {event.step} ", "bold"), (prompt, "dim reverse"), event.text.strip("\n")),
            )
        elif isinstance(event, ev.CheckpointSaved):
            self._note(f"step {event.step}: saved {Path(event.path).name} ({event.reason})")
        elif isinstance(event, ev.Log):
            style = {"warning": "yellow", "warn": "yellow", "error": "red"}.get(event.level, "")
            self._note(Text(f"step {event.step}: {event.message}", style=style))
        elif isinstance(event, ev.Finished | ev.Failed):
            self._show_end(event)

    def _note(self, line: str | Text) -> None:
        self._write("log", line)

    def _write(self, pane: str, line: str | Text) -> None:
        # Lines wait for the end of the pull and go in as one write per pane: each write costs a refresh.
        self._lines.setdefault(pane, []).append(line)
        if not self._pulling:
            self._flush_lines()

    def _flush_lines(self) -> None:
        for pane, lines in self._lines.items():
            if lines:
                self.query_one(f"#{pane}", RichLog).write(Group(*lines))
        self._lines.clear()

    def _show_alert(self, alert: ev.Alert) -> None:
        color = "red" if alert.severity == "bad" else "yellow"
        self._write(
            "alerts",
            Text.assemble(
                ("● ", color),
                (f"{alert.step:>6}  ", "bold"),
                (f"{alert.layer or '-'}  ", "cyan"),
                alert.message,
            ),
        )
        panels = ALERT_PANELS.get(alert.code, ())
        if alert.layer:
            panels = (*panels, "layers", "heatmap")
            self._alerted_layers[alert.layer] = alert.step
            self.query_one(LayerBars).alerted = frozenset(self._alerted_layers)
        for panel in panels:
            self._alerts[panel] = (alert.step, alert.severity)
        self._expire_alerts(alert.step)

    def _expire_alerts(self, step: int) -> None:
        """Highlight the panels with an alert in the last ALERT_STEPS steps (and mark their page's tab)."""
        recent = {panel: severity for panel, (at, severity) in self._alerts.items() if step - at < ALERT_STEPS}
        if recent != self._highlighted:
            self._highlighted = recent
            pages: dict[str, str] = {}
            for panel, page in PAGE_OF.items():
                severity = recent.get(panel)
                widget = self.query_one(f"#{panel}-box" if panel in ("layers", "heatmap") else f"#{panel}")
                widget.set_class(severity == "bad", "-alert-bad")
                widget.set_class(severity == "warn", "-alert-warn")
                if severity and pages.get(page) != "bad":
                    pages[page] = severity
            for page in PAGES:
                tab = self.query_one(f"#{page}", Tab)
                tab.set_class(pages.get(page) == "bad", "-alert-bad")
                tab.set_class(pages.get(page) == "warn", "-alert-warn")
        stale = [layer for layer, at in self._alerted_layers.items() if step - at >= ALERT_STEPS]
        if stale:
            for layer in stale:
                del self._alerted_layers[layer]
            self.query_one(LayerBars).alerted = frozenset(self._alerted_layers)

    def _show_end(self, end: ev.Finished | ev.Failed) -> None:
        self.ended = True
        self.query_one(RunHeader).end = end
        outcome = self.query_one("#outcome", Static)
        if isinstance(end, ev.Failed):
            self._note(Text(f"training failed at step {end.step}: {end.error}", style="bold red"))
            for line in end.traceback.rstrip().splitlines()[-12:]:
                self._note(Text(line, style="red"))
            exit_note = "" if self.read_only else " (exit status 1)"
            outcome.update(
                Text.assemble(
                    ("✘ training failed ", "bold"),
                    f"at step {end.step}: {end.error} · the traceback is in the log pane · q quits{exit_note}",
                )
            )
            outcome.set_class(True, "-failed")
        else:
            best = f"best val loss {end.best_val_loss:.4f}" if end.best_val_loss is not None else "no evaluation"
            verb = {"completed": "✔ finished", "stopped": "■ stopped", "diverged": "✘ diverged"}.get(end.status, "")
            chat = self.chat_path()
            outcome.update(
                Text.assemble(
                    (f"{verb} at step {end.step:,} ", "bold"),
                    f"({end.reason}) · {best}" + (" · enter: chat" if chat else ""),
                )
            )
            outcome.set_class(end.status == "diverged", "-failed")
            bpc = f" (bits/char {end.best_val_bpc:.4f})" if end.best_val_bpc is not None else ""
            self._note(
                Text(
                    f"{verb.split()[-1]} ({end.reason}) at step {end.step}: {best}{bpc}, "
                    f"{end.tokens_per_s:,.0f} tokens/s" + (f"; enter chats with {chat}" if chat else ""),
                    style="bold",
                )
            )
        outcome.set_class(True, "-shown")
        self.query_one(RunHeader).state = self._state()
        self.refresh_bindings()

    def _restart(self) -> None:
        """The watched file started over (a new run in the same directory): clear the panes."""
        for log in self.query(RichLog):
            log.clear()
        self.query_one(LayerBars).health = None
        self.query_one(GradHeatmap).show([])
        self.query_one(ActivationTable).clear()
        self._evals_drawn = -1
        self.query_one("#outcome").set_class(False, "-shown")
        self.query_one(RunHeader).end = None
        self._alerts.clear()
        self._alerted_layers.clear()
        self._expire_alerts(0)
        self.ended = False
        self.refresh_bindings()

    def _draw_panels_if_due(self, force: bool = False) -> None:
        """Redraw the slow panels when something changed and the last redraw's cost is paid off (PANEL_SHARE)."""
        if not self._panels_dirty:
            return
        now = time.monotonic()
        if not force and now - self._panels_at < max(PANEL_MIN_INTERVAL, self._panels_cost / PANEL_SHARE):
            return
        self._panels_at, self._panels_cpu = now, time.thread_time()
        self._panels_dirty = False
        charts = self._charts
        if self._health is not None:
            self.query_one(LayerBars).health = self._health
            self.query_one(ActivationTable).show(self._health)
            self.query_one(GradHeatmap).show(self.store.health_history())
            self._health = None
        run = self.store.run
        clip = float(run.config.get("train", {}).get("grad_clip", 0) or 0) if run else 0.0
        _, norms, clipped = self.store.step_series("grad_norm", "clipped", last=GRAD_WINDOW)
        self.query_one(GradNorm).show(norms, clipped, clip)
        width = max(c.size.width for c in charts.values())  # none before the first layout
        points = 2 * width if width else 200  # two dots per cell
        step, loss, lr, tokens, elapsed = self.store.step_series("loss", "lr", "tokens", "elapsed")
        val = self.store.eval_series()
        charts["loss"].show(
            [
                Series("train", *downsample(step, loss, points), CYAN),
                Series("val", val["step"], val["val_loss"], ORANGE),
            ]
        )
        if len(val["step"]) != self._evals_drawn:  # the dearest chart (two axes) changes only at evaluations
            self._evals_drawn = len(val["step"])
            charts["val"].show(
                [
                    Series("bits/char", val["step"], val["val_bpc"], ORANGE),
                    Series("ppl", val["step"], val["val_ppl"], MAGENTA, yside="right"),
                ]
            )
        speed = windowed_rate(tokens, elapsed, SPEED_WINDOW)
        charts["speed"].show([Series(None, *downsample(step, speed, points), GREEN)])
        charts["lr"].show([Series(None, *downsample(step, lr, points), YELLOW)])

    # -- watch mode ----------------------------------------------------------------------------------------------

    @work(thread=True, exclusive=True, group="follow")
    def _follow(self, path: Path) -> None:
        worker = get_current_worker()
        tail = MetricsTail(path)
        while not worker.is_cancelled:
            events, restarted = tail.read()
            if restarted:
                self.store.clear()
            for event in events:
                self.store(event)
            if not events:
                time.sleep(FOLLOW_INTERVAL)

    # -- actions ---------------------------------------------------------------------------------------------------

    @property
    def training(self) -> bool:
        t = self.trainer
        return t is not None and t.thread is not None and t.thread.is_alive()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in ("pause", "request"):
            return self.training and not self.stopping and not self.ended
        if action == "chat":
            return self.ended and self.chat_path() is not None
        return True

    def action_pause(self) -> None:
        paused = self.trainer.toggle_pause()
        self.query_one(RunHeader).state = "pausing" if paused else "running"

    def action_request(self, what: str) -> None:
        self.trainer.request(what)
        self._note(Text(f"{what} requested", style="dim"))

    def action_log_scale(self) -> None:
        chart = self.query_one("#loss", LineChart)
        chart.log_scale = not chart.log_scale
        self.query_one("#loss").border_title = "loss (train, val)" + (", log scale" if chart.log_scale else "")

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    def action_page(self, page: str) -> None:
        self.query_one(Tabs).active = page

    def action_quit_dashboard(self) -> None:
        if not self.training:
            self.exit(return_code=self._exit_status())
        elif not self.stopping:
            self.push_screen(ConfirmQuit(), lambda yes: self._stop_and_exit() if yes else None)

    def action_stop_now(self) -> None:
        if self.stopping:  # a second ctrl+c: leave without waiting for the checkpoint
            self.exit(return_code=130)
        else:
            self._stop_and_exit()

    def _stop_and_exit(self) -> None:
        if not self.training:
            self.exit(return_code=self._exit_status())
            return
        self.stopping = True
        self.trainer.stop("stopped")
        self._note(Text("stopping: finishing the step and saving last.safetensors…", style="bold"))
        self.query_one(RunHeader).state = "stopping"
        self.refresh_bindings()
        self._stop_timer = self.set_interval(0.05, self._exit_when_stopped)

    def _exit_when_stopped(self) -> None:
        if not self.training:
            self._stop_timer.stop()
            self.trainer.join()
            self.pull()
            self.exit(return_code=self._exit_status())

    def _exit_status(self) -> int:
        t = self.trainer
        failed = t is not None and (t.error is not None or (t.result is not None and t.result.status == "diverged"))
        return 1 if failed else 0

    def chat_path(self) -> str | None:
        """The checkpoint to chat with once training has ended: the best one, else the last."""
        end = self.store.end
        path = (end.best_checkpoint or end.last_checkpoint) if isinstance(end, ev.Finished) else None
        if path and self.follow is not None:
            # The trainer wrote it relative to its own working directory: find it beside the metrics file.
            return str(self.follow.parent / Path(path).name)
        return path

    def action_chat(self) -> None:
        self.exit("chat", return_code=self._exit_status())


# -- entry points -------------------------------------------------------------------------------------------------


def freeze_startup_objects() -> None:
    """Exempt everything alive now (torch, the model, the data, Textual) from garbage collection for good.

    The UI allocates most of the process's objects, so the collector's full passes run in its thread: with some
    360,000 objects tracked, each took about 180 ms holding the GIL, a stall of the trainer (and of keys)
    benchmarks/dashboard_overhead.py saw. Frozen, they are never scanned again; what is made later still is.
    """
    import gc

    gc.collect()
    gc.freeze()


def run_dashboard(trainer) -> int:
    """Train with the dashboard; the exit status is report_outcome's (0, or 1 when training failed)."""
    from tuilm.train.run import report_outcome

    # Torch keeps its default thread count (every core). On 2 cores benchmarks/dashboard_overhead.py measured one
    # thread, which would leave a core to the UI, at 69% of two threads' tokens/s, while the paced UI costs two
    # threads nothing the VM's noise resolves, and keys are still handled within a millisecond.
    app = Dashboard(trainer)
    freeze_startup_objects()
    try:
        result = app.run()
    finally:
        if trainer.thread is not None and trainer.thread.is_alive() and app.return_code != 130:
            trainer.stop("stopped")
            trainer.join()
    if app.return_code == 130:
        return 130
    code = report_outcome(trainer)
    if app.return_code and not code:
        code = app.return_code  # the UI itself failed (Textual has printed why)
    if result == "chat" and code == 0:
        return open_chat(Path(app.chat_path()))
    if trainer.result is not None:
        # The dashboard is gone with the alternate screen: leave the outcome, and where to go next, behind.
        from tuilm.train.sinks import finished_line

        print(finished_line(trainer.result))
        if trainer.result.last_checkpoint:
            print(f"run directory: {trainer.run_dir}  (chat: tuilm chat --model-path {trainer.run_dir})")
    return code


def open_chat(model_path: Path) -> int:
    try:
        from tuilm.chat.repl import chat_command
    except ImportError:
        print(f"chat with it: tuilm chat --model-path {model_path}")
        return 0
    # The defaults of `tuilm chat`.
    return chat_command(
        model_path,
        temperature=0.8,
        top_k=0,
        top_p=0.95,
        max_new_tokens=200,
        seed=None,
        prompt_format="plain",
        device="auto",
    )


def watch_command(run: Path) -> int:
    run = Path(run)
    if not run.is_dir():
        raise TuilmError(f"{run}: no such run directory")
    metrics = run / "metrics.jsonl"
    if not metrics.is_file():
        raise TuilmError(f"{run}: no metrics.jsonl in it (a run writes one as soon as training starts)")
    app = Dashboard(follow=metrics)
    freeze_startup_objects()
    if app.run() == "chat":
        return open_chat(Path(app.chat_path()))
    return app.return_code or 0
