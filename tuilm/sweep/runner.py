"""`tuilm sweep`: train every combination of a grid, each an ordinary run folder, through failures and Ctrl-C.

A sweep folder holds sweep.json (the command and each run's outcome), one run folder per combination and seed,
and results.csv / results.md / *.png rebuilt after every run. Rerunning the same command skips the runs that
finished, resumes the one that was interrupted, and retries the ones that crashed or ran out of memory.
"""

from __future__ import annotations

import contextlib
import gc
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from tuilm.atomic import atomic_write_text
from tuilm.config import RunConfig, from_dict
from tuilm.errors import CheckpointError, ConfigError, TuilmError
from tuilm.formatting import fmt, percent, show_value
from tuilm.run_setup import (
    Interrupt,
    attach_files,
    build_trainer,
    release_run_dir,
    train_until_done,
    write_error_log,
)
from tuilm.sweep import plots
from tuilm.sweep.results import Row, collect_rows, csv_text, groups_table, markdown, runs_table
from tuilm.sweep.runinfo import METRICS, flatten, summarize_run
from tuilm.sweep.spec import (
    IGNORED_IN_MATCH,
    PlannedRun,
    SweepSpec,
    load_spec_file,
    same_sweep,
    save_spec_file,
)
from tuilm.train import events as ev
from tuilm.train.progress import HeadlessProgress, bar_columns
from tuilm.train.summaries import eval_summary

# Outcomes the same config would only repeat: a rerun keeps them. Anything else (stopped, oom, failed) is retried.
FINAL = ("completed", "diverged")
ARTIFACTS = (
    "metrics.jsonl",
    "last.safetensors",
    "best.safetensors",
    "train_state.safetensors",
    "train_state.next.safetensors",
    "error.log",
)


@dataclass
class Outcome:
    status: str  # completed | diverged | stopped | interrupted | oom | failed | invalid | pending
    reason: str = ""
    wall_s: float | None = None
    trained: bool = True  # False when it was skipped or never got as far as training

    def to_json(self) -> dict[str, Any]:
        return {"status": self.status, "reason": self.reason, "wall_s": self.wall_s}


def check_existing(sweep_dir: Path, plan: list[PlannedRun], configs: dict[str, Any]) -> None:
    """Refuse before training anything when a run folder of this sweep holds a run with other settings: reusing
    it would mix two experiments, and restarting it would destroy one."""
    for run in plan:
        config = configs[run.name]
        saved = sweep_dir / run.name / "config.toml"
        if isinstance(config, RunConfig) and saved.is_file():
            diff = config_difference(saved, config)
            if diff:
                raise ConfigError(
                    f"{saved.parent} holds a run with other settings ({diff}); "
                    "pick another --name or --out for this sweep, or remove that folder"
                )


