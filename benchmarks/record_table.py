"""The record table of baseline/README.md, rendered from the runs themselves (never typed by hand).

A rows file (TOML) says what each row changed and how it was run; `--run` trains whatever is missing (one
`tuilm sweep` a row, seeded, at a fixed step count, so the result does not depend on how busy the machine is),
then the tables are rendered from those runs:

    recipe = "tiny_shakespeare_cpu"
    seeds = 3                              # each row, unless the row says otherwise
    common = ["train.threads=1"]           # every run
    out = "runs/record"                    # row N's runs go to out/N, tried row N's to out/tried-N

    [[row]]                                # the kept changes, each on top of the row before
    change = "Muon (lr 0.02) for the blocks' matrices"
    steps = 150
    set = ["train.optimizer=muon"]

    [[tried]]                              # a change tried on top of row `at` and not kept
    at = 1
    change = "Muon lr 0.01"
    set = ["train.muon_lr=0.01"]

A row may instead name `runs` (run folders, folders of runs or globs) measured some other way. Each row shows
the mean and standard deviation of the runs' best val bits/char, n, their steps and training seconds, and against
the row before it (a tried row: against its `at` row) the difference and the one-sided p-value of Welch's t-test
(tuilm/sweep/stats.py: is this row lower?). Below the tables, the `tuilm sweep` command of every row.

Usage: python benchmarks/record_table.py ROWS.toml [--run [--jobs 2]] [--metric bpc|loss] [--alpha 0.05]
       [--nanogpt-unit]
Prints Markdown; paste it into baseline/README.md, or redirect it to a file. --nanogpt-unit states bits/char as
benchmarks/quality.py does (the runs' summed nats over nanoGPT's count of val characters, needs TUILM_DATA_DIR):
the unit of the record table, for runs on the `tail` split.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import subprocess
import sys
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from anchor import nanogpt_val_chars, shakespeare

from tuilm.commands.groups import METRIC_FIELDS, expand
from tuilm.errors import TuilmError
from tuilm.sweep.runinfo import summarize_run
from tuilm.sweep.stats import describe, welch

NOT_RUN = "not run yet (record_table.py --run)"


def mean_of(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.fmean(known) if known else None


def number(value: float | None, digits: int, thousands: bool = False) -> str:
    if value is None:
        return ""
    return f"{value:,.{digits}f}" if thousands else f"{value:.{digits}f}"


# -- the rows file: what each row ran ---------------------------------------------------------------------------


def load_spec(path: Path) -> dict:
    """The rows file, checked, with each row's and tried row's full overrides and run folders filled in."""
    try:
        spec = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        sys.exit(f"{path}: cannot read the rows ({e})")
    rows, tried = spec.get("row", []), spec.get("tried", [])
    if not rows or not all(isinstance(r, dict) and "change" in r for r in [*rows, *tried]):
        sys.exit(f'{path}: give [[row]] tables, each with change = "..." and steps and set, or runs = ["runs/..."]')
    out = spec.get("out", "runs/record")
    for row in [*rows, *tried]:
        row["named_runs"] = "runs" in row  # measured some other way: no command to run
    settings: dict[str, str] = {}
    steps = None
    for i, row in enumerate(rows):
        settings = {**settings, **pairs(path, row)}  # each row on top of the one before, its steps too
        row["settings"] = settings
        steps = row.setdefault("steps", steps)
        row.setdefault("runs", [f"{out}/{i}"])
    for j, row in enumerate(tried):
        at = row.get("at")
        if not isinstance(at, int) or not 0 <= at < len(rows):
            sys.exit(
                f"{path}: tried row '{row['change']}' needs at = the number of the row it changes (0-{len(rows) - 1})"
            )
        row["settings"] = {**rows[at]["settings"], **pairs(path, row)}
        row.setdefault("steps", rows[at].get("steps"))
        row.setdefault("runs", [f"{out}/tried-{j}"])
    for row in [*rows, *tried]:
        if isinstance(row["runs"], str):
            row["runs"] = [row["runs"]]
    return spec


def pairs(path: Path, row: dict) -> dict[str, str]:
    out = {}
    for item in row.get("set", []):
        key, eq, value = str(item).partition("=")
        if not eq or not key.strip():
            sys.exit(f"{path}: row '{row['change']}': write each setting as key=value, got '{item}'")
        out[key.strip()] = value.strip()
    return out


def sweep_command(spec: dict, row: dict) -> list[str] | None:
    """The `tuilm sweep` that measures `row`, or None for a row that only names its runs."""
    if row.get("named_runs") or row.get("steps") is None:
        return None
    overrides = [*spec.get("common", []), *(f"{k}={v}" for k, v in row["settings"].items())]
    return [
        "tuilm", "sweep", spec.get("recipe", "tiny_shakespeare_cpu"),
        "--seeds", str(row.get("seeds", spec.get("seeds", 3))),
        "--budget", str(row["steps"]),
        *[x for o in overrides for x in ("--set", o)],
        "--out", row["runs"][0],
    ]  # fmt: skip


def run_missing(spec: dict, jobs: int) -> None:
    """Run every row's sweep; a sweep skips the runs it already finished, so this only trains what is missing."""
    commands = [c for c in (sweep_command(spec, r) for r in [*spec["row"], *spec.get("tried", [])]) if c]

    def one(command: list[str]) -> None:
        log = Path(command[-1] + ".log")
        log.parent.mkdir(parents=True, exist_ok=True)
        print(f"running: {shlex.join(command)}  (log: {log})", file=sys.stderr, flush=True)
        with log.open("w", encoding="utf-8") as f:
            done = subprocess.run([sys.executable, "-m", "tuilm", *command[1:]], stdout=f, stderr=subprocess.STDOUT)
        if done.returncode != 0:
            sys.exit(f"{shlex.join(command)} failed ({done.returncode}); see {log}")

    with ThreadPoolExecutor(max(1, jobs)) as pool:
        list(pool.map(one, commands))


