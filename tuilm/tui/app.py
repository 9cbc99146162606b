"""The live training dashboard (`tuilm train` in a terminal) and `tuilm watch` (the same, read-only, following a
metrics.jsonl written by another process).

Threads: the trainer runs in its own thread and hands every event to a `RunStore` (a lock and an append). The UI
drains it on a timer, four times a second; rare events (eval, alert, end) also post one message to wake it. Each
pull updates the header and appends to the panes; the slow panels (charts, sparkline, per-layer health) are redrawn
at a pace set by their cost (tuilm.tui.panels): every millisecond the UI holds the GIL, or a core, the trainer does
not get. Where events come from (a trainer, a file, a recording) is the `source`'s business; what happens after the
dashboard closes (chat) is the command's; the comparison overlay is tuilm.tui.compare's.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.message import Message
from textual.widgets import Tabs

from tuilm.config import HealthConfig
from tuilm.train import events as ev
from tuilm.tui import layout
from tuilm.tui.alerts import AlertHighlights, Highlight
from tuilm.tui.compare import Overlay
from tuilm.tui.event_lines import Panes, event_lines
from tuilm.tui.header import RunHeader
from tuilm.tui.health_panels import GradNorm, LayerBars
from tuilm.tui.layout import MIN_SIZE, PAGES, TITLES
from tuilm.tui.panels import PanelPacer, Panels
from tuilm.tui.screens import ConfirmQuit, HelpScreen
from tuilm.tui.source import Followed, Live, Recorded
from tuilm.tui.store import RunStore
from tuilm.tui.system import SystemView

# Seconds between UI updates, however fast steps come. At ten a second (PANEL_SHARE 1.5%) the UI thread took 3.8%
# of a core, at four 2.1%; each millisecond it holds a core or the GIL stalls a training step (see
# benchmarks/dashboard_overhead.py). Keys are handled at once regardless.
PULL_INTERVAL = 0.25


@dataclass(frozen=True)
class OpenChat:
    """What the dashboard returns when the user pressed Enter at the end: chat with this checkpoint."""

    path: Path


class Dashboard(App[OpenChat | None]):
    """Live view of a `Trainer` (with controls), or of a run followed through its metrics.jsonl (read-only)."""

    CSS_PATH = "dashboard.tcss"
    TITLE = "tuilm"
    SCREENS = {"help": HelpScreen}
    HORIZONTAL_BREAKPOINTS = [(0, "-too-narrow"), (MIN_SIZE[0], "-narrow"), (140, "-wide")]
    VERTICAL_BREAKPOINTS = [(0, "-too-short"), (MIN_SIZE[1], "-short"), (40, "-tall")]
    BINDINGS = [
        Binding("p", "pause", "Pause"),
        Binding("s", "request('save')", "Save"),
        Binding("g", "request('sample')", "Sample"),
        Binding("e", "request('eval')", "Eval"),
        Binding("l", "chart('log')", "Log"),
        Binding("m", "chart('smooth')", "Smooth"),
        Binding("c", "compare", "Compare", show=False),  # in the help (?): the footer is full at 80 columns
        Binding("question_mark", "push_screen('help')", "Help", key_display="?"),
        Binding("q", "quit_dashboard", "Quit"),
        Binding("enter", "chat", "Chat", priority=True),
        # Textual binds ctrl+c to a hint about ctrl+q; here both stop training and quit without asking.
        Binding("ctrl+c,ctrl+q", "stop_now", "Quit", show=False, priority=True),
        *(Binding(str(i), f"page('{page}')", show=False) for i, page in enumerate(PAGES, 1)),  # 1 2 3
    ]

    class Wake(Message):
        """Something worth showing at once arrived (posted from the trainer's thread)."""

    def __init__(self, trainer=None, *, follow: Path | None = None, store: RunStore | None = None, compare=None):
        """`trainer`: a Trainer, started on mount unless already running. `follow`: a metrics.jsonl to tail. Neither:
        what `store` holds (a recorded run: the snapshot tests). `compare`: another run's metrics.jsonl to overlay."""
        super().__init__()
        self.source = Live(trainer) if trainer is not None else Followed(follow) if follow else Recorded()
        self.store = store or RunStore()
        self.read_only = self.source.read_only
        self.stopping = False
        self.ended = False
        self._seen = (-1, -1)  # (generation, version) of the store at the last pull
        self._steps_seen = -1
        self._pacer = PanelPacer(settle=PULL_INTERVAL / 2)
        self._wake_pending = False
        self._pulled_at = -math.inf
        self._panes = Panes(self)
        self._alerts = AlertHighlights()
        self._shown = Highlight({}, {}, frozenset())  # what the widgets show now
        self._last_status = "running"
        self.overlay = Overlay(compare)
        self.source.attach(self.store)

    def compose(self) -> ComposeResult:
        yield from layout.widgets(self.read_only)

    def on_mount(self) -> None:
        for id_, title in TITLES.items():
            self.query_one(f"#{id_}").border_title = title
        # Looked up once: a query walks the DOM, and these are used at every pull.
        self._header = self.query_one(RunHeader)
        self._panels = Panels(self, self.overlay)
        self._system = SystemView(self, self.source.system_device)
        self.store.on_rare = self._wake
        self._pull_timer = self.set_interval(PULL_INTERVAL, self.pull)
        # Training starts once the first screen is drawn: the first paint is the dashboard's costliest moment, and
        # a small model's steps would share the interpreter with it.
        self.call_after_refresh(self.source.start, self)
        self.overlay.start(self)
        self.pull()

    def on_unmount(self) -> None:
        self.store.on_rare = None
        self.source.detach(self.store)

    def on_tabs_tab_activated(self, message: Tabs.TabActivated) -> None:
        for name in PAGES:
            self.query_one(f"#page-{name}").set_class(name == message.tab.id, "-active")

    def on_click(self, event) -> None:  # a panel with more on another page (alerts, gradients) opens it
        if page := layout.CLICK_PAGES.get(getattr(event.widget, "id", None) or ""):
            self.action_page(page)

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
        self._pacer.pulled(self._pulled_at)
        self._pacer.dirty |= self._panels.overlay_due()
        store = self.store
        if (store.generation, store.version) == self._seen:
            self._draw_panels_if_due()
            return
        with self._panes.held():
            self._pull(store)

    def _pull(self, store: RunStore) -> None:
        drained = store.drain()
        if drained.generation != self._seen[0] and self._seen[0] >= 0:
            self._restart()
        self._seen = (drained.generation, drained.version)
        if drained.dropped:
            self._note(Text(f"({drained.dropped} events skipped: the display fell behind)", style="dim"))
        for event in drained.events:
            self._show_event(event)
        if drained.health is not None:
            self._panels.health = drained.health
            self._pacer.dirty = True
        step = drained.last_step
        self._header.step = step
        self._header.state = self._state()
        if drained.steps != self._steps_seen:
            self._steps_seen = drained.steps
            self._pacer.dirty = True
        if step is not None:
            self._expire_alerts(step.step)
        self._draw_panels_if_due(force=any(isinstance(e, ev.Finished | ev.Failed) for e in drained.events))

    def _draw_panels_if_due(self, force: bool = False) -> None:
        if self._pacer.due(force or self._panels.overlay_news()):
            self._panels.draw(self.store)

    def _state(self) -> str:
        state = self.store.status
        if self.stopping and state not in ("finished", "failed"):
            return "stopping"
        if self.source.paused and state == "running":
            return "pausing"
        return state

    def _show_event(self, event: ev.Event) -> None:
        for pane, line in event_lines(event):
            self._panes.write(pane, line)
        if isinstance(event, ev.RunStarted):
            self._header.run = event
            self.query_one(LayerBars).limits = self.query_one(GradNorm).limits = HealthConfig.of_run(event.config)
        elif isinstance(event, ev.Status):
            if event.state in ("paused", "running") and event.state != self._last_status:
                if event.state == "paused" or self._last_status == "paused":
                    self._note(f"step {event.step}: {'paused' if event.state == 'paused' else 'resumed'}")
                self._last_status = event.state
        elif isinstance(event, ev.Eval):
            self._pacer.dirty = True
        elif isinstance(event, ev.Alert):
            self._alerts.add(event)
            self._header.alert(event)
            self._expire_alerts(event.step)
        elif isinstance(event, ev.Finished | ev.Failed):
            self._show_end(event)

    def _note(self, line: str | Text) -> None:
        self._panes.write("log", line)

    def _expire_alerts(self, step: int) -> None:
        now = self._alerts.at(step)
        layout.show_highlight(self, now, self._shown)
        self._shown = now

    def _show_end(self, end: ev.Finished | ev.Failed) -> None:
        self.ended = True
        self._header.end = end
        layout.show_end(self, end, self.chat_path(), self._note)
        self._header.state = self._state()
        self.refresh_bindings()

    def _restart(self) -> None:
        """The watched file started over (a new run in the same directory): clear the panes."""
        layout.clear(self)
        self._panels.clear()
        self._alerts.clear()
        self._expire_alerts(0)
        self.ended = False
        self.refresh_bindings()

    # -- actions ---------------------------------------------------------------------------------------------------

    @property
    def training(self) -> bool:
        return self.source.training

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in ("pause", "request"):
            return self.training and not self.stopping and not self.ended
        if action == "chat":  # not while a dialog (the compare prompt) wants its own Enter
            return self.ended and self.chat_path() is not None and len(self.screen_stack) == 1
        return True

    def action_pause(self) -> None:
        paused = self.source.trainer.toggle_pause()
        self._header.state = "pausing" if paused else "running"

    def action_request(self, what: str) -> None:
        self.source.trainer.request(what)
        self._note(Text(f"{what} requested", style="dim"))

    def action_chart(self, what: str) -> None:
        self._panels.toggle(what, self.store)

    def action_compare(self) -> None:
        self.overlay.key(self)

    def action_page(self, page: str) -> None:
        self.query_one(Tabs).active = page

    def action_quit_dashboard(self) -> None:
        if not self.training:
            self.exit(return_code=self.source.exit_status())
        elif not self.stopping:
            self.push_screen(ConfirmQuit(), lambda yes: self._stop_and_exit() if yes else None)

    def action_stop_now(self) -> None:
        if self.stopping:  # a second ctrl+c: leave without waiting for the checkpoint
            self.exit(return_code=130)
        else:
            self._stop_and_exit()

    def _stop_and_exit(self) -> None:
        if not self.training:
            self.exit(return_code=self.source.exit_status())
            return
        self.stopping = True
        self.source.trainer.stop("stopped")
        self._note(Text("stopping: finishing the step and saving last.safetensors…", style="bold"))
        self._header.state = "stopping"
        self.refresh_bindings()
        self._stop_timer = self.set_interval(0.05, self._exit_when_stopped)

    def _exit_when_stopped(self) -> None:
        if not self.training:
            self._stop_timer.stop()
            self.source.trainer.join()
            self.pull()
            self.exit(return_code=self.source.exit_status())

    def chat_path(self) -> str | None:
        """The checkpoint to chat with once training has ended: the best one, else the last."""
        end = self.store.end
        path = (end.best_checkpoint or end.last_checkpoint) if isinstance(end, ev.Finished) else None
        return self.source.checkpoint(path) if path else None

    def action_chat(self) -> None:
        # The dashboard only says what was chosen: the command that ran it opens the chat once it has closed.
        self.exit(OpenChat(Path(self.chat_path())), return_code=self.source.exit_status())
