"""Subscribers that turn trainer events into files and terminal output (the dashboard lives in tuilm.tui)."""

from __future__ import annotations

import json
import math
import os
import sys
import threading
import time
from pathlib import Path
from typing import TextIO

from tuilm.formatting import fmt_duration
from tuilm.train import events as ev
from tuilm.train.lines import eval_summary, finished_line


class MetricsFile:
    """metrics.jsonl: one JSON object per event, each written whole and flushed.

    Appends are single write() calls of a complete line, so a reader tailing the file (tuilm watch) never sees
    half an event, and a crash loses at most the line being written.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed on Finished/Failed
        self._lock = threading.Lock()

    def __call__(self, event: ev.Event) -> None:
        line = json.dumps(event.to_dict(), ensure_ascii=False, separators=(",", ":")) + "\n"
        with self._lock:
            if self._file.closed:
                return
            self._file.write(line)
            self._file.flush()
            if isinstance(event, ev.Finished | ev.Failed):
                os.fsync(self._file.fileno())

    def close(self) -> None:
        with self._lock:
            if not self._file.closed:
                self._file.close()


def read_events(path: Path) -> list[ev.Event]:
    """Events of a metrics.jsonl; a last line still being written is skipped."""
    events = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.endswith("\n"):
                break
            try:
                event = ev.from_dict(json.loads(line))
            except (json.JSONDecodeError, TypeError):
                continue
            if event is not None:
                events.append(event)
    return events


def eta_seconds(step: ev.Step) -> float:
    if not step.progress or not math.isfinite(step.progress) or step.progress <= 0:
        return math.nan
    return step.elapsed * (1 - step.progress) / step.progress


class HeadlessProgress:
    """A Rich progress bar on a terminal; plain log lines every few seconds when output is not a terminal
    (a live display there would print nothing until the end). Evals, checkpoints, alerts and samples are
    printed as lines in both cases."""

    def __init__(self, stream: TextIO | None = None, interval: float = 5.0, force_plain: bool | None = None):
        from rich.console import Console

        self.stream = stream or sys.stdout
        tty = self.stream.isatty() if force_plain is None else not force_plain
        self.console = Console(file=self.stream, highlight=False, force_terminal=tty or None, soft_wrap=True)
        self.plain = not tty
        self.interval = interval
        self._last_line = 0.0
        self._progress = None
        self._task = None
        self._last_step: ev.Step | None = None
        self._val: float | None = None

    def __call__(self, event: ev.Event) -> None:
        if isinstance(event, ev.RunStarted):
            self._start(event)
        elif isinstance(event, ev.Step):
            self._step(event)
        elif isinstance(event, ev.Eval):
            self._val = event.val_loss
            best = " (best)" if event.is_best else ""
            self._print(f"step {event.step}: {eval_summary(event)}{best}  train loss {event.train_loss:.4f}")
        elif isinstance(event, ev.Alert):
            self._print(
                f"[{'red' if event.severity == 'bad' else 'yellow'}]alert[/] step {event.step}: {event.message}",
                markup=True,
            )
        elif isinstance(event, ev.Sample):
            text = event.text.strip().replace("\n", " / ")
            self._print(f"sample at step {event.step}: {text[:200]}")
        elif isinstance(event, ev.CheckpointSaved) and event.reason in ("request", "stop", "end"):
            self._print(f"saved {event.path}")
        elif isinstance(event, ev.Log):
            self._print(event.message)
        elif isinstance(event, ev.Finished | ev.Failed):
            self._end(event)

    def _start(self, e: ev.RunStarted) -> None:
        resumed = f", resumed at step {e.resumed_step}" if e.resumed_step else ""
        self._print(
            f"run {e.name}: {e.recipe} on {e.data.get('source')} | {e.params:,} parameters "
            f"({e.params_no_embeddings:,} without embeddings) | {e.device} {e.dtype}{resumed}"
        )
        self._print(f"run directory: {e.run_dir}")
        if self.plain:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._progress = Progress(
            TextColumn("[bold]step"),
            MofNCompleteColumn(),
            BarColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeElapsedColumn(),
            TextColumn("eta {task.fields[eta]}"),
            console=self.console,
            refresh_per_second=4,
        )
        self._task = self._progress.add_task("train", total=e.max_steps, completed=e.resumed_step, stats="", eta="?")
        self._progress.start()

    def _stats(self, s: ev.Step) -> str:
        val = f"  val {self._val:.3f}" if self._val is not None else ""
        return f"loss {s.loss:.3f}{val}  {s.tokens_per_s:,.0f} tok/s"

    def _step(self, s: ev.Step) -> None:
        self._last_step = s
        if self._progress is not None:
            total = None if not math.isfinite(s.progress) else max(s.step, round(s.step / max(s.progress, 1e-9)))
            self._progress.update(
                self._task, completed=s.step, total=total, stats=self._stats(s), eta=fmt_duration(eta_seconds(s))
            )
            return
        now = time.monotonic()
        if now - self._last_line >= self.interval:
            self._last_line = now
            progress = f" ({s.progress:.0%})" if math.isfinite(s.progress) else ""
            self._print(
                f"step {s.step}{progress}  {self._stats(s)}  lr {s.lr:.2e}  grad {s.grad_norm:.3f}  "
                f"elapsed {fmt_duration(s.elapsed)}  eta {fmt_duration(eta_seconds(s))}"
            )

    def _end(self, e: ev.Finished | ev.Failed) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        if isinstance(e, ev.Failed):
            return  # the command reports the error
        self._print(finished_line(e))

    def _print(self, text: str, markup: bool = False) -> None:
        if self._progress is not None:
            self._progress.console.print(text, markup=markup, highlight=False)
        else:
            self.console.print(text, markup=markup, highlight=False)


class WandbLogger:
    """Weights & Biases: step and eval metrics, per-layer health as scalars. Imported only when asked for."""

    def __init__(self, project: str, name: str | None, run_dir: Path, console: bool = True):
        try:
            import wandb
        except ImportError:  # pragma: no cover - wandb is a dependency, but an optional one at heart
            from tuilm.errors import ConfigError

            raise ConfigError("wandb is not installed; pip install wandb, or train without --wandb") from None
        self.wandb = wandb
        self.project, self.name, self.run_dir = project, name, Path(run_dir)
        # With the dashboard on, wandb must not capture the console: it would write over the screen.
        self.settings = wandb.Settings(console="auto" if console else "off", silent=not console)
        self.run = None

    def __call__(self, event: ev.Event) -> None:
        if isinstance(event, ev.RunStarted):
            self.run = self.wandb.init(
                project=self.project,
                name=self.name or event.name,
                config=event.config,
                dir=str(self.run_dir),
                settings=self.settings,
                resume="allow",
            )
        elif self.run is None:
            return
        elif isinstance(event, ev.Step):
            self.run.log(
                {
                    "train/loss": event.loss,
                    "train/lr": event.lr,
                    "train/tokens_per_s": event.tokens_per_s,
                    "train/grad_norm": event.grad_norm,
                    "train/tokens": event.tokens,
                },
                step=event.step,
            )
        elif isinstance(event, ev.Eval):
            self.run.log(
                {"val/loss": event.val_loss, "val/ppl": event.val_ppl, "val/bpc": event.val_bpc}, step=event.step
            )
        elif isinstance(event, ev.Health):
            data = {}
            for i, layer in enumerate(event.layers):
                data[f"health/grad_norm/{layer}"] = event.grad_norm[i]
                data[f"health/update_ratio/{layer}"] = event.update_ratio[i]
            for i, block in enumerate(event.blocks):
                data[f"health/act_std/{block}"] = event.act_std[i]
                data[f"health/attn_entropy/{block}"] = event.attn_entropy[i] if i < len(event.attn_entropy) else None
            self.run.log(data, step=event.step)
        elif isinstance(event, ev.Alert):
            self.run.log({f"alerts/{event.code}": 1}, step=event.step)
        elif isinstance(event, ev.Finished | ev.Failed):
            if isinstance(event, ev.Finished):
                self.run.summary.update(
                    {"best_val_loss": event.best_val_loss, "best_val_bpc": event.best_val_bpc, "status": event.status}
                )
            self.run.finish(exit_code=0 if isinstance(event, ev.Finished) else 1)
            self.run = None
