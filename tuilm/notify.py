"""`--notify CMD` (`tuilm watch`, `tuilm board`): word when a run finishes, fails, dies, raises an alert or reaches
a `--target`. CMD is run once per happening, through the shell, with the happening as one JSON object on its
standard input, so a webhook is `curl -d @- URL` away (docs/board.md).

Only what happens while we look is told: the first look at a run sets what is already known (an old run's end,
its old alerts), and every later one tells what is new once. Dead is the one thing a process outside the run can
tell: the run's lock is free and no end event was written (tuilm.runlock), found by polling.
"""

from __future__ import annotations

import json
import math
import queue
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tuilm.errors import ConfigError
from tuilm.train import events as ev

if TYPE_CHECKING:
    from tuilm.tui.board_data import BoardRun

HOOK_TIMEOUT = 30.0  # seconds a notify command may take before it is killed


@dataclass(frozen=True)
class Target:
    metric: str
    value: float

    def reached(self, run: BoardRun) -> bool:
        if self.metric == "step":
            return run.step >= self.value
        if self.metric == "tokens":
            return run.tokens >= self.value
        best = run.best_bpc
        return best is not None and best <= self.value


def parse_target(text: str) -> Target:
    """step=N, tokens=N, or a val bits/char as `tuilm train --target` writes it (2.2, bpc=2.2; val_bpc=2.2 too):
    one reading of a score target, config.parse_target's."""
    from tuilm.values import parse_target as parse_score

    metric, eq, value = text.partition("=")
    metric = metric.strip()
    hint = "give a val bits/char (e.g. 1.6 or bpc=1.6), step=N or tokens=N"
    if eq and metric in ("step", "tokens"):
        try:
            number = float(value)
        except ValueError:
            raise ConfigError(f"--target {text!r}: {value!r} is not a number; {hint}") from None
        if not math.isfinite(number):
            raise ConfigError(f"--target {text!r}: the value must be a finite number; {hint}")
        return Target(metric, number)
    try:
        unit, number = parse_score(f"bpc={value}" if metric == "val_bpc" else text)
    except ConfigError:
        raise ConfigError(f"--target {text!r}: {hint}") from None
    if unit != "bpc":  # a run's row holds its best val bits/char, not its loss
        raise ConfigError(f"--target {text!r}: the board follows val bits/char; {hint}")
    return Target("val_bpc", number)


class Notifier:
    """Runs CMD once for each happening, in a thread of its own (the board stays live); `close()` waits."""

    def __init__(self, command: str, target: Target | None = None):
        self.command = command
        self.target = target
        self.told: set[tuple] = set()
        self.seen: set[str] = set()  # runs looked at once already
        self.failures: list[str] = []
        self._queue: queue.Queue[bytes | None] = queue.Queue()
        self._thread: threading.Thread | None = None

    def look(self, run: BoardRun, new: list[ev.Event]) -> list[dict]:
        """After a poll of `run` (its new table events): the notices sent now. The first look at a run that was
        there when we started only notes what is already known; a run found later (`found_late`) is all news."""
        key = str(run.path)
        first = key not in self.seen
        self.seen.add(key)
        notices = [self._notice(run, n) for n in self._happenings(run, new)]
        if first and not run.found_late:
            # Already known when we first looked: the baseline, not news.
            for n in notices:
                self.told.add(n.pop("_key"))
            return []
        sent = []
        for n in notices:
            k = n.pop("_key")
            if k not in self.told:
                self.told.add(k)
                self._send(n)
                sent.append(n)
        return sent

    def _happenings(self, run: BoardRun, new: list[ev.Event]) -> list[dict]:
        session = run.sessions
        alerts = [e for e in new if isinstance(e, ev.Alert)]
        first = run.alerts_read - len(alerts)  # alerts are numbered in the order they were read, each once
        out = [{"event": "alert", "_key": ("alert", first + i), **_alert(a)} for i, a in enumerate(alerts)]
        end = run.end
        if isinstance(end, ev.Finished):
            out.append({"event": "finished", "_key": ("end", session), "reason": end.reason})
        elif isinstance(end, ev.Failed):
            out.append({"event": "failed", "_key": ("end", session), "error": end.error})
        elif run.status == "dead":
            out.append(
                {"event": "dead", "_key": ("end", session), "message": "the lock is free and no end was written"}
            )
        if self.target is not None and run.sessions and self.target.reached(run):
            t = self.target
            out.append({"event": "target", "_key": ("target",), "target": f"{t.metric}={t.value:g}"})
        return out

    def _notice(self, run: BoardRun, happening: dict) -> dict:
        return {
            **happening,
            "_key": (str(run.path), *happening["_key"]),
            "text": summary(run, happening),
            "run": run.name,
            "path": str(run.path),
            "status": run.status,
            "step": run.step,
            "best_val_bpc": run.best_bpc,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }

    def _send(self, notice: dict) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run_queue, name="notify", daemon=True)
            self._thread.start()
        self._queue.put(json.dumps(notice, allow_nan=False, default=str).encode() + b"\n")

    def _run_queue(self) -> None:
        # One at a time, in order: an alert's word arrives before the run's end.
        while (data := self._queue.get()) is not None:
            try:
                proc = subprocess.run(
                    self.command,
                    shell=True,
                    input=data,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    timeout=HOOK_TIMEOUT,
                    start_new_session=True,  # a Ctrl-C in the board's terminal does not cut a webhook short
                )
            except (OSError, subprocess.TimeoutExpired) as e:
                self.failures.append(f"notify: {self.command!r} failed ({e})")
                continue
            if proc.returncode:
                self.failures.append(f"notify: {self.command!r} exited with {proc.returncode}")

    def close(self) -> None:
        """Wait for the notices still queued to be sent."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None


def summary(run: BoardRun, happening: dict) -> str:
    """One line for a chat message (Slack's `text`, Discord's `content`: docs/board.md)."""
    kind, at = happening["event"], f"at step {run.step:,}"
    if kind == "alert":
        what = f"alert {at} ({happening['severity']} {happening['code']}): {happening['message']}"
    elif kind == "finished":
        best = f", best val {run.best_bpc:.4f} bits/char" if run.best_bpc is not None else ""
        what = f"finished ({run.status}, {happening['reason']}) {at}{best}"
    elif kind == "failed":
        what = f"failed {at}: {happening['error']}"
    elif kind == "dead":
        what = f"died {at}: no process holds its lock and it wrote no end"
    else:
        what = f"reached {happening['target']} {at}"
    return f"tuilm: {run.name} {what}"


def _alert(a: ev.Alert) -> dict:
    return {"code": a.code, "severity": a.severity, "message": a.message, "layer": a.layer, "alert_step": a.step}
