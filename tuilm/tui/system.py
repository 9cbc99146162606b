"""The system panel's feed: a worker thread reads the machine (tuilm.sysinfo) once a second, off the training
thread and off the UI's, and the UI shows the latest reading on a timer of the same pace.

Only a run trained by this process is sampled: `tuilm watch` may follow a run on another machine, and a recorded
run (the snapshot tests) has no machine at all."""

from __future__ import annotations

import time

from tuilm.tui.widgets import SystemPanel

SAMPLE_INTERVAL = 1.0  # seconds; psutil and NVML each cost well under a millisecond a reading
NOT_SAMPLED = "system figures are shown for a run this process trains (tuilm train), not for a watched one"


class SystemView:
    def __init__(self, app, device):
        """`device`: the torch device of a run trained here (its GPU is read on CUDA); None: nothing to sample."""
        self.panel = app.query_one(SystemPanel)
        self.latest = None
        if device is None:
            self.panel.show(None, NOT_SAMPLED)
            return
        app.run_worker(lambda: self._sample(device), thread=True, group="system")
        self.timer = app.set_interval(SAMPLE_INTERVAL, self.draw)

    def _sample(self, device) -> None:
        from textual.worker import get_current_worker

        from tuilm.sysinfo import SystemProbe

        worker = get_current_worker()
        probe = SystemProbe(device)
        while not worker.is_cancelled:
            deadline = time.monotonic() + SAMPLE_INTERVAL  # CPU use is measured over the wait
            while time.monotonic() < deadline and not worker.is_cancelled:
                time.sleep(0.05)
            self.latest = probe.read()

    def draw(self) -> None:
        if self.latest is not None:
            self.panel.show(self.latest)
