"""The system panel (CPU, RAM and GPU figures) and its feed: a worker thread reads the machine (tuilm.sysinfo)
once a second, off the training thread and off the UI's, and the UI shows the latest reading on a timer of the
same pace.

Only a run trained by this process is sampled: `tuilm watch` may follow a run on another machine, and a recorded
run (the snapshot tests) has no machine at all."""

from __future__ import annotations

import time

from rich.text import Text
from textual.widgets import Static

from tuilm.formatting import fmt_bytes
from tuilm.sysinfo import SystemSample

SAMPLE_INTERVAL = 1.0  # seconds; psutil and NVML each cost well under a millisecond a reading
NOT_SAMPLED = "system figures are shown for a run this process trains (tuilm train), not for a watched one"


def system_lines(sample: SystemSample | None, note: str = "") -> Text:
    """The system panel's text: CPU, RAM and (on CUDA) GPU lines, or `note` when there is nothing to show."""
    if sample is None:
        return Text(note or "waiting for the first sample", style="dim")
    text = Text(no_wrap=True, overflow="ellipsis")
    load = f" · load {sample.load:.2f}" if sample.load is not None else ""
    text.append("CPU  ", style="bold")
    text.append(f"process {sample.process_cpu:.0f}% · system {sample.system_cpu:.0f}% of {sample.cores} cores{load}")
    share = sample.memory_used / sample.memory_total if sample.memory_total else 0.0
    text.append("\nRAM  ", style="bold")
    text.append(f"process {fmt_bytes(sample.process_rss)} · system ")
    text.append(f"{fmt_bytes(sample.memory_used)}/{fmt_bytes(sample.memory_total)} ({share:.0%})")
    g = sample.gpu
    if g is not None:
        text.append("\nGPU  ", style="bold")
        text.append(
            f"{g.name} {g.utilization:.0f}% busy · memory {fmt_bytes(g.memory_used)}/{fmt_bytes(g.memory_total)}"
        )
        if g.power_w is not None:
            limit = f"/{g.power_limit_w:.0f}" if g.power_limit_w else ""
            text.append(f" · power {g.power_w:.0f}{limit} W")
    elif sample.gpu_note:
        text.append("\nGPU  ", style="bold")
        text.append(sample.gpu_note, style="dim")
    return text


class SystemPanel(Static):
    """CPU, RAM and GPU figures of the machine training the run (fed by tuilm.tui.system)."""

    def show(self, sample: SystemSample | None, note: str = "") -> None:
        self.update(system_lines(sample, note))


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
