"""Sweeps (grid, seeds, failures, interruption and resume) and the `runs` / `compare` commands, on tiny models."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from tests.conftest import write_corpus
from tests.events_factory import make_step
from tests.helpers import TINY, run_tuilm
from tuilm.cli import app
from tuilm.commands.sweep import sweep_command
from tuilm.errors import ConfigError
from tuilm.sweep import runner
from tuilm.sweep.runinfo import make_console
from tuilm.sweep.runner import write_results
from tuilm.sweep.spec import Budget, load_spec_file, parse_budget, parse_grid
from tuilm.train import events as ev
from tuilm.train.metrics_file import MetricsFile, read_events

# One torch thread: on a busy machine, more threads than free cores make tiny steps wait on each other for seconds.
TINY_SWEEP = [o for o in TINY if not o.startswith(("eval_interval", "sample_tokens"))] + [
    "eval_interval=2",
    "sample_tokens=0",
    "threads=1",
]


@pytest.fixture(autouse=True, scope="module")
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def sweep(source, out: Path, grid: list[str], *extra: str, budget: str | None = "4", seeds: int = 1) -> int:
    return sweep_command(str(source), grid, [*TINY_SWEEP, *extra], budget, seeds, out, None, None)


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def finished(run_dir: Path) -> ev.Finished:
    return [e for e in read_events(run_dir / "metrics.jsonl") if isinstance(e, ev.Finished)][-1]


@pytest.fixture(scope="module")
def grid_sweep(tmp_path_factory):
    """A 2x2 grid (lr x seq_len) trained once for the tests that only read it."""
    folder = tmp_path_factory.mktemp("grid")
    corpus = write_corpus(folder)
    out = folder / "sweep"
    code = sweep(corpus, out, ["lr=1e-3,3e-3", "seq_len=16,32"])
    return code, out, corpus


@pytest.fixture
def builds(monkeypatch):
    """Every trainer the sweep builds, as (run folder name, resume), with room to tamper with them first."""
    calls: list[tuple[str, bool]] = []
    trainers = []
    tamper: dict[str, object] = {}
    real = runner.build_trainer

    def build(config, run_dir, **kwargs):
        trainer = real(config, run_dir, **kwargs)
        calls.append((Path(run_dir).name, kwargs.get("resume", False)))
        trainers.append(trainer)
        for fragment, action in tamper.items():
            if fragment in Path(run_dir).name:
                action(trainer)
        return trainer

    monkeypatch.setattr(runner, "build_trainer", build)
    build.calls, build.tamper, build.trainers = calls, tamper, trainers
    return build


def test_grid_writes_runs_results_and_plots(grid_sweep):
    code, out, _ = grid_sweep
    assert code == 0
    rows = read_csv(out / "results.csv")
    assert len(rows) == 4
    assert [(r["train.lr"], r["model.seq_len"]) for r in rows] == [
        ("0.001", "16"),
        ("0.001", "32"),
        ("0.003", "16"),
        ("0.003", "32"),
    ]
    for row in rows:
        run_dir = out / row["run"]
        # An ordinary run folder: chat, eval and health work on it.
        for name in ("config.toml", "metrics.jsonl", "last.safetensors", "best.safetensors"):
            assert (run_dir / name).is_file(), name
        config = (run_dir / "config.toml").read_text()
        assert f"lr = {row['train.lr']}" in config and f"seq_len = {row['model.seq_len']}" in config
        assert "max_steps = 4" in config
        end = finished(run_dir)
        assert row["status"] == "completed" and int(row["steps"]) == end.step == 4
        assert float(row["best_val_loss"]) == pytest.approx(end.best_val_loss)
        assert float(row["final_val_loss"]) == pytest.approx(end.last_val_loss)
        assert float(row["best_val_bpc"]) == pytest.approx(end.best_val_bpc)
        assert float(row["tokens_per_s"]) == pytest.approx(end.tokens_per_s)
        assert float(row["wall_s"]) > 0
        started = next(e for e in read_events(run_dir / "metrics.jsonl") if isinstance(e, ev.RunStarted))
        data = started.data
        assert int(row["params"]) == started.params
        kept = data["tokens_kept"] / (data["tokens_kept"] + data["tokens_dropped"])
        assert float(row["kept_fraction"]) == pytest.approx(kept) and 0 < kept < 1  # pack drops the tail
        assert float(row["padding_fraction"]) == data["padding_fraction"] == 0  # and pads nothing
        assert 0 < float(row["epochs"]) < 1
    md = (out / "results.md").read_text()
    assert "| lr | seq_len | status | params | epochs | kept % | pad % | best val loss" in md and "Best: lr=" in md
    pngs = ["val_loss_vs_lr.png", "val_loss_vs_seq_len.png", "curves_by_lr.png", "curves_by_seq_len.png"]
    for png in pngs:
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
        assert f"({png})" in md
    spec = (out / "sweep.json").read_text()
    assert '"train.lr"' in spec and '"budget": "4"' in spec


def test_rerun_of_a_finished_sweep_trains_nothing(grid_sweep, builds, tmp_path, capsys):
    _, out, corpus = grid_sweep
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    before = read_csv(copy / "results.csv")
    assert sweep(corpus, copy, ["lr=1e-3,3e-3", "seq_len=16,32"]) == 0
    assert builds.calls == []
    assert "4 already done" in capsys.readouterr().out
    assert read_csv(copy / "results.csv") == before


def test_results_without_matplotlib(grid_sweep, tmp_path, monkeypatch, capsys):
    _, out, _ = grid_sweep
    copy = tmp_path / "copy"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("*.png", "results.*"))
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    write_results(copy, load_spec_file(copy), console=make_console(), with_plots=True)
    text = capsys.readouterr().out
    assert [line for line in text.splitlines() if "matplotlib" in line] == [
        "matplotlib is not installed, so no PNG plots (pip install 'tuilm[plot]')"
    ]
    assert len(read_csv(copy / "results.csv")) == 4
    assert "## Plots" not in (copy / "results.md").read_text()
    assert not list(copy.glob("*.png"))


def test_seeds_repeat_each_configuration_and_aggregate(small_corpus, tmp_path):
    out = tmp_path / "seeds"
    assert sweep(small_corpus, out, ["lr=1e-3,3e-3"], budget="3", seeds=2) == 0
    rows = read_csv(out / "results.csv")
    assert [(r["train.lr"], r["seed"]) for r in rows] == [
        ("0.001", "1337"),
        ("0.001", "1338"),
        ("0.003", "1337"),
        ("0.003", "1338"),
    ]
    for row in rows:
        assert f"seed = {row['seed']}" in (out / row["run"] / "config.toml").read_text()
    md = (out / "results.md").read_text()
    assert "seeds: 2 (1337, 1338)" in md and "2 completed" in md
    # mean ± std over the two seeds of lr=0.001
    losses = [float(r["best_val_loss"]) for r in rows if r["train.lr"] == "0.001"]
    mean = sum(losses) / 2
    line = next(line for line in md.splitlines() if line.startswith("| 0.001") or line.startswith("| **0.001"))
    assert f"{mean:.4f} ± " in line


def test_failures_are_recorded_and_the_sweep_goes_on(small_corpus, tmp_path, builds):
    def out_of_memory(trainer):
        def hook(*_):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

        trainer.model.register_forward_hook(hook)

    def crash(trainer):
        def hook(*_):
            raise ValueError("boom")

        trainer.model.register_forward_hook(hook)

    builds.tamper.update({"lr=2e-3": out_of_memory, "lr=5e-3": crash})
    out = tmp_path / "failures"
    # lr 1e30 turns the weights themselves to NaN, so the evaluation's sample may crash on them: still diverged.
    grid = ["lr=1e-3,2e-3,5e-3,1e4,1e30", "n_heads=2,3"]
    code = sweep(small_corpus, out, grid, "health.nonfinite=stop", "sample_tokens=4", budget="4")
    assert code == 1  # one run crashed for a reason that is not the config's
    status = {(r["train.lr"], r["model.n_heads"]): r for r in read_csv(out / "results.csv")}
    assert status["0.001", "2"]["status"] == "completed"
    assert status["0.002", "2"]["status"] == "oom" and "out of memory" in status["0.002", "2"]["reason"]
    assert status["0.005", "2"]["status"] == "failed" and "ValueError: boom" in status["0.005", "2"]["reason"]
    assert (out / status["0.005", "2"]["run"] / "error.log").is_file()
    assert status["10000.0", "2"]["status"] == "diverged"
    assert status["1e+30", "2"]["status"] == "diverged"
    for lr in ("0.001", "0.002", "0.005", "10000.0", "1e+30"):
        row = status[lr, "3"]
        assert row["status"] == "invalid" and "not divisible by n_heads 3" in row["reason"]
        assert not (out / row["run"]).exists()
    assert len(builds.calls) == 5  # the invalid ones never got that far
    md = (out / "results.md").read_text()
    assert "## Runs that did not complete" in md and "| oom |" in md and "| diverged |" in md


def test_interrupted_sweep_resumes_where_it_stopped(small_corpus, tmp_path, builds, capsys):
    main = threading.main_thread().ident

    def ctrl_c_at_step_3(trainer):
        def on_event(event):
            if isinstance(event, ev.Step) and event.step == 3:
                signal.pthread_kill(main, signal.SIGINT)
                time.sleep(0.5)  # the main thread's handler stops the trainer before the next step

        trainer.bus.subscribe(on_event)

    builds.tamper["lr=2e-3"] = ctrl_c_at_step_3
    out = tmp_path / "interrupted"
    grid = ["lr=1e-3,2e-3,3e-3"]
    assert sweep(small_corpus, out, grid, budget="8") == 130
    assert "rerun the same command to resume" in capsys.readouterr().out
    rows = read_csv(out / "results.csv")
    assert [r["status"] for r in rows] == ["completed", "stopped", "pending"]
    assert rows[1]["steps"] == "3"

    builds.calls.clear()
    builds.tamper.clear()
    assert sweep(small_corpus, out, grid, budget="8") == 0
    # The completed run is skipped, the stopped one resumes from its checkpoint, the last one starts.
    assert builds.calls == [("lr=2e-3_seed=1337", True), ("lr=3e-3_seed=1337", False)]
    rows = read_csv(out / "results.csv")
    assert [r["status"] for r in rows] == ["completed"] * 3 and [r["steps"] for r in rows] == ["8"] * 3
    started = [e for e in read_events(out / rows[1]["run"] / "metrics.jsonl") if isinstance(e, ev.RunStarted)]
    assert [e.resumed_step for e in started] == [0, 3]

    # The same folder with other settings would mix two experiments: refused before anything trains.
    builds.calls.clear()
    with pytest.raises(ConfigError, match=r"other settings \(train.max_steps 8 there, 9 here\)"):
        sweep(small_corpus, out, grid, budget="9")
    assert builds.calls == []


def test_a_run_made_before_a_setting_existed_matches_that_settings_default(tmp_path):
    from tuilm.config import apply_overrides, from_dict

    config = from_dict({})
    saved = tmp_path / "config.toml"
    # An older tuilm's config.toml: no data.val_context line; the run scored as the default does.
    saved.write_text(config.to_toml().replace('val_context = "document"\n', ""), encoding="utf-8")
    assert "val_context" not in saved.read_text(encoding="utf-8")
    assert runner.config_difference(saved, config) == ""
    stream = apply_overrides(config, ["val_context=stream"])
    assert runner.config_difference(saved, stream) == "data.val_context document there, stream here"


def test_second_ctrl_c_quits_at_once_and_a_rerun_finishes(small_corpus, tmp_path, builds, capsys):
    main = threading.main_thread().ident

    def ctrl_c_twice(trainer):
        def on_event(event):
            if isinstance(event, ev.Step) and event.step == 2:
                for _ in range(2):
                    signal.pthread_kill(main, signal.SIGINT)
                    time.sleep(0.3)

        trainer.bus.subscribe(on_event)

    builds.tamper["lr=1e-3"] = ctrl_c_twice
    out = tmp_path / "quit"
    assert sweep(small_corpus, out, ["lr=1e-3,2e-3"], budget="5") == 130
    assert "quitting at once" in capsys.readouterr().out
    assert [r["status"] for r in read_csv(out / "results.csv")] == ["interrupted", "pending"]
    builds.trainers[0].join(60)  # it was left to finish its step and save in the background (slow on a busy machine)
    assert not builds.trainers[0].thread.is_alive()

    builds.tamper.clear()
    assert sweep(small_corpus, out, ["lr=1e-3,2e-3"], budget="5") == 0
    assert [r["status"] for r in read_csv(out / "results.csv")] == ["completed", "completed"]


@pytest.mark.parametrize(
    ("text", "budget"),
    [
        ("500", Budget("steps", 500)),
        ("500 steps", Budget("steps", 500)),
        ("2M tokens", Budget("tokens", 2_000_000)),
        ("500k tokens", Budget("tokens", 500_000)),
        ("60s", Budget("time", "60s")),
        ("10m", Budget("time", "10m")),
        ("1h30m", Budget("time", "1h30m")),
    ],
)
def test_budget_forms(text, budget):
    assert parse_budget(text) == budget


def test_budget_clears_the_recipes_stopping_criteria(small_corpus, tmp_path):
    from tuilm.sweep.spec import base_config, make_spec

    spec = make_spec(str(small_corpus), [], ["epochs=3", "patience=2", "max_steps=100"], "2M tokens", 1, None)
    # --set comes after the budget, so a setting given on purpose still counts; the recipe's do not.
    t = base_config(spec).train
    assert (t.max_tokens, t.epochs, t.patience, t.max_steps, t.time) == (2_000_000, 3, 2, 100, "")
    spec = make_spec("tiny_shakespeare", [], [], "60s", 1, None)
    t = base_config(spec).train
    assert (t.max_steps, t.max_tokens, t.epochs, t.time) == (0, 0, 0, "60s")


@pytest.mark.parametrize(
    ("grid", "budget", "seeds", "message"),
    [
        (["seq_length=16,32"], None, 1, "did you mean 'model.seq_len'"),
        (["lr=1e-3,fast"], None, 1, "train.lr must be float (a finite number in (0.0, 3.4e+38]), got 'fast'"),
        (["lr=1e-3,0.001"], None, 1, "lists 1e-3 and 0.001, the same value"),
        (["seq_len=16,16"], None, 1, "lists 16 twice"),
        (["lr=1e-3", "train.lr=2e-3"], None, 1, "names train.lr twice"),
        (["lr"], None, 1, "key=v1,v2"),
        (["max_steps=10,20"], "5", 1, "both decide when runs stop"),
        (["seed=1,2"], None, 2, "both set the seed"),
        ([], "2M", 1, "ambiguous"),
        ([], "soon", 1, "not a number of steps, tokens or a duration"),
        ([], None, 0, "--seeds must be at least 1"),
    ],
)
def test_bad_sweep_commands_are_one_clear_error(grid, budget, seeds, message):
    from tuilm.sweep.spec import make_spec

    with pytest.raises(ConfigError) as e:
        make_spec("tiny_shakespeare", grid, [], budget, seeds, None)
    assert message in str(e.value)


def test_grid_labels_and_values_parse_like_set():
    axes = parse_grid(["lr=1e-3,3e-3", "doc_mask=true,false", "policy=pack,bucket", "d_ff=auto,64"])
    assert [a.label for a in axes] == ["lr", "doc_mask", "policy", "d_ff"]
    assert [a.values for a in axes] == [(0.001, 0.003), (True, False), ("pack", "bucket"), (None, 64)]


def test_a_sweep_that_would_never_stop_is_refused(small_corpus, tmp_path):
    with pytest.raises(ConfigError, match="never stop"):
        sweep_command(str(small_corpus), ["lr=1e-3,2e-3"], [], None, 1, tmp_path / "s", None, None)


# -- tuilm runs / tuilm compare ---------------------------------------------------------------------------------


def test_runs_lists_every_run_with_its_status(grid_sweep, tmp_path):
    _, out, _ = grid_sweep
    result = CliRunner().invoke(app, ["runs", str(out)])
    assert result.exit_code == 0, result.output
    for name in ("lr=1e-3_seq_len=16_seed=1337", "lr=3e-3_seq_len=32_seed=1337"):
        assert name in result.output
    assert result.output.count("completed") == 4
    assert "best val loss" in result.output and "bits/char" in result.output

    # Runs with no end event (and no lock file): running while metrics.jsonl changes, dead once it has been quiet.
    for name, end, age in (("live", None, 0), ("dead", None, 3600), ("crashed", ev.Failed(2, "ValueError: x"), 0)):
        metrics = MetricsFile(tmp_path / "more" / name / "metrics.jsonl")
        metrics(ev.RunStarted(str(tmp_path), name, "tiny", {}, 10, 5, "cpu", "fp32", {}, 10))
        metrics(make_step(step=2, loss=5.0, tokens_per_s=1000.0, grad_norm=1.0, progress=0.2))
        if end is not None:
            metrics(end)
        metrics.close()
        old = time.time() - age
        os.utime(metrics.path, (old, old))
    result = CliRunner().invoke(app, ["runs", str(tmp_path / "more")])
    lines = {line.split()[1]: line for line in result.output.splitlines() if line.startswith("│")}
    assert "running" in lines["live"] and "dead" in lines["dead"] and "failed" in lines["crashed"]


def test_compare_shows_differing_settings_numbers_and_curves(grid_sweep):
    _, out, _ = grid_sweep
    a, b = out / "lr=1e-3_seq_len=16_seed=1337", out / "lr=3e-3_seq_len=32_seed=1337"
    result = CliRunner().invoke(app, ["compare", str(a), str(b)])
    assert result.exit_code == 0, result.output
    text = result.output
    assert "settings that differ" in text
    differ = [line for line in text.splitlines() if line.startswith("│ ")]
    assert any("train.lr" in line and "0.001" in line and "0.003" in line for line in differ)
    assert any("model.seq_len" in line and "16" in line and "32" in line for line in differ)
    assert not any("train.batch_size" in line for line in differ)  # only what differs
    assert "final numbers" in text and str(round(finished(a).best_val_loss, 4)) in text
    assert "val loss" in text and "train loss" in text  # the overlaid curves


def tuilm(*args: str) -> subprocess.CompletedProcess:
    return run_tuilm(*args, timeout=60)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["runs", "no/such/folder"], "no/such/folder: no such folder"),
        (["compare", "."], "at least two run folders"),
        (["compare", "no/a", "no/b"], "no such run folder: no/a, no/b"),
        (["sweep", "tiny_shakespeare", "--grid", "n_layer=1,2"], "did you mean"),
    ],
)
def test_bad_input_exits_2_with_one_line(args, fragment, tmp_path):
    out = tuilm(*args)
    assert out.returncode == 2, (out.stdout, out.stderr)
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], out.stderr


def test_runs_on_a_folder_without_runs(tmp_path):
    result = CliRunner().invoke(app, ["runs", str(tmp_path)])
    assert result.exit_code == 0 and "no runs under" in result.output


def test_a_key_in_a_big_grid_is_plotted_as_its_average_over_the_others():
    from tuilm.sweep.plots import MAX_SERIES, loss_vs_key
    from tuilm.sweep.results import Row
    from tuilm.sweep.runinfo import RunSummary

    def summary(loss):
        return RunSummary(Path("r"), "r", "tiny", "completed", best_val_loss=loss)

    rows = [
        Row(f"r{a}{b}", {"model.d_model": a, "train.lr": b}, 1, "completed", summary=summary(a / 100 + b))
        for a in (64, 128)
        for b in range(MAX_SERIES + 1)
    ]
    keys = ["model.d_model", "train.lr"]
    (label, xs, means, stds), *rest = loss_vs_key(rows, keys, "model.d_model")
    assert rest == [] and label.startswith("mean over the other settings")
    assert xs == [64, 128] and means == pytest.approx([0.64 + 4, 1.28 + 4]) and stds[0] > 0
    assert len(loss_vs_key(rows, keys, "train.lr")) == 2  # two lines (one per width) stay lines
