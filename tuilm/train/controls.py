"""The trainer's thread-safe controls: start, pause, stop and requests, callable from any thread (a dashboard's,
a signal handler's); the training thread sees them between steps."""

from __future__ import annotations

import queue
import threading

REQUESTS = ("save", "eval", "sample")


class Controls:
    """The control surface `Trainer` inherits; `run` is the subclass's loop."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._running = threading.Event()
        self._running.set()
        self._stop_reason = "stopped"
        self._requests: queue.SimpleQueue[tuple[str, dict]] = queue.SimpleQueue()
        self.thread: threading.Thread | None = None
        self._announced_pause = False

    def run(self):  # pragma: no cover - the subclass's loop
        raise NotImplementedError

    def start(self) -> threading.Thread:
        self.thread = threading.Thread(target=self.run, name="tuilm-trainer", daemon=True)
        self.thread.start()
        return self.thread

    def pause(self) -> None:
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    def toggle_pause(self) -> bool:
        """Pause or resume; returns True when now paused."""
        if self._running.is_set():
            self.pause()
            return self.paused  # a pause can be refused (under DDP)
        self.resume()
        return False

    @property
    def paused(self) -> bool:
        return not self._running.is_set()

    def stop(self, reason: str = "stopped") -> None:
        """Finish the current step, save the last checkpoint and end (thread-safe, returns at once)."""
        self._stop_reason = reason
        self._stop.set()
        self._running.set()

    def request(self, action: str, **kwargs) -> None:
        """Ask for `save`, `eval` or `sample` (optional prompt=...) between steps, paused or not."""
        if action not in REQUESTS:
            raise ValueError(f"unknown request {action!r}")
        self._requests.put((action, kwargs))

    def join(self, timeout: float | None = None) -> None:
        if self.thread is not None:
            self.thread.join(timeout)

    def _hold_while_paused(self, announce) -> bool:
        """The training thread's side of pause: True while paused (after a short wait, so stop and requests are
        seen soon); `announce("paused")` and `announce("running")` once each way."""
        if not self._running.is_set():
            if not self._announced_pause:
                announce("paused")
                self._announced_pause = True
            self._running.wait(0.05)
            return True
        if self._announced_pause:
            announce("running")
            self._announced_pause = False
        return False

    def pending_requests(self):
        """The requests made since the last look, oldest first (the training thread's side)."""
        while True:
            try:
                yield self._requests.get_nowait()
            except queue.Empty:
                return
