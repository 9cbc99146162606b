"""`tuilm compare A... vs B...`: two groups of runs (seeds of two configurations), their difference in best val
score with a confidence interval and Welch's t-test (tuilm/sweep/stats.py). Torch-free."""

from __future__ import annotations

import glob
from pathlib import Path

from tuilm.errors import ConfigError, TuilmError
from tuilm.sweep.runinfo import METRICS, find_runs, make_console, summarize_run
from tuilm.sweep.stats import ALTERNATIVES, describe, welch

SEPARATOR = "vs"
METRIC_FIELDS = {"bpc": ("best_val_bpc", "best val bits/char"), "loss": ("best_val_loss", "best val loss")}


def compare_runs_or_groups(
    run_dirs: list[Path], metric: str, alternative: str, confidence: float, as_json: bool = False
) -> None:
    """`tuilm compare`: two groups of runs with `vs` between them (Welch's t-test), else run by run."""
    sides = split_sides(run_dirs)
    if sides is not None:
        compare_groups(*sides, metric, alternative, confidence, as_json)
        return
    from tuilm.commands.runs import compare_command

    compare_command(run_dirs, as_json)


def split_sides(items: list[Path]) -> tuple[list[Path], list[Path]] | None:
    """The two sides of `A... vs B...`; None without the word vs (the plain, run-by-run compare)."""
    words = [str(p) for p in items]
    if SEPARATOR not in words:
        return None
    i = words.index(SEPARATOR)
    a, b = items[:i], items[i + 1 :]
    if SEPARATOR in words[i + 1 :]:
        raise ConfigError("compare: give one vs, between the two groups: tuilm compare A1 A2 vs B1 B2")
    if not a or not b:
        raise ConfigError(
            "compare: give runs on both sides of vs, e.g. tuilm compare runs/a1 runs/a2 vs runs/b1 runs/b2"
        )
    return a, b


def expand(items: list[Path]) -> list[Path]:
    """Run folders from each item: a run folder, a folder of runs (a sweep: every run under it) or a quoted glob."""
    runs: list[Path] = []
    for item in items:
        text = str(item)
        matches = [Path(m) for m in sorted(glob.glob(text))] if glob.has_magic(text) else [item]
        if not matches or not all(m.exists() for m in matches):
            raise TuilmError(f"compare: no such run folder: {text}")
        for match in matches:
            found = [match] if (match / METRICS).is_file() else find_runs(match) if match.is_dir() else []
            if not found:
                raise TuilmError(f"compare: {match} holds no run (no {METRICS} in or under it)")
            runs += [r for r in found if r not in runs]
    return runs


def scores(runs: list[Path], metric: str) -> list[float]:
    name, label = METRIC_FIELDS[metric]
    values = []
    for run in runs:
        value = getattr(summarize_run(run), name)
        if value is None:
            raise TuilmError(f"compare: {run} has no {label} yet (no evaluation); leave it out or let it finish")
        values.append(value)
    return values


def compare_groups(
    a_items: list[Path], b_items: list[Path], metric: str, alternative: str, confidence: float, as_json: bool
) -> None:
    if metric not in METRIC_FIELDS:
        raise ConfigError(f"--metric {metric}: choose bpc or loss")
    if alternative not in ALTERNATIVES:
        raise ConfigError(f"--alternative {alternative}: choose {', '.join(ALTERNATIVES)}")
    if not 0 < confidence < 1:
        raise ConfigError(f"--confidence {confidence:g}: give a level between 0 and 1, e.g. 0.95")
    a_runs, b_runs = expand(a_items), expand(b_items)
    shared = set(a_runs) & set(b_runs)
    if shared:
        raise ConfigError(f"compare: {sorted(shared)[0]} is on both sides of vs")
    a, b = scores(a_runs, metric), scores(b_runs, metric)
    try:
        test = welch(a, b, alternative, confidence)
    except ValueError as e:
        raise ConfigError(f"compare: {e}") from None
    label = METRIC_FIELDS[metric][1]
    sides = {"a": (a_runs, a), "b": (b_runs, b)}
    if as_json:
        from tuilm.commands.jsonout import print_json

        groups = {}
        for key, (runs, values) in sides.items():
            mean, std, n = describe(values)
            groups[key] = {"runs": [str(r) for r in runs], "values": values, "mean": mean, "std": std, "n": n}
        print_json("compare_groups", {"metric": metric, **groups, "welch": test})
        return
    console = make_console()
    for key, (runs, values) in sides.items():
        mean, std, n = describe(values)
        spread = f" ± {std:.4f} (sd)" if std is not None else ""
        names = ", ".join(str(r) for r in runs)
        console.print(f"{key.upper()}: {label} {mean:.4f}{spread}, n = {n}  [dim]{names}[/]")
    level = f"{100 * confidence:g}%"
    console.print(
        f"B - A: {test.diff:+.4f}, {level} CI [{test.low:+.4f}, {test.high:+.4f}]; Welch's t = {test.t:.3f}, "
        f"df = {test.df:.1f}, p = {test.p:.4g} ({test.alternative})"
    )
    console.print(verdict(test, label))


def verdict(test, label: str) -> str:
    alpha = 1 - test.confidence
    if test.p >= alpha:
        return f"no difference at p < {alpha:g}: within the seed noise"
    lower = "B" if test.diff < 0 else "A"
    return f"[bold]{lower} has the lower {label}[/] (p = {test.p:.3g} < {alpha:g})"
