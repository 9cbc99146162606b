"""The dashboard: driven by Pilot over real tiny training runs, in watch mode over a growing metrics.jsonl, and
as SVG snapshots of a recorded run (tests/data/recorded_run.jsonl, made by tests/data/record_events.py)."""

from __future__ import annotations

import json
import math
import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from textual.app import App
from textual.widgets import RichLog

from tests.events_factory import make_eval, make_step
from tests.helpers import plant_failure, replayed, tiny_trainer
from tuilm.commands import chat as chat_commands
from tuilm.commands.chat import open_chat
from tuilm.commands.train import run_dashboard
from tuilm.commands.watch import watch_command
from tuilm.errors import TuilmError
from tuilm.train import events as ev
from tuilm.train.metrics_file import MetricsTail
from tuilm.tui.app import Dashboard
from tuilm.tui.header import RunHeader
from tuilm.tui.health_panels import GradHeatmap, GradNorm
from tuilm.tui.screens import ConfirmQuit
from tuilm.tui.source import FOLLOW_INTERVAL
from tuilm.tui.store import Ring, RunStore, downsample, windowed_rate

pytestmark = pytest.mark.anyio  # the async tests run on asyncio through anyio's pytest plugin

RECORDED = Path(__file__).parent / "data" / "recorded_run.jsonl"
SIZE = (160, 48)  # every pane on screen (a hidden RichLog holds its lines back until shown)


async def until(pilot, condition, timeout: float = 120.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await pilot.pause(0.05)


def pane_text(app: App, pane: str) -> str:
    return "\n".join(strip.text for strip in app.query_one(f"#{pane}", RichLog).lines)


def break_weights_at(trainer, step: int):
    """A subscriber that fills one weight with NaN after `step`: every later step is non-finite."""

    def on_event(event):
        if isinstance(event, ev.Step) and event.step == step:
            with torch.no_grad():
                trainer.model.blocks[0].mlp.fc.weight.fill_(float("nan"))

    return on_event


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny models train fastest on one thread, and on a busy 2-core machine two threads crawl."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# -- driving a real run ----------------------------------------------------------------------------------------------


async def test_pause_resume_save_and_quit_with_confirmation(small_corpus, tmp_path):
    run = tmp_path / "run"
    trainer, rec = tiny_trainer(small_corpus, run, "eval_interval=1000", "sample_tokens=0")
    app = Dashboard(trainer)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: len(rec.of(ev.Step)) >= 3, what="training to start")

        await pilot.press("p")  # handled while the trainer runs (benchmarks/dashboard_overhead.py times it)
        assert trainer.paused
        await until(pilot, lambda: any(s.state == "paused" for s in rec.of(ev.Status)), what="the pause")
        steps = len(rec.of(ev.Step))
        await pilot.pause(0.3)
        assert len(rec.of(ev.Step)) == steps  # nothing trains while paused
        await until(pilot, lambda: app.query_one(RunHeader).state == "paused", what="the header to say paused")

        # Keys go in while paused where the test allows: Pilot waits for an idle process after each key, which
        # a training process never is (a second per wait).
        await pilot.press("s")
        await until(pilot, lambda: any(c.reason == "request" for c in rec.of(ev.CheckpointSaved)), what="the save")
        assert (run / "last.safetensors").is_file()
        await until(pilot, lambda: "saved last.safetensors (request)" in pane_text(app, "log"), what="the log line")
        await pilot.press("g", "e")  # sample and evaluate now
        await until(pilot, lambda: "step " in pane_text(app, "samples"), what="the sample")
        await until(pilot, lambda: f"step {steps}: val loss" in pane_text(app, "log"), what="the evaluation")
        await pilot.press("q")
        assert isinstance(app.screen, ConfirmQuit)
        await pilot.press("n")  # keep training
        assert not isinstance(app.screen, ConfirmQuit) and trainer.thread.is_alive()

        await pilot.press("p")
        await until(pilot, lambda: len(rec.of(ev.Step)) > steps + 2, what="training to resume")
        await pilot.press("q", "y")
        await until(pilot, lambda: app.return_code is not None, what="the app to exit")
    assert app.return_code == 0
    assert not trainer.thread.is_alive()
    assert trainer.result.status == "stopped"
    assert rec.of(ev.CheckpointSaved)[-1].reason == "stop"
    assert (run / "last.safetensors").is_file()