def config_difference(saved: Path, config: RunConfig) -> str:
    try:
        table = tomllib.loads(saved.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
        return "its config.toml is unreadable"
    # Through the loader, so a setting added since that run was made counts at its default (which it ran with),
    # and a rerun after an upgrade of tuilm reuses the run instead of refusing it. A config this version cannot
    # load (a newer tuilm's) is compared as written.
    with contextlib.suppress(TuilmError):
        table = tomllib.loads(from_dict(table, table.get("recipe", "custom")).to_toml())
    theirs = flatten(table)
    ours = flatten(tomllib.loads(config.to_toml()))  # through TOML too, so both sides spell values alike
    keys = [k for k in dict.fromkeys([*ours, *theirs]) if k not in IGNORED_IN_MATCH]
    differ = [k for k in keys if ours.get(k) != theirs.get(k)]
    parts = [f"{k} {theirs.get(k, 'unset')} there, {ours.get(k, 'unset')} here" for k in differ[:3]]
    return "; ".join(parts) + (f" and {len(differ) - 3} more" if len(differ) > 3 else "")


# -- the loop ------------------------------------------------------------------------------------------------------


def run_sweep(
    sweep_dir: Path, spec: SweepSpec, plan: list[PlannedRun], configs: dict[str, Any], console: Console
) -> int:
    sweep_dir.mkdir(parents=True, exist_ok=True)
    saved = load_spec_file(sweep_dir)
    if saved and not same_sweep(saved, spec):
        console.print(
            f"{sweep_dir} held a different sweep; sweep.json now describes this one "
            "(run folders the two have in common are reused)"
        )
    names = {r.name for r in plan}
    outcomes = {k: v for k, v in (saved or {}).get("outcomes", {}).items() if k in names}
    record = {
        "version": 1,
        **spec.to_json(),
        "plan": [{"name": r.name, "values": r.values, "seed": r.seed} for r in plan],
        "outcomes": outcomes,
    }
    save_spec_file(sweep_dir, record)

    # Seeds outermost: an interrupted sweep has covered the whole grid once before it repeats any of it.
    order = sorted(plan, key=lambda r: r.seed_index)
    done = sum(1 for r in plan if _finished(sweep_dir / r.name))
    budget = spec.parsed_budget.describe() if spec.parsed_budget else "the recipe's own stopping criteria"
    console.print(
        f"[bold]sweep {sweep_dir}[/]: {len(plan)} runs"
        + (f" ({done} already done)" if done else "")
        + f", budget {budget}"
    )
    interrupt = Interrupt(
        lambda: console.print(
            "\nstopping: the current run saves, then the sweep writes its results and ends "
            "(rerun the same command to resume; Ctrl-C again to quit at once)"
        )
    )
    current = None
    try:
        with interrupt.installed():
            for i, run in enumerate(order, 1):
                if interrupt.requested:
                    break
                current = run
                line = f"[bold][{i}/{len(order)}][/] {describe(run, spec.labels)}"
                outcome = execute(line, run, configs[run.name], sweep_dir, interrupt, console, outcomes)
                outcomes[run.name] = outcome.to_json()
                save_spec_file(sweep_dir, record)
                rows = write_results(sweep_dir, record)
                if outcome.trained:
                    console.print(_progress_table(rows, spec))
                current = None
            interrupted = interrupt.requested
    except KeyboardInterrupt:
        console.print("quitting at once; the run in progress keeps its last checkpoint")
        if current is not None:
            outcomes[current.name] = Outcome("interrupted", "quit with a second Ctrl-C").to_json()
        save_spec_file(sweep_dir, record)
        write_results(sweep_dir, record)
        return 130
    rows = write_results(sweep_dir, record, console=console, with_plots=True)
    if interrupted:
        console.print("[yellow]sweep interrupted[/]: rerun the same command to resume the remaining runs")
        return 130
    return 0 if any(r.status == "completed" for r in rows) and not any(r.status == "failed" for r in rows) else 1


def _finished(run_dir: Path) -> bool:
    return (run_dir / METRICS).is_file() and summarize_run(run_dir).status in FINAL


def describe(run: PlannedRun, labels: dict[str, str]) -> str:
    parts = [f"{labels.get(k, k)}={show_value(v)}" for k, v in run.values.items()]
    if not run.seed_swept:
        parts.append(f"seed={run.seed}")
    return " ".join(parts) or run.name


def execute(
    spec_line: str,
    run: PlannedRun,
    config: RunConfig | ConfigError,
    sweep_dir: Path,
    interrupt: Interrupt,
    console: Console,
    outcomes: dict[str, Any],
) -> Outcome | None:
    """Train one run (resuming it when an earlier attempt left a checkpoint), or say why not."""
    run_dir = sweep_dir / run.name
    if isinstance(config, ConfigError):
        console.print(f"{spec_line}: [yellow]invalid[/], {config}")
        return Outcome("invalid", str(config), trained=False)
    recorded = outcomes.get(run.name) or {}
    summary = summarize_run(run_dir) if (run_dir / METRICS).is_file() else None
    if summary is not None and summary.status in FINAL:
        console.print(f"{spec_line}: already {summary.status} (best val loss {fmt(summary.best_val_loss)}), skipped")
        reason = recorded.get("reason", "") if recorded.get("status") == summary.status else ""
        return Outcome(summary.status, reason, recorded.get("wall_s"), trained=False)
    resume = _can_resume(run_dir)
    previous_wall = (recorded.get("wall_s") or 0.0) if resume else 0.0
    console.print(spec_line)
    console.print(f"  [dim]{run_dir}[/]")
    start = time.monotonic()

    def wall() -> float:
        return round(previous_wall + time.monotonic() - start, 2)

    try:
        trainer = _build(config, run_dir, resume, console)
    except TuilmError as e:
        # The data or the model cannot be built with this combination (a sequence longer than any document...).
        console.print(f"  [yellow]invalid[/]: {e}")
        return Outcome("invalid", str(e), wall())
    except Exception as e:
        return _crashed(e, run_dir, 0, wall(), console)
    try:
        if interrupt.requested:  # Ctrl-C while the data was being prepared: nothing of this run exists yet
            return Outcome("pending", "interrupted before training", trained=False)
        if trainer.resumed_step:
            console.print(f"  resuming from its checkpoint at step {trainer.resumed_step}")
        progress = RunProgress(console)
        trainer.bus.subscribe(progress)
        metrics = attach_files(trainer)
        try:
            train_until_done(trainer, interrupt)
        finally:
            progress.close()
            metrics.close()
        if trainer.error is not None:
            if progress.nonfinite:
                # The loss went non-finite and something then broke on the NaN weights: that is divergence.
                error = trainer.error
                write_error_log(run_dir, error)
                console.print(f"  [red]diverged[/] at step {trainer.step}")
                return Outcome("diverged", f"non-finite loss, then {type(error).__name__}: {error}", wall())
            return _crashed(trainer.error, run_dir, trainer.step, wall(), console)
        result = trainer.result
        reason = {
            "diverged": f"non-finite loss or gradient at step {result.step}",
            "stopped": f"{result.reason} at step {result.step}",
        }.get(result.status, "")
        style = {"completed": "green", "diverged": "red"}.get(result.status, "yellow")
        best = f", best val loss {fmt(result.best_val_loss)}" if result.best_val_loss is not None else ""
        console.print(f"  [{style}]{result.status}[/] at step {result.step} in {wall():.1f}s{best}")
        return Outcome(result.status, reason, wall())
    finally:
        _release(trainer)


def _build(config: RunConfig, run_dir: Path, resume: bool, console: Console):
    if not resume:
        _clear(run_dir)
        return build_trainer(config, run_dir, own_thread=True)
    try:
        return build_trainer(config, run_dir, resume=True, own_thread=True)
    except CheckpointError as e:
        console.print(f"  cannot resume ({e}); starting this run again")
        _clear(run_dir)
        return build_trainer(config, run_dir, own_thread=True)


def _can_resume(run_dir: Path) -> bool:
    return all((run_dir / f).is_file() for f in ("metrics.jsonl", "last.safetensors", "train_state.safetensors"))


def _clear(run_dir: Path) -> None:
    # A fresh start in a folder an earlier attempt left behind: metrics.jsonl appends, so it must go.
    for name in ARTIFACTS:
        (run_dir / name).unlink(missing_ok=True)


def _is_oom(error: BaseException) -> bool:
    if isinstance(error, MemoryError):
        return True
    import torch

    oom = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
    return isinstance(error, oom) or (isinstance(error, RuntimeError) and "out of memory" in str(error).lower())


def _crashed(error: BaseException, run_dir: Path, step: int, wall: float, console: Console) -> Outcome:
    first_line = (str(error).strip().splitlines() or [""])[0]
    if _is_oom(error):
        console.print(f"  [red]out of memory[/] at step {step}")
        return Outcome("oom", f"out of memory at step {step}: {first_line}"[:300], wall)
    where = write_error_log(run_dir, error)
    console.print(f"  [red]failed[/] at step {step}: {type(error).__name__}: {first_line}{where}")
    return Outcome("failed", f"{type(error).__name__}: {first_line}{where}"[:500], wall)


def _release(trainer) -> None:
    release_run_dir(trainer)  # the run dir's lock
    # The next run needs the memory back: an exception's traceback pins the frames (and tensors) it ran through.
    if trainer.error is not None:
        trainer.error.__traceback__ = None
    del trainer
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _progress_table(rows: list[Row], spec: SweepSpec):
    shown = [r for r in rows if r.status != "pending"]
    pending = len(rows) - len(shown)
    title = f"results so far ({len(shown)} of {len(rows)} runs{f', {pending} to go' if pending else ''})"
    return runs_table(shown, spec.keys, spec.labels, title, seeds=spec.seeds > 1, compact=True)


# -- results -------------------------------------------------------------------------------------------------------


def write_results(
    sweep_dir: Path, record: dict[str, Any], console: Console | None = None, with_plots: bool = False
) -> list[Row]:
    """results.csv and results.md (and, with_plots, the PNGs and terminal charts) from sweep.json's record and
    the run folders."""
    keys = list(record.get("grid", {}))
    labels = record.get("labels", {})
    rows = collect_rows(sweep_dir, record)
    atomic_write_text(sweep_dir / "results.csv", csv_text(rows, keys))
    pngs: list[str] = []  # linked from results.md only once drawn from these very results
    if with_plots:
        if console is not None:
            if record.get("seeds", 1) > 1:
                console.print(groups_table(rows, keys, labels, f"results by configuration ({record['seeds']} seeds)"))
            else:
                console.print(runs_table(rows, keys, labels, "results", seeds=False))
            plots.terminal_sweep_plots(console, rows, keys, labels)
        if plots.matplotlib_missing():
            if console is not None:
                console.print("matplotlib is not installed, so no PNG plots (pip install 'tuilm[plot]')", markup=False)
        else:
            pngs = plots.write_pngs(sweep_dir, rows, keys, labels)
    atomic_write_text(sweep_dir / "results.md", markdown(sweep_dir.name, record, rows, pngs))
    if with_plots and console is not None:
        files = ", ".join(["results.csv", "results.md", *pngs])
        console.print(f"wrote {files} in {sweep_dir}")
    return rows


# -- Ctrl-C and progress ---------------------------------------------------------------------------------------------


class RunProgress(HeadlessProgress):
    """One run inside a sweep: a transient bar on a terminal (a line every few seconds elsewhere) and a line per
    evaluation. Quieter than `tuilm train --headless`: no samples or checkpoint notes, only bad alerts."""

    interval = 10.0
    transient = True
    refresh_per_second = 10

    def __init__(self, console: Console, interval: float | None = None):
        super().__init__(interval=interval)
        self.console, self.plain = console, not console.is_terminal
        self.nonfinite = False
        self._last_line = time.monotonic()  # the first plain line comes an interval in, after the start lines

    def __call__(self, event: ev.Event) -> None:
        if isinstance(event, ev.Sample | ev.CheckpointSaved | ev.Log):
            return
        if isinstance(event, ev.Finished):
            self.close()  # the sweep prints the outcome
            return
        super().__call__(event)

    def start_lines(self, e: ev.RunStarted) -> list[str]:
        return [f"  {e.params:,} parameters on {e.device} {e.dtype}"]

    def eval_line(self, e: ev.Eval) -> str:
        return f"  step {e.step}: {eval_summary(e, ppl=False)}  train loss {e.train_loss:.4f}"

    def on_alert(self, e: ev.Alert) -> None:
        self.nonfinite = self.nonfinite or e.code == "nonfinite"
        if e.severity == "bad":
            self._print(f"  [red]alert[/] step {e.step}: {e.message}", markup=True)

    def stats(self, s: ev.Step) -> str:
        return f"loss {s.loss:.3f}  {s.tokens_per_s:,.0f} tok/s"

    def plain_line(self, s: ev.Step) -> str:
        return f"  step {s.step}{percent(s.progress)}  {self.stats(s)}"

    def columns(self) -> tuple:
        from rich.progress import TextColumn, TimeRemainingColumn

        return bar_columns("  step", TextColumn("eta"), TimeRemainingColumn())
