"""`tuilm watch RUN`: the dashboard, read-only, over a run written by another process."""

from __future__ import annotations

from pathlib import Path

from tuilm.errors import TuilmError


def watch_command(run: Path, compare: Path | None = None, notify: str | None = None, target: str | None = None) -> int:
    from tuilm.commands.chat import open_chat
    from tuilm.tui.app import Dashboard, OpenChat
    from tuilm.tui.startup import freeze_startup_objects

    run = Path(run)
    if not run.is_dir():
        raise TuilmError(f"{run}: no such run directory")
    metrics = run / "metrics.jsonl"
    if not metrics.is_file():
        raise TuilmError(f"{run}: no metrics.jsonl in it (a run writes one as soon as training starts)")
    from tuilm.train.comparison import compare_metrics

    other = compare_metrics(compare, run) if compare is not None else None
    from tuilm.commands.board import watch_notices

    notices = watch_notices(run, notify, target)
    app = Dashboard(follow=metrics, compare=other)
    freeze_startup_objects()
    try:
        choice = app.run()
    finally:
        if notices is not None:
            notices.stop()
    if isinstance(choice, OpenChat):
        return open_chat(choice.path)
    return app.return_code or 0
