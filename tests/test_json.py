"""Output for scripts (`--json` on eval, runs, health, compare, data stats, recipes), and what the readers of
metrics.jsonl make of runs that are running, dead (killed with -9) or resumed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.conftest import write_corpus
from tests.events_factory import make_eval, make_step
from tests.helpers import hold_lock_in_child, tiny_trainer
from tuilm.cli import app
from tuilm.sweep.runinfo import summarize_run
from tuilm.train import events as ev
from tuilm.train.metrics_file import MetricsFile, read_events
from tuilm.tui.store import RunStore


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory):
    """A tiny run of 10 steps with its metrics.jsonl, as `tuilm train` writes it."""
    folder = tmp_path_factory.mktemp("logged")
    corpus = write_corpus(folder, "corpus.txt")
    trainer, _ = tiny_trainer(corpus, folder / "runs" / "run", "max_steps=10", "sample_tokens=0", "health.interval=5")
    metrics = MetricsFile(folder / "runs" / "run" / "metrics.jsonl")
    trainer.bus.subscribe(metrics)
    trainer.run()
    metrics.close()
    return folder / "runs" / "run"


def run_json(*args: str) -> dict:
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1  # one document, nothing else on stdout
    return json.loads(lines[0])


def test_eval_json(trained_run):
    doc = run_json("eval", "--model-path", str(trained_run))
    assert doc["kind"] == "eval" and doc["schema"] == 1
    assert doc["val_loss"] > 0 and doc["perplexity"] > 1 and doc["bits_per_char"] > 0
    assert abs(doc["perplexity"] - np.exp(doc["val_loss"])) < 1e-3 * doc["perplexity"]
    assert doc["tokens"] > 0 and doc["characters"] > 0 and "val split" in doc["data"]
    # SMALL_TEXT is ASCII: a byte per character, so bits per byte are bits per character.
    assert doc["bytes"] == doc["characters"] and doc["bits_per_byte"] == pytest.approx(doc["bits_per_char"])


def test_runs_and_health_json(logged_run):
    trained_run = logged_run
    doc = run_json("runs", str(trained_run.parent))
    assert doc["kind"] == "runs"
    [run] = [r for r in doc["runs"] if r["run"] == "run"]
    assert run["status"] == "completed" and run["steps"] == 10 and run["best_val_loss"] > 0
    assert run["hardware"] == "cpu fp32"  # one rank, on what device and at what precision
    health = run_json("health", str(trained_run))
    assert health["kind"] == "health" and health["status"] == "completed" and health["step"] == 10
    assert health["grad_norm"]["steps"] == 10 and health["grad_norm"]["last"] > 0
    names = [layer["layer"] for layer in health["layers"]]
    assert "embedding" in names and all("update_ratio_log10" in layer for layer in health["layers"])
    assert all("act_std" in block for block in health["blocks"])


def test_compare_json(logged_run, tmp_path):
    trained_run = logged_run
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(trained_run, a)
    shutil.copytree(trained_run, b)
    config = (b / "config.toml").read_text(encoding="utf-8")
    (b / "config.toml").write_text(config.replace("\nseed = 1337", "\nseed = 7"), encoding="utf-8")
    doc = run_json("compare", str(a), str(b))
    assert doc["kind"] == "compare" and [r["run"] for r in doc["runs"]] == ["a", "b"]
    assert doc["differing_settings"] == {"train.seed": [1337, 7]}
    assert doc["best"] in ("a", "b")


def test_data_stats_json(small_corpus):
    doc = run_json("data", "stats", str(small_corpus), "--vocab-size", "300", "--seq-len", "16")
    assert doc["kind"] == "data_stats" and doc["documents"] == 60 and doc["tokens"] > doc["documents"]
    policies = {p["policy"]: p for p in doc["policies"]}
    assert set(policies) == {"pack", "pad", "pad-overflow", "bucket"}
    assert all(0 <= p["kept_fraction"] <= 1 for p in policies.values())


def test_recipes_json():
    doc = run_json("recipes")
    names = {r["name"]: r for r in doc["recipes"]}
    assert "tiny_shakespeare_cpu" in names
    assert names["tiny_shakespeare_cpu"]["settings"]["model"]["d_model"] > 0


def test_human_tables_stay_the_default(logged_run):
    trained_run = logged_run
    result = CliRunner().invoke(app, ["runs", str(trained_run.parent)])
    assert result.exit_code == 0 and "best val loss" in result.stdout
    assert "trained on" in result.stdout and "cpu fp32" in result.stdout
    try:
        json.loads(result.stdout)
        raise AssertionError("a table, not JSON")
    except json.JSONDecodeError:
        pass


# -- running, finished, failed, dead -----------------------------------------------------------------------------


def _unfinished_run(run_dir, end=None):
    metrics = MetricsFile(run_dir / "metrics.jsonl")
    metrics(ev.RunStarted(str(run_dir), run_dir.name, "tiny", {}, 10, 5, "cpu", "fp32", {}, 10))
    metrics(make_step(step=2, loss=5.0, tokens_per_s=1000.0, grad_norm=1.0, progress=0.2))
    if end is not None:
        metrics(end)
    metrics.close()


def statuses(folder) -> dict[str, str]:
    return {r["run"]: r["status"] for r in run_json("runs", str(folder))["runs"]}


def test_runs_and_health_tell_running_finished_failed_and_dead_apart(tmp_path):
    live, killed = tmp_path / "live", tmp_path / "killed"
    _unfinished_run(live)
    _unfinished_run(killed)
    _unfinished_run(tmp_path / "crashed", ev.Failed(2, "ValueError: x"))
    finished = ev.Finished(2, "max_steps", "completed", 1.0, 64, None, None, None, None, 1e3, None, None)
    _unfinished_run(tmp_path / "done", finished)
    holders = [hold_lock_in_child(live), hold_lock_in_child(killed)]
    try:
        assert statuses(tmp_path) == {"live": "running", "killed": "running", "crashed": "failed", "done": "completed"}
        os.kill(holders[1].pid, signal.SIGKILL)  # no end event can be written
        holders[1].wait()
        assert statuses(tmp_path)["killed"] == "dead" and statuses(tmp_path)["live"] == "running"
        assert run_json("health", str(killed))["status"] == "dead"
        assert run_json("health", str(live))["status"] == "running"
        table = CliRunner().invoke(app, ["health", str(killed)]).stdout
        assert "dead at step 2" in table
    finally:
        for child in holders:
            child.kill()
            child.wait()


def test_a_run_without_a_lock_file_is_dead_once_its_metrics_are_quiet(tmp_path):
    _unfinished_run(tmp_path / "old")
    old = time.time() - 3600
    os.utime(tmp_path / "old" / "metrics.jsonl", (old, old))
    _unfinished_run(tmp_path / "fresh")  # a trainer that takes no lock, still writing
    assert statuses(tmp_path) == {"old": "dead", "fresh": "running"}


# -- steps repeated after a resume: the newest win ---------------------------------------------------------------


def _resumed_metrics(path):
    metrics = MetricsFile(path)
    metrics(ev.RunStarted("r", "r", "tiny", {}, 10, 5, "cpu", "fp32", {}, 10))
    for i in range(1, 9):
        metrics(
            make_step(
                step=i, tokens=64 * i, loss=5.0, tokens_per_s=1e3, grad_norm=1.0, elapsed=0.02 * i, progress=i / 10
            )
        )
    metrics(make_eval(step=6, val_loss=4.0, val_ppl=54.6, val_bpc=2.0, best_val_loss=4.0, train_loss=5.0))
    metrics(ev.RunStarted("r", "r", "tiny", {}, 10, 5, "cpu", "fp32", {}, 10, resumed_step=5))
    for i in range(6, 11):
        metrics(make_step(step=i, tokens=64 * i, tokens_per_s=1e3, grad_norm=1.0, elapsed=0.02 * i, progress=i / 10))
    metrics(make_eval(step=10, val_loss=3.5, val_ppl=33.1, val_bpc=1.8, best_val_loss=3.5, train_loss=3.0))
    metrics.close()


def test_steps_repeated_after_a_resume_count_once_the_newest(tmp_path):
    path = tmp_path / "metrics.jsonl"
    _resumed_metrics(path)
    steps = [e for e in read_events(path) if isinstance(e, ev.Step)]
    assert [s.step for s in steps] == list(range(1, 11))
    assert [s.loss for s in steps] == [5.0] * 5 + [3.0] * 5
    assert [e.step for e in read_events(path) if isinstance(e, ev.Eval)] == [10]
    assert len([e for e in read_events(path, replaced=True) if isinstance(e, ev.Step)]) == 13
    summary = summarize_run(tmp_path)
    assert [s for s, _ in summary.train] == list(range(1, 11)) and summary.best_val_loss == 3.5

    store = RunStore()  # the dashboard, fed line by line (tuilm watch)
    for event in read_events(path, replaced=True):
        store(event)
    step, loss = store.step_series("loss")
    assert step.tolist() == list(range(1, 11)) and loss.tolist() == [5.0] * 5 + [3.0] * 5
    assert store.eval_series()["step"].tolist() == [10]


def test_the_reference_lists_every_metrics_event_and_field():
    from dataclasses import fields
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "docs" / "scripting.md").read_text(encoding="utf-8")
    section = readme.split("### metrics.jsonl", 1)[1].split("\n## ", 1)[0]
    rows = {line.split("|")[1].strip().strip("`"): line for line in section.splitlines() if line.startswith("| `")}
    assert set(rows) == set(ev.EVENT_TYPES)
    for kind, cls in ev.EVENT_TYPES.items():
        for f in fields(cls):
            assert f"`{f.name}`" in rows[kind], f"docs/scripting.md's metrics.jsonl table lacks {kind}.{f.name}"