# -- the tables ------------------------------------------------------------------------------------------------


def measure(row: dict, base: Path, metric: str, chars: int | None) -> dict | None:
    """The row's figures over its completed runs, or None while it has none (--run trains them)."""
    try:  # each run's metrics read once; a stopped run (Ctrl-C) is not counted: a second --run finishes it
        summaries = [x for x in map(summarize_run, expand([base / r for r in row["runs"]])) if x.status == "completed"]
    except TuilmError:
        return None
    values = [getattr(x, METRIC_FIELDS[metric][0]) for x in summaries]
    if not summaries or None in values:  # not run yet, or not evaluated yet
        return None
    if chars and metric == "bpc":
        values = [v * x.val_characters / chars for v, x in zip(values, summaries, strict=True)]
    steps, seconds = mean_of([s.steps for s in summaries]), mean_of([s.elapsed for s in summaries])
    mean, std, n = describe(values)
    return {
        "values": values,
        "n": n,
        "steps": steps,
        "seconds": seconds,
        "per_step": seconds / steps if seconds is not None and steps else None,
        "score": f"{mean:.4f}" + (f" ± {std:.4f}" if std is not None else ""),
    }


def against(values: list[float], previous: list[float] | None, alpha: float) -> str:
    if previous is None:
        return ""
    text = f"{statistics.fmean(values) - statistics.fmean(previous):+.4f}"
    if len(values) > 1 and len(previous) > 1:
        p = welch(previous, values, "less").p
        text += f", p = {p:.3g}" + (" (kept)" if p < alpha else " (noise)")
    return text


def label_of(metric: str, chars: int | None) -> str:
    return METRIC_FIELDS[metric][1] + (" (nanoGPT's unit)" if chars and metric == "bpc" else "")


