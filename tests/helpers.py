"""Shared builders for tests that train real (tiny) models."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tuilm.config import apply_overrides, from_dict
from tuilm.session import build_trainer
from tuilm.train import events as ev

TINY = [
    "vocab_size=300",
    "seq_len=16",
    "d_model=32",
    "n_layers=2",
    "n_heads=2",
    "batch_size=8",
    "warmup_steps=2",
    "eval_interval=5",
    "checkpoint_interval=1000",
    "sample_tokens=8",
    "health.interval=2",
]


def tiny_config(source: Path | str, *overrides: str):
    return apply_overrides(from_dict({"data": {"source": str(source)}}, "tiny"), [*TINY, *overrides])


class Recorder:
    """Collects every event a trainer emits."""

    def __init__(self):
        self.events: list[ev.Event] = []

    def __call__(self, event: ev.Event) -> None:
        self.events.append(event)

    def of(self, kind: type[ev.Event]) -> list:
        return [e for e in self.events if isinstance(e, kind)]


def tiny_trainer(source, run_dir, *overrides, resume=False):
    trainer = build_trainer(tiny_config(source, *overrides), Path(run_dir), resume=resume)
    recorder = Recorder()
    trainer.bus.subscribe(recorder)
    return trainer, recorder


def plant_failure(trainer, message: str = "planted failure") -> None:
    """Make the trainer's first step fail, through its public surface: a subscriber that raises on the Step
    event raises inside the training loop, as a bug in the step itself would."""

    def explode(event: ev.Event) -> None:
        if isinstance(event, ev.Step):
            raise RuntimeError(message)

    trainer.bus.subscribe(explode)


def run_tuilm(*args: str, input: str | None = None, env: dict | None = None, cwd=None, timeout: float = 120):
    """`python -m tuilm ARGS` in a child process, as a user runs it; `env` replaces the environment when given."""
    return subprocess.run(
        [sys.executable, "-m", "tuilm", *args],
        capture_output=True,
        text=True,
        input=input,
        env=env,
        cwd=cwd,
        timeout=timeout,
    )


def hold_lock_in_child(run_dir):
    """A child process that takes the run lock of `run_dir`, says so, and then sleeps until killed."""
    import textwrap

    code = textwrap.dedent(
        f"""
        import time
        from tuilm.runlock import RunLock
        RunLock({str(run_dir)!r}).acquire()
        print("locked", flush=True)
        time.sleep(60)
        """
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "locked"
    return child


RECORDED_RUN = Path(__file__).parent / "data" / "recorded_run.jsonl"  # a real run's metrics.jsonl, for UI tests


def replayed(upto: int | None = None):
    """A dashboard store fed the recorded run's events (up to step `upto`)."""
    from tuilm.train.sinks import read_events
    from tuilm.tui.store import RunStore

    store = RunStore()
    for event in read_events(RECORDED_RUN):
        if upto is not None and getattr(event, "step", 0) > upto:
            break
        store(event)
    return store
