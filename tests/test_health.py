"""Gradient health: each planted fault raises its alert, healthy training raises none."""

import math
import os

import pytest
import torch

from tests.helpers import run_tuilm, tiny_trainer
from tuilm.config import HealthConfig
from tuilm.train import events as ev
from tuilm.train.health import HealthMonitor

STEPS = ("max_steps=20", "health.interval=5", "eval_interval=100", "sample_tokens=0")


def codes(rec):
    return [(a.code, a.layer) for a in rec.of(ev.Alert)]


def test_healthy_tiny_run_raises_nothing_and_measures_every_layer(small_corpus, tmp_path):
    trainer, rec = tiny_trainer(small_corpus, tmp_path / "r", *STEPS, "act=relu")
    trainer.run()
    assert codes(rec) == []
    health = rec.of(ev.Health)
    assert [h.step for h in health] == [5, 10, 15, 20]
    h = health[-1]
    assert h.layers == [
        "embedding",
        "block0.norm",
        "block0.attn",
        "block0.mlp",
        "block1.norm",
        "block1.attn",
        "block1.mlp",
        "norm_f",
    ]
    assert all(g > 0 and math.isfinite(g) for g in h.grad_norm)
    assert all(-5 < r < -1 for r in h.update_ratio)
    assert len(h.adam_snr) == len(h.layers) and all(0 < s < 1.5 for s in h.adam_snr)
    assert len(h.act_std) == len(h.attn_entropy) == len(h.dead_fraction) == 2
    assert all(0 <= d < 0.5 for d in h.dead_fraction)  # ReLU: the dead fraction is measured
    assert all(0 < e <= math.log(16) for e in h.attn_entropy)


def test_learning_rate_of_1e3_explodes(small_corpus, tmp_path):
    trainer, rec = tiny_trainer(small_corpus, tmp_path / "r", *STEPS, "lr=1e3")
    trainer.run()
    first = rec.of(ev.Alert)[0]
    assert (first.code, first.severity, first.step) == ("exploding", "bad", 2)
    assert "above the limit" in first.message
    # What follows is the consequence: non-finite steps, skipped until the policy gives up.
    assert {a.code for a in rec.of(ev.Alert)[1:]} <= {"nonfinite"}
    assert trainer.result.status == "diverged" and trainer.result.reason == "nonfinite"


def test_frozen_zero_layer_vanishes(small_corpus, tmp_path):
    trainer, rec = tiny_trainer(small_corpus, tmp_path / "r", *STEPS)
    with torch.no_grad():
        for p in trainer.model.blocks[1].attn.parameters():
            p.zero_()
            p.requires_grad_(False)
    trainer.run()
    assert set(codes(rec)) == {("vanishing", "block1.attn")}
    assert rec.of(ev.Alert)[0].severity == "bad"


def test_injected_nan_gradient_is_caught_named_and_skipped(small_corpus, tmp_path):
    trainer, rec = tiny_trainer(small_corpus, tmp_path / "r", *STEPS)
    weight = trainer.model.blocks[0].mlp.fc.weight
    weight.register_hook(lambda g: g * math.nan if trainer.step == 6 else g)
    before = weight.detach().clone()
    trainer.run()
    alerts = rec.of(ev.Alert)
    assert [(a.code, a.step, a.layer) for a in alerts] == [("nonfinite", 7, "block0.mlp")]
    assert "blocks.0.mlp.fc.weight" in alerts[0].message and "step skipped" in alerts[0].message
    steps = rec.of(ev.Step)
    assert [s.step for s in steps if s.skipped] == [7]
    assert trainer.result.status == "completed" and torch.isfinite(weight).all() and not torch.equal(weight, before)


def test_nan_weight_with_stop_policy_stops(small_corpus, tmp_path):
    trainer, rec = tiny_trainer(small_corpus, tmp_path / "r", *STEPS, "health.nonfinite=stop")
    trainer.bus.subscribe(
        lambda e: (
            trainer.model.blocks[0].attn.qkv.weight.data[0, 0].fill_(math.nan)
            if isinstance(e, ev.Step) and e.step == 3
            else None
        )
    )
    trainer.run()
    alerts = rec.of(ev.Alert)
    assert [(a.code, a.step) for a in alerts] == [("nonfinite", 4)]
    assert "blocks.0.attn.qkv.weight (weights)" in alerts[0].message
    assert trainer.result.status == "diverged" and trainer.step == 4