async def test_ctrl_c_stops_and_quits_without_asking(small_corpus, tmp_path):
    trainer, rec = tiny_trainer(small_corpus, tmp_path / "run", "eval_interval=1000", "sample_tokens=0")
    app = Dashboard(trainer)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: len(rec.of(ev.Step)) >= 2, what="training to start")
        await pilot.press("ctrl+c")
        assert not isinstance(app.screen, ConfirmQuit)
        await until(pilot, lambda: app.return_code is not None, what="the app to exit")
    assert app.return_code == 0 and not trainer.thread.is_alive()
    assert trainer.result.reason == "stopped" and (tmp_path / "run" / "last.safetensors").is_file()


async def test_a_planted_fault_shows_its_alert_and_the_run_ends_diverged(small_corpus, tmp_path):
    trainer, rec = tiny_trainer(small_corpus, tmp_path / "run", "eval_interval=1000", "sample_tokens=0")
    trainer.bus.subscribe(break_weights_at(trainer, 3))
    app = Dashboard(trainer)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: "non-finite" in pane_text(app, "alerts"), what="the alert in the alerts pane")
        assert app.query_one("#grad").has_class("-alert-bad")  # the panel concerned
        assert app.query_one("#health").has_class("-alert-bad")  # and its page's tab, on a small terminal
        await until(pilot, lambda: app.ended, what="the run to end")  # skipped steps in a row stop it
        assert "diverged" in str(app.query_one("#outcome").render())
        await pilot.press("q")  # training is over: nothing to confirm
        await until(pilot, lambda: app.return_code is not None, what="the app to exit")
    assert app.return_code == 1  # a diverged run is a failure
    assert any(a.code == "nonfinite" for a in rec.of(ev.Alert))


def test_a_failure_in_the_training_thread_is_shown_and_exits_non_zero(small_corpus, tmp_path, monkeypatch):
    run = tmp_path / "run"
    trainer, _ = tiny_trainer(small_corpus, run)
    plant_failure(trainer)
    seen = {}

    async def quit_when_failed(pilot):
        app = pilot.app
        await until(pilot, lambda: app.ended, what="the failure to show")
        await until(pilot, lambda: "RuntimeError: planted failure" in pane_text(app, "log"), what="the traceback")
        seen["outcome"] = str(app.query_one("#outcome").render())
        seen["log"] = pane_text(app, "log")
        await pilot.press("q")

    # run_dashboard as `tuilm train` calls it, with the app headless and a pilot pressing q.
    monkeypatch.setattr(
        Dashboard, "run", lambda self: App.run(self, headless=True, size=SIZE, auto_pilot=quit_when_failed)
    )
    assert run_dashboard(trainer) == 1
    assert "training failed" in seen["outcome"] and "planted failure" in seen["outcome"]
    assert "RuntimeError: planted failure" in seen["log"]
    assert "planted failure" in (run / "error.log").read_text()


def test_enter_after_training_offers_chat_on_the_best_checkpoint(small_corpus, tmp_path, monkeypatch):
    trainer, _ = tiny_trainer(small_corpus, tmp_path / "run", "max_steps=6")

    async def chat_when_done(pilot):
        await until(pilot, lambda: pilot.app.ended, what="the end of training")
        await pilot.press("enter")

    opened = []
    monkeypatch.setattr(
        Dashboard, "run", lambda self: App.run(self, headless=True, size=SIZE, auto_pilot=chat_when_done)
    )
    monkeypatch.setattr(chat_commands, "chat_command", lambda path, **settings: opened.append(path) or 0)
    assert run_dashboard(trainer) == 0
    assert opened == [tmp_path / "run" / "best.safetensors"]


