"""The terminal's view of a run without the dashboard: a Rich progress bar (or plain log lines), following the
stopping limit nearest to its end (train.stops.StopRules reckons them)."""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from typing import TextIO

from tuilm.formatting import fmt_duration, fmt_mfu, human, percent, shown
from tuilm.train import events as ev
from tuilm.train.stops import StopRules
from tuilm.train.summaries import eval_summary, finished_line


@dataclass(frozen=True)
class Limit:
    """The stopping limit a run is nearest to, so the one that will end it first."""

    name: str  # steps | tokens | epochs | time
    fraction: float  # 0..1
    text: str  # "76/100,000", "tokens 1.2M/5M", "epoch 1.20/3", "time 1m10s/2m00s"


def leading_limit(config: dict | None, s: ev.Step) -> Limit | None:
    """Of the run's stopping limits (train.max_steps, max_tokens, epochs, time), the one nearest to its end:
    a progress bar follows it, rather than a step count another limit will cut short. None when none is set."""
    rules = StopRules.of_run((config or {}).get("train", {}))
    fractions = rules.fractions(s.step, s.tokens, s.epoch, s.elapsed)
    if not fractions:
        return None
    name = max(fractions, key=fractions.__getitem__)
    text = {
        "steps": lambda: f"{s.step:,}/{int(rules.max_steps):,}",
        "tokens": lambda: f"tokens {human(s.tokens)}/{human(rules.max_tokens)}",
        "epochs": lambda: f"epoch {s.epoch:.2f}/{rules.epochs:g}",
        "time": lambda: f"time {fmt_duration(s.elapsed)}/{fmt_duration(rules.time_budget)}",
    }[name]()
    return Limit(name, fractions[name], text)


def limit_text(s: ev.Step, limit: Limit | None) -> str:
    """`76/100,000` when steps end the run, `76 · time 1m10s/2m00s` when another limit does, `76` without one."""
    if limit is None:
        return f"{s.step:,}"
    return limit.text if limit.name == "steps" else f"{s.step:,} · {limit.text}"


def eta_seconds(step: ev.Step) -> float:
    if not step.progress or not math.isfinite(step.progress) or step.progress <= 0:
        return math.nan
    return step.elapsed * (1 - step.progress) / step.progress


