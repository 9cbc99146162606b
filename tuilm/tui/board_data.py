"""What `tuilm board` knows of every run under some folders, kept current by reading only what each metrics.jsonl
gained since the last look. Torch-free and Textual-free: the board app, `--json` and the notifier all read it.

Speed at scale (benchmarks/board_scale.py): a table row needs the last step, the evaluations, the alerts and the
run's start and end, not the hundreds of thousands of step and health lines between them. So the row reader
(`BoardRun`) finds in what was appended, with one regex, the lines that are not step, health, status, log,
sample or checkpoint lines, and parses only those (evaluations only for their step and bits/char) and the newest
step line. The
curves of the runs picked for the charts are read with the dashboard's own reader and store (`Detail`: a
MetricsTail feeding a RunStore), from the start of the file once when a run is first picked and incrementally
after. Both readers keep their own offset and never read a byte twice; a half-written last line waits for
its newline (MetricsTail).
"""

from __future__ import annotations

import math
import mmap
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from tuilm.sweep.runinfo import METRICS, flatten, run_status
from tuilm.train import events as ev
from tuilm.train.metrics_file import MetricsTail, parse_event
from tuilm.tui.store import RunStore

STEP_LINE = b'{"event":"step"'
# Every line but those the table does without (the newest step line aside), the bulk of a metrics.jsonl: found
# by one regex whose literal start C searches for, much faster than splitting a million lines in Python.
NOT_TABLE = tuple(b'{"event":"%s"' % kind for kind in (b"step", b"health", b"status", b"log", b"sample", b"checkpoint"))
TABLE_LINE = re.compile(rb'\n(\{"event":"(?!step"|health"|status"|log"|sample"|checkpoint")[^\n]*)')
EVAL_START = b'{"event":"eval","step":'
READ_CHUNK = 16 << 20  # bytes per read of one file
DETAIL_CHUNK = 1 << 20  # bytes per look at a picked run: a long run's history loads over a few looks, the UI stays live
DETAIL_CAPACITY = 1 << 17  # steps of history per picked run (a ring, like the dashboard's)
SEED_KEYS = ("train.seed",)
DISCOVER_INTERVAL = 2.0  # seconds between searches of the folders for new runs


