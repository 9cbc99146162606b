"""What records are made with (issue 23): the wsd schedule, EMA weights, time to target."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tests.events_factory import make_eval
from tests.helpers import tiny_trainer
from tuilm.checkpoint import read_metadata, read_weights
from tuilm.errors import ConfigError
from tuilm.train import events as ev
from tuilm.train import target
from tuilm.train.schedule import lr_at
from tuilm.values import parse_target

# -- warmup-stable-decay ------------------------------------------------------------------------------------------


def wsd(**kw):
    base = dict(lr=1e-2, min_lr=1e-3, warmup_steps=10, schedule="wsd", decay_fraction=0.2, decay_shape="linear")
    return SimpleNamespace(**{**base, **kw})


def test_wsd_lr_by_hand():
    # 100 steps, warmup 10, decay over the last 20% (steps 80..100) from 1e-2 to 1e-3.
    c = wsd()
    by_hand = {
        0: 1e-2 * 1 / 11,  # warmup: lr * (step + 1) / (warmup + 1)
        9: 1e-2 * 10 / 11,
        10: 1e-2,  # stable
        50: 1e-2,
        80: 1e-2,  # progress 0.8: the decay starts
        85: 1e-3 + 9e-3 * (1 - 0.25),  # a quarter through the decay
        90: 1e-3 + 9e-3 * 0.5,
        99: 1e-3 + 9e-3 * 0.05,
        100: 1e-3,
    }
    for step, lr in by_hand.items():
        assert lr_at(step, step / 100, c) == pytest.approx(lr, rel=1e-12), step
    s = wsd(decay_shape="sqrt")  # 1 - sqrt: min + (lr - min) * (1 - sqrt(q))
    assert lr_at(85, 0.85, s) == pytest.approx(1e-3 + 9e-3 * 0.5, rel=1e-12)  # q = 1/4, sqrt(q) = 1/2
    assert lr_at(96, 0.96, s) == pytest.approx(1e-3 + 9e-3 * 0.1056, rel=1e-3)  # q = 0.8, 1 - 0.8944
    assert lr_at(50, 0.5, wsd(decay_fraction=1.0)) == pytest.approx(1e-3 + 9e-3 * 0.5)  # all decay: linear


def test_wsd_follows_the_first_stopping_limit(small_corpus, tmp_path):
    trainer, rec = tiny_trainer(
        small_corpus, tmp_path / "r", "schedule=wsd", "decay_fraction=0.5", "warmup_steps=0", "max_steps=10",
        "lr=1e-2", "min_lr=0", "eval_interval=100",
    )  # fmt: skip
    trainer.run()
    lrs = [s.lr for s in rec.of(ev.Step)]
    assert lrs == pytest.approx([1e-2] * 6 + [8e-3, 6e-3, 4e-3, 2e-3])  # steps 0..4 stable, decay from step 5


def test_a_cooldown_branch_resumed_from_the_stable_phase_decays_from_there(small_corpus, tmp_path):
    common = ["schedule=wsd", "decay_fraction=0.5", "warmup_steps=0", "lr=1e-2", "min_lr=0", "eval_interval=100"]
    trunk, _ = tiny_trainer(small_corpus, tmp_path / "trunk", *common, "max_steps=100", "checkpoint_interval=6")
    trunk.bus.subscribe(lambda e: trunk.stop() if isinstance(e, ev.Step) and e.step == 6 else None)
    trunk.run()
    assert trunk.state.decay_start is None  # stopped in the stable phase
    shutil.copytree(tmp_path / "trunk", tmp_path / "far")
    # A branch to end at step 10: its decay would have started at step 5, before the resume at 6 (60% of the new
    # limit), so it decays from step 6 to the end: q = (step / 10 - 0.6) / 0.4.
    branch, rec = tiny_trainer(small_corpus, tmp_path / "trunk", *common, "max_steps=10", resume=True)
    branch.run()
    assert [s.step for s in rec.of(ev.Step)] == [7, 8, 9, 10]
    assert [s.lr for s in rec.of(ev.Step)] == pytest.approx([1e-2, 7.5e-3, 5e-3, 2.5e-3])
    assert branch.state.decay_start == pytest.approx(0.6)
    # A branch to end at step 16 decays as a run of 16 steps would: from step 8 on.
    far, rec = tiny_trainer(small_corpus, tmp_path / "far", *common, "max_steps=16", resume=True)
    far.run()
    assert [s.lr for s in rec.of(ev.Step)] == pytest.approx([1e-2] * 3 + [1e-2 * k / 8 for k in range(7, 0, -1)])


# -- EMA weights --------------------------------------------------------------------------------------------------


def test_ema_is_evaluated_beside_the_weights_and_best_says_which(small_corpus, tmp_path):
    # At a high constant lr the weights lead at step 4 (the average still lags) and the average leads after,
    # by 0.08 and 0.03 nats here: both outcomes of an evaluation are exercised.
    common = ["ema=0.95", "max_steps=12", "lr=0.05", "schedule=constant", "eval_interval=4"]
    trainer, rec = tiny_trainer(small_corpus, tmp_path / "r", *common)
    trainer.run()
    evals = rec.of(ev.Eval)
    assert [e.step for e in evals] == [4, 8, 12]
    for e in evals:
        assert e.ema_val_loss is not None and e.ema_val_loss != e.val_loss
        assert e.weights == ("ema" if e.ema_val_loss < e.val_loss else "model")
        best = min(min(x.val_loss, x.ema_val_loss) for x in evals if x.step <= e.step)
        assert e.best_val_loss == pytest.approx(best)
    assert [e.weights for e in evals] == ["model", "ema", "ema"]
    finished = rec.of(ev.Finished)[0]
    best_file = tmp_path / "r" / "best.safetensors"
    assert finished.best_weights == "ema" == json.loads(read_metadata(best_file)["weights"])
    assert json.loads(read_metadata(tmp_path / "r" / "last.safetensors")["weights"]) == "model"
    saved = read_weights(best_file)  # the step-12 average, the best evaluated
    for name, tensor in trainer.ema.tensors().items():
        torch.testing.assert_close(saved[name], tensor, rtol=0, atol=0)
    assert json.loads(json.dumps(finished.to_dict()))["best_weights"] == "ema"


def test_ema_off_leaves_the_eval_event_as_it_was(small_corpus, tmp_path):
    trainer, rec = tiny_trainer(small_corpus, tmp_path / "r", "max_steps=5")
    trainer.run()
    (e,) = rec.of(ev.Eval)
    assert e.ema_val_loss is None and e.weights == "model" and trainer.ema is None


@pytest.mark.parametrize("log_interval", [1, 3])  # 3: lean steps in between (train/lean.py) update it too
def test_resume_is_exact_with_ema_on(small_corpus, tmp_path, log_interval):
    common = ["ema=0.8", "max_steps=12", "lr=3e-3", f"log_interval={log_interval}"]
    reference, ref_rec = tiny_trainer(small_corpus, tmp_path / "whole", *common)
    reference.run()
    first, _ = tiny_trainer(small_corpus, tmp_path / "split", *common)
    first.bus.subscribe(lambda e: first.stop() if isinstance(e, ev.Step) and e.step >= 7 else None)
    first.run()
    stopped_at = first.step
    assert 7 <= stopped_at < 12
    second, rec = tiny_trainer(small_corpus, tmp_path / "split", *common, resume=True)
    second.run()
    for ours, theirs in zip(second.ema.tensors().values(), reference.ema.tensors().values(), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
    final = [(e.val_loss, e.ema_val_loss) for e in ref_rec.of(ev.Eval) if e.step == 12]
    assert [(e.val_loss, e.ema_val_loss) for e in rec.of(ev.Eval) if e.step == 12] == pytest.approx(final, abs=1e-6)


# -- time to target -----------------------------------------------------------------------------------------------


def test_target_units():
    assert parse_target("2.2") == ("bpc", 2.2)
    assert parse_target("loss=1.5") == ("loss", 1.5)
    assert parse_target(" bpb = 1.1 ") == ("bpb", 1.1)
    for bad in ("ppl=3", "loss=abc", "-1", "loss=nan"):
        with pytest.raises(ConfigError, match="target"):
            parse_target(bad)


def test_a_target_is_reached_at_the_first_evaluation_under_it_in_a_planted_curve():
    curve = [(100, 3.1, None), (200, 2.6, 2.5), (300, 2.25, 2.19), (400, 2.1, 2.05)]  # (step, bpc, ema bpc)
    hits = []
    for step, bpc, ema_bpc in curve:
        event = make_eval(
            step=step, val_loss=1.0, val_ppl=2.7, val_bpc=bpc, best_val_loss=1.0, train_loss=1.0, ema_val_bpc=ema_bpc
        )
        hits.append(target.reached("2.2", event, tokens=step * 64, seconds=step / 10, flops_per_token=1000))
    assert hits[:2] == [None, None]  # 2.5 and 2.6 are not under 2.2
    assert hits[2] == {"step": 300, "tokens": 19_200, "seconds": 30.0, "flops": 19_200_000, "score": 2.19}
    event = make_eval(step=7, val_loss=1.49, val_ppl=4.4, val_bpc=2.0, best_val_loss=1.49, train_loss=1.6)
    assert target.reached("loss=1.5", event, 1, 1.0, 1)["step"] == 7
    assert target.reached("loss=1.4", event, 1, 1.0, 1) is None


def test_stop_at_target_ends_the_run_where_it_was_reached(small_corpus, tmp_path):
    # The first evaluation (step 5) scores far under 1000 bits/char, the second target never.
    trainer, rec = tiny_trainer(small_corpus, tmp_path / "r", "max_steps=20", "target=1000", "stop_at_target=true")
    trainer.run()
    finished = rec.of(ev.Finished)[0]
    assert finished.reason == "target" and finished.status == "completed" and finished.step == 5
    hit = finished.target_reached
    assert hit["step"] == 5 and hit["tokens"] == rec.of(ev.Step)[4].tokens
    assert hit["flops"] == hit["tokens"] * trainer.flops.per_token and hit["seconds"] > 0
    trainer, rec = tiny_trainer(small_corpus, tmp_path / "never", "max_steps=5", "target=loss=0.001")
    trainer.run()
    assert rec.of(ev.Finished)[0].target_reached is None and rec.of(ev.Finished)[0].target == "loss=0.001"


@pytest.mark.anyio
async def test_the_val_chart_draws_the_ema_curve_beside_the_weights():
    from tests.helpers import replayed
    from tuilm.tui.app import Dashboard
    from tuilm.tui.charts import LineChart

    store = replayed()
    last = store.eval_series()["step"][-1]
    for k, step in enumerate((last + 10, last + 20)):
        store(make_eval(step=int(step), val_bpc=1.1 - 0.1 * k, train_loss=2.1, seconds=0.5, ema_val_bpc=1.0 - 0.1 * k))
    app = Dashboard(store=store)
    async with app.run_test(size=(120, 40)) as pilot:
        val = app.query_one("#val", LineChart)
        for _ in range(100):
            if any(s.label == "ema bits/char" for s in val.series):
                break
            await pilot.pause(0.05)
        (ema,) = [s for s in val.series if s.label == "ema bits/char"]
        assert ema.y[-2:].tolist() == pytest.approx([1.0, 0.9]) and np.isnan(ema.y[0])  # none before train.ema
        assert len(ema.x) == len(next(s for s in val.series if s.label == "bits/char").x)
    plain = replayed()
    assert np.isnan(plain.eval_series()["ema_val_bpc"]).all()


def test_target_settings_are_checked_and_overfit_keeps_the_one_meaning(small_corpus, tmp_path):
    from tests.helpers import run_tuilm, tiny_config
    from tuilm.commands.overfit import overfit_target

    with pytest.raises(ConfigError, match="stop_at_target needs a target"):
        tiny_config(small_corpus, "stop_at_target=true")
    assert tiny_config(small_corpus, "target=loss=1.5").train.target == "loss=1.5"
    assert overfit_target("0.05") == overfit_target("loss=0.05") == 0.05  # a bare number: the batch's loss
    with pytest.raises(ConfigError, match="overfit measures the batch's loss"):
        overfit_target("bpc=2.2")
    out = run_tuilm("train", str(small_corpus), "--headless", "--target", "ppl=3", "--out", str(tmp_path / "r"))
    assert out.returncode == 2 and "unknown unit 'ppl'" in out.stderr and "Traceback" not in out.stderr
