"""`tuilm board [DIR ...]`: every run under the folders in one live table (tuilm.tui.board); `--json` prints the
table once. `--notify CMD` (here and on `tuilm watch`) runs CMD when a run ends, dies, alerts or reaches a target."""

from __future__ import annotations

import threading
from pathlib import Path

from tuilm.errors import TuilmError

NOTIFY_INTERVAL = 1.0  # seconds between looks at a watched run for --notify


def board_command(
    folders: list[Path], as_json: bool = False, notify: str | None = None, target: str | None = None
) -> int:
    from tuilm.tui.board_data import BoardModel

    folders = [Path(f) for f in folders] or [Path("runs")]
    for folder in folders:
        if not folder.is_dir():
            what = "not a folder" if folder.exists() else "no such folder"
            raise TuilmError(f"{folder}: {what}; give folders that hold runs (runs are written to runs/ by default)")
    notifier = _notifier(notify, target)
    model = BoardModel(folders)
    model.poll(discover=True)
    if as_json:
        from tuilm.commands.jsonout import print_json

        print_json("board", {"folders": [str(f) for f in folders], "runs": [r.record() for r in model.runs.values()]})
        return 0
    from tuilm.tui.board import Board, BoardView, OpenRun

    if notifier is not None:
        for run in model.runs.values():
            notifier.look(run, [])  # what is already known is not news
    view = BoardView()
    try:
        while True:
            choice = Board(model, view, notifier).run()
            if not isinstance(choice, OpenRun):
                return 0
            _dashboard(choice.path)
    finally:
        if notifier is not None:
            notifier.close()


def _dashboard(run: Path) -> None:
    """A run's full dashboard, as `tuilm watch` shows it; Esc (or q) comes back to the board."""
    from tuilm.tui.board import RunDashboard

    RunDashboard(follow=run / "metrics.jsonl").run()


def _notifier(notify: str | None, target: str | None):
    if target is not None and notify is None:
        raise TuilmError("--target needs --notify CMD: the command to run when the target is reached")
    if notify is None:
        return None
    if not notify.strip():
        raise TuilmError("--notify needs a command, e.g. --notify 'curl -d @- https://hooks.slack.com/...'")
    from tuilm.notify import Notifier, parse_target

    return Notifier(notify, parse_target(target) if target is not None else None)


def watch_notices(run: Path, notify: str | None, target: str | None):
    """For `tuilm watch RUN --notify CMD`: a thread that looks at the run every NOTIFY_INTERVAL seconds and tells
    what happens; `stop()` it when the dashboard closes. None without --notify."""
    notifier = _notifier(notify, target)
    if notifier is None:
        return None
    from tuilm.tui.board_data import BoardRun

    board_run = BoardRun(Path(run), Path(run).resolve().name, 0)
    notifier.look(board_run, board_run.poll())
    return NoticeThread(board_run, notifier)


class NoticeThread:
    def __init__(self, run, notifier):
        self.run, self.notifier = run, notifier
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="notify", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(NOTIFY_INTERVAL):
            self.notifier.look(self.run, self.run.poll())

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.notifier.look(self.run, self.run.poll())  # an end written as the dashboard closed
        self.notifier.close()
