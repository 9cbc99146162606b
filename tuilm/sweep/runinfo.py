"""What a run directory says about itself: its config and a summary of its metrics.jsonl. Torch-free."""

from __future__ import annotations

import math
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from tuilm.errors import TuilmError
from tuilm.train import events as ev
from tuilm.train.metrics_file import liveness, read_events

METRICS = "metrics.jsonl"


@dataclass
class RunSummary:
    path: Path
    name: str
    recipe: str
    status: str  # completed | stopped | diverged | failed | running | dead | empty
    steps: int = 0
    best_val_loss: float | None = None
    best_val_bpc: float | None = None
    final_val_loss: float | None = None
    final_val_bpc: float | None = None
    tokens_per_s: float | None = None
    val_characters: int | None = None  # what bits/char divides by
    elapsed: float | None = None  # seconds of training (evaluation excluded), from the finished event
    peak_memory_mb: float | None = None
    params: int | None = None
    epochs: float | None = None  # passes over the training rows
    kept_fraction: float | None = None  # of the training tokens, what the sequence policy kept
    padding_fraction: float | None = None  # of the training rows' cells, padding
    hardware: str = ""  # what the last session trained on: "cpu fp32", "2 x cuda:0 bf16"
    error: str = ""
    nonfinite: bool = False  # a non-finite loss or gradient was reported in the last session
    best_weights: str | None = None  # what best.safetensors holds: model, or ema (train.ema)
    target: str | None = None  # train.target, and where it was reached (step, tokens, seconds, flops, score)
    target_reached: dict | None = None
    evals: list[ev.Eval] = field(default_factory=list)
    train: list[tuple[int, float]] = field(default_factory=list)  # (step, loss) of every finite step


def hardware(started: ev.RunStarted) -> str:
    """The ranks, device and precision of a session, as `tuilm runs` shows them."""
    ranks = f"{started.ranks} x " if started.ranks > 1 else ""
    return f"{ranks}{started.device} {started.dtype}"


def summarize_run(run_dir: Path, events: list[ev.Event] | None = None) -> RunSummary:
    run_dir = Path(run_dir)
    path = run_dir / METRICS
    if events is None:
        events = read_events(path) if path.is_file() else []
    started = [e for e in events if isinstance(e, ev.RunStarted)]
    first = started[0] if started else None
    summary = RunSummary(
        path=run_dir,
        name=first.name if first else run_dir.name,
        recipe=first.recipe if first else "?",
        status="empty",
    )
    if not events:
        return summary
    # A resumed run appends a session per resume: the status is the last session's, the curves are all of them.
    last_start = max((i for i, e in enumerate(events) if isinstance(e, ev.RunStarted)), default=0)
    session = events[last_start:]
    end = next((e for e in reversed(session) if isinstance(e, ev.Finished | ev.Failed)), None)
    if started:
        data = started[-1].data
        summary.params = started[-1].params
        summary.hardware = hardware(started[-1])
        kept, dropped = data.get("tokens_kept"), data.get("tokens_dropped")
        if kept is not None and dropped is not None and kept + dropped:
            summary.kept_fraction = kept / (kept + dropped)
        summary.padding_fraction = data.get("padding_fraction")
        summary.val_characters = data.get("val_characters")
    summary.evals = [e for e in events if isinstance(e, ev.Eval)]
    summary.train = [(e.step, e.loss) for e in events if isinstance(e, ev.Step) and math.isfinite(e.loss)]
    steps = [e for e in events if isinstance(e, ev.Step)]
    summary.steps = steps[-1].step if steps else 0
    summary.epochs = steps[-1].epoch if steps else None
    summary.nonfinite = any(isinstance(e, ev.Alert) and e.code == "nonfinite" for e in session)
    finite_evals = [e for e in summary.evals if math.isfinite(e.val_loss)]
    if finite_evals:
        best = min(finite_evals, key=lambda e: e.val_loss)
        summary.best_val_loss, summary.best_val_bpc = best.val_loss, best.val_bpc
    if summary.evals:
        summary.final_val_loss, summary.final_val_bpc = summary.evals[-1].val_loss, summary.evals[-1].val_bpc
    summary.status = run_status(run_dir, end, summary.nonfinite)
    if isinstance(end, ev.Finished):
        summary.steps = end.step
        summary.best_val_loss = end.best_val_loss
        summary.best_val_bpc = end.best_val_bpc
        summary.final_val_loss, summary.final_val_bpc = end.last_val_loss, end.last_val_bpc
        summary.tokens_per_s, summary.elapsed = end.tokens_per_s, end.elapsed
        summary.peak_memory_mb = end.peak_memory_mb
        summary.best_weights, summary.target, summary.target_reached = end.best_weights, end.target, end.target_reached
    elif isinstance(end, ev.Failed):
        summary.error = end.error
    if summary.tokens_per_s is None:
        rates = [e.tokens_per_s for e in session if isinstance(e, ev.Step)]
        summary.tokens_per_s = sum(rates) / len(rates) if rates else None
    return summary


def run_status(run_dir: Path, end: ev.Finished | ev.Failed | None, nonfinite: bool) -> str:
    """A run's status from its last session's end event, or without one from its lock: completed, stopped or
    diverged (Finished), failed, running (a live process holds the run's lock) or dead. `tuilm runs` and
    `tuilm board` both ask here."""
    if isinstance(end, ev.Finished):
        return end.status
    if isinstance(end, ev.Failed):
        # A crash after the loss went non-finite (say, sampling from NaN weights) is the divergence showing.
        return "diverged" if nonfinite else "failed"
    return liveness(run_dir)


def find_runs(folder: Path) -> list[Path]:
    """Run directories under `folder` (itself included): every folder holding a metrics.jsonl."""
    return sorted(p.parent for p in Path(folder).rglob(METRICS) if p.is_file())


def read_config(run_dir: Path) -> dict[str, Any]:
    """A run's settings as dotted keys: config.toml, or the first RunStarted event when that is missing."""
    path = Path(run_dir) / "config.toml"
    if path.is_file():
        try:
            return flatten(tomllib.loads(path.read_text(encoding="utf-8")))
        except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise TuilmError(f"{path}: cannot read ({e})") from None
    metrics = Path(run_dir) / METRICS
    if metrics.is_file():
        started = next((e for e in read_events(metrics) if isinstance(e, ev.RunStarted)), None)
        if started is not None:
            return flatten({"recipe": started.recipe, **started.config})
    return {}


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def differing_keys(configs: list[dict[str, Any]], ignore: tuple[str, ...] = ()) -> list[str]:
    keys: list[str] = []
    for config in configs:
        keys += [k for k in config if k not in keys and k not in ignore]
    missing = object()
    return [k for k in keys if len({repr(c.get(k, missing)) for c in configs}) > 1]


def short_labels(paths: list[Path]) -> list[str]:
    """The shortest trailing parts of each path that tell them apart (run names repeat across sweeps)."""
    parts = [Path(p).resolve().parts for p in paths]
    for n in range(1, max(len(p) for p in parts) + 1):
        labels = ["/".join(p[-n:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
    return [str(p) for p in paths]


def make_console() -> Console:
    # Piped output has no width to fit; rich's 80 columns would squeeze the wide tables into ellipses.
    return Console(highlight=False, width=None if sys.stdout.isatty() else 140)
