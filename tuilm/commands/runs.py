"""`tuilm runs` and `tuilm compare`: what the run folders on disk hold, read from their metrics.jsonl. Torch-free."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from tuilm.errors import TuilmError
from tuilm.formatting import fmt, fmt_rate, show_value, shown
from tuilm.sweep import plots
from tuilm.sweep.results import STYLES, ppl
from tuilm.sweep.runinfo import (
    METRICS,
    RunSummary,
    differing_keys,
    find_runs,
    make_console,
    read_config,
    short_labels,
    summarize_run,
)
from tuilm.sweep.spec import SPEC_FILE

STATUS_STYLES = {**STYLES, "running": "cyan", "stopped": "yellow", "dead": "bold red"}


def run_record(summary: RunSummary, label: str) -> dict:
    """One run in `--json` output (docs/scripting.md)."""
    return {
        "run": label,
        "path": str(summary.path),
        "name": summary.name,
        "recipe": summary.recipe,
        "status": summary.status,
        "steps": summary.steps,
        "best_val_loss": summary.best_val_loss,
        "best_val_bpc": summary.best_val_bpc,
        "final_val_loss": summary.final_val_loss,
        "final_val_bpc": summary.final_val_bpc,
        "tokens_per_s": summary.tokens_per_s,
        "peak_memory_mb": summary.peak_memory_mb,
        "params": summary.params,
        "hardware": summary.hardware or None,
        "error": summary.error or None,
        "best_weights": summary.best_weights,
        "target": target_record(summary),
    }


def target_record(summary: RunSummary) -> dict | None:
    """train.target and where it was first reached (None: no target; reached false: not reached)."""
    if not summary.target:
        return None
    return {"target": summary.target, "reached": summary.target_reached is not None, **(summary.target_reached or {})}


def target_cell(summary: RunSummary) -> str:
    hit = summary.target_reached
    if not summary.target:
        return "-"
    if hit is None:
        return f"{summary.target}: [yellow]not reached[/]"
    return f"{summary.target}: step {hit['step']:,}, {hit['seconds']:.1f} s, {hit['flops']:.3g} FLOPs"


def runs_command(folder: Path, as_json: bool = False) -> None:
    folder = Path(folder)
    if not folder.exists():
        raise TuilmError(f"{folder}: no such folder (runs are written to runs/ by default)")
    if not folder.is_dir():
        raise TuilmError(f"{folder}: not a folder; give the folder that holds the runs")
    console = make_console()
    run_dirs = find_runs(folder)
    if as_json:
        from tuilm.commands.jsonout import print_json

        names = [_name(folder, d) for d in run_dirs]
        print_json(
            "runs",
            {"folder": str(folder), "runs": [run_record(_summary(d), n) for d, n in zip(run_dirs, names, strict=True)]},
        )
        return
    if not run_dirs:
        console.print(f"no runs under {folder} (a run is a folder with a metrics.jsonl; start one with tuilm train)")
        return
    table = Table(title=f"{len(run_dirs)} run{'s' if len(run_dirs) > 1 else ''} under {folder}", title_justify="left")
    table.add_column("run", style="bold")
    table.add_column("recipe")
    table.add_column("steps", justify="right")
    table.add_column("best val loss", justify="right")
    table.add_column("bits/char", justify="right")
    table.add_column("trained on")
    table.add_column("status")
    summaries = [_summary(d) for d in run_dirs]
    targets = any(s.target for s in summaries)
    if targets:
        table.add_column("time to target")
    for run_dir, summary in zip(run_dirs, summaries, strict=True):
        cells = [
            _name(folder, run_dir),
            summary.recipe,
            f"{summary.steps:,}",
            fmt(summary.best_val_loss),
            fmt(summary.best_val_bpc),
            summary.hardware,
            _status(summary.status),
        ]
        table.add_row(*cells, *([target_cell(summary)] if targets else []))
    console.print(table)


def _name(folder: Path, run_dir: Path) -> str:
    return shown(run_dir.relative_to(folder).as_posix() if run_dir != folder else folder.resolve().name)


def compare_command(run_dirs: list[Path], as_json: bool = False) -> None:
    run_dirs = [Path(d) for d in run_dirs]
    if len(run_dirs) < 2:
        raise TuilmError("compare needs at least two run folders, e.g. tuilm compare runs/a runs/b")
    missing = [str(d) for d in run_dirs if not d.is_dir()]
    if missing:
        raise TuilmError(f"no such run folder: {', '.join(missing)}")
    for d in run_dirs:
        if not (d / METRICS).is_file():
            hint = " (it is a sweep: list its runs with tuilm runs)" if (d / SPEC_FILE).is_file() else ""
            raise TuilmError(f"{d}: not a run folder, it has no {METRICS}{hint}")
    console = make_console()
    labels = short_labels(run_dirs)
    configs = [read_config(d) for d in run_dirs]
    keys = differing_keys(configs, ignore=("description",))
    if as_json:
        from tuilm.commands.jsonout import print_json

        summaries = [_summary(d) for d in run_dirs]
        finite = [
            (s.best_val_loss, label) for s, label in zip(summaries, labels, strict=True) if s.best_val_loss is not None
        ]
        print_json(
            "compare",
            {
                "runs": [run_record(s, label) for s, label in zip(summaries, labels, strict=True)],
                "differing_settings": {key: [c.get(key) for c in configs] for key in keys},
                "best": min(finite)[1] if finite else None,
            },
        )
        return
    if keys:
        table = Table(title="settings that differ", title_justify="left")
        table.add_column("setting", style="bold")
        for label in labels:
            table.add_column(label)
        for key in keys:
            table.add_row(key, *[show_value(c[key]) if key in c else "[dim]unset[/]" for c in configs])
        console.print(table)
    else:
        console.print("the runs have the same settings")
    summaries = [_summary(d) for d in run_dirs]
    table = Table(title="final numbers", title_justify="left")
    for header in ("run", "status", "steps", "best val loss", "final val loss", "ppl", "bits/char", "tok/s"):
        table.add_column(header, justify="left" if header in ("run", "status") else "right")
    table.add_column("peak MB", justify="right")
    best = min((s.best_val_loss for s in summaries if s.best_val_loss is not None), default=None)
    for label, s in zip(labels, summaries, strict=True):
        perplexity = ppl(s.best_val_loss)
        table.add_row(
            label,
            _status(s.status),
            f"{s.steps:,}",
            fmt(s.best_val_loss),
            fmt(s.final_val_loss),
            fmt(perplexity, 2),
            fmt(s.best_val_bpc),
            fmt_rate(s.tokens_per_s),
            fmt(s.peak_memory_mb, 0),
            style="bold" if best is not None and s.best_val_loss == best else None,
        )
    console.print(table)
    plots.terminal_overlay(console, list(zip(labels, summaries, strict=True)))


def _summary(run_dir: Path) -> RunSummary:
    try:
        return summarize_run(run_dir)
    except (OSError, UnicodeDecodeError) as e:
        return RunSummary(run_dir, run_dir.name, "?", "unreadable", error=str(e))


def _status(status: str) -> str:
    style = STATUS_STYLES.get(status)
    return f"[{style}]{status}[/]" if style else status