def test_quitting_after_training_leaves_the_outcome_on_the_terminal(small_corpus, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    trainer, _ = tiny_trainer(small_corpus, run, "max_steps=6")

    async def quit_when_done(pilot):
        await until(pilot, lambda: pilot.app.ended, what="the end of training")
        await pilot.press("q")

    monkeypatch.setattr(
        Dashboard, "run", lambda self: App.run(self, headless=True, size=SIZE, auto_pilot=quit_when_done)
    )
    assert run_dashboard(trainer) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-2].startswith("completed (max_steps) at step 6") and "best val loss" in out[-2]
    assert out[-1] == f"run directory: {run}  (chat: tuilm chat --model-path {run})"


def test_chat_falls_back_to_printing_the_command(monkeypatch, capsys, tmp_path):
    import builtins

    real_import = builtins.__import__

    def no_chat(name, *args, **kwargs):
        if name == "tuilm.chat.repl":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_chat)
    assert open_chat(tmp_path / "best.safetensors") == 0
    assert f"tuilm chat --model-path {tmp_path / 'best.safetensors'}" in capsys.readouterr().out


async def test_a_terminal_too_small_says_so():
    app = Dashboard(store=replayed())
    async with app.run_test(size=(50, 15)) as pilot:
        await pilot.pause()
        assert app.query_one("#too-small").display
        assert not app.query_one("#dashboard").display
    app = Dashboard(store=replayed())
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        assert not app.query_one("#too-small").display


async def test_heatmap_fills_its_panel_and_labels_the_steps():
    app = Dashboard(store=replayed(upto=12))  # health measured at steps 5 and 10
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        heatmap = app.query_one(GradHeatmap)
        lines = heatmap.render().plain.splitlines()
        layers = heatmap.history[-1].layers
        name_w = max(map(len, layers)) + 1
        cells = lines[0][name_w:]
        assert set(cells) <= set("░▒▓█") and len(cells) > heatmap.size.width - name_w - 2  # two columns, drawn wide
        axis = lines[len(layers)].strip()
        assert axis.startswith("step 5 ") and axis.endswith(" 10")
    app = Dashboard(store=replayed(upto=12))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("2")
        heatmap = app.query_one(GradHeatmap)
        lines = heatmap.render().plain.splitlines()
        layers = heatmap.history[-1].layers
        name_w = max(map(len, layers)) + 1
        axis, cells = lines[len(layers)][name_w:].rstrip(), lines[0][name_w:].rstrip()
        # Both labels when the axis has room (the last under the last column), else the range in one label.
        assert (re.fullmatch(r"step 5 +10", axis) and len(axis) == len(cells)) or axis == "steps 5-10"


# -- watch mode --------------------------------------------------------------------------------------------------


async def test_watch_follows_a_growing_metrics_file(tmp_path):
    lines = RECORDED.read_text(encoding="utf-8").splitlines(keepends=True)
    first_steps = next(i for i, line in enumerate(lines) if '"step":40,' in line and '"event":"step"' in line) + 1
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(lines[:first_steps]), encoding="utf-8")
    app = Dashboard(follow=metrics)
    async with app.run_test(size=SIZE) as pilot:
        header = app.query_one(RunHeader)
        await until(pilot, lambda: header.step is not None and header.step.step == 40, what="the first 40 steps")
        assert app.query_one("#read-only").display
        await pilot.press("p", "s")  # no trainer: these do nothing (and are not in the footer)
        assert app.check_action("pause", ()) is False
        await pilot.press("l")  # log scale
        assert app.query_one("#loss").log_scale

        rest = "".join(lines[first_steps:])
        cut = rest.index('"event":"step","step":60,') + 10  # in the middle of a line
        with open(metrics, "a", encoding="utf-8") as f:
            f.write(rest[:cut])
        await until(pilot, lambda: header.step.step == 59, what="the complete lines")
        await pilot.pause(2 * FOLLOW_INTERVAL)
        assert header.step.step == 59  # the half-written line waits
        with open(metrics, "a", encoding="utf-8") as f:
            f.write(rest[cut:])
        await until(pilot, lambda: app.ended, what="the rest of the run")
        assert header.step.step == 150
        assert "loss 3.794 spiked" in pane_text(app, "alerts")
        await pilot.press("q")
    assert app.return_code == 0


def test_watch_command_needs_a_run_directory_with_metrics(tmp_path):
    with pytest.raises(TuilmError, match="no such run directory"):
        watch_command(tmp_path / "missing")
    with pytest.raises(TuilmError, match=r"no metrics\.jsonl"):
        watch_command(tmp_path)


