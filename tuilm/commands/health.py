"""`tuilm health RUN`: a run's gradient health report, from its metrics.jsonl."""

from __future__ import annotations

from pathlib import Path

from tuilm.errors import TuilmError


def health_command(run: Path) -> None:
    from rich.console import Console

    from tuilm.train.health_report import render, summarize
    from tuilm.train.sinks import read_events

    run = Path(run)
    path = run / "metrics.jsonl" if run.is_dir() else run
    if path.is_file() and not path.name.endswith(".jsonl"):
        raise TuilmError(f"{run}: not a metrics.jsonl; point at a run directory written by `tuilm train`")
    if not path.is_file():
        raise TuilmError(f"{run}: no metrics.jsonl here; point at a run directory written by `tuilm train`")
    render(run, summarize(read_events(path)), Console())
