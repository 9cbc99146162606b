"""What the dashboard shows, collected from trainer events: written by the trainer's thread (or the watch
tailer), read by the UI on a timer.

The trainer calls the store once per event in its own thread, so `__call__` only takes a lock and appends:
per-step values go into fixed-size numpy rings (bounded memory for any run length), everything else into short
lists. The UI drains what is new a few times a second; nothing here knows about Textual.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from tuilm.train import events as ev

STEP_FIELDS = ("step", "loss", "lr", "tokens", "elapsed", "grad_norm", "clipped")
STEP_CAPACITY = 1 << 18  # 262,144 steps of history; older ones are overwritten
HEALTH_CAPACITY = 4096
FEED_CAPACITY = 10_000  # events waiting for the UI; older ones are dropped if it falls that far behind
RARE = (ev.Eval, ev.Alert, ev.Finished, ev.Failed)


class Ring:
    """Columns of floats of a fixed capacity; when full, the oldest rows are overwritten."""

    def __init__(self, names: tuple[str, ...], capacity: int):
        self.names = names
        self.capacity = capacity
        self.data = np.full((len(names), capacity), np.nan)
        self.count = 0  # rows ever appended

    def append(self, row: tuple[float, ...]) -> None:
        self.data[:, self.count % self.capacity] = row
        self.count += 1

    def __len__(self) -> int:
        return min(self.count, self.capacity)

    def drop_after(self, name: str, value: float) -> None:
        """Forget the newest rows whose `name` column exceeds `value` (those still held)."""
        column = self.data[self.names.index(name)]
        while len(self) and column[(self.count - 1) % self.capacity] > value:
            self.count -= 1
            self.data[:, self.count % self.capacity] = np.nan

    def columns(self, *names: str, last: int | None = None) -> list[np.ndarray]:
        """Copies of the named columns in time order (the `last` rows only, if given)."""
        n = len(self)
        take = n if last is None else min(last, n)
        end = self.count % self.capacity if self.count > self.capacity else n
        idx = np.arange(end - take, end) % self.capacity
        return [self.data[self.names.index(name), idx] for name in names]


def downsample(x: np.ndarray, y: np.ndarray, points: int) -> tuple[np.ndarray, np.ndarray]:
    """At most `points` points: non-finite values dropped, then the mean of equal buckets (the last point kept
    exact so the line ends at the current value). Drawing 100k points in a 60-column chart costs time and shows
    nothing more."""
    keep = np.isfinite(y)
    x, y = x[keep], y[keep]
    if len(x) <= points or points < 2:
        return x, y
    edges = np.linspace(0, len(x) - 1, points, dtype=np.int64)[:-1]
    counts = np.diff(np.append(edges, len(x) - 1))
    xs = np.add.reduceat(x[:-1], edges) / counts
    ys = np.add.reduceat(y[:-1], edges) / counts
    return np.append(xs, x[-1]), np.append(ys, y[-1])


def debiased_ema(y: np.ndarray, weight: float) -> np.ndarray:
    """TensorBoard's smoothing: an exponential moving average started at zero and divided by 1 - weight^n, so
    the first points are not dragged towards zero (Adam's bias correction)."""
    out = np.empty(len(y))
    last = 0.0
    for i, value in enumerate(y.tolist()):  # a chart's few hundred points: a loop is fast enough
        last = weight * last + (1 - weight) * value
        out[i] = last / (1 - weight ** (i + 1))
    return out


def windowed_rate(tokens: np.ndarray, elapsed: np.ndarray, window: int) -> np.ndarray:
    """Tokens per second of training time over the last `window` steps at each step: per-step rates swing with
    the health-measurement steps (slower by design), and their mean is not the run's rate."""
    if len(tokens) < 2:
        return np.full(len(tokens), np.nan)
    back = np.maximum(0, np.arange(len(tokens)) - window)
    with np.errstate(divide="ignore", invalid="ignore"):
        rate = (tokens - tokens[back]) / (elapsed - elapsed[back])
    rate[0] = rate[1]
    return rate


@dataclass
class Drained:
    """What changed since the UI's last look."""

    events: list[ev.Event] = field(default_factory=list)  # every event but Step and Health, in order
    last_step: ev.Step | None = None
    health: ev.Health | None = None  # the latest measurement, if there is a new one
    steps: int = 0  # Step events received so far
    dropped: int = 0  # events lost because the UI fell FEED_CAPACITY behind
    generation: int = 0
    version: int = 0


class RunStore:
    """A trainer-bus subscriber (`trainer.bus.subscribe(store)`) holding the run's recent history."""

    def __init__(self, step_capacity: int = STEP_CAPACITY):
        self.lock = threading.Lock()
        self.step_capacity = step_capacity
        self.generation = 0  # bumped by clear(), so the UI knows to start its panes over
        # Called (in the writer's thread) for the few events worth waking the UI for; must not block.
        self.on_rare: Callable[[ev.Event], None] | None = None
        self._reset()

    def _reset(self) -> None:
        self.steps = Ring(STEP_FIELDS, self.step_capacity)
        self.health: deque[ev.Health] = deque(maxlen=HEALTH_CAPACITY)
        self.evals: list[ev.Eval] = []
        self.alerts: list[ev.Alert] = []
        self.run: ev.RunStarted | None = None
        self.last_step: ev.Step | None = None
        self.status = "starting"
        self.end: ev.Finished | ev.Failed | None = None
        self.version = 0  # bumped by every event; the UI skips work when it has not moved
        self._feed: deque[ev.Event] = deque()
        self._new_health: ev.Health | None = None
        self._dropped = 0

    def __call__(self, event: ev.Event) -> None:
        with self.lock:
            self.version += 1
            if isinstance(event, ev.Step):
                self.last_step = event
                self.steps.append(
                    (
                        event.step,
                        event.loss,
                        event.lr,
                        event.tokens,
                        event.elapsed,
                        event.grad_norm,
                        float(event.clipped),
                    )
                )
                return
            if isinstance(event, ev.RunStarted):
                self.run = event
                if event.resumed_step:  # the steps after the checkpoint come again: the newest win
                    self._forget_after(event.resumed_step)
            elif isinstance(event, ev.Rewind):  # its steps come again on other batches; alerts and evals stay
                self.steps.drop_after("step", event.to_step)
            elif isinstance(event, ev.Status):
                self.status = event.state
            elif isinstance(event, ev.Health):
                # Only the latest is drawn: a watch of a long run would flood the feed with thousands.
                self.health.append(event)
                self._new_health = event
                return
            elif isinstance(event, ev.Eval):
                self.evals.append(event)
            elif isinstance(event, ev.Alert):
                self.alerts.append(event)
            elif isinstance(event, ev.Finished | ev.Failed):
                self.end = event
                self.status = "finished" if isinstance(event, ev.Finished) else "failed"
            if len(self._feed) >= FEED_CAPACITY:
                self._feed.popleft()
                self._dropped += 1
            self._feed.append(event)
        if self.on_rare is not None and isinstance(event, RARE):
            self.on_rare(event)

    def _forget_after(self, step: int) -> None:
        self.steps.drop_after("step", step)
        kept = [h for h in self.health if h.step <= step]
        self.health.clear()
        self.health.extend(kept)
        self.evals = [e for e in self.evals if e.step <= step]
        self.alerts = [a for a in self.alerts if a.step <= step]
        if self.last_step is not None and self.last_step.step > step:
            self.last_step = None

    def drain(self) -> Drained:
        with self.lock:
            out = Drained(
                list(self._feed),
                self.last_step,
                self._new_health,
                self.steps.count,
                self._dropped,
                self.generation,
                self.version,
            )
            self._feed.clear()
            self._new_health = None
            self._dropped = 0
        return out

    def step_series(self, *names: str, last: int | None = None) -> list[np.ndarray]:
        with self.lock:
            return self.steps.columns("step", *names, last=last)

    def eval_series(self) -> dict[str, np.ndarray]:
        with self.lock:
            evals = list(self.evals)
        return {
            "step": np.array([e.step for e in evals], dtype=float),
            "val_loss": np.array([e.val_loss for e in evals], dtype=float),
            "val_ppl": np.array([e.val_ppl for e in evals], dtype=float),
            "val_bpc": np.array([e.val_bpc for e in evals], dtype=float),
            "ema_val_bpc": np.array([math.nan if e.ema_val_bpc is None else e.ema_val_bpc for e in evals], dtype=float),
        }

    def health_history(self) -> list[ev.Health]:
        with self.lock:
            return list(self.health)

    def clear(self) -> None:
        """Forget everything (a watched metrics.jsonl was replaced by a new run)."""
        with self.lock:
            self._reset()
            self.generation += 1