# -- the store -----------------------------------------------------------------------------------------------------


def test_ring_keeps_the_newest_rows_in_order():
    ring = Ring(("step", "loss"), capacity=5)
    for i in range(8):
        ring.append((i, 10.0 * i))
    step, loss = ring.columns("step", "loss")
    assert step.tolist() == [3, 4, 5, 6, 7] and loss.tolist() == [30, 40, 50, 60, 70]
    assert ring.columns("step", last=2)[0].tolist() == [6, 7]


def test_downsample_thins_100k_points_and_keeps_the_last():
    x = np.arange(100_000, dtype=float)
    y = np.sin(x / 1000)
    y[5] = np.nan
    xs, ys = downsample(x, y, 200)
    assert len(xs) == 200 and xs[-1] == x[-1] and ys[-1] == y[-1] and np.isfinite(ys).all()
    assert downsample(x[:50], y[:50], 200)[0].size == 49  # short series pass through, NaN dropped


async def test_charts_of_100k_steps_are_thinned_to_what_they_can_show():
    store = RunStore()
    for i in range(1, 100_001):
        store(
            make_step(
                step=i,
                epoch=i / 1000,
                tokens=i * 512,
                loss=5 / (1 + i / 1e4),
                tokens_per_s=5e4,
                clipped=i % 3 == 0,
                elapsed=i * 0.01,
                progress=i / 1e5,
            )
        )
    app = Dashboard(store=store)
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.pause(0.3)
        assert len(app.query_one("#loss").series[0].x) <= 200  # thinned to what a chart can show


def test_windowed_rate_is_tokens_over_training_time():
    tokens = np.array([100.0, 200, 300, 400])
    elapsed = np.array([1.0, 2, 4, 5])
    assert windowed_rate(tokens, elapsed, 2).tolist() == [100.0, 100.0, 200 / 3, 200 / 3]


def test_store_from_another_thread_and_a_huge_run():
    store = RunStore(step_capacity=1 << 16)
    woken = []
    store.on_rare = woken.append

    def produce(first: int, last: int) -> None:
        for i in range(first, last + 1):
            store(make_step(step=i, epoch=0.0, tokens=i * 10, elapsed=i * 0.01, progress=float("nan")))

    # Steps arrive from another thread (as from the trainer) while this one drains, then the rest and an eval.
    producer = threading.Thread(target=produce, args=(1, 60_000))
    producer.start()
    while producer.is_alive():
        store.drain()
    producer.join()
    produce(60_001, 120_000)
    store(make_eval(step=120_000, val_bpc=1.1, train_loss=2.1, seconds=0.5))
    drained = store.drain()
    assert drained.steps == 120_000 and drained.last_step.step == 120_000 and math.isnan(drained.last_step.progress)
    assert [type(e) for e in drained.events] == [ev.Eval] and len(woken) == 1
    step, _ = store.step_series("loss")
    assert len(step) == 1 << 16 and step[0] == 120_000 - (1 << 16) + 1 and step[-1] == 120_000
    assert store.drain().events == []


