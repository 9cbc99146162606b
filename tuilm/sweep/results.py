"""A sweep's results: one row per run from its metrics.jsonl, written as results.csv and results.md, shown as
rich tables. Everything here is rebuilt from sweep.json and the run folders, so it can be redone at any time."""

from __future__ import annotations

import csv
import io
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.table import Table

from tuilm.formatting import fmt, fmt_rate, human, show_value
from tuilm.sweep.runinfo import RunSummary, summarize_run
from tuilm.sweep.spec import parse_budget

# The one status whose numbers are averaged and plotted; the others are listed with their reason.
OK = "completed"


# The numbers a row shows from its run's summary (None while the run has none, or for an invalid one).
SUMMARY_METRICS = (
    "steps",
    "best_val_loss",
    "best_val_bpc",
    "final_val_loss",
    "final_val_bpc",
    "tokens_per_s",
    "peak_memory_mb",
    "params",
    "epochs",
    "kept_fraction",
    "padding_fraction",
)


@dataclass
class Row:
    """One planned run of a sweep: its grid values and outcome, and the numbers of its RunSummary."""

    name: str
    values: dict[str, Any]
    seed: int
    status: str
    reason: str = ""
    wall_s: float | None = None
    summary: RunSummary | None = field(default=None, repr=False)

    def __getattr__(self, name: str) -> Any:
        if name in SUMMARY_METRICS:
            summary = self.__dict__.get("summary")
            return getattr(summary, name) if summary is not None else None
        raise AttributeError(f"'Row' object has no attribute {name!r}")

    @property
    def best_val_ppl(self) -> float | None:
        return ppl(self.best_val_loss)

    @property
    def final_val_ppl(self) -> float | None:
        return ppl(self.final_val_loss)


def ppl(loss: float | None) -> float | None:
    if loss is None or math.isnan(loss):
        return None
    return math.exp(loss) if loss < 700 else math.inf  # past float range: a diverged run


def collect_rows(sweep_dir: Path, record: dict[str, Any]) -> list[Row]:
    """Rows in grid order from sweep.json's plan and outcomes, with numbers from each run's metrics.jsonl."""
    rows = []
    outcomes = record.get("outcomes", {})
    for planned in record.get("plan", []):
        name = planned["name"]
        outcome = outcomes.get(name, {})
        run_dir = Path(sweep_dir) / name
        summary = summarize_run(run_dir) if (run_dir / "metrics.jsonl").is_file() else None
        status = outcome.get("status") or (summary.status if summary else "pending")
        shown = summary if status != "invalid" else None
        rows.append(
            Row(
                name,
                planned["values"],
                planned["seed"],
                status,
                outcome.get("reason", ""),
                outcome.get("wall_s"),
                shown,
            )
        )
    return rows


CSV_METRICS = (
    "status",
    "params",
    "steps",
    "epochs",
    "kept_fraction",
    "padding_fraction",
    "best_val_loss",
    "best_val_ppl",
    "best_val_bpc",
    "final_val_loss",
    "final_val_ppl",
    "final_val_bpc",
    "tokens_per_s",
    "peak_memory_mb",
    "wall_s",
    "reason",
)


def csv_text(rows: list[Row], keys: list[str]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["run", *keys, "seed", *CSV_METRICS])
    for row in rows:
        numbers = [_csv_value(getattr(row, m)) for m in CSV_METRICS]
        writer.writerow([row.name, *[_csv_value(row.values.get(k)) for k in keys], row.seed, *numbers])
    return out.getvalue()


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


# -- aggregation over seeds -------------------------------------------------------------------------------------


@dataclass
class Group:
    values: dict[str, Any]
    rows: list[Row]

    @property
    def done(self) -> list[Row]:
        return [r for r in self.rows if r.status == OK]

    def stat(self, metric: str) -> tuple[float, float | None] | None:
        """Mean and sample standard deviation over the completed seeds (None with fewer than two)."""
        xs = [getattr(r, metric) for r in self.done]
        xs = [x for x in xs if x is not None and math.isfinite(x)]
        if not xs:
            return None
        return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else None)

    @property
    def n(self) -> int:
        """How many seeds the means are over: the completed runs."""
        return len(self.done)

    def statuses(self) -> str:
        counts: dict[str, int] = {}
        for r in self.rows:
            counts[r.status] = counts.get(r.status, 0) + 1
        if len(counts) == 1 and len(self.rows) == 1:
            return self.rows[0].status
        return ", ".join(f"{n} {s}" for s, n in counts.items())


def group_rows(rows: list[Row], keys: list[str]) -> list[Group]:
    groups: dict[str, Group] = {}
    for row in rows:
        ident = repr([row.values.get(k) for k in keys])
        groups.setdefault(ident, Group({k: row.values.get(k) for k in keys}, [])).rows.append(row)
    return list(groups.values())


def best_group(groups: list[Group]) -> Group | None:
    scored = [(g.stat("best_val_loss"), g) for g in groups]
    scored = [(s[0], g) for s, g in scored if s is not None]
    return min(scored, key=lambda t: t[0])[1] if scored else None


def _fmt_one(value: float | None, show) -> str:
    return fmt(value) if value is None or not math.isfinite(value) else show(value)


def _fmt_stat(stat: tuple[float, float | None] | None, show) -> str:
    if stat is None:
        return "-"
    mean, std = stat
    text = _fmt_one(mean, show)
    if std is not None:
        text += " ± " + _fmt_one(std, show)
    return text


def _decimals(n: int):
    return lambda x: fmt(x, n)


