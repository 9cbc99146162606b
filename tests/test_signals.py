"""The signals the instability literature says to watch: each planted fault raises its alert, with a remedy and
the panel that shows it; healthy training raises none of them (tests/test_health.py's healthy run)."""

from __future__ import annotations

import math
import os

import pytest
import torch
from torch import nn

from tests.helpers import run_tuilm, tiny_trainer
from tests.test_monitor import VOCAB, TinyLM, batch
from tuilm.monitor import Monitor
from tuilm.train import events as ev
from tuilm.train.metrics_file import read_events
from tuilm.train.remedies import REMEDIES

STEPS = ("max_steps=20", "health.interval=5", "eval_interval=100", "sample_tokens=0")


def loop(run, model, optimizer, steps=10, scale=1.0, **options):
    g = torch.Generator().manual_seed(0)
    with Monitor(model, optimizer, run, {"interval": 5}, **options) as mon:
        for _ in range(steps):
            x, y = batch(g)
            loss = nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
            (loss * scale).backward()
            optimizer.step()
            mon.step(loss, tokens=y.numel())
            optimizer.zero_grad()
    return read_events(run / "metrics.jsonl")


def alerts(events, code=None):
    return [e for e in events if isinstance(e, ev.Alert) and (code is None or e.code == code)]


def test_first_loss_far_from_ln_vocab_is_an_init_alert(tmp_path):
    torch.manual_seed(0)
    model = TinyLM()
    healthy = loop(tmp_path / "ok", model, torch.optim.AdamW(model.parameters(), lr=1e-3), vocab_size=VOCAB)
    assert not alerts(healthy, "init_loss")
    first = next(e for e in healthy if isinstance(e, ev.Step))
    assert abs(first.loss - math.log(VOCAB)) < 0.5 * math.log(VOCAB)

    broken = TinyLM()
    with torch.no_grad():
        broken.out.bias[0] = 60.0  # a planted bad init: one token certain before any training
    events = loop(tmp_path / "bad", broken, torch.optim.AdamW(broken.parameters(), lr=1e-3), vocab_size=VOCAB)
    (alert,) = alerts(events, "init_loss")
    assert alert.step == 1 and "ln(vocab 64)" in alert.message
    assert alert.remedy == REMEDIES["init_loss"][0] and alert.panel == "1 train › loss"

    out = run_tuilm("health", str(tmp_path / "bad"), env={**os.environ, "COLUMNS": "250"}, timeout=60)
    assert out.returncode == 0 and "init_loss" in out.stdout and "check the output init" in out.stdout


def test_gradient_rms_near_the_optimizers_eps_is_an_alert(tmp_path):
    torch.manual_seed(0)
    model = TinyLM(layers=2)
    # A loss scaled down until its gradients sit at Adam's eps: the update no longer follows the gradient.
    events = loop(tmp_path / "eps", model, torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-8), scale=1e-6)
    found = alerts(events, "grad_eps")
    assert found and "of the optimizer's eps 1e-08" in found[0].message
    health = next(e for e in events if isinstance(e, ev.Health))
    assert len(health.grad_rms) == len(health.layers) and all(r < 1e-7 for r in health.grad_rms)
    model = TinyLM(layers=2)
    assert not alerts(loop(tmp_path / "ok", model, torch.optim.Adam(model.parameters(), lr=1e-3)), "grad_eps")


def test_attention_logit_growth_entropy_collapse_and_log_z_drift_fire_on_planted_faults(small_corpus, tmp_path):
    trainer, rec = tiny_trainer(small_corpus, tmp_path / "r", *STEPS, "grad_clip=1.0", "lr=1e-4")

    def plant(event):
        if isinstance(event, ev.Step) and event.step == 12:
            with torch.no_grad():
                trainer.model.blocks[1].attn.qkv.weight.mul_(100.0)  # queries and keys x100: logits x10^4
                trainer.model.norm_f.weight.mul_(200.0)  # output logits x200: log Z far from where it was

    trainer.bus.subscribe(plant)
    trainer.run()
    health = rec.of(ev.Health)
    assert len(health[0].attn_max_logit) == 2 and health[0].log_z is not None
    assert all(0 < m < 100 for m in health[0].attn_max_logit)
    found = {(a.code, a.layer, a.step) for a in rec.of(ev.Alert)}
    assert ("attn_logit", "block1.attn", 15) in found
    assert ("entropy_collapse", "block1.attn", 15) in found
    assert ("logz_drift", None, 15) in found
    assert not [a for a in rec.of(ev.Alert) if a.step < 12]  # silent before the plant
    assert all(a.remedy and a.panel for a in rec.of(ev.Alert))


# -- the options the literature pairs with these signals ---------------------------------------------------------


def test_qk_norm_bounds_attention_logits_and_keeps_checkpoints_loadable(tmp_path):
    from tuilm.config import ModelConfig
    from tuilm.errors import ConfigError
    from tuilm.model import GPT

    torch.manual_seed(0)
    idx = torch.randint(0, 50, (2, 16))
    stats = {}
    for qk in (False, True):
        model = GPT(ModelConfig(vocab_size=50, seq_len=16, d_model=32, n_layers=2, n_heads=2, qk_norm=qk))
        with torch.no_grad():
            for block in model.blocks:
                block.attn.qkv.weight.mul_(50.0)  # queries and keys blown up, as a high learning rate does
        stats[qk] = model.attention_stats(idx)
        names = [n for n, _ in model.named_parameters()]
        assert ("blocks.0.attn.q_norm.weight" in names) == qk
    # Unnormalised, the logits grow with the weights squared; normalised, |q.k|/sqrt(d) <= sqrt(head_dim) = 4.
    assert stats[False]["max_logit"].min() > 50
    assert stats[True]["max_logit"].max() <= 4.0 + 1e-3
    assert stats[True]["entropy"].min() > stats[False]["entropy"].max()
    with pytest.raises(ConfigError, match="qk_norm must be true or false"):
        ModelConfig(qk_norm="yes")


def test_z_loss_adds_the_squared_log_z_and_pulls_it_towards_zero(small_corpus, tmp_path):
    from tuilm.train.losses import z_loss_sum

    logits = torch.tensor([[[0.0, 0.0], [3.0, 1.0]]])
    targets = torch.tensor([[0, -100]])
    assert z_loss_sum(logits, targets, 1e-4).item() == pytest.approx(1e-4 * math.log(2) ** 2)

    log_z = {}
    for coef in ("0", "0.1"):
        trainer, rec = tiny_trainer(small_corpus, tmp_path / coef, *STEPS, f"z_loss={coef}", "lr=3e-3")
        trainer.run()
        log_z[coef] = abs(rec.of(ev.Health)[-1].log_z)
        assert all(math.isfinite(s.loss) for s in rec.of(ev.Step))
    assert log_z["0.1"] < log_z["0"]


def test_bad_z_loss_is_one_line_exit_2(small_corpus, tmp_path):
    out = run_tuilm("train", str(small_corpus), "--set", "z_loss=-1", "--headless", "--out", str(tmp_path / "r"))
    assert out.returncode == 2 and "train.z_loss must be a finite number >= 0.0, got -1" in out.stderr
