"""The record table of baseline/README.md, rendered from the runs themselves (never typed by hand).

A rows file (TOML) names each row's change and the runs that measured it: run folders, folders of runs (a
`tuilm sweep --seeds 3` folder stands for all its runs) or globs. Each row shows the mean and standard deviation
of the runs' best val bits/char, n, their steps and training seconds, and against the row before it the
difference and the one-sided p-value of Welch's t-test (tuilm/sweep/stats.py: is this row lower?).

    [[row]]
    change = "Muon (lr 0.02) for the blocks' matrices"
    runs = ["runs/record/2-muon"]          # e.g. tuilm sweep ... --seeds 3 --out runs/record/2-muon

Usage: python benchmarks/record_table.py ROWS.toml [--metric bpc|loss] [--alpha 0.05] [--nanogpt-unit]
Prints the Markdown table; paste it into baseline/README.md, or redirect it to a file. --nanogpt-unit states
bits/char as benchmarks/quality.py does (the runs' summed nats over nanoGPT's count of val characters, needs
TUILM_DATA_DIR): the unit of the record table, for runs on the `tail` split.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tomllib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from anchor import nanogpt_val_chars, shakespeare

from tuilm.commands.groups import METRIC_FIELDS, expand, scores
from tuilm.sweep.runinfo import summarize_run
from tuilm.sweep.stats import describe, welch


def mean_of(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.fmean(known) if known else None


def number(value: float | None, digits: int, thousands: bool = False) -> str:
    if value is None:
        return ""
    return f"{value:,.{digits}f}" if thousands else f"{value:.{digits}f}"


def render(rows: list[dict], base: Path, metric: str = "bpc", alpha: float = 0.05, chars: int | None = None) -> str:
    """The table; `chars`: bits/char over this many characters instead of each run's own count (nanoGPT's)."""
    label = METRIC_FIELDS[metric][1] + (" (nanoGPT's unit)" if chars else "")
    lines = [
        f"| # | change | n | steps | train s | s/step | {label} | against the row before |",
        "|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    previous: list[float] | None = None
    for i, row in enumerate(rows):
        runs = expand([base / r for r in row["runs"]])
        values = scores(runs, metric)
        summaries = [summarize_run(r) for r in runs]
        if chars and metric == "bpc":
            values = [v * s.val_characters / chars for v, s in zip(values, summaries, strict=True)]
        steps, seconds = mean_of([s.steps for s in summaries]), mean_of([s.elapsed for s in summaries])
        per_step = seconds / steps if seconds is not None and steps else None
        mean, std, n = describe(values)
        score = f"{mean:.4f}" + (f" ± {std:.4f}" if std is not None else "")
        against = ""
        if previous is not None:
            diff = mean - statistics.fmean(previous)
            against = f"{diff:+.4f}"
            if n > 1 and len(previous) > 1:
                p = welch(previous, values, "less").p
                against += f", p = {p:.3g}" + (" (kept)" if p < alpha else " (noise)")
        cells = [str(i), row["change"], str(n), number(steps, 0, True), number(seconds, 1), number(per_step, 3)]
        lines.append("| " + " | ".join([*cells, score, against]) + " |")
        previous = values
    note = (
        f"\n{label}: mean ± standard deviation over the row's n runs; against the row before: the difference of the "
        f"means and the one-sided p-value of Welch's t-test (is this row lower?), kept when p < {alpha:g}.\n"
    )
    return "\n".join(lines) + "\n" + note


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rows", type=Path, help="the rows file (TOML, [[row]] change = ..., runs = [...])")
    parser.add_argument("--metric", default="bpc", choices=sorted(METRIC_FIELDS))
    parser.add_argument("--alpha", type=float, default=0.05, help="significance level of the one-sided test")
    parser.add_argument("--nanogpt-unit", action="store_true", help="bits/char over nanoGPT's val characters")
    args = parser.parse_args()
    try:
        spec = tomllib.loads(args.rows.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as e:
        sys.exit(f"{args.rows}: cannot read the rows ({e})")
    rows = spec.get("row", [])
    if not rows or not all(isinstance(r, dict) and "change" in r and r.get("runs") for r in rows):
        sys.exit(f'{args.rows}: give [[row]] tables, each with change = "..." and runs = ["runs/..."]')
    # Paths in the rows file are relative to the folder it is run from, as a shell's would be.
    chars = nanogpt_val_chars(shakespeare().read_text(encoding="utf-8")) if args.nanogpt_unit else None
    sys.stdout.write(render(rows, Path("."), args.metric, args.alpha, chars))


if __name__ == "__main__":
    main()