@dataclass
class BoardRun:
    """One run's table row, read incrementally."""

    path: Path
    name: str
    index: int  # order of discovery: fixes the run's colour
    tail: MetricsTail = field(init=False)
    started: ev.RunStarted | None = None
    config: dict = field(default_factory=dict)  # flattened, from the first RunStarted
    last: ev.Step | None = None
    evals: list[tuple[int, float]] = field(default_factory=list)  # (step, val bits/char)
    alerts: list[ev.Alert] = field(default_factory=list)
    alerts_read: int = 0  # every alert ever read, resumes and replaced files included (numbers notices)
    end: ev.Finished | ev.Failed | None = None
    nonfinite: bool = False  # a non-finite alert in the last session: a failure is a divergence
    sessions: int = 0
    status: str = "empty"
    version: int = 0  # bumped whenever the row may have changed
    found_late: bool = False  # appeared after the first look at the folders: a new run, all its events are news

    def __post_init__(self) -> None:
        self.tail = MetricsTail(self.path / METRICS)

    def poll(self) -> list[ev.Event]:
        """Read what was appended; the table's events among it, in order."""
        new: list[ev.Event] = []
        while True:
            data, start, end, restarted = self.tail.read_block(READ_CHUNK)
            if restarted:
                self._forget()
            if end == start:
                break
            new += self._take(data, start, end)
            self.version += 1
        status = run_status(self.path, self.end, self.nonfinite) if self.sessions else "empty"
        if status != self.status:
            self.status = status
            self.version += 1
        return new

    def _take(self, data: bytes | mmap.mmap, start: int, end: int) -> list[ev.Event]:
        """The whole lines in data[start:end], searched in place: one C-speed pass finds the lines the table
        needs; the step and health lines between them are never parsed, the newest step line aside."""
        found = TABLE_LINE.findall(data, start, end)
        first = data[start : data.find(b"\n", start, end)]  # no newline before it for the regex to find
        if first and not first.startswith(NOT_TABLE):
            found.insert(0, first)
        events = []
        for line in found:
            eval_ = _fast_eval(line)
            if eval_ is not None:  # the many evaluations of a long run: two fields, not a whole event
                self.evals.append(eval_)
            elif (event := parse_event(line)) is not None:
                events.append(event)
        at = data.rfind(b"\n" + STEP_LINE, start, end)
        at = at + 1 if at >= 0 else (start if first.startswith(STEP_LINE) else -1)
        if at >= 0:
            step = parse_event(data[at : data.find(b"\n", at, end)])
            if isinstance(step, ev.Step):
                self.last = step
        for event in events:
            self._apply(event)
        return events

    def _apply(self, event: ev.Event) -> None:
        if isinstance(event, ev.RunStarted):
            self.sessions += 1
            self.end, self.nonfinite = None, False
            if self.started is None:
                self.config = flatten({"recipe": event.recipe, **event.config})
            self.started = event
            if event.resumed_step:  # the steps after the checkpoint come again: the newest count
                self.evals = [e for e in self.evals if e[0] <= event.resumed_step]
                self.alerts = [a for a in self.alerts if a.step <= event.resumed_step]
        elif isinstance(event, ev.Eval):
            self.evals.append((event.step, event.val_bpc))
        elif isinstance(event, ev.Alert):
            self.alerts.append(event)
            self.alerts_read += 1
            self.nonfinite |= event.code == "nonfinite"
        elif isinstance(event, ev.Finished | ev.Failed):
            self.end = event

    def _forget(self) -> None:
        """The file was replaced (a new run in the same folder)."""
        self.started, self.config, self.last, self.end = None, {}, None, None
        self.evals, self.alerts, self.nonfinite, self.sessions = [], [], False, 0

    # -- the row's values ----------------------------------------------------------------------------------------

    @property
    def step(self) -> int:
        return self.end.step if self.end is not None else self.last.step if self.last else 0

    @property
    def progress(self) -> float | None:
        if isinstance(self.end, ev.Finished) and self.end.status == "completed":
            return 1.0
        p = self.last.progress if self.last else math.nan
        return p if math.isfinite(p) else None

    @property
    def best_bpc(self) -> float | None:
        finite = [bpc for _, bpc in self.evals if math.isfinite(bpc)]
        return min(finite) if finite else None

    @property
    def tokens(self) -> int:
        return self.end.tokens if isinstance(self.end, ev.Finished) else self.last.tokens if self.last else 0

    @property
    def elapsed(self) -> float | None:
        return self.end.elapsed if isinstance(self.end, ev.Finished) else self.last.elapsed if self.last else None

    @property
    def tokens_per_s(self) -> float | None:
        if isinstance(self.end, ev.Finished):
            return self.end.tokens_per_s
        return self.last.tokens_per_s if self.last else None

    @property
    def mfu(self) -> float | None:
        if isinstance(self.end, ev.Finished) and self.end.mfu is not None:
            return self.end.mfu
        return self.last.mfu if self.last else None

    @property
    def device(self) -> str:
        return self.started.device if self.started else ""

    @property
    def ranks(self) -> int:
        return self.started.ranks if self.started else 0

    def record(self) -> dict:
        """The row as JSON (`tuilm board --json`)."""
        return {
            "run": self.name,
            "path": str(self.path),
            "status": self.status,
            "step": self.step,
            "progress": self.progress,
            "best_val_bpc": self.best_bpc,
            "tokens": self.tokens,
            "training_seconds": self.elapsed,
            "tokens_per_s": self.tokens_per_s,
            "mfu": self.mfu,
            "alerts": len(self.alerts),
            "device": self.device,
            "ranks": self.ranks,
        }


