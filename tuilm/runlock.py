"""One writer per run directory, and a way for readers to tell a live run from a dead one.

The lock is an advisory `flock` on `<run>/.lock`, which records the holder's pid, host and start time. The kernel
drops a flock when its process ends however it ends (kill -9 included), so a lock can never go stale: a file
left behind by a dead process is just a file, and the next writer takes it over. Readers (`tuilm runs`, `health`)
ask `holder()` whether a live process holds it: that is what tells "running" from "dead" (killed before it
could write its end event).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from pathlib import Path

from tuilm.errors import ConfigError

LOCK_NAME = ".lock"


class RunLockedError(ConfigError):
    """Another live process is training into this run directory."""


class RunLock:
    """Held for as long as a process writes a run directory; `release()` (or exiting the `with`) lets it go."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            info = _read(fd)
            os.close(fd)
            who = f"process {info.get('pid', '?')} on {info.get('host', '?')}" if info else "another process"
            since = f" since {info['started']}" if info.get("started") else ""
            raise RunLockedError(
                f"{self.path.parent} is being trained by {who}{since}; wait for it to finish, stop it, "
                "or train into another directory (--out or --name)"
            ) from None
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def holder(run_dir: Path) -> dict | None:
    """The pid/host/start of the live process writing `run_dir`, or None when no live process holds its lock."""
    path = Path(run_dir) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read(fd) or {"pid": None}
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _read(fd: int) -> dict:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}
