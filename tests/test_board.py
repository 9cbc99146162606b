"""`tuilm board`: the incremental row reader, the table (sort, filter, group), picks and overlaid curves with seeds
folded, the config diff and the gradient-health comparison, Enter to a run's dashboard and back, `--json`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from textual.widgets import DataTable

from tests.board_runs import health, line, step_line, write_run
from tests.events_factory import make_eval
from tests.helpers import run_tuilm
from tuilm.commands import board as board_command_module
from tuilm.runlock import RunLock
from tuilm.sweep.runinfo import summarize_run
from tuilm.train import events as ev
from tuilm.train.metrics_file import MetricsTail, parse_event
from tuilm.tui import board_charts as charts
from tuilm.tui.board import Board, BoardView, OpenRun, RunDashboard
from tuilm.tui.board_data import BoardModel, BoardRun, Detail, matches
from tuilm.tui.board_screens import DiffScreen, HealthScreen, differing_layers

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


def sweep(folder: Path) -> Path:
    """Two learning rates x two seeds in a nested sweep folder, a failed run and a run that alerted."""
    for lr in (1e-3, 3e-3):
        for seed in (1, 2):
            write_run(
                folder / "sweep", f"lr{lr:g}-s{seed}", 300, lr=lr, seed=seed, alerts_at=(120,) if seed == 2 else ()
            )
    write_run(folder, "broken", 80, end="failed", lr=2e-2, health_scale=30.0)
    return folder


def rows(app: Board) -> list[str]:
    table = app.query_one("#runs", DataTable)
    cells = [str(table.get_row_at(i)[0]) for i in range(table.row_count)]
    return [c if "=" in c else c.split(" ", 2)[-1] for c in cells]  # a run's cell starts with its pick box and mark


def model_of(folder: Path) -> BoardModel:
    model = BoardModel([folder])
    model.poll(discover=True)
    return model


# -- the row reader -------------------------------------------------------------------------------------------------


def test_synthetic_step_lines_parse_back_as_steps():
    step = parse_event(step_line(7, 100, 3.25, 1e-3, 0.5))
    assert isinstance(step, ev.Step) and (step.step, step.loss, step.progress, step.mfu) == (7, 3.25, 0.07, 0.012)


def test_rows_agree_with_tuilm_runs_summary(tmp_path):
    sweep(tmp_path)
    model = model_of(tmp_path)
    assert len(model.runs) == 5
    for run in model.runs.values():
        summary = summarize_run(run.path)
        assert (run.status, run.step, run.best_bpc) == (summary.status, summary.steps, summary.best_val_bpc)
    alerted = model.runs[tmp_path / "sweep" / "lr0.001-s2"]
    assert len(alerted.alerts) == 1 and alerted.device == "cpu" and alerted.ranks == 1


@pytest.mark.parametrize("mapped", [False, True], ids=["read", "mmap"])
def test_reads_only_what_was_appended_and_waits_for_a_whole_line(tmp_path, monkeypatch, mapped):
    monkeypatch.setattr(MetricsTail, "MAP_FROM", 1 if mapped else 1 << 30)  # large blocks are mapped, not read
    run_dir = write_run(tmp_path, "live", 10, end=None)
    run = BoardRun(run_dir, "live", 0)
    with RunLock(run_dir):
        run.poll()
        assert (run.step, run.status) == (10, "running")
        parsed = []
        monkeypatch.setattr("tuilm.tui.board_data.parse_event", lambda b: parsed.append(b) or parse_event(b))
        whole = step_line(11, 1000, 3.0, 3e-3, 0.5) + line(make_eval(step=11, val_bpc=1.25))
        half = step_line(12, 1000, 2.9, 3e-3, 0.5)
        with open(run_dir / "metrics.jsonl", "a") as f:
            f.write(whole + half[:40])  # the writer is midway through step 12's line
        assert run.poll() == [] and run.step == 11 and run.best_bpc == 1.25
        assert parsed == [whole.split("\n")[0].encode()]  # only the newest step line became an event
        with open(run_dir / "metrics.jsonl", "a") as f:
            f.write(half[40:])
        run.poll()
        assert run.step == 12
    assert run.poll() == [] and run.status == "dead"  # the lock went and no end was written


def test_new_runs_appear(tmp_path):
    model = model_of(sweep(tmp_path))
    write_run(tmp_path / "later", "fresh", 5, end=None)
    model.poll(discover=True)
    fresh = model.runs[tmp_path / "later" / "fresh"]
    assert fresh.name == "later/fresh" and fresh.found_late and fresh.step == 5


def test_filter_words_and_settings(tmp_path):
    model = model_of(sweep(tmp_path))
    names = lambda q: sorted(r.name for r in model.runs.values() if matches(r, q))  # noqa: E731
    assert names("lr=3e-3") == ["sweep/lr0.003-s1", "sweep/lr0.003-s2"]
    assert names("train.seed=2 lr=0.001") == ["sweep/lr0.001-s2"]
    assert names("failed") == ["broken"]
    assert names("s1") == ["sweep/lr0.001-s1", "sweep/lr0.003-s1"]


def test_seeds_fold_into_a_mean_with_a_band(tmp_path):
    model = model_of(sweep(tmp_path))
    details = [Detail(r) for r in model.runs.values() if "sweep" in r.name]
    for d in details:
        d.load()
    folded = charts.lines(details, fold=True)
    assert sorted(len(line.details) for line in folded) == [2, 2]
    series = charts.series(folded, "loss", "steps", 100)
    assert len(series) == 6  # per fold: min, max, mean
    low, high, mean = series[0].y, series[1].y, series[2].y
    assert np.all(low <= mean + 1e-12) and np.all(mean <= high + 1e-12) and np.any(high - low > 0)
    assert len(charts.series(charts.lines(details, fold=False), "loss", "steps", 100)) == 4
    x_flops, _ = charts.xy(details[0], "loss", "flops")
    x_tokens, _ = charts.xy(details[0], "loss", "tokens")
    assert np.allclose(x_flops, x_tokens * details[0].run.started.flops_per_token)


def test_the_layers_whose_health_differs_most():
    a = [health(s) for s in (25, 50)]
    b = [
        ev.Health(**{**h.__dict__, "grad_norm": [g * (1000 if i == 3 else 1) for i, g in enumerate(h.grad_norm)]})
        for h in a
    ]
    gaps = differing_layers(a, b)
    assert gaps[0][0] == a[0].layers[3] and gaps[0][1] == pytest.approx(3.0)


# -- the app ----------------------------------------------------------------------------------------------------------


async def test_sort_filter_group_and_pick(tmp_path):
    app = Board(model_of(sweep(tmp_path)))
    async with app.run_test(size=(120, 40)) as pilot:
        assert rows(app)[0] == "broken"
        table = app.query_one("#runs", DataTable)
        columns = table.ordered_columns
        x = sum(c.get_render_width(table) for c in columns[: [c.key.value for c in columns].index("bpc")]) + 2
        await pilot.click("#runs", offset=(x, 0))  # the header of the "best bpc" column, with the mouse
        await pilot.pause()
        bpcs = [next(r.best_bpc for r in app.model.runs.values() if r.name == name) for name in rows(app)]
        assert app.view.sort == "bpc" and bpcs == sorted(bpcs) and rows(app)[1] == "sweep/lr0.003-s1"
        await pilot.press("slash", *"lr=1e-3")
        await pilot.pause()
        assert rows(app) == ["sweep/lr0.001-s1", "sweep/lr0.001-s2"]
        await pilot.press("enter", "escape")
        assert app.view.filter == "" and len(rows(app)) == 5
        await pilot.press("g", *"train.lr", "enter")
        await pilot.pause()
        assert [r for r in rows(app) if "=" in r] == ["train.lr = 0.001", "train.lr = 0.003", "train.lr = 0.02"]
        await pilot.press("escape")
        table.move_cursor(row=0)
        await pilot.press("space", "down", "space")
        assert len(app.view.picked) == 2
        assert app.query_one("#chart-loss").series  # the picked runs are drawn
        await pilot.press("x")
        assert app.view.axis == "tokens"


async def test_new_runs_and_new_values_show_up_live(tmp_path, monkeypatch):
    monkeypatch.setattr("tuilm.tui.board_data.DISCOVER_INTERVAL", 0.0)
    live = write_run(tmp_path, "live", 10, end=None)
    app = Board(model_of(tmp_path))
    async with app.run_test(size=(120, 40)):
        table = app.query_one("#runs", DataTable)
        with RunLock(live):
            with open(live / "metrics.jsonl", "a") as f:
                f.write(step_line(11, 1000, 3.0, 3e-3, 0.5))
            write_run(tmp_path / "sweep", "newcomer", 20)
            app.tick()
            assert rows(app) == ["live", "sweep/newcomer"]
            assert (
                str(table.get_cell(str(live), "step")) == "11" and str(table.get_cell(str(live), "status")) == "running"
            )
            cells = table.get_row(str(live))
            with open(live / "metrics.jsonl", "a") as f:
                f.write(step_line(12, 1000, 3.0, 3e-3, 0.5))
            app.tick()
            assert str(table.get_cell(str(live), "step")) == "12"  # updated in place, the other cells kept
            assert table.get_row(str(live))[0] is cells[0]


async def test_diff_and_health_screens(tmp_path):
    model = model_of(sweep(tmp_path))
    picked = [tmp_path / "sweep" / "lr0.001-s1", tmp_path / "broken"]
    app = Board(model, BoardView(picked=picked))
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("d")
        assert isinstance(app.screen, DiffScreen)
        keys = [str(app.screen.query_one(DataTable).get_row_at(i)[0]) for i in range(2)]
        assert keys == ["train.lr", "train.seed"]
        await pilot.press("escape", "h")
        assert isinstance(app.screen, HealthScreen)
        # broken's gradients grow up to 30x towards the output: the last layers differ most
        assert [name for name, _ in app.screen.gaps] == ["norm_f", "block1.mlp", "block1.attn"]
        await pilot.press("escape")
        assert len(app.screen_stack) == 1


async def test_enter_opens_the_run_and_the_board_keeps_its_state(tmp_path):
    app = Board(model_of(sweep(tmp_path)), BoardView(sort="bpc"))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("down", "enter")  # the second best: broken (lr 2e-2) comes first
    assert app.return_value == OpenRun(tmp_path / "sweep" / "lr0.003-s1")
    assert app.view.cursor == tmp_path / "sweep" / "lr0.003-s1"  # where the board puts its cursor when it comes back


async def test_esc_leaves_a_runs_dashboard(tmp_path):
    run = write_run(tmp_path, "one", 60)
    app = RunDashboard(follow=run / "metrics.jsonl")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause(0.5)
        await pilot.press("escape")
        await pilot.pause()
        assert not app.is_running


def test_board_command_shows_the_dashboard_between_boards(tmp_path, monkeypatch):
    sweep(tmp_path)
    shown, boards = [], []

    class FakeBoard:
        def __init__(self, model, view, notifier):
            boards.append(view)

        def run(self):
            return OpenRun(tmp_path / "broken") if len(boards) == 1 else None

    monkeypatch.setattr("tuilm.tui.board.Board", FakeBoard)
    monkeypatch.setattr(board_command_module, "_dashboard", shown.append)
    assert board_command_module.board_command([tmp_path]) == 0
    assert shown == [tmp_path / "broken"] and len(boards) == 2 and boards[0] is boards[1]


def test_json_prints_the_table_once(tmp_path):
    sweep(tmp_path)
    result = run_tuilm("board", str(tmp_path), "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["kind"] == "board" and len(doc["runs"]) == 5
    broken = next(r for r in doc["runs"] if r["run"] == "broken")
    assert broken["status"] == "failed" and broken["step"] == 80


def test_a_missing_folder_is_one_line(tmp_path):
    result = run_tuilm("board", str(tmp_path / "nope"))
    assert result.returncode == 2 and "no such folder" in result.stderr and "Traceback" not in result.stderr


# -- snapshots ------------------------------------------------------------------------------------------------------

SNAP_SEEDS = (1, 2, 3)


@pytest.fixture
def snap_runs(tmp_path_factory):
    """Fixed names under a fixed-looking folder: the snapshot shows only names relative to it."""
    folder = tmp_path_factory.mktemp("board") / "runs"
    for lr in (1e-3, 3e-3):
        for seed in SNAP_SEEDS:
            write_run(
                folder / "lr-sweep", f"lr{lr:g}-s{seed}", 400, lr=lr, seed=seed, alerts_at=(150,) if seed == 3 else ()
            )
    write_run(folder, "hot", 120, end="failed", lr=2e-2, health_scale=40.0)
    return folder


def snap_board(folder: Path, picked: tuple[str, ...] = (), **view) -> Board:
    model = model_of(folder)  # every run here has ended: no lock or clock decides a cell
    return Board(model, BoardView(picked=[folder / p for p in picked], **view))


FOLD = (
    "lr-sweep/lr0.001-s1",
    "lr-sweep/lr0.001-s2",
    "lr-sweep/lr0.001-s3",
    "lr-sweep/lr0.003-s1",
    "lr-sweep/lr0.003-s2",
    "lr-sweep/lr0.003-s3",
)


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=["80x24", "120x40"])
def test_snapshot_table(snap_compare, snap_runs, size):
    assert snap_compare(snap_board(snap_runs, sort="bpc"), terminal_size=size)


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=["80x24", "120x40"])
def test_snapshot_overlay(snap_compare, snap_runs, size):
    app = snap_board(snap_runs, ("lr-sweep/lr0.001-s1", "lr-sweep/lr0.003-s1", "hot"), fold=False)
    assert snap_compare(app, terminal_size=size)


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=["80x24", "120x40"])
def test_snapshot_folded_seeds(snap_compare, snap_runs, size):
    assert snap_compare(snap_board(snap_runs, FOLD), terminal_size=size)


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=["80x24", "120x40"])
def test_snapshot_heatmap_comparison(snap_compare, snap_runs, size):
    app = snap_board(snap_runs, ("lr-sweep/lr0.001-s1", "hot"))
    assert snap_compare(app, terminal_size=size, press=["h"])


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=["80x24", "120x40"])
def test_snapshot_filter(snap_compare, snap_runs, size):
    assert snap_compare(snap_board(snap_runs), terminal_size=size, press=["slash", *"lr=3e-3"])


def test_snapshot_no_color(snap_compare, snap_runs, monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    assert snap_compare(snap_board(snap_runs, FOLD[:3]), terminal_size=(80, 24))
