"""Another run to compare with (`tuilm train --compare`, `tuilm watch --compare`): its loss and validation curves,
read from its metrics.jsonl and re-read cheaply while it is still being written.

The x-axis is the step when both runs take steps of the same batch shape (rows x seq_len), tokens otherwise: a
step of a run with twice the batch is twice the data, and curves compared by step would flatter it.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from tuilm.config import rows_per_step
from tuilm.errors import ConfigError
from tuilm.train import events as ev
from tuilm.train.metrics_file import MetricsTail, newest_wins

KEPT = (ev.RunStarted, ev.Step, ev.Eval)  # all a comparison needs: the rest is not even held


def compare_metrics(path: Path, own_run: Path | None = None) -> Path:
    """The metrics.jsonl of the run directory `path` (a metrics.jsonl itself is accepted); ConfigError, one line,
    when there is none or it is the run being trained."""
    path = Path(path)
    metrics = path if path.is_file() and path.name.endswith(".jsonl") else path / "metrics.jsonl"
    if not path.exists():
        raise ConfigError(f"--compare {path}: no such run directory")
    if not metrics.is_file():
        raise ConfigError(f"--compare {path}: no metrics.jsonl in it (give the directory of a run)")
    if own_run is not None and metrics.parent.resolve() == Path(own_run).resolve():
        raise ConfigError(f"--compare {path}: that is the run being trained; name another run")
    return metrics


def batch_shape(config: dict | None) -> tuple[int, int] | None:
    """(rows per step, seq_len) from a RunStarted's config tables, counted by config.rows_per_step."""
    if not config:
        return None
    t, m = config.get("train", {}), config.get("model", {})
    seq = int(m.get("seq_len") or 0)
    if not seq:
        return None
    return rows_per_step(int(t.get("batch_size") or 0), int(t.get("batch_tokens") or 0), seq), seq


def axis_for(own: dict | None, other: dict | None) -> str:
    """`step` when the two runs' steps have the same batch shape (or either is not known yet), else `tokens`."""
    a, b = batch_shape(own), batch_shape(other)
    return "tokens" if a and b and a != b else "step"


class OtherRun:
    """The loss and val history of a run read from its metrics.jsonl. `refresh()` reads what was appended since
    (MetricsTail: whole lines only); a resume's repeated steps give way to the newer ones (newest_wins), and a
    file replaced by a new run starts the history over. Safe to refresh in one thread and read in another."""

    def __init__(self, metrics: Path):
        self.metrics = Path(metrics)
        self.name = self.metrics.parent.name or str(self.metrics)
        self.lock = threading.Lock()
        self.version = 0  # bumped when something new was read
        self._tail = MetricsTail(self.metrics)
        self._clear()

    def _clear(self) -> None:
        self.run: ev.RunStarted | None = None
        self._steps: list[tuple[float, float, float]] = []  # (step, tokens, loss)
        self._evals: list[ev.Eval] = []
        self._arrays: tuple[int, np.ndarray] = (-1, np.empty((0, 3)))  # (version, steps) drawn from last

    def refresh(self) -> int:
        """Read what was appended since the last call; the number of events taken in."""
        events, restarted = self._tail.read()
        kept = newest_wins([e for e in events if isinstance(e, KEPT)])
        if not kept and not restarted:
            return 0
        with self.lock:
            if restarted:
                self._clear()
            for event in kept:
                if isinstance(event, ev.Step):
                    self._steps.append((event.step, event.tokens, event.loss))
                elif isinstance(event, ev.Eval):
                    self._evals.append(event)
                else:
                    self.run = event
                    if event.resumed_step:  # what earlier reads held past the checkpoint was replaced
                        self._steps = [row for row in self._steps if row[0] <= event.resumed_step]
                        self._evals = [e for e in self._evals if e.step <= event.resumed_step]
            self.version += 1
        return len(kept)

    @property
    def config(self) -> dict | None:
        return self.run.config if self.run is not None else None

    def steps(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(step, tokens, loss) of every step, in order."""
        rows = self._rows()
        return rows[:, 0], rows[:, 1], rows[:, 2]

    def _rows(self) -> np.ndarray:
        # Built once per version: a dashboard redraw must not turn 100k tuples into an array every time.
        with self.lock:
            if self._arrays[0] != self.version:
                self._arrays = (self.version, np.array(self._steps, dtype=float).reshape(-1, 3))
            return self._arrays[1]

    def evals(self) -> dict[str, np.ndarray]:
        """step, tokens (at that step; NaN before any step is known), val_loss and val_bpc of every evaluation."""
        return self._eval_table()[1]

    def _eval_table(self) -> tuple[list[ev.Eval], dict[str, np.ndarray]]:
        rows = self._rows()
        with self.lock:
            evals = list(self._evals)
        at = np.array([e.step for e in evals], dtype=float)
        return evals, {
            "step": at,
            "tokens": np.interp(at, rows[:, 0], rows[:, 1]) if len(rows) else np.full(len(at), np.nan),
            "val_loss": np.array([e.val_loss for e in evals], dtype=float),
            "val_bpc": np.array([e.val_bpc for e in evals], dtype=float),
        }

    def val_near(self, x: float, axis: str = "step") -> tuple[ev.Eval, float] | None:
        """The other run's latest evaluation at or before `x` (a step, or tokens), with its own x; None if none."""
        evals, table = self._eval_table()
        before = np.flatnonzero(table[axis] <= x + 1e-9)
        if not len(before):
            return None
        i = int(before[-1])
        return evals[i], float(table[axis][i])

    def vs_text(self, own_config: dict | None, step: int, tokens: float) -> str:
        """`vs NAME: val 2.1234 at this step` for an evaluation of the own run at `step` (and `tokens`); the other
        run's nearest earlier evaluation when it has none there, and "" when it has none at all yet."""
        axis = axis_for(own_config, self.config)
        near = self.val_near(step if axis == "step" else tokens, axis)
        if near is None:
            return ""
        other, x = near
        here = step if axis == "step" else tokens
        if abs(x - here) <= (0 if axis == "step" else 0.01 * max(here, 1)):
            where = "at this step" if axis == "step" else "at these tokens"
        else:
            where = f"at step {other.step}" if axis == "step" else f"at {x:,.0f} tokens"
        return f"vs {self.name}: val {other.val_loss:.4f} {where}"