def test_dead_relu_units(small_corpus, tmp_path):
    trainer, rec = tiny_trainer(small_corpus, tmp_path / "r", *STEPS, "act=relu", "bias=true")
    fc = trainer.model.blocks[0].mlp.fc
    with torch.no_grad():  # three quarters of the units can never fire: zero weights, negative bias
        dead = fc.out_features * 3 // 4
        fc.weight[:dead].zero_()
        fc.bias[:dead].fill_(-1.0)
    trainer.run()
    assert ("dead_units", "block0.mlp") in codes(rec)
    assert {c for c, _ in codes(rec)} == {"dead_units"}
    assert rec.of(ev.Health)[0].dead_fraction[0] >= 0.75


def test_update_ratio_out_of_band(small_corpus, tmp_path):
    # SGD at a tiny learning rate barely moves the weights: every layer's update ratio falls below the band.
    trainer, rec = tiny_trainer(small_corpus, tmp_path / "r", *STEPS, "optimizer=sgd", "lr=1e-6", "min_lr=0")
    trainer.run()
    found = {(c, layer) for c, layer in codes(rec)}
    assert found and {c for c, _ in found} == {"update_ratio"}
    assert "barely moves" in rec.of(ev.Alert)[0].message


def overfit_monitor():
    alerts = []
    model = torch.nn.Module()
    model.cfg = type("Cfg", (), {"act": "gelu"})()
    return HealthMonitor(model, None, HealthConfig(overfit_evals=3), alerts.append), alerts


def test_overfitting_needs_val_rising_while_train_falls():
    monitor, alerts = overfit_monitor()
    for step, (val, train) in enumerate([(3.0, 3.5), (2.8, 3.0), (2.9, 2.7), (3.0, 2.5), (3.1, 2.3)]):
        monitor.on_eval(step, val, train)
    assert [a.code for a in alerts] == ["overfitting"]
    assert "rose 3 evaluations" in alerts[0].message

    monitor, alerts = overfit_monitor()
    for step, (val, train) in enumerate([(2.8, 3.0), (2.9, 3.1), (3.0, 3.2), (3.1, 3.3)]):
        monitor.on_eval(step, val, train)
    assert alerts == []  # both rising: a learning-rate problem, not overfitting


def test_loss_spike_and_relative_explosion():
    monitor, alerts = overfit_monitor()
    monitor.cfg = HealthConfig()
    for step in range(1, 30):
        monitor.check_step(step, 3.0, 1.0)
    monitor.check_step(30, 3.1, 50.0)
    monitor.check_step(31, 9.0, 1.0)
    assert [(a.code, a.step) for a in alerts] == [("exploding", 30), ("loss_spike", 31)]


def test_health_command_summarises_a_run(small_corpus, tmp_path):
    from tuilm.train.metrics_file import MetricsFile

    run = tmp_path / "r"
    trainer, _ = tiny_trainer(small_corpus, run, *STEPS)
    with torch.no_grad():
        for p in trainer.model.blocks[1].attn.parameters():
            p.zero_()
            p.requires_grad_(False)
    metrics = MetricsFile(run / "metrics.jsonl")
    trainer.bus.subscribe(metrics)
    trainer.run()
    metrics.close()
    env = {**os.environ, "COLUMNS": "160"}
    out = run_tuilm("health", str(run), env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    for fragment in ("block0.attn", "block1.attn", "median grad norm", "attention entropy", "vanishing", "▁"):
        assert fragment in out.stdout
    missing = run_tuilm("health", str(tmp_path / "nope"))
    assert missing.returncode == 2 and "no metrics.jsonl" in missing.stderr


@pytest.mark.slow
def test_default_cpu_recipe_training_is_healthy(shakespeare_path, tmp_path):
    from tuilm.run_setup import build_trainer, resolve_config

    config = resolve_config("tiny_shakespeare_cpu")
    from tuilm.config import apply_overrides

    config = apply_overrides(config, [f"max_steps={config.train.warmup_steps + 2 * config.health.interval}"])
    trainer = build_trainer(config, tmp_path / "cpu")
    alerts = []
    trainer.bus.subscribe(lambda e: alerts.append(e) if isinstance(e, ev.Alert) else None)
    trainer.run()
    assert trainer.result.status == "completed"
    assert alerts == []


def test_a_diverged_run_still_finishes_and_saves(small_corpus, tmp_path):
    # Samples and the final evaluation must not trip over NaN weights: the run ends as diverged, with its files.
    trainer, rec = tiny_trainer(small_corpus, tmp_path / "r", "lr=1e30", "health.nonfinite=stop", "max_steps=10")
    trainer.run()
    assert trainer.error is None and trainer.result.status == "diverged"
    assert (tmp_path / "r" / "last.safetensors").is_file()
    assert rec.of(ev.Failed) == []