COLUMNS = (
    # (header, metric, how a value is shown)
    ("params", "params", human),
    ("epochs", "epochs", _decimals(2)),
    ("kept %", "kept_fraction", lambda x: f"{100 * x:.1f}"),
    ("pad %", "padding_fraction", lambda x: f"{100 * x:.1f}"),
    ("best val loss", "best_val_loss", _decimals(4)),
    ("final val loss", "final_val_loss", _decimals(4)),
    ("ppl", "best_val_ppl", _decimals(2)),
    ("bits/char", "best_val_bpc", _decimals(4)),
    ("tok/s", "tokens_per_s", fmt_rate),
    ("peak MB", "peak_memory_mb", _decimals(0)),
    ("wall s", "wall_s", _decimals(1)),
)


COMPACT = ("best_val_loss", "best_val_bpc", "tokens_per_s", "wall_s")


def aggregate_cells(group: Group) -> list[str]:
    return [_fmt_stat(group.stat(metric), show) for _, metric, show in COLUMNS]


def row_cells(row: Row, columns=COLUMNS) -> list[str]:
    return [_fmt_one(getattr(row, metric), show) for _, metric, show in columns]


# -- results.md -------------------------------------------------------------------------------------------------


def markdown(name: str, spec: dict[str, Any], rows: list[Row], plots: list[str]) -> str:
    keys = list(spec.get("grid", {}))
    labels = spec.get("labels", {})
    seeds = spec.get("seeds", 1)
    groups = group_rows(rows, keys)
    lines = [f"# Sweep {name}", ""]
    lines.append(f"- recipe: `{spec.get('recipe')}`")
    grid = "; ".join(f"`{k}` = {', '.join(v)}" for k, v in spec.get("grid", {}).items())
    lines.append(f"- grid: {grid or 'none'}")
    budget = parse_budget(spec["budget"]).describe() if spec.get("budget") else "the recipe's own stopping criteria"
    lines.append(f"- budget: {budget}")
    if seeds > 1:
        seed_list = sorted({r.seed for r in rows})
        lines.append(f"- seeds: {seeds} ({', '.join(map(str, seed_list))})")
    if spec.get("overrides"):
        lines.append(f"- fixed settings: {', '.join(f'`{o}`' for o in spec['overrides'])}")
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.status] = counts.get(r.status, 0) + 1
    lines.append(f"- runs: {len(rows)} ({', '.join(f'{n} {s}' for s, n in counts.items())})")
    lines += ["", "## Results", ""]
    if seeds > 1:
        lines += [f"Mean ± standard deviation over the completed seeds (of {seeds}).", ""]
    n = ["n"] if seeds > 1 else []
    headers = [labels.get(k, k) for k in keys] + ["runs" if seeds > 1 else "status"] + n + [c[0] for c in COLUMNS]
    lines.append("| " + " | ".join(headers) + " |")
    lines.append("|" + "|".join(["---"] * len(keys) + ["---"] + ["---:"] * (len(n) + len(COLUMNS))) + "|")
    best = best_group(groups)
    for g in groups:
        cells = [show_value(g.values[k]) for k in keys] + [g.statuses()] + [str(g.n)] * len(n) + aggregate_cells(g)
        if g is best and len(groups) > 1:
            cells = [f"**{c}**" for c in cells]
        lines.append("| " + " | ".join(_md(c) for c in cells) + " |")
    if best is not None and keys:
        stat = best.stat("best_val_loss")
        described = ", ".join(f"{labels.get(k, k)}={show_value(v)}" for k, v in best.values.items())
        lines += ["", f"Best: {described} (best val loss {fmt(stat[0] if stat else None)})."]
    problems = [r for r in rows if r.status not in (OK, "pending")]
    if problems:
        lines += ["", "## Runs that did not complete", "", "| run | status | reason |", "|---|---|---|"]
        lines += [f"| {_md(r.name)} | {r.status} | {_md(r.reason or '-')} |" for r in problems]
    if plots:
        lines += ["", "## Plots", ""]
        lines += [f"![{Path(p).stem}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


def _md(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


# -- rich tables --------------------------------------------------------------------------------------------------

STYLES = {"completed": "green", "diverged": "red", "oom": "red", "failed": "red", "invalid": "yellow"}


def runs_table(
    rows: list[Row], keys: list[str], labels: dict[str, str], title: str, seeds: bool, compact: bool = False
) -> Table:
    """One row per run; `compact` keeps the columns worth a glance after every run of a sweep."""
    columns = [c for c in COLUMNS if not compact or c[1] in COMPACT]
    table = Table(title=title, title_justify="left")
    table.add_column("#", justify="right", style="dim")
    for k in keys:
        table.add_column(labels.get(k, k))
    if seeds:
        table.add_column("seed", justify="right")
    table.add_column("status")
    for header, *_ in columns:
        table.add_column(header, justify="right")
    for i, row in enumerate(rows, 1):
        style = STYLES.get(row.status, "")
        status = f"[{style}]{row.status}[/]" if style else row.status
        seed = [str(row.seed)] if seeds else []
        cells = row_cells(row, columns)
        table.add_row(str(i), *[show_value(row.values.get(k)) for k in keys], *seed, status, *cells)
    return table


def groups_table(rows: list[Row], keys: list[str], labels: dict[str, str], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    for k in keys:
        table.add_column(labels.get(k, k))
    table.add_column("runs")
    table.add_column("n", justify="right")  # the completed seeds each mean ± standard deviation is over
    for header, *_ in COLUMNS:
        table.add_column(header, justify="right")
    groups = group_rows(rows, keys)
    best = best_group(groups)
    for g in groups:
        style = "bold green" if g is best and len(groups) > 1 else None
        cells = [show_value(g.values[k]) for k in keys]
        table.add_row(*cells, g.statuses(), str(g.n), *aggregate_cells(g), style=style)
    return table
