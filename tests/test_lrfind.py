"""`tuilm lr-find`: the learning-rate range test and its suggestion, against a real sweep of a tiny model."""

from __future__ import annotations

import itertools
import math

import pytest
from typer.testing import CliRunner

from tests.helpers import TINY, run_tuilm, tiny_trainer
from tuilm.cli import app
from tuilm.train.lrfind import lr_range_test

SETS = [arg for item in TINY for arg in ("--set", item)]


@pytest.mark.slow
def test_the_suggestion_lands_within_4x_of_the_best_lr_of_a_sweep(small_corpus, tmp_path):
    finder, _ = tiny_trainer(small_corpus, tmp_path / "find", "sample_tokens=0")
    # The command's default 300 steps: at 150 the smoothed loss lags the fast-rising lr by a decade here
    result = lr_range_test(finder, start=1e-5, end=1.0, steps=300)
    assert result.smoothed[result.min_index] < result.smoothed[0]  # the loss fell before it rose
    suggested = result.suggestion()
    assert suggested == pytest.approx(result.lr_at_min / 10)
    val = {}
    for lr in (3e-4, 1e-3, 3e-3, 1e-2, 3e-2):
        overrides = (f"lr={lr}", "max_steps=100", "schedule=constant", "eval_interval=100", "sample_tokens=0")
        trainer, _ = tiny_trainer(small_corpus, tmp_path / f"lr{lr}", *overrides, "checkpoint_interval=100000")
        val[lr] = trainer.run().last_val_loss
    best = min(val, key=val.get)
    assert best / 4 <= suggested <= best * 4, (suggested, val)


def test_the_range_test_stops_when_the_loss_diverges(small_corpus, tmp_path):
    finder, _ = tiny_trainer(small_corpus, tmp_path / "find", "sample_tokens=0", "grad_clip=0", "optimizer=sgd")
    result = lr_range_test(finder, start=1e-3, end=1e4, steps=80)
    assert result.stopped in ("diverged", "nonfinite") and len(result.lrs) < 80
    lrs = result.lrs
    assert all(b > a for a, b in itertools.pairwise(lrs))  # exponentially growing
    assert lrs[1] / lrs[0] == pytest.approx((1e4 / 1e-3) ** (1 / 79))
    finite = [s for s in result.smoothed if math.isfinite(s)]
    if result.stopped == "diverged":
        assert finite[-1] > 4 * min(finite)


def test_lr_find_command_prints_a_plot_and_the_rule_and_writes_a_png(small_corpus, tmp_path):
    png = tmp_path / "lr.png"
    result = CliRunner().invoke(
        app, ["lr-find", str(small_corpus), *SETS, "--steps", "40", "--start", "1e-4", "--png", str(png)]
    )
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "learning rate (log)" in out and "suggested lr " in out and "one tenth of the lr at the minimum" in out
    assert "--set lr=" in out and "steepest descent at lr" in out
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_lr_find_bad_input_is_one_line_and_exit_2(tmp_path):
    out = run_tuilm("lr-find", "tiny", "--start", "1", "--end", "0.1")
    assert out.returncode == 2 and "need 0 < start < end" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    out = run_tuilm("lr-find", "tiny", "--rule", "fastest")
    assert out.returncode == 2 and "--rule fastest" in out.stderr
