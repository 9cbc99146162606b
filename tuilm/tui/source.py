"""Where the dashboard's events come from: a trainer in this process (with controls), a metrics.jsonl written by
another process (`tuilm watch`, read-only), or a store filled beforehand (a recorded run: the snapshot tests).

The dashboard asks its source, never `trainer is None`, what it may do and how its run ended."""

from __future__ import annotations

import time
from pathlib import Path

from tuilm.train.metrics_file import MetricsTail
from tuilm.tui.store import RunStore

FOLLOW_INTERVAL = 0.25  # seconds between looks at a watched metrics.jsonl


class Recorded:
    """Events already in the store: nothing to start, nothing to control."""

    read_only = True
    system_device = None  # the device of a run trained here, whose machine the system panel shows

    def attach(self, store: RunStore) -> None:
        pass

    def detach(self, store: RunStore) -> None:
        pass

    def start(self, app) -> None:
        pass

    @property
    def training(self) -> bool:
        return False

    @property
    def paused(self) -> bool:
        return False

    def exit_status(self) -> int:
        return 0

    def checkpoint(self, path: str) -> str:
        """Where a checkpoint the run's Finished event names is, seen from here."""
        return path


class Live(Recorded):
    """A Trainer in this process: the dashboard starts it (unless already running) and drives its controls."""

    read_only = False

    def __init__(self, trainer):
        self.trainer = trainer

    def attach(self, store: RunStore) -> None:
        self.trainer.bus.subscribe(store)

    def detach(self, store: RunStore) -> None:
        self.trainer.bus.unsubscribe(store)

    def start(self, app) -> None:
        if self.trainer.thread is None:
            self.trainer.start()

    @property
    def system_device(self):
        return self.trainer.device

    @property
    def training(self) -> bool:
        thread = self.trainer.thread
        return thread is not None and thread.is_alive()

    @property
    def paused(self) -> bool:
        return self.trainer.paused

    def exit_status(self) -> int:
        t = self.trainer
        return 1 if t.error is not None or (t.result is not None and t.result.status == "diverged") else 0


class Followed(Recorded):
    """A metrics.jsonl another process appends to, tailed in a worker thread; a new file starts the store over."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def start(self, app) -> None:
        app.run_worker(lambda: self._follow(app), thread=True, exclusive=True, group="follow")

    def _follow(self, app) -> None:
        from textual.worker import get_current_worker

        worker = get_current_worker()
        tail = MetricsTail(self.path)
        while not worker.is_cancelled:
            events, restarted = tail.read()
            if restarted:
                app.store.clear()
            for event in events:
                app.store(event)
            if not events:
                time.sleep(FOLLOW_INTERVAL)

    def checkpoint(self, path: str) -> str:
        # The trainer wrote it relative to its own working directory: find it beside the metrics file.
        return str(self.path.parent / Path(path).name)