class BoardModel:
    """Every run under `folders` (nested sweep folders too), found anew every DISCOVER_INTERVAL seconds."""

    def __init__(self, folders: list[Path]):
        self.folders = [Path(f) for f in folders]
        self.runs: dict[Path, BoardRun] = {}
        self.details: dict[Path, Detail] = {}  # the picked runs' full histories (the board's charts)
        self._found_at = -math.inf
        self._looked = False
        self.version = 0

    def poll(self, discover: bool | None = None) -> list[tuple[BoardRun, list[ev.Event]]]:
        """Look for new runs (when due) and read what every run appended: [(run, its new table events)]."""
        now = time.monotonic()
        if discover or (discover is None and now - self._found_at >= DISCOVER_INTERVAL):
            self._found_at = now
            self._discover()
        out = []
        for run in self.runs.values():
            before = run.version
            new = run.poll()
            out.append((run, new))
            if run.version != before:
                self.version += 1
        return out

    def _discover(self) -> None:
        for folder in self.folders:
            for metrics in sorted(folder.rglob(METRICS)):
                run_dir = metrics.parent
                if run_dir not in self.runs and metrics.is_file():
                    name = run_dir.relative_to(folder).as_posix() if run_dir != folder else folder.resolve().name
                    if len(self.folders) > 1:
                        name = f"{folder.name}/{name}" if run_dir != folder else name
                    self.runs[run_dir] = BoardRun(run_dir, name, len(self.runs), found_late=self._looked)
                    self.version += 1
        self._looked = True


class Detail:
    """A picked run's full history for the charts and the heatmaps: the dashboard's reader and store."""

    def __init__(self, run: BoardRun):
        self.run = run
        self.tail = MetricsTail(run.path / METRICS)
        self.store = RunStore(step_capacity=DETAIL_CAPACITY)

    def poll(self, max_bytes: int = DETAIL_CHUNK) -> bool:
        """Read up to `max_bytes` more; whether anything changed."""
        events, restarted = self.tail.read(max_bytes)
        if restarted:
            self.store.clear()
        for event in events:
            self.store(event)
        self.store.drain()  # no one reads the store's feed of events here: let it not fill
        return bool(events) or restarted

    def load(self) -> None:
        """Everything there is now (the heatmaps, the tests and a snapshot's first frame)."""
        while self.poll(READ_CHUNK):
            pass


def seedless(config: dict) -> tuple:
    """A run's settings without its seed: runs alike in this differ only in the seed (folded into one line)."""
    return tuple(sorted((k, repr(v)) for k, v in config.items() if k not in SEED_KEYS and k != "description"))


def matches(run: BoardRun, query: str) -> bool:
    """The `/` filter: every word must match, `key=value` a setting (the key's last parts are enough: `lr=3e-3`
    finds train.lr; numbers compare as numbers), any other word a part of the run's name or status."""
    for word in query.split():
        key, eq, want = word.partition("=")
        if not eq:
            if word.lower() not in run.name.lower() and word.lower() != run.status:
                return False
            continue
        found = [v for k, v in run.config.items() if k == key or k.endswith("." + key)]
        if not any(_same(v, want) for v in found):
            return False
    return True


def _same(value, text: str) -> bool:
    try:
        return math.isclose(float(value), float(text), rel_tol=1e-9)
    except (TypeError, ValueError):
        return str(value).lower() == text.lower()


def _fast_eval(line: bytes) -> tuple[int, float] | None:
    """(step, val bits/char) of an eval line as the trainer writes it (fields in Eval's order), else None."""
    if not line.startswith(EVAL_START):
        return None
    parts = line.split(b",", 5)
    if len(parts) < 6 or not parts[4].startswith(b'"val_bpc":'):
        return None
    try:
        return int(parts[1][7:]), float(parts[4][10:].strip(b'"'))  # "nan" is written as a string
    except ValueError:
        return None
