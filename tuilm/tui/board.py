"""`tuilm board`: every run under some folders in one live table, the picked runs' curves overlaid below it.

The model (tuilm.tui.board_data) is polled once a second on the UI thread: a look at a run that did not change is
a stat call, and what changed is read incrementally with only a few lines parsed. The picked runs' full histories
are read a bounded slice per look (DETAIL_CHUNK), so picking a long run never freezes the table. What the user set
(picks, sort, filter, group, axis, fold) lives in a `BoardView` the command keeps, so the board comes back as it
was after a run's dashboard (Enter, then Esc).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Grid
from textual.suggester import SuggestFromList
from textual.widgets import DataTable, Footer, Input, Static

from tuilm.formatting import fmt_duration, human
from tuilm.tui import board_charts as charts
from tuilm.tui.app import Dashboard
from tuilm.tui.board_data import BoardModel, BoardRun, Detail, matches
from tuilm.tui.board_screens import DiffScreen, HealthScreen
from tuilm.tui.charts import LineChart

POLL_INTERVAL = 1.0  # seconds between looks at the runs
STATUS_STYLES = {"running": "cyan", "completed": "green", "stopped": "yellow", "dead": "bold red"}
STATUS_STYLES |= {"failed": "bold red", "diverged": "bold red", "empty": "dim"}


def _num(x: float | None, spec: str) -> str:
    return "-" if x is None or not math.isfinite(x) else format(x, spec)


# (key, header, value for sorting, cell text)
COLUMNS = [
    ("run", "run", lambda r: r.name, None),
    ("status", "status", lambda r: r.status, None),
    ("step", "step", lambda r: r.step, lambda r: f"{r.step:,}"),
    ("progress", "done", lambda r: r.progress, lambda r: _num(None if r.progress is None else 100 * r.progress, ".0f")),
    ("bpc", "best bpc", lambda r: r.best_bpc, lambda r: _num(r.best_bpc, ".4f")),
    ("tokens", "tokens", lambda r: r.tokens, lambda r: human(r.tokens) if r.tokens else "-"),
    ("time", "time", lambda r: r.elapsed, lambda r: fmt_duration(r.elapsed) if r.elapsed is not None else "-"),
    ("rate", "tok/s", lambda r: r.tokens_per_s, lambda r: human(r.tokens_per_s) if r.tokens_per_s else "-"),
    ("mfu", "MFU", lambda r: r.mfu, lambda r: _num(None if r.mfu is None else 100 * r.mfu, ".1f")),
    ("alerts", "alerts", lambda r: len(r.alerts), lambda r: str(len(r.alerts)) if r.alerts else "-"),
    ("device", "device", lambda r: r.device, lambda r: r.device or "-"),
    ("ranks", "ranks", lambda r: r.ranks, lambda r: str(r.ranks) if r.ranks else "-"),
]
SORT_KEYS = [c[0] for c in COLUMNS]


@dataclass(frozen=True)
class OpenRun:
    """What the board returns when Enter was pressed on a run: show its dashboard, then the board again."""

    path: Path


class RunDashboard(Dashboard):
    """A run's dashboard opened from the board (Enter), read-only as under `tuilm watch`: Esc goes back."""

    BINDINGS = [*Dashboard.BINDINGS, Binding("escape", "quit_dashboard", "Board")]


@dataclass
class BoardView:
    picked: list[Path] = field(default_factory=list)
    sort: str = "run"
    reverse: bool = False
    filter: str = ""
    group: str = ""  # a config key
    axis: str = "steps"
    fold: bool = True  # runs that differ only in the seed drawn as one mean line with a min-max band
    band: bool = True
    cursor: Path | None = None