def test_metrics_tail_waits_for_whole_lines_and_notices_a_new_file(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = RECORDED.read_text(encoding="utf-8").splitlines(keepends=True)[:5]
    path.write_text(lines[0] + lines[1][:20], encoding="utf-8")
    tail = MetricsTail(path)
    events, restarted = tail.read()
    assert [e.kind for e in events] == ["run_started"] and not restarted
    with open(path, "a", encoding="utf-8") as f:
        f.write(lines[1][20:] + lines[2])
    assert len(tail.read()[0]) == 2
    path.write_text(lines[0], encoding="utf-8")  # a new run replaced the file
    events, restarted = tail.read()
    assert restarted and [e.kind for e in events] == ["run_started"]


# -- gradients and alerts in view from the first page ---------------------------------------------------------------


@pytest.mark.parametrize("size", [(80, 24), (120, 40), (160, 48)])
async def test_the_first_page_shows_the_gradient_norm_and_the_worst_layer(size):
    app = Dashboard(store=replayed(upto=120))
    async with app.run_test(size=size) as pilot:
        await pilot.pause()
        grad = app.query_one(GradNorm)
        assert app.query_one("#page-train").display and grad.region.height >= 5  # on the page shown first
        assert grad.region.bottom <= size[1] and grad.region.right <= size[0]
        label = str(app.query_one("#grad-label").render())
        assert label.startswith("now ") and " max " in label and "steps clipped" in label
        worst = str(app.query_one("#grad-worst").render())
        assert worst.startswith("worst layer ") and "log10 Δw/w" in worst
        assert app.query_one("#grad-spark").region.height >= 1


async def test_the_header_counts_the_alerts_and_shows_the_newest():
    store = replayed(upto=120)
    records = [json.loads(line) for line in RECORDED.read_text(encoding="utf-8").splitlines()]
    alerts = [r for r in records if r["event"] == "alert" and r["step"] <= 120]  # counted from the file itself
    app = Dashboard(store=store)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        header = app.query_one(RunHeader)
        line = header.render().renderables[2]
        assert line.plain.startswith(f"▲ alerts {len(alerts)}") and f"step {alerts[-1]['step']}" in line.plain
        assert any("red" in str(span.style) for span in line.spans)
        await pilot.press("3")  # from any page
        assert header.region.height == 3 and "▲ alerts" in header.render().renderables[2].plain


async def test_the_header_bar_follows_the_time_budget_over_max_steps():
    store = RunStore()
    config = {"train": {"max_steps": 100_000, "time": "2m"}}
    store(ev.RunStarted("r", "r", "tiny", config, 10, 5, "cpu", "fp32", {}, 100_000))
    store(make_step(step=76, tokens=7600, elapsed=60.0, progress=0.5))
    app = Dashboard(store=store)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        progress = app.query_one(RunHeader).render().renderables[1].plain
        assert progress.startswith("step 76 · time 1m00s/2m00s") and "50%" in progress
        assert "100,000" not in progress


async def test_clicks_on_tabs_and_panels_change_page():
    app = Dashboard(store=replayed(upto=120))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        await pilot.click("#health")  # the tab
        await pilot.pause()
        assert app.query_one("#page-health").display and not app.query_one("#page-train").display
        await pilot.click("#events")
        await pilot.pause()
        assert app.query_one("#page-events").display
        await pilot.click("#train")
        await pilot.pause()
        await pilot.click("#grad-label")  # the gradient panel opens the per-layer page
        await pilot.pause()
        assert app.query_one("#page-health").display
        await pilot.click("#header")  # the header's alert line opens the events page
        await pilot.pause()
        assert app.query_one("#page-events").display


async def test_the_heatmap_reads_without_colour(monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    app = Dashboard(store=replayed(upto=120))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("2")
        heatmap = app.query_one(GradHeatmap)
        lines = heatmap.render().plain.splitlines()
        layers = heatmap.history[-1].layers
        cells = "".join(line[max(map(len, layers)) + 1 :] for line in lines[: len(layers)])
        assert len(set(cells) & set("░▒▓█")) >= 3  # shades, not colour alone, tell the levels apart
        legend = lines[-1]
        assert all(glyph in legend for glyph in "░▒▓█") and "e-" in legend and "×" in legend


# -- snapshots of a recorded run --------------------------------------------------------------------------------------


def test_snapshot_80x24_during_training(snap_compare):
    assert snap_compare(Dashboard(store=replayed(upto=120)), terminal_size=(80, 24))


def test_snapshot_80x24_health_page(snap_compare):
    assert snap_compare(Dashboard(store=replayed(upto=120)), terminal_size=(80, 24), press=["2"])


def test_snapshot_160x48_finished(snap_compare):
    assert snap_compare(Dashboard(store=replayed()), terminal_size=(160, 48))


def test_snapshot_120x40_gradients_on_the_first_page(snap_compare):
    assert snap_compare(Dashboard(store=replayed(upto=120)), terminal_size=(120, 40))


def test_snapshot_80x24_health_page_no_color(snap_compare, monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    assert snap_compare(Dashboard(store=replayed(upto=120)), terminal_size=(80, 24), press=["2"])