class HeadlessProgress:
    """A Rich progress bar on a terminal; plain log lines every few seconds when output is not a terminal
    (a live display there would print nothing until the end). Evals, checkpoints, alerts and samples are
    printed as lines in both cases.

    The sweep's quieter per-run reporter (tuilm.sweep.runner.RunProgress) is this class with other lines: what
    it says is in the small methods below, how it gets to the terminal is shared."""

    interval = 5.0  # seconds between plain lines
    transient = False  # the bar stays on the terminal when the run ends
    refresh_per_second = 4

    def __init__(
        self,
        stream: TextIO | None = None,
        interval: float | None = None,
        force_plain: bool | None = None,
        compare=None,
    ):
        """`compare`: another run (tuilm.train.comparison.OtherRun) whose val loss each eval line adds."""
        from rich.console import Console

        self.stream = stream or sys.stdout
        tty = self.stream.isatty() if force_plain is None else not force_plain
        self.console = Console(file=self.stream, highlight=False, force_terminal=tty or None, soft_wrap=True)
        self.plain = not tty
        self.interval = self.interval if interval is None else interval
        self._last_line = 0.0
        self._progress = None
        self._task = None
        self._last_step: ev.Step | None = None
        self._config: dict | None = None
        self._val: float | None = None
        self.compare = compare

    def __call__(self, event: ev.Event) -> None:
        if isinstance(event, ev.RunStarted):
            self._start(event)
        elif isinstance(event, ev.Step):
            self._step(event)
        elif isinstance(event, ev.Eval):
            self._val = event.val_loss
            self._print(self.eval_line(event) + self._versus(event))
        elif isinstance(event, ev.Alert) and event.code != "rewind":  # the rewind line below says it all
            self.on_alert(event)
        elif isinstance(event, ev.Rewind):
            self._print(f"[yellow]rewind[/] {event.message}", markup=True)
        elif isinstance(event, ev.Sample):
            text = event.text.strip().replace("\n", " / ")
            self._print(f"sample at step {event.step}: {text[:200]}")
        elif isinstance(event, ev.CheckpointSaved) and event.reason in ("request", "stop", "end"):
            self._print(f"saved {event.path}")
        elif isinstance(event, ev.Log):
            self._print(event.message)
        elif isinstance(event, ev.Finished | ev.Failed):
            self.close()
            if isinstance(event, ev.Finished):  # a failure is the command's to report
                self._print(finished_line(event))

    # -- what it says ----------------------------------------------------------------------------------------------

    def start_lines(self, e: ev.RunStarted) -> list[str]:
        resumed = f", resumed at step {e.resumed_step}" if e.resumed_step else ""
        return [
            f"run {e.name}: {e.recipe} on {e.data.get('source')} | {e.params:,} parameters "
            f"({e.params_no_embeddings:,} without embeddings) | {e.device} {e.dtype}{resumed}",
            f"run directory: {e.run_dir}",
        ]

    def eval_line(self, e: ev.Eval) -> str:
        best = " (best)" if e.is_best else ""
        return f"step {e.step}: {eval_summary(e)}{best}  train loss {e.train_loss:.4f}"

    def _versus(self, e: ev.Eval) -> str:
        if self.compare is None:
            return ""
        self.compare.refresh()  # the other run may still be training: read what it appended since
        s = self._last_step
        vs = self.compare.vs_text(self._config, e.step, s.tokens if s is not None and s.step == e.step else math.nan)
        return f"  {vs}" if vs else ""

    def on_alert(self, e: ev.Alert) -> None:
        self._print(f"[{'red' if e.severity == 'bad' else 'yellow'}]alert[/] step {e.step}: {e.message}", markup=True)

    def stats(self, s: ev.Step) -> str:
        val = f"  val {self._val:.3f}" if self._val is not None else ""
        return f"loss {s.loss:.3f}{val}  {s.tokens_per_s:,.0f} tok/s{fmt_mfu(s.mfu)}"

    def plain_line(self, s: ev.Step) -> str:
        return (
            f"step {s.step}{percent(s.progress)}  {self.stats(s)}  lr {s.lr:.2e}  grad {s.grad_norm:.3f}  "
            f"elapsed {fmt_duration(s.elapsed)}  eta {fmt_duration(eta_seconds(s))}"
        )

    def columns(self) -> tuple:
        from rich.progress import TextColumn

        return bar_columns("[bold]step", TextColumn("eta {task.fields[eta]}"))

    # -- how it gets there -------------------------------------------------------------------------------------

    def _start(self, e: ev.RunStarted) -> None:
        for line in self.start_lines(e):
            self._print(line)
        self._config = e.config
        if self.plain:
            return
        from rich.progress import Progress

        self._progress = Progress(
            *self.columns(), console=self.console, transient=self.transient, refresh_per_second=self.refresh_per_second
        )
        self._task = self._progress.add_task("train", total=None, completed=0, stats="", eta="?", limit="")
        self._progress.start()

    def _step(self, s: ev.Step) -> None:
        self._last_step = s
        if self._progress is not None:
            # The bar counts thousandths of the limit nearest to its end (steps, tokens, epochs or time).
            limit = leading_limit(self._config, s)
            self._progress.update(
                self._task,
                completed=round(min(1.0, limit.fraction) * 1000) if limit else s.step,
                total=1000 if limit else None,
                limit=limit_text(s, limit),
                stats=self.stats(s),
                eta=fmt_duration(eta_seconds(s)),
            )
            return
        now = time.monotonic()
        if now - self._last_line >= self.interval:
            self._last_line = now
            self._print(self.plain_line(s))

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def _print(self, text: str, markup: bool = False) -> None:
        target = self._progress.console if self._progress is not None else self.console
        target.print(shown(text), markup=markup, highlight=False)  # run names, samples, messages: no escapes


def bar_columns(label: str, *eta) -> tuple:
    """A progress bar's columns: label, the step and the limit nearest to its end (the task's `limit` field), the
    bar, the stats field, elapsed time, then `eta`."""
    from rich.progress import BarColumn, TextColumn, TimeElapsedColumn

    return (
        TextColumn(label),
        TextColumn("{task.fields[limit]}"),
        BarColumn(),
        TextColumn("{task.fields[stats]}"),
        TimeElapsedColumn(),
        *eta,
    )
