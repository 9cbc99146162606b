"""Shared builders for tests that train real (tiny) models."""

from __future__ import annotations

import functools
import json
import locale
import os
import subprocess
import sys
from pathlib import Path

from tuilm.config import apply_overrides, from_dict
from tuilm.run_setup import build_trainer
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


def run_tuilm(
    *args: str | bytes,
    input: str | bytes | None = None,
    env: dict | None = None,
    cwd=None,
    timeout: float = 120,
    text: bool = True,
):
    """`python -m tuilm ARGS` in a child process, as a user runs it; `env` replaces the environment when given.

    Like subprocess.run(capture_output=True): returns a CompletedProcess, raises TimeoutExpired. The child is
    forked from a server that has imported torch already (tests/forked_cli.py says why and what differs from a
    fresh interpreter: only the interpreter's start-up)."""
    return start_tuilm(*args, input=input, env=env, cwd=cwd, text=text).wait(timeout)


def start_tuilm(
    *args: str | bytes, input: str | bytes | None = None, env: dict | None = None, cwd=None, text: bool = True
):
    """run_tuilm without waiting: `.wait(timeout)` returns its CompletedProcess (several can run at once)."""
    command = [sys.executable, "-m", "tuilm", *args]
    if not _fork_server() or _changes_startup(env):
        return _Plain(command, input, env, cwd, text)
    return _Forked(command, input, env, cwd, text)


class _Plain:
    def __init__(self, command, input, env, cwd, text):
        self.command, self.input, self.text = command, input, text
        stdin = subprocess.PIPE if input is not None else None
        pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
        self.proc = subprocess.Popen(command, stdin=stdin, env=env, cwd=cwd, text=text, **pipes)

    def wait(self, timeout: float):
        try:
            out, err = self.proc.communicate(self.input, timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
            raise
        return subprocess.CompletedProcess(self.command, self.proc.returncode, out, err)


class _Forked:
    def __init__(self, command, input, env, cwd, text):
        import tempfile

        self.command, self.text = command, text
        self.tmp = tempfile.TemporaryDirectory(prefix="tuilm-cli-")
        stdin, self.stdout, self.stderr = (os.path.join(self.tmp.name, n) for n in ("stdin", "stdout", "stderr"))
        data = input if isinstance(input, bytes) else (input or "").encode(locale.getpreferredencoding(False))
        with open(stdin, "wb") as f:
            f.write(data)  # no input: an empty stdin, at its end at once
        for path in (self.stdout, self.stderr):
            open(path, "wb").close()
        args = [os.fsdecode(a) for a in command[3:]]  # bytes arguments reach sys.argv as Python decodes them
        env = dict(os.environ if env is None else env)
        cwd = None if cwd is None else str(cwd)
        self.pid = _fork_server().run([args, env, cwd, stdin, self.stdout, self.stderr])

    def wait(self, timeout: float):
        server = _fork_server()
        try:
            code = server.wait(self.pid, timeout)
            if code is None:
                server.kill(self.pid)
                server.wait(self.pid, None)
                raise subprocess.TimeoutExpired(self.command, timeout, self._read(self.stdout), self._read(self.stderr))
            return subprocess.CompletedProcess(self.command, code, self._read(self.stdout), self._read(self.stderr))
        finally:
            self.tmp.cleanup()

    def _read(self, path: str):
        with open(path, "rb") as f:
            data = f.read()
        if not self.text:
            return data
        # What text=True gives: the locale's encoding, universal newlines.
        return data.decode(locale.getpreferredencoding(False)).replace("\r\n", "\n").replace("\r", "\n")


class _ForkServer:
    """The client of tests/forked_cli.py's server: one per test process, for all its commands."""

    def __init__(self):
        import atexit
        import threading

        script = Path(__file__).with_name("forked_cli.py")
        self.env = dict(os.environ)
        self.proc = subprocess.Popen([sys.executable, str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.lock = threading.Lock()
        self.exits: dict[int, int] = {}
        self.next_id = 0
        self.buffer = b""
        atexit.register(self.close)

    def run(self, request: list) -> int:
        with self.lock:
            self.next_id += 1
            self._send({"run": request, "id": self.next_id})
            while True:
                message = self._receive(None)
                if message.get("id") == self.next_id:
                    return message["pid"]

    def wait(self, pid: int, timeout: float | None) -> int | None:
        """The child's exit code, or None when it is still running after `timeout` seconds."""
        import time

        deadline = None if timeout is None else time.monotonic() + timeout
        with self.lock:
            while pid not in self.exits:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return None
                self._receive(left)
            return self.exits.pop(pid)

    def kill(self, pid: int) -> None:
        with self.lock:
            self._send({"kill": pid})

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def _send(self, message: dict) -> None:
        self.proc.stdin.write(json.dumps(message).encode() + b"\n")
        self.proc.stdin.flush()

    def _receive(self, timeout: float | None) -> dict:
        """The next message (child exits are also kept for wait()); {} when none came within `timeout`."""
        import select

        while b"\n" not in self.buffer:
            ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
            if not ready:
                return {}
            chunk = os.read(self.proc.stdout.fileno(), 65536)
            if not chunk:
                raise RuntimeError("the test fork server (tests/forked_cli.py) has died; see its stderr")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        message = json.loads(line)
        if "code" in message:
            self.exits[message["pid"]] = message["code"]
        return message


def _changes_startup(env: dict | None) -> bool:
    """Whether `env` changes what an interpreter does at start-up (PYTHONPATH, a sitecustomize, PYTHONHASHSEED...),
    which a forked child would not see: such a command gets a fresh interpreter."""
    started = _fork_server().env
    env = os.environ if env is None else env
    names = {k for k in (*env, *started) if k.startswith("PYTHON")}
    return any(env.get(k) != started.get(k) for k in names)


@functools.cache
def _fork_server() -> _ForkServer | None:
    """The fork server of this test process, started on first use; None where it is not used."""
    if sys.platform != "linux" or os.environ.get("TUILM_TEST_FORK", "1") == "0":
        return None
    return _ForkServer()


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
    from tuilm.train.metrics_file import read_events
    from tuilm.tui.store import RunStore

    store = RunStore()
    for event in read_events(RECORDED_RUN):
        if upto is not None and getattr(event, "step", 0) > upto:
            break
        store(event)
    return store
