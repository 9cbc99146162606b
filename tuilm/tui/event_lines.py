"""The dashboard's lines: each event as the Rich text its panes show, built from the same summaries
(tuilm.train.summaries) the headless progress prints."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from rich.console import Group
from rich.text import Text
from textual.widgets import RichLog

from tuilm.train import events as ev
from tuilm.train.summaries import VERBS, best_summary, eval_summary

Line = tuple[str, str | Text]  # (pane, line)
LOG_STYLES = {"warning": "yellow", "warn": "yellow", "error": "red"}


def event_lines(event: ev.Event) -> list[Line]:
    """The lines one event adds to the log, samples and alerts panes (status and the end aside: they depend on
    what came before)."""
    if isinstance(event, ev.RunStarted):
        resumed = f", resuming at step {event.resumed_step:,}" if event.resumed_step else ""
        return [
            ("log", f"run {event.name} started: {event.params:,} parameters on {event.device}{resumed}"),
            ("log", Text(f"run directory: {event.run_dir}", style="dim")),
        ]
    if isinstance(event, ev.Eval):
        best = Text(" best", style="bold green") if event.is_best else ""
        return [("log", Text.assemble(f"step {event.step}: {eval_summary(event)}  train {event.train_loss:.4f}", best))]
    if isinstance(event, ev.Alert):
        color = "red" if event.severity == "bad" else "yellow"
        where = (f"{event.step:>6}  ", "bold"), (f"{event.layer or '-'}  ", "cyan")
        return [("alerts", Text.assemble(("● ", color), *where, event.message))]
    if isinstance(event, ev.Sample):
        prompt = event.prompt.replace("\n", "⏎")
        return [
            ("samples", Text.assemble((f"step {event.step} ", "bold"), (prompt, "dim reverse"), event.text.strip("\n")))
        ]
    if isinstance(event, ev.CheckpointSaved):
        return [("log", f"step {event.step}: saved {Path(event.path).name} ({event.reason})")]
    if isinstance(event, ev.Log):
        return [("log", Text(f"step {event.step}: {event.message}", style=LOG_STYLES.get(event.level, "")))]
    return []


def failed_lines(end: ev.Failed) -> list[Text]:
    """The failure and the end of its traceback, for the log pane."""
    lines = [Text(f"training failed at step {end.step}: {end.error}", style="bold red")]
    return lines + [Text(line, style="red") for line in end.traceback.rstrip().splitlines()[-12:]]


def outcome_text(end: ev.Finished | ev.Failed, chat: str | None, read_only: bool) -> Text:
    """The bar under the panels once training has ended."""
    if isinstance(end, ev.Failed):
        exit_note = "" if read_only else " (exit status 1)"
        return Text.assemble(
            ("✘ training failed ", "bold"),
            f"at step {end.step}: {end.error} · the traceback is in the log pane · q quits{exit_note}",
        )
    return Text.assemble(
        (f"{VERBS.get(end.status, '')} at step {end.step:,} ", "bold"),
        f"({end.reason}) · {best_summary(end)}" + (" · enter: chat" if chat else ""),
    )


def finished_note(end: ev.Finished, chat: str | None) -> Text:
    """The log pane's last line of a finished run."""
    bpc = f" (bits/char {end.best_val_bpc:.4f})" if end.best_val_bpc is not None else ""
    return Text(
        f"{VERBS.get(end.status, '').split()[-1]} ({end.reason}) at step {end.step}: {best_summary(end)}{bpc}, "
        f"{end.tokens_per_s:,.0f} tokens/s" + (f"; enter chats with {chat}" if chat else ""),
        style="bold",
    )


class Panes:
    """Lines on their way into the log, samples and alerts panes. Within `held()` (a pull) they wait and go in
    as one write per pane at its end: each write costs a refresh."""

    def __init__(self, app):
        self.app = app
        self._held = False
        self._lines: dict[str, list[str | Text]] = {}  # pane -> lines waiting for the end of the pull

    def write(self, pane: str, line: str | Text) -> None:
        self._lines.setdefault(pane, []).append(line)
        if not self._held:
            self.flush()

    @contextmanager
    def held(self):
        self._held = True
        try:
            yield
        finally:
            self._held = False
            self.flush()

    def flush(self) -> None:
        for pane, lines in self._lines.items():
            if lines:
                self.app.query_one(f"#{pane}", RichLog).write(Group(*lines))
        self._lines.clear()
