"""metrics.jsonl, both ways: the writer a run subscribes to its events, and the readers (whole file, or a tail read
as it grows) with the check that a line is a well-typed event; and a run's liveness, judged from the file's age."""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import threading
import time
from dataclasses import fields, replace
from pathlib import Path

from tuilm.formatting import shown
from tuilm.train import events as ev


class MetricsFile:
    """metrics.jsonl: one JSON object per event, each appended whole by one os.write() (no Python buffer between):
    a reader tailing the file (tuilm watch) never sees half an event, a crash loses at most the line being written,
    and a full disk cuts it back to its last whole line, after which nothing more is written."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_BINARY", 0)
        self._fd: int | None = os.open(self.path, flags, 0o644)
        self._size = os.fstat(self._fd).st_size  # the end of the last whole line written
        self._lock = threading.RLock()  # close() takes it too, from a failed write

    def __call__(self, event: ev.Event) -> None:
        line = (json.dumps(event.to_dict(), ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
        with self._lock:
            if self._fd is None:
                return
            try:
                view = memoryview(line)
                while view:  # a regular file takes the whole line at once; the loop is for the rare short write
                    view = view[os.write(self._fd, view) :]
                if isinstance(event, ev.Finished | ev.Failed):
                    os.fsync(self._fd)
            except OSError as e:  # every line left stands: none promises what the run could not do after it
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, self._size)
                self.close()
                if not isinstance(event, ev.Failed):  # a failing run's own error is the one to report
                    raise OSError(e.errno, e.strerror, str(self.path)) from None
                return
            self._size += len(line)

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


def read_events(path: Path, *, replaced: bool = False) -> list[ev.Event]:
    """Events of a metrics.jsonl; a last line still being written is skipped, and so is any line that is not an
    event object (binary data, `[1]`, deep nesting, wrong types): the rest still counts. Steps a resume repeated
    appear once, the newest (newest_wins), unless `replaced` asks for every line as written."""
    events = []
    with open(path, "rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                break
            event = parse_event(line)
            if event is not None:
                events.append(event)
    return events if replaced else newest_wins(events)


def newest_wins(events: list[ev.Event]) -> list[ev.Event]:
    """Events with what a resume replaced taken out: a run resumed from a checkpoint at step R repeats the steps
    after R that the earlier session had already logged, and the newer ones count. Each RunStarted with
    `resumed_step` R drops the step, eval, health, alert and sample events of earlier sessions past R."""
    resumes = [(i, e.resumed_step) for i, e in enumerate(events) if isinstance(e, ev.RunStarted) and e.resumed_step]
    if not resumes:
        return events
    drop = set()
    for at, resumed in resumes:
        for i in range(at):
            e = events[i]
            if isinstance(e, REPLAYED) and e.step > resumed:
                drop.add(i)
    return [e for i, e in enumerate(events) if i not in drop]


REPLAYED = (ev.Step, ev.Eval, ev.Health, ev.Alert, ev.Sample)
# Without a lock file, minutes of silence in metrics.jsonl (every step appends a line) mean the process died.
RUNNING_WINDOW_S = 300.0


def liveness(run_dir: Path) -> str:
    """A run without an end event: `running` while a live process holds its lock (tuilm.runlock), `dead` when
    none does (killed with -9, out of memory, the machine lost). A directory without a lock file, written by a
    tuilm that took none, counts as running while its metrics.jsonl changed in the last RUNNING_WINDOW_S."""
    from tuilm.runlock import LOCK_NAME, holder

    run_dir = Path(run_dir)
    if holder(run_dir) is not None:
        return "running"
    if (run_dir / LOCK_NAME).exists():
        return "dead"
    metrics = run_dir / "metrics.jsonl"
    recent = metrics.is_file() and time.time() - metrics.stat().st_mtime < RUNNING_WINDOW_S
    return "running" if recent else "dead"


MAX_LINE = 1 << 20  # bytes; an event line is a few hundred, a RunStarted a few thousand
_KINDS = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,), "dict": (dict,), "list": (list,)}


def parse_event(line: str | bytes) -> ev.Event | None:
    """One metrics.jsonl line as an event; None for a line from a newer or broken writer (the rest still counts):
    anything but a JSON object of a known event whose fields have their declared types."""
    if len(line) > MAX_LINE:
        return None
    try:
        data = json.loads(line)
        if not isinstance(data, dict):
            return None
        event = ev.from_dict(data)
    except (ValueError, UnicodeDecodeError, TypeError, RecursionError):
        return None
    if event is None or not _well_typed(event):
        return None
    # A run's file is untrusted: its text is made safe to show here, once, for every reader (runs, health, watch).
    text = {f.name: shown(v) for f in fields(event) if isinstance(v := getattr(event, f.name), str | dict | list)}
    return replace(event, **text) if any(text[k] != getattr(event, k) for k in text) else event


def _well_typed(event: ev.Event) -> bool:
    for f in fields(event):
        value = getattr(event, f.name)
        kinds = [_KINDS.get(k.strip()) for k in str(f.type).split("|")]
        if value is None and "None" in str(f.type):
            continue
        if any(k is None for k in kinds):
            continue  # a type this check does not know: trusted as it is
        if isinstance(value, bool) and bool not in sum(kinds, ()):
            return False
        if not isinstance(value, sum(kinds, ())):
            return False
    return True


class MetricsTail:
    """Reads the events appended to a metrics.jsonl since the last call.

    The writer appends whole lines, but a reader can still catch one half-written: `offset` stays at the end of
    the last whole line, so the bytes after it wait for the next call. A file that shrank was replaced (a new run in
    the same directory): reading starts over.
    """

    MAP_FROM = 1 << 20  # bytes: a larger block is mapped (tuilm board's first look at a long run), not copied

    def __init__(self, path: Path):
        self.path = Path(path)
        self.offset = 0

    def read(self, max_bytes: int = 4 << 20) -> tuple[list[ev.Event], bool]:
        """(new events, whether the file was replaced and the caller should forget what it had)."""
        data, start, end, restarted = self.read_block(max_bytes)
        events = (parse_event(line) for line in data[start:end].splitlines())
        return [e for e in events if e is not None], restarted

    def read_block(self, max_bytes: int = 4 << 20) -> tuple[bytes | mmap.mmap, int, int, bool]:
        """What was appended since the last call, unparsed: (buffer, start, end, whether the file was replaced),
        the new whole lines being buffer[start:end]. The board searches the buffer in place and parses only the
        lines it needs; a large block comes memory-mapped, so its megabytes are not even copied."""
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return b"", 0, 0, False
        restarted = size < self.offset
        if restarted:
            self.offset = 0
        stop = min(size, self.offset + max_bytes)
        if stop == self.offset:
            return b"", 0, 0, restarted
        with open(self.path, "rb") as f:
            if stop - self.offset >= self.MAP_FROM:
                data, start = mmap.mmap(f.fileno(), stop, access=mmap.ACCESS_READ), self.offset
            else:
                f.seek(self.offset)
                data, start = f.read(stop - self.offset), 0
        end = data.rfind(b"\n", start, start + stop - self.offset) + 1
        if end == 0:  # no whole line yet; one longer than max_bytes is no event (MAX_LINE): skip it
            if stop - self.offset < max_bytes:
                return b"", 0, 0, restarted
            end = start + stop - self.offset
        self.offset += end - start
        return data, start, end, restarted
