"""`tuilm overfit`: one batch trained to ~0 loss (PASS), a setup that cannot learn it (FAIL, exit 1)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from tests.helpers import TINY, run_tuilm, tiny_trainer
from tuilm.cli import app
from tuilm.data.pipeline import IGNORE
from tuilm.train.batches import to_device
from tuilm.train.overfit import OverfitResult, default_target, likely_causes, overfit_batch
from tuilm.train.state import TrainState

SETS = [arg for item in TINY for arg in ("--set", item)]


def batch_loss(trainer, batch) -> float:
    x, y, pos, doc = to_device(batch, trainer.device)
    with torch.no_grad():
        logits = trainer.model(x, pos_ids=pos, doc_ids=doc)
    return float(F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=IGNORE))


def test_a_tiny_model_drives_the_loss_of_its_first_batch_to_zero(small_corpus, tmp_path):
    trainer, _ = tiny_trainer(small_corpus, tmp_path / "run", "sample_tokens=0", "lr=1e-2")
    fresh = TrainState()
    first = trainer.batches.split(trainer.batches.next_index(fresh))  # the first batch of a fresh run
    result = overfit_batch(trainer, steps=300)
    assert result.passed and result.stopped == "target", result
    vocab = trainer.config.model.vocab_size  # what the BPE learned: at most the 300 asked for
    assert result.final_loss < result.target == default_target(vocab) and result.steps < 300
    assert result.initial_loss == pytest.approx(math.log(vocab), rel=0.1)  # started from the untrained model
    assert result.rows == 8 and result.tokens == sum(b.n_targets for b in first)
    assert batch_loss(trainer, first[0]) < 2 * result.target  # that very batch is memorised, not another
    assert (trainer.state.epoch, trainer.state.batch_in_epoch) == (fresh.epoch, fresh.batch_in_epoch)  # one drawn
    assert not result.causes


def test_a_learning_rate_too_low_to_move_fails_and_says_so(small_corpus, tmp_path):
    trainer, _ = tiny_trainer(small_corpus, tmp_path / "run", "sample_tokens=0", "lr=1e-7", "min_lr=0")
    result = overfit_batch(trainer, steps=30)
    assert not result.passed and result.stopped == "steps" and result.steps == 30
    assert len(result.causes) == 1 and "barely moved" in result.causes[0] and "too low" in result.causes[0]


def curve(losses, *, target=0.05, ln_vocab=math.log(300), stopped="steps") -> OverfitResult:
    finite = [x for x in losses if math.isfinite(x)]
    return OverfitResult(
        passed=False,
        steps=len(finite),
        max_steps=200,
        target=target,
        initial_loss=losses[0],
        final_loss=losses[-1],
        best_loss=min(finite),
        ln_vocab=ln_vocab,
        lr=1e-3,
        rows=8,
        tokens=120,
        stopped=stopped,
        losses=losses,
    )


def test_the_likely_causes_follow_the_shape_of_the_loss_curve():
    (cause,) = likely_causes(curve([5.7, 5.0, float("nan")], stopped="nonfinite"))
    assert "non-finite at step 3" in cause and "too high" in cause
    (cause,) = likely_causes(curve([5.7, 0.5, 1.2]))
    assert "then rose to 1.2" in cause and "too high" in cause
    (cause,) = likely_causes(curve([5.7, 1.0, 0.9]))  # still falling slowly, well above the target
    assert "not under 0.05" in cause and "too small a model" in cause and "misaligned" in cause
    (cause,) = likely_causes(curve([5.7, 5.6, 5.5]))
    assert "barely moved" in cause
    init, _ = likely_causes(curve([20.0, 19.0, 18.0]))
    assert "far from ln(vocab)" in init
    assert "dropout 0.1" in likely_causes(curve([5.7, 1.0, 0.9]), dropout=0.1)[-1]


def test_the_default_target_is_005_or_one_percent_of_ln_vocab_whichever_is_larger():
    assert default_target(300) == pytest.approx(0.05704, abs=1e-4)  # 1% of 5.70
    assert default_target(100) == 0.05  # 1% of 4.6 would be stricter
    assert default_target(50_257) == pytest.approx(0.01 * math.log(50_257))


def test_the_command_passes_with_exit_0_and_keeps_the_model_only_with_out(small_corpus, tmp_path):
    out = tmp_path / "kept"
    args = ["overfit", str(small_corpus), *SETS, "--set", "lr=1e-2", "--steps", "300"]
    result = CliRunner().invoke(app, [*args, "--json", "--out", str(out)])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["kind"] == "overfit" and doc["schema"] == 1 and doc["status"] == "pass" and doc["passed"] is True
    assert doc["final_loss"] < doc["target"] and doc["steps"] == len(doc["losses"])
    assert doc["checkpoint"] == str(out / "last.safetensors") and (out / "last.safetensors").is_file()
    plain = CliRunner().invoke(app, args)
    assert plain.exit_code == 0 and plain.stdout.startswith("PASS: one batch (8 rows")
    assert "steps" in plain.stdout.strip().splitlines()[-1]


def test_the_command_fails_with_exit_1_and_the_likely_causes(small_corpus):
    args = ["overfit", str(small_corpus), *SETS, "--set", "lr=1e-7", "--set", "min_lr=0", "--steps", "20"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1, result.output
    line = result.stdout.strip().splitlines()[-1]
    assert line.startswith("FAIL: one batch") and "after 20 steps; likely:" in line and "too low" in line
    doc = json.loads(CliRunner().invoke(app, [*args, "--json"]).stdout)
    assert doc["status"] == "fail" and doc["causes"] and doc["checkpoint"] is None


def test_bad_options_are_one_line_and_exit_2():
    out = run_tuilm("overfit", "tiny_shakespeare_cpu", "--steps", "0")
    assert out.returncode == 2 and "--steps 0" in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_overfit_never_writes_into_an_existing_run(trained_run, tmp_path):
    """Issue 27, item 2: --out onto a run of `tuilm train` is refused before anything in it is touched."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    out = run_tuilm("overfit", str(trained_run.parent / "corpus.txt"), *SETS, "--steps", "5", "--out", str(run))
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert "already holds a run" in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