class Board(App[OpenRun | None]):
    CSS_PATH = "board.tcss"
    TITLE = "tuilm board"
    ENABLE_COMMAND_PALETTE = False  # its key hint would crowd the footer at 80 columns
    # Below 40 rows the charts show two at a time (train loss and val, or `c`: learning rate and gradient norm).
    VERTICAL_BREAKPOINTS = [(0, "-short"), (40, "-tall")]
    BINDINGS = [
        Binding("space", "pick", "Pick"),
        Binding("enter", "open", "Open", show=False),  # DataTable's own Enter selects the row: see on_..._selected
        Binding("slash", "prompt('filter')", "Filter", key_display="/"),
        Binding("o", "sort", "Sort"),
        Binding("g", "prompt('group')", "Group"),
        Binding("x", "axis", "Axis"),
        Binding("f", "fold", "Fold"),
        Binding("c", "charts", "Charts", show=False),
        Binding("b", "band", "Band", show=False),
        Binding("d", "diff", "Diff"),
        Binding("h", "health", "Health"),
        Binding("escape", "clear", "Clear", show=False),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(self, model: BoardModel, view: BoardView | None = None, notifier=None):
        super().__init__()
        self.model = model
        self.view = view or BoardView()
        self.notifier = notifier
        self._drawn_version = -1
        self._shown_keys: list[str] = []  # the table's rows as last drawn, and their cells
        self._shown_cells: dict[str, list] = {}
        self._prompt = ""  # what the input line asks for: filter or group

    def compose(self) -> ComposeResult:
        yield Static(id="board-header")
        yield DataTable(id="runs", cursor_type="row", zebra_stripes=True)
        with Grid(id="charts"):
            for i, (metric, title) in enumerate(charts.METRICS.items()):
                pair = f"board-chart pair-{i // 2}"
                chart = LineChart(id=f"chart-{metric}", classes=pair, empty="pick runs with space")
                chart.border_title = title
                yield chart
        yield Input(id="prompt")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#runs", DataTable)
        for key, header, _, _ in COLUMNS:
            table.add_column(header, key=key)
        if not self.model.runs:
            self.model.poll(discover=True)
        for path in self.view.picked:
            if path in self.model.runs:
                self._detail(self.model.runs[path]).load()
        self._draw_table()
        self._draw_charts()
        self.set_interval(POLL_INTERVAL, self.tick)

    # -- polling -------------------------------------------------------------------------------------------------

    def tick(self) -> None:
        for run, new in self.model.poll():
            if self.notifier is not None:
                self.notifier.look(run, new)
        changed = False
        for detail in list(self.model.details.values()):
            changed |= detail.poll()
        if self.model.version != self._drawn_version:
            self._draw_table()
        if changed:
            self._draw_charts()

    def _detail(self, run: BoardRun) -> Detail:
        details = self.model.details  # kept by the model: the board comes back after a dashboard without a re-read
        if run.path not in details:
            details[run.path] = Detail(run)
        return details[run.path]

    # -- the table -----------------------------------------------------------------------------------------------

    def visible(self) -> list[BoardRun]:
        """The rows in table order: filtered, sorted (None last), grouped."""
        v = self.view
        runs = [r for r in self.model.runs.values() if matches(r, v.filter)]
        sort_value = next(c[2] for c in COLUMNS if c[0] == v.sort)
        present = [r for r in runs if sort_value(r) is not None]
        runs = sorted(present, key=sort_value, reverse=v.reverse) + [r for r in runs if sort_value(r) is None]
        if v.group:
            runs.sort(key=lambda r: _group_order(_group_value(r, v.group)))  # stable: still sorted within a group
        return runs

    def _draw_table(self) -> None:
        """Redraw the rows: in place, cell by cell, when the same rows are shown in the same order (a live sweep
        changes a few values a second), else from scratch."""
        self._drawn_version = self.model.version
        table = self.query_one("#runs", DataTable)
        rows, group = [], None
        for run in self.visible():
            if self.view.group:
                value = _group_value(run, self.view.group)
                if value != group:
                    group = value
                    label = Text(f"{self.view.group} = {value}", style="bold")
                    rows.append((f"group:{value}", [label, *[""] * (len(COLUMNS) - 1)]))
            rows.append((str(run.path), self._cells(run)))
        keys = [key for key, _ in rows]
        if keys == self._shown_keys:
            for key, cells in rows:
                for (column, *_), cell, old in zip(COLUMNS, cells, self._shown_cells[key], strict=True):
                    if str(cell) != str(old) or getattr(cell, "style", None) != getattr(old, "style", None):
                        table.update_cell(key, column, cell)
        else:
            cursor = self._cursor_path()
            table.clear()
            for key, cells in rows:
                table.add_row(*cells, key=key)
            if cursor is not None and str(cursor) in table.rows:
                table.move_cursor(row=table.get_row_index(str(cursor)), animate=False)
        self._shown_keys, self._shown_cells = keys, dict(rows)
        self._draw_header()

    def _cells(self, run: BoardRun) -> list:
        rgb = charts.colour(self._line_leader(run).index)
        picked = run.path in self.view.picked
        name = Text(no_wrap=True)
        name.append("▣ " if picked else "☐ ", style="bold" if picked else "dim")
        name.append(charts.mark(self._line_leader(run).index) + " ", style=f"rgb{rgb}")
        name.append(run.name, style=f"bold rgb{rgb}" if picked else "")
        status = Text(run.status, style=STATUS_STYLES.get(run.status, ""))
        cells = [name, status]
        for key, _, _, text in COLUMNS[2:]:
            value = text(run)
            if key == "alerts" and run.alerts:
                cells.append(Text(f"▲{value}", style="bold red"))
            else:
                cells.append(Text(value, justify="right") if key not in ("device",) else value)
        return cells

    def _line_leader(self, run: BoardRun) -> BoardRun:
        """The run whose colour `run` wears: its own, or its fold's when runs differing in the seed are folded."""
        if self.view.fold and run.path in self.view.picked:
            for line in charts.lines(self._picked_details(), True):
                if any(d.run is run for d in line.details):
                    return line.leader.run
        return run

    def _draw_header(self) -> None:
        runs = self.model.runs.values()
        running = sum(r.status == "running" for r in runs)
        v = self.view
        text = Text(no_wrap=True, overflow="ellipsis")
        count = len(self.model.runs)
        text.append(f"{count} run{'' if count == 1 else 's'}", style="bold")
        text.append(f" ({running} running)" if running else "", style="cyan")
        order = "↓" if v.reverse else "↑"
        text.append(f" · sort {dict((c[0], c[1]) for c in COLUMNS)[v.sort]} {order}", style="dim")
        if v.filter:
            text.append(f" · filter {v.filter}", style="bold yellow")
        if v.group:
            text.append(f" · group {v.group}", style="bold")
        text.append(f" · x {charts.AXIS_TITLES[v.axis]}", style="dim")
        text.append(f" · {len(v.picked)} picked" + (", seeds folded" if v.fold else ""), style="dim")
        self.query_one("#board-header", Static).update(text)

    def _cursor_path(self) -> Path | None:
        table = self.query_one("#runs", DataTable)
        if not table.row_count:
            return self.view.cursor
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        return Path(key) if key and not key.startswith("group:") else None

    def on_data_table_row_highlighted(self, message: DataTable.RowHighlighted) -> None:
        if message.row_key.value and not message.row_key.value.startswith("group:"):
            self.view.cursor = Path(message.row_key.value)

    def on_data_table_header_selected(self, message: DataTable.HeaderSelected) -> None:
        key = message.column_key.value
        self.view.reverse = not self.view.reverse if self.view.sort == key else False
        self.view.sort = key
        self._draw_table()

    def on_data_table_row_selected(self, message: DataTable.RowSelected) -> None:
        self.action_open()

    # -- the charts ----------------------------------------------------------------------------------------------

    def _picked_details(self) -> list[Detail]:
        return [self._detail(self.model.runs[p]) for p in self.view.picked if p in self.model.runs]

    def _draw_charts(self) -> None:
        chart_lines = charts.lines(self._picked_details(), self.view.fold)
        for metric, title in charts.METRICS.items():
            chart = self.query_one(f"#chart-{metric}", LineChart)
            chart.border_title = f"{title} · x {charts.AXIS_TITLES[self.view.axis]}"
            # Two points a column; before the first layout (width 0) as many as a wide terminal's chart shows.
            points = chart.size.width * 2 or 400
            chart.show(charts.series(chart_lines, metric, self.view.axis, points, self.view.band, self.no_color))

    def on_resize(self) -> None:
        self.call_after_refresh(self._draw_charts)  # the curves thinned to the charts' new widths

    # -- actions -------------------------------------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if len(self.screen_stack) > 1:  # the diff or the heatmaps: the board's keys wait
            return action in ("quit", "pop_screen")
        # While the input line is open its keys are text: only Esc (clear) closes it.
        return action == "clear" or not self.query_one("#prompt", Input).has_focus

    def action_pick(self) -> None:
        path = self._cursor_path()
        if path is None or path not in self.model.runs:
            return
        if path in self.view.picked:
            self.view.picked.remove(path)
            self.model.details.pop(path, None)  # its history's memory back (a ring of DETAIL_CAPACITY steps)
        else:
            self.view.picked.append(path)
            self._detail(self.model.runs[path]).poll()
        self._draw_table()
        self._draw_charts()

    def action_open(self) -> None:
        path = self._cursor_path()
        if path is not None:
            self.exit(OpenRun(path))

    def action_sort(self) -> None:
        self.view.sort = SORT_KEYS[(SORT_KEYS.index(self.view.sort) + 1) % len(SORT_KEYS)]
        self.view.reverse = False
        self._draw_table()

    def action_axis(self) -> None:
        self.view.axis = charts.AXES[(charts.AXES.index(self.view.axis) + 1) % len(charts.AXES)]
        self._draw_header()
        self._draw_charts()

    def action_fold(self) -> None:
        self.view.fold = not self.view.fold
        self._draw_table()
        self._draw_charts()

    def action_charts(self) -> None:
        """On a short terminal: the other two charts."""
        self.screen.toggle_class("-second-pair")

    def action_band(self) -> None:
        self.view.band = not self.view.band
        self._draw_charts()

    def action_prompt(self, what: str) -> None:
        self._prompt = what
        box = self.query_one("#prompt", Input)
        keys = sorted({k for r in self.model.runs.values() for k in r.config})
        box.placeholder = "name or key=value, e.g. lr=3e-3" if what == "filter" else "a setting, e.g. train.lr"
        box.suggester = SuggestFromList(keys) if what == "group" else None
        box.value = self.view.filter if what == "filter" else self.view.group
        box.add_class("-open")
        box.focus()

    def on_input_changed(self, message: Input.Changed) -> None:
        if self._prompt == "filter":  # the table follows the typing
            self.view.filter = message.value.strip()
            self._draw_table()

    def on_input_submitted(self, message: Input.Submitted) -> None:
        if self._prompt == "group":
            self.view.group = message.value.strip()
            self._draw_table()
        self._close_prompt()

    def _close_prompt(self) -> None:
        box = self.query_one("#prompt", Input)
        box.remove_class("-open")
        self._prompt = ""
        self.query_one("#runs", DataTable).focus()

    def action_clear(self) -> None:
        """Esc: close the input line, else drop the filter and the grouping."""
        if self._prompt:
            self._close_prompt()
            return
        self.view.filter, self.view.group = "", ""
        self._draw_table()

    def action_diff(self) -> None:
        runs = [self.model.runs[p] for p in self.view.picked if p in self.model.runs]
        if len(runs) < 2:
            self.notify("pick two or more runs (space) to see how their settings differ")
            return
        self.push_screen(DiffScreen(runs))

    def action_health(self) -> None:
        details = self._picked_details()
        if len(details) != 2:
            self.notify("pick exactly two runs (space) to compare their gradient health")
            return
        for d in details:
            d.load()
        self.push_screen(HealthScreen(*details))


def _group_order(value: str) -> tuple:
    """Numbers in numeric order, before words."""
    try:
        return (0, float(value), "")
    except ValueError:
        return (1, 0.0, value)


def _group_value(run: BoardRun, key: str) -> str:
    found = [v for k, v in run.config.items() if k == key or k.endswith("." + key)]
    return str(found[0]) if found else "unset"