def render(rows: list[dict], base: Path, metric: str = "bpc", alpha: float = 0.05, chars: int | None = None) -> str:
    """The table; `chars`: bits/char over this many characters instead of each run's own count (nanoGPT's)."""
    label = label_of(metric, chars)
    lines = [
        f"| # | change | n | steps | train s | s/step | {label} | against the row before |",
        "|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    previous: list[float] | None = None
    for i, row in enumerate(rows):
        m = measure(row, base, metric, chars)
        if m is None:
            lines.append(f"| {i} | {row['change']} | {NOT_RUN} |  |  |  |  |  |")
            previous = None
            continue
        cells = [str(i), row["change"], str(m["n"]), number(m["steps"], 0, True), number(m["seconds"], 1)]
        lines.append(
            "| "
            + " | ".join([*cells, number(m["per_step"], 3), m["score"], against(m["values"], previous, alpha)])
            + " |"
        )
        previous = m["values"]
    note = (
        f"\n{label}: mean ± standard deviation over the row's n runs; against the row before: the difference of the "
        f"means and the one-sided p-value of Welch's t-test (is this row lower?), kept when p < {alpha:g}.\n"
    )
    return "\n".join(lines) + "\n" + note


def render_tried(
    tried: list[dict], rows: list[dict], base: Path, metric: str = "bpc", alpha: float = 0.05, chars: int | None = None
) -> str:
    """The changes tried and not kept, each against the row it was tried on."""
    label = label_of(metric, chars)
    lines = [
        f"| change | on row | n | steps | train s | {label} | against that row |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    rows_measured: dict[int, dict | None] = {}  # each `at` row read once, however many rows were tried on it
    for row in tried:
        m = measure(row, base, metric, chars)
        if m is None:
            lines.append(f"| {row['change']} | {row['at']} | {NOT_RUN} |  |  |  |  |")
            continue
        if row["at"] not in rows_measured:
            rows_measured[row["at"]] = measure(rows[row["at"]], base, metric, chars)
        at = rows_measured[row["at"]]
        cells = [row["change"], str(row["at"]), str(m["n"]), number(m["steps"], 0, True), number(m["seconds"], 1)]
        lines.append("| " + " | ".join([*cells, m["score"], against(m["values"], at and at["values"], alpha)]) + " |")
    return "\n".join(lines) + "\n"


def commands_block(spec: dict) -> str:
    lines = [shlex.join(c) for c in (sweep_command(spec, r) for r in [*spec["row"], *spec.get("tried", [])]) if c]
    return "```bash\n" + "\n".join(lines) + "\n```\n" if lines else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rows", type=Path, help="the rows file (TOML, see this script's docstring)")
    parser.add_argument("--run", action="store_true", help="first train what is missing (tuilm sweep, one a row)")
    parser.add_argument("--jobs", type=int, default=1, help="with --run: sweeps at once (give each one thread)")
    parser.add_argument("--metric", default="bpc", choices=sorted(METRIC_FIELDS))
    parser.add_argument("--alpha", type=float, default=0.05, help="significance level of the one-sided test")
    parser.add_argument("--nanogpt-unit", action="store_true", help="bits/char over nanoGPT's val characters")
    args = parser.parse_args()
    spec = load_spec(args.rows)
    if args.run:
        run_missing(spec, args.jobs)
    # Paths in the rows file are relative to the folder it is run from, as a shell's would be.
    chars = nanogpt_val_chars(shakespeare().read_text(encoding="utf-8")) if args.nanogpt_unit else None
    out = render(spec["row"], Path("."), args.metric, args.alpha, chars)
    if spec.get("tried"):
        out += "\nTried and not kept:\n\n" + render_tried(
            spec["tried"], spec["row"], Path("."), args.metric, args.alpha, chars
        )
    sys.stdout.write(out + "\n" + commands_block(spec))


if __name__ == "__main__":
    main()
