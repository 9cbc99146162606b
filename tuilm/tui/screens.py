"""The dashboard's modal screens: the quit confirmation and the help (its keys and what the panels show)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Static


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
           (near -3 is healthy), judged as the monitor's alerts
           are: red bad, yellow a warning or near a limit
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
