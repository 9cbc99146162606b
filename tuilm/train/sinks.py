"""Subscribers that turn trainer events into files and terminal output (the dashboard lives in tuilm.tui)."""

from __future__ import annotations

import contextlib
import json
import math
import mmap
import os
import sys
import threading
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TextIO

from tuilm.formatting import fmt_duration, fmt_mfu, human, percent, shown
from tuilm.train import events as ev
from tuilm.train.lines import eval_summary, finished_line


class MetricsFile:
    """metrics.jsonl: one JSON object per event, each appended whole by one os.write() (no Python buffer between):
    a reader tailing the file (tuilm watch) never sees half an event, a crash loses at most the line being written,
    and a full disk cuts it back to its last whole line, after which nothing more is written."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_BINARY", 0)
        self._fd: int | None = os.open(self.path, flags, 0o644)
        self._size = os.fstat(self._fd).st_size  # the end of the last whole line written
        self._lock = threading.RLock()  # close() takes it too, from a failed write

    def __call__(self, event: ev.Event) -> None:
        line = (json.dumps(event.to_dict(), ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
        with self._lock:
            if self._fd is None:
                return
            try:
                view = memoryview(line)
                while view:  # a regular file takes the whole line at once; the loop is for the rare short write
                    view = view[os.write(self._fd, view) :]
                if isinstance(event, ev.Finished | ev.Failed):
                    os.fsync(self._fd)
            except OSError as e:  # every line left stands: none promises what the run could not do after it
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, self._size)
                self.close()
                if not isinstance(event, ev.Failed):  # a failing run's own error is the one to report
                    raise OSError(e.errno, e.strerror, str(self.path)) from None
                return
            self._size += len(line)

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


def read_events(path: Path, *, replaced: bool = False) -> list[ev.Event]:
    """Events of a metrics.jsonl; a last line still being written is skipped, and so is any line that is not an
    event object (binary data, `[1]`, deep nesting, wrong types): the rest still counts. Steps a resume repeated
    appear once, the newest (newest_wins), unless `replaced` asks for every line as written."""
    events = []
    with open(path, "rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                break
            event = parse_event(line)
            if event is not None:
                events.append(event)
    return events if replaced else newest_wins(events)


def newest_wins(events: list[ev.Event]) -> list[ev.Event]:
    """Events with what a resume replaced taken out: a run resumed from a checkpoint at step R repeats the steps
    after R that the earlier session had already logged, and the newer ones count. Each RunStarted with
    `resumed_step` R drops the step, eval, health, alert and sample events of earlier sessions past R."""
    resumes = [(i, e.resumed_step) for i, e in enumerate(events) if isinstance(e, ev.RunStarted) and e.resumed_step]
    if not resumes:
        return events
    drop = set()
    for at, resumed in resumes:
        for i in range(at):
            e = events[i]
            if isinstance(e, REPLAYED) and e.step > resumed:
                drop.add(i)
    return [e for i, e in enumerate(events) if i not in drop]


REPLAYED = (ev.Step, ev.Eval, ev.Health, ev.Alert, ev.Sample)
# Without a lock file, minutes of silence in metrics.jsonl (every step appends a line) mean the process died.
RUNNING_WINDOW_S = 300.0


def liveness(run_dir: Path) -> str:
    """A run without an end event: `running` while a live process holds its lock (tuilm.runlock), `dead` when
    none does (killed with -9, out of memory, the machine lost). A directory without a lock file, written by a
    tuilm that took none, counts as running while its metrics.jsonl changed in the last RUNNING_WINDOW_S."""
    from tuilm.runlock import LOCK_NAME, holder

    run_dir = Path(run_dir)
    if holder(run_dir) is not None:
        return "running"
    if (run_dir / LOCK_NAME).exists():
        return "dead"
    metrics = run_dir / "metrics.jsonl"
    recent = metrics.is_file() and time.time() - metrics.stat().st_mtime < RUNNING_WINDOW_S
    return "running" if recent else "dead"


MAX_LINE = 1 << 20  # bytes; an event line is a few hundred, a RunStarted a few thousand
_KINDS = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,), "dict": (dict,), "list": (list,)}


def parse_event(line: str | bytes) -> ev.Event | None:
    """One metrics.jsonl line as an event; None for a line from a newer or broken writer (the rest still counts):
    anything but a JSON object of a known event whose fields have their declared types."""
    if len(line) > MAX_LINE:
        return None
    try:
        data = json.loads(line)
        if not isinstance(data, dict):
            return None
        event = ev.from_dict(data)
    except (ValueError, UnicodeDecodeError, TypeError, RecursionError):
        return None
    if event is None or not _well_typed(event):
        return None
    # A run's file is untrusted: its text is made safe to show here, once, for every reader (runs, health, watch).
    text = {f.name: shown(v) for f in fields(event) if isinstance(v := getattr(event, f.name), str | dict | list)}
    return replace(event, **text) if any(text[k] != getattr(event, k) for k in text) else event


def _well_typed(event: ev.Event) -> bool:
    for f in fields(event):
        value = getattr(event, f.name)
        kinds = [_KINDS.get(k.strip()) for k in str(f.type).split("|")]
        if value is None and "None" in str(f.type):
            continue
        if any(k is None for k in kinds):
            continue  # a type this check does not know: trusted as it is
        if isinstance(value, bool) and bool not in sum(kinds, ()):
            return False
        if not isinstance(value, sum(kinds, ())):
            return False
    return True


class MetricsTail:
    """Reads the events appended to a metrics.jsonl since the last call.

    The writer appends whole lines, but a reader can still catch one half-written: `offset` stays at the end of
    the last whole line, so the bytes after it wait for the next call. A file that shrank was replaced (a new run in
    the same directory): reading starts over.
    """

    MAP_FROM = 1 << 20  # bytes: a larger block is mapped (tuilm board's first look at a long run), not copied

    def __init__(self, path: Path):
        self.path = Path(path)
        self.offset = 0

    def read(self, max_bytes: int = 4 << 20) -> tuple[list[ev.Event], bool]:
        """(new events, whether the file was replaced and the caller should forget what it had)."""
        data, start, end, restarted = self.read_block(max_bytes)
        events = (parse_event(line) for line in data[start:end].splitlines())
        return [e for e in events if e is not None], restarted

    def read_block(self, max_bytes: int = 4 << 20) -> tuple[bytes | mmap.mmap, int, int, bool]:
        """What was appended since the last call, unparsed: (buffer, start, end, whether the file was replaced),
        the new whole lines being buffer[start:end]. The board searches the buffer in place and parses only the
        lines it needs; a large block comes memory-mapped, so its megabytes are not even copied."""
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return b"", 0, 0, False
        restarted = size < self.offset
        if restarted:
            self.offset = 0
        stop = min(size, self.offset + max_bytes)
        if stop == self.offset:
            return b"", 0, 0, restarted
        with open(self.path, "rb") as f:
            if stop - self.offset >= self.MAP_FROM:
                data, start = mmap.mmap(f.fileno(), stop, access=mmap.ACCESS_READ), self.offset
            else:
                f.seek(self.offset)
                data, start = f.read(stop - self.offset), 0
        end = data.rfind(b"\n", start, start + stop - self.offset) + 1
        if end == 0:  # no whole line yet; one longer than max_bytes is no event (MAX_LINE): skip it
            if stop - self.offset < max_bytes:
                return b"", 0, 0, restarted
            end = start + stop - self.offset
        self.offset += end - start
        return data, start, end, restarted


@dataclass(frozen=True)
class Limit:
    """The stopping limit a run is nearest to, so the one that will end it first."""

    name: str  # steps | tokens | epochs | time
    fraction: float  # 0..1
    text: str  # "76/100,000", "tokens 1.2M/5M", "epoch 1.20/3", "time 1m10s/2m00s"


def leading_limit(config: dict | None, s: ev.Step) -> Limit | None:
    """Of the run's stopping limits (train.max_steps, max_tokens, epochs, time), the one nearest to its end:
    a progress bar follows it, rather than a step count another limit will cut short. None when none is set."""
    from tuilm.config import parse_duration

    t = (config or {}).get("train", {})
    limits = []
    if t.get("max_steps"):
        limits.append(Limit("steps", s.step / t["max_steps"], f"{s.step:,}/{int(t['max_steps']):,}"))
    if t.get("max_tokens"):
        limits.append(Limit("tokens", s.tokens / t["max_tokens"], f"tokens {human(s.tokens)}/{human(t['max_tokens'])}"))
    if t.get("epochs"):
        limits.append(Limit("epochs", s.epoch / t["epochs"], f"epoch {s.epoch:.2f}/{t['epochs']:g}"))
    if t.get("time"):
        budget = parse_duration(str(t["time"]))
        if budget > 0:
            limits.append(Limit("time", s.elapsed / budget, f"time {fmt_duration(s.elapsed)}/{fmt_duration(budget)}"))
    return max(limits, key=lambda limit: limit.fraction, default=None)


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


def scalars(event: ev.Event) -> tuple[int, dict[str, float | None]] | None:
    """(step, {name: value}) of what an event logs as scalars, under the names the wandb and TensorBoard sinks both
    use (`train/loss`, `val/bpc`, `health/grad_norm/block0.attn`, `alerts/exploding`, ...); None for the rest."""
    if isinstance(event, ev.Step):
        return event.step, {
            "train/loss": event.loss,
            "train/lr": event.lr,
            "train/tokens_per_s": event.tokens_per_s,
            "train/grad_norm": event.grad_norm,
            "train/tokens": event.tokens,
            **({"train/mfu": event.mfu} if event.mfu is not None else {}),
        }
    if isinstance(event, ev.Eval):
        per_byte = {"val/bpb": event.val_bpb} if event.val_bpb is not None else {}
        return event.step, {"val/loss": event.val_loss, "val/ppl": event.val_ppl, "val/bpc": event.val_bpc, **per_byte}
    if isinstance(event, ev.Health):
        data: dict[str, float | None] = {}
        for i, layer in enumerate(event.layers):
            data[f"health/grad_norm/{layer}"] = event.grad_norm[i]
            data[f"health/update_ratio/{layer}"] = event.update_ratio[i]
        for i, block in enumerate(event.blocks):
            data[f"health/act_std/{block}"] = event.act_std[i]
            data[f"health/attn_entropy/{block}"] = event.attn_entropy[i] if i < len(event.attn_entropy) else None
        return event.step, data
    if isinstance(event, ev.Alert):
        return event.step, {f"alerts/{event.code}": 1}
    return None


TENSORBOARD_MISSING = "--tensorboard needs the tensorboard package: pip install 'tuilm[tensorboard]'"


def require_tensorboard() -> None:
    """ConfigError (one line, exit 2) before training when the optional tensorboard package is missing."""
    import importlib.util

    if importlib.util.find_spec("tensorboard") is None:
        from tuilm.errors import ConfigError

        raise ConfigError(TENSORBOARD_MISSING)


class TensorBoardLogger:
    """TensorBoard event files under `<run>/tensorboard/`: the scalars of `scalars()`, the names wandb gets too.
    A resume purges what the earlier session logged after its checkpoint (the newer steps win there as well)."""

    def __init__(self, run_dir: Path):
        require_tensorboard()
        self.log_dir = Path(run_dir) / "tensorboard"
        self.writer = None
        self._lock = threading.Lock()

    def __call__(self, event: ev.Event) -> None:
        if isinstance(event, ev.RunStarted):
            from torch.utils.tensorboard import SummaryWriter

            self.close()
            purge = event.resumed_step + 1 if event.resumed_step else None
            with self._lock:
                self.writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=purge)
            return
        if self.writer is None:
            return
        if (logged := scalars(event)) is not None:
            step, data = logged
            with self._lock:
                for name, value in data.items():
                    if value is not None and self.writer is not None:
                        self.writer.add_scalar(name, value, step)
        elif isinstance(event, ev.Finished | ev.Failed):
            self.close()

    def close(self) -> None:
        """Flush and close the event file (at the end of the run, and by the command on any way out)."""
        with self._lock:
            writer, self.writer = self.writer, None
        if writer is not None:
            writer.flush()
            writer.close()


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
        elif (logged := scalars(event)) is not None:
            self.run.log(logged[1], step=logged[0])
        elif isinstance(event, ev.Finished | ev.Failed):
            if isinstance(event, ev.Finished):
                self.run.summary.update(
                    {"best_val_loss": event.best_val_loss, "best_val_bpc": event.best_val_bpc, "status": event.status}
                )
            self.run.finish(exit_code=0 if isinstance(event, ev.Finished) else 1)
            self.run = None
