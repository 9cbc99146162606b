"""The trainer's thread-safe controls: start, pause, stop and requests, callable from any thread (a dashboard's,
a signal handler's); the training thread sees them between steps. And `RunThread`, the one thread that does all
of a run's torch work."""

from __future__ import annotations

import queue
import threading

REQUESTS = ("save", "eval", "sample")


class Controls:
    """The control surface `Trainer` inherits; `run` is the subclass's loop."""

    def __init__(self) -> None:
        # Under DDP a stop is only a request until every rank has agreed on it: the loop sends _stop_wanted with the
        # step's all-reduce, and every rank stops in _agreed_stop at the same step.
        self._stop_wanted = ""
        self._stop = threading.Event()
        self._running = threading.Event()
        self._running.set()
        self._stop_reason = "stopped"
        self._requests: queue.SimpleQueue[tuple[str, dict]] = queue.SimpleQueue()
        self.thread: threading.Thread | None = None
        self.run_thread: RunThread | None = None  # the thread that built the trainer, if one did: it trains too
        self.run_lock = None  # the run directory's lock (runlock.RunLock), held by whoever claimed the directory
        self._announced_pause = False

    def run(self):  # pragma: no cover - the subclass's loop
        raise NotImplementedError

    def start(self) -> threading.Thread:
        if self.run_thread is not None:
            self.thread = self.run_thread.finish_with(self.run)
        else:
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
        if self.ranks_must_agree():
            self._stop_wanted = self._stop_wanted or reason
            self._running.set()
            return
        self._stop_reason = reason
        self._stop.set()
        self._running.set()

    def ranks_must_agree(self) -> bool:
        """Whether a stop waits for every rank's agreement (the trainer under DDP)."""
        return False

    def _agreed_stop(self) -> None:
        """Every rank agreed on a stop (under DDP): it takes effect, on all of them at this step."""
        self._stop_reason = self._stop_wanted or "interrupted"
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


class RunThread:
    """One thread for every torch op of a run: it builds the trainer (`call`), then trains (`finish_with`) and ends.

    Why not build on the caller's thread and train on another: on the CPU, torch's intra-op parallelism is OpenMP,
    and libgomp gives every thread that starts a parallel region a team of worker threads of its own, kept for the
    thread's lifetime. Between regions a team's workers spin a while, waiting for the next one, unless libgomp
    manages more threads than there are CPUs: then they spin a hundred times at most and sleep, whatever
    OMP_WAIT_POLICY or GOMP_SPINCOUNT say (libgomp's throttled spin count). A main thread that ran one parallel op
    (building the model, the CPU's matmul peak) keeps an idle team, which puts the count over the CPUs, and the
    training thread's workers then sleep and are woken (a futex round trip) for each of the hundreds of parallel
    regions of a step: 0.41x nanoGPT's steps/s at a tiny shape, 2.6x slower than the same loop whose process ran
    torch on one thread only. A team is released when its thread ends, so the run's thread ending leaves the
    process as it found it (chat after the dashboard, the next run of a sweep).
    """

    def __init__(self, name: str = "tuilm-trainer"):
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        name_os_thread(self.thread.name)
        while True:
            job, last = self._jobs.get()
            if job is None:
                return
            job()
            if last:
                return

    def call(self, fn, *args, **kwargs):
        """fn(*args, **kwargs) run on this thread: its value, or its exception raised here. The caller waits in
        short slices, so that a signal handler of the main thread (Ctrl-C) runs meanwhile."""
        done = threading.Event()
        outcome: list = []

        def job() -> None:
            try:
                outcome.append((True, fn(*args, **kwargs)))
            except BaseException as e:
                outcome.append((False, e))
            finally:
                done.set()

        self._jobs.put((job, False))
        while not done.wait(0.2):
            pass
        ok, value = outcome[0]
        if not ok:
            raise value
        return value

    def finish_with(self, fn) -> threading.Thread:
        """Run fn as the last job; the thread ends with it (returned, to join)."""
        self._jobs.put((fn, True))
        return self.thread

    def close(self) -> None:
        """End the thread when it is idle (after a build that is not followed by training)."""
        self._jobs.put((None, True))


def name_os_thread(name: str) -> None:
    """Give the calling thread `name` in the kernel too (Linux; Python names its threads only for itself before
    3.14): `top -H` and /proc then tell the run's thread, and the OpenMP workers it starts, which inherit it."""
    import sys

    if not sys.platform.startswith("linux"):
        return
    import contextlib
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME
