"""Comparing with another run (`--compare`, the dashboard's `c` key) and the TensorBoard sink (`--tensorboard`)."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from textual.widgets import Input, Static

from tests.helpers import TINY, replayed, run_tuilm
from tuilm.train import events as ev
from tuilm.train.comparison import OtherRun, axis_for, compare_metrics
from tuilm.train.metrics_file import read_events
from tuilm.tui.app import Dashboard
from tuilm.tui.charts import LineChart
from tuilm.tui.compare import OWN_MARK, TRAIN_MARK, VAL_MARK, ComparePrompt

RECORDED = Path(__file__).parent / "data" / "recorded_run.jsonl"
SETS = [arg for item in TINY for arg in ("--set", item)]


@pytest.fixture
def anyio_backend():
    return "asyncio"


def write_other(folder: Path, shift: float = 0.5, batch_size: int | None = None, upto: int | None = None) -> Path:
    """A second run's metrics.jsonl: the recorded run with every loss `shift` higher (and another batch size)."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for event in read_events(RECORDED):
        if upto is not None and getattr(event, "step", 0) > upto:
            break
        if isinstance(event, ev.Step):
            event = dataclasses.replace(event, loss=event.loss + shift)
        elif isinstance(event, ev.Eval):
            event = dataclasses.replace(event, val_loss=event.val_loss + shift, val_bpc=event.val_bpc + shift)
        elif isinstance(event, ev.RunStarted) and batch_size is not None:
            config = json.loads(json.dumps(event.config))
            config["train"]["batch_size"] = batch_size
            event = dataclasses.replace(event, config=config, name=folder.name)
        lines.append(json.dumps(event.to_dict()) + "\n")
    (folder / "metrics.jsonl").write_text("".join(lines), encoding="utf-8")
    return folder / "metrics.jsonl"


async def until(pilot, condition, timeout: float = 120.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await pilot.pause(0.05)


# -- the overlay ---------------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_the_overlay_draws_both_runs_in_other_marks_and_c_toggles_it(tmp_path):
    other = write_other(tmp_path / "wider")
    app = Dashboard(store=replayed(), compare=other)
    async with app.run_test(size=(120, 40)) as pilot:
        loss, val = app.query_one("#loss", LineChart), app.query_one("#val", LineChart)
        await until(pilot, lambda: len(loss.series) == 4, what="the other run's curves")
        own_train, own_val, other_train, other_val = loss.series
        assert own_train.marker == own_val.marker == "hd"
        assert (other_train.marker, other_val.marker) == (TRAIN_MARK, VAL_MARK)  # not colour alone
        # The other run's curve is the recorded one shifted up by 0.5, on the same steps.
        assert other_train.x[-1] == own_train.x[-1] == 150
        assert np.allclose(other_train.y[-5:], own_train.y[-5:] + 0.5)
        assert len(other_val.x) == len(own_val.x) == 6
        assert any(s.marker == VAL_MARK for s in val.series)
        # A legend naming both runs and the axis, on both charts; both series are on screen.
        for chart in (loss, val):
            subtitle = str(chart.border_subtitle)
            assert "tiny-demo" in subtitle and "wider" in subtitle and "x: steps" in subtitle
            assert OWN_MARK in subtitle and TRAIN_MARK in subtitle
        drawn = "".join(strip.text for strip in loss.render_lines(loss.region.reset_offset))
        assert TRAIN_MARK in drawn and VAL_MARK in drawn

        await pilot.press("c")
        await until(pilot, lambda: len(loss.series) == 2, what="the overlay hidden")
        assert not str(loss.border_subtitle)
        assert all(s.marker == "hd" for s in val.series)
        await pilot.press("c")
        await until(pilot, lambda: len(loss.series) == 4, what="the overlay shown again")


@pytest.mark.anyio
async def test_a_live_other_run_grows_on_the_chart(tmp_path):
    metrics = write_other(tmp_path / "live", upto=40)
    app = Dashboard(store=replayed(), compare=metrics)
    async with app.run_test(size=(120, 40)) as pilot:
        loss = app.query_one("#loss", LineChart)
        await until(pilot, lambda: len(loss.series) == 4 and loss.series[2].x[-1] == 40, what="the first 40 steps")
        later = [
            json.dumps(e.to_dict()) + "\n" for e in read_events(RECORDED) if isinstance(e, ev.Step) and e.step > 40
        ]
        with open(metrics, "a", encoding="utf-8") as f:
            f.write("".join(later))
        await until(pilot, lambda: loss.series[2].x[-1] == 150, timeout=30, what="the steps appended later")


@pytest.mark.anyio
async def test_c_without_a_comparison_asks_for_a_run_and_refuses_a_bad_one(tmp_path):
    own = tmp_path / "runs" / "own"
    own.mkdir(parents=True)
    (own / "metrics.jsonl").write_text(RECORDED.read_text(encoding="utf-8"), encoding="utf-8")
    write_other(tmp_path / "runs" / "sibling")
    app = Dashboard(follow=own / "metrics.jsonl")
    async with app.run_test(size=(120, 40)) as pilot:
        loss = app.query_one("#loss", LineChart)
        await until(pilot, lambda: app.ended, what="the followed run")
        await pilot.press("c")
        await until(pilot, lambda: isinstance(app.screen, ComparePrompt), what="the prompt")
        field = app.screen.query_one(Input)
        assert field.value == str(tmp_path / "runs" / "sibling")  # the newest sibling run, offered
        field.value = str(tmp_path / "nowhere")
        await pilot.press("enter")  # the prompt's, not the finished dashboard's (chat)
        await pilot.pause()
        assert isinstance(app.screen, ComparePrompt)  # stays open, saying why
        assert "no such run directory" in str(app.screen.query_one("#compare-hint", Static).content)
        field.value = str(tmp_path / "runs" / "sibling")
        await pilot.press("enter")
        await until(pilot, lambda: len(loss.series) == 4, what="the chosen run's curves")
        assert "sibling" in str(loss.border_subtitle)


@pytest.mark.anyio
async def test_runs_of_other_batch_shapes_are_compared_by_tokens(tmp_path):
    other = write_other(tmp_path / "big-batch", batch_size=16)
    app = Dashboard(store=replayed(), compare=other)
    async with app.run_test(size=(120, 40)) as pilot:
        loss = app.query_one("#loss", LineChart)
        await until(pilot, lambda: len(loss.series) == 4, what="the other run's curves")
        assert "x: tokens" in str(loss.border_subtitle)
        last = read_events(RECORDED)
        tokens = [e.tokens for e in last if isinstance(e, ev.Step)][-1]
        assert loss.series[0].x[-1] == tokens  # the own run is drawn over tokens too


# -- reading the other run -------------------------------------------------------------------------------------------


def test_other_run_follows_appends_and_a_resume_replaces_the_repeated_steps(tmp_path):
    events = read_events(RECORDED)
    start = events[0]
    steps = [e for e in events if isinstance(e, ev.Step)]
    metrics = tmp_path / "run" / "metrics.jsonl"
    metrics.parent.mkdir()
    with open(metrics, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(e.to_dict()) + "\n" for e in [start, *steps[:30]])
    other = OtherRun(metrics)
    assert other.refresh() == 31 and other.refresh() == 0
    assert other.steps()[0].tolist() == list(range(1, 31))
    resumed = dataclasses.replace(start, resumed_step=20)
    again = [dataclasses.replace(s, loss=9.0) for s in steps[20:25]]
    with open(metrics, "a", encoding="utf-8") as f:
        f.writelines(json.dumps(e.to_dict()) + "\n" for e in [resumed, *again])
    other.refresh()
    step, _, loss = other.steps()
    assert step.tolist() == list(range(1, 26))  # steps 21-30 of the first session are gone
    assert loss[-5:].tolist() == [9.0] * 5 and loss[0] == steps[0].loss


def test_axis_is_steps_for_the_same_batch_shape_and_tokens_otherwise():
    config = read_events(RECORDED)[0].config
    wider = json.loads(json.dumps(config))
    wider["train"]["batch_size"] = 16
    longer = json.loads(json.dumps(config))
    longer["train"]["batch_tokens"] = 8 * 16  # the same 8 rows of 16
    assert axis_for(config, config) == "step" and axis_for(config, longer) == "step"
    assert axis_for(config, wider) == "tokens"
    assert axis_for(config, None) == "step"  # the other run has not started yet


def test_compare_refuses_a_missing_run_and_the_run_itself(tmp_path):
    from tuilm.errors import ConfigError

    with pytest.raises(ConfigError, match="no such run directory"):
        compare_metrics(tmp_path / "missing")
    with pytest.raises(ConfigError, match=r"no metrics\.jsonl"):
        compare_metrics(tmp_path)
    metrics = write_other(tmp_path / "run")
    assert compare_metrics(tmp_path / "run") == metrics
    with pytest.raises(ConfigError, match="the run being trained"):
        compare_metrics(tmp_path / "run", own_run=tmp_path / "run")


# -- the command line ---------------------------------------------------------------------------------------------


def test_a_bad_compare_path_is_one_line_before_training(small_corpus, tmp_path):
    args = ("train", str(small_corpus), "--headless", "--out", str(tmp_path / "run"), "--compare", "nope")
    out = run_tuilm(*args, timeout=600)  # generous: a loaded machine starts Python slowly
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().count("\n") == 0 and "--compare nope: no such run directory" in out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "run").exists()  # nothing started
    out = run_tuilm("watch", str(tmp_path), "--compare", str(tmp_path / "nope"), timeout=600)
    assert out.returncode == 2


def test_tensorboard_without_the_package_is_one_line(monkeypatch, small_corpus, tmp_path):
    import importlib.util

    from tuilm.commands.train import TrainOptions, train_command
    from tuilm.errors import ConfigError

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else find_spec(name, *a)
    )
    options = TrainOptions(source=str(small_corpus), out=tmp_path / "run", tensorboard=True, headless=True)
    with pytest.raises(ConfigError, match=r"pip install 'tuilm\[tensorboard\]'"):
        train_command(options)
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def tensorboard_run(tmp_path_factory):
    from tests.conftest import write_corpus

    folder = tmp_path_factory.mktemp("tb")
    corpus = write_corpus(folder)
    run = folder / "first"
    out = run_tuilm(
        "train", str(corpus), "--headless", "--steps", "10", "--out", str(run), "--tensorboard", *SETS,
        env={**os.environ}, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return corpus, run


def test_tensorboard_event_files_hold_the_wandb_scalar_names(tensorboard_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, run = tensorboard_run
    files = list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert len(files) == 1
    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/lr", "val/loss", "val/bpc", "health/grad_norm/block0.attn"} <= tags
    steps = [e.step for e in acc.Scalars("train/loss")]
    assert steps == list(range(1, 11))
    logged = {e.step: e for e in read_events(run / "metrics.jsonl") if isinstance(e, ev.Step)}
    assert [round(e.value, 4) for e in acc.Scalars("train/loss")] == [round(logged[s].loss, 4) for s in steps]
    health = [e for e in read_events(run / "metrics.jsonl") if isinstance(e, ev.Health)]
    grad = {e.step: e.value for e in acc.Scalars("health/grad_norm/block0.attn")}
    first = health[0]
    assert grad[first.step] == pytest.approx(first.grad_norm[first.layers.index("block0.attn")], rel=1e-5)


def test_headless_eval_lines_compare_with_the_other_run(tensorboard_run, tmp_path):
    corpus, first = tensorboard_run
    out = run_tuilm(
        "train", str(corpus), "--headless", "--steps", "10", "--out", str(tmp_path / "second"),
        "--compare", str(first), *SETS, "--set", "lr=3e-3", timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    evals = {e.step: e for e in read_events(first / "metrics.jsonl") if isinstance(e, ev.Eval)}
    line = next(line for line in out.stdout.splitlines() if line.startswith("step 5: val loss"))
    assert f"vs first: val {evals[5].val_loss:.4f} at this step" in line
