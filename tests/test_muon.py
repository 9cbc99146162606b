"""train.optimizer = "muon": the blocks' matrices step exactly as torch's Muon, the rest as AdamW; resume is exact."""

import copy
import math

import pytest
import torch

from tests.helpers import tiny_config, tiny_trainer
from tuilm.model import GPT, ModelConfig
from tuilm.train import events as ev
from tuilm.train.optim import build_optimizer, muon_params, set_lr


def _model_with_grads(seed=0):
    torch.manual_seed(seed)
    model = GPT(ModelConfig(vocab_size=50, seq_len=8, d_model=16, n_layers=2, n_heads=2))
    idx = torch.randint(0, 50, (3, 8))
    logits = model(idx)
    torch.nn.functional.cross_entropy(logits.flatten(0, 1), idx.roll(-1, 1).flatten()).backward()
    return model


def test_a_muon_step_is_torchs_muon_on_matrices_and_adamw_on_the_rest(small_corpus):
    cfg = tiny_config(small_corpus, "optimizer=muon", "lr=3e-3", "muon_lr=0.05", "weight_decay=0.1").train
    ours = _model_with_grads()
    reference = copy.deepcopy(ours)
    for p, q in zip(ours.parameters(), reference.parameters(), strict=True):
        q.grad = p.grad.clone()

    optimizer = build_optimizer(ours, cfg, torch.device("cpu"))
    set_lr(optimizer, cfg.lr, cfg.lr)  # what the trainer's schedule does at the peak
    optimizer.step()

    matrices, rest = muon_params(reference)
    assert matrices and all(p.dim() == 2 for p in matrices)
    names = {id(p): n for n, p in reference.named_parameters()}
    assert all(names[id(p)].startswith("blocks.") for p in matrices)
    assert any(names[id(p)] == "tok_emb.weight" for p in rest)
    torch.optim.Muon(matrices, lr=0.05, weight_decay=0.1, momentum=cfg.muon_momentum).step()
    torch.optim.AdamW(
        [
            {"params": [p for p in rest if p.dim() >= 2], "weight_decay": 0.1},
            {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0},
        ],
        lr=3e-3,
        betas=(cfg.beta1, cfg.beta2),
    ).step()

    changed = 0
    for (name, p), q in zip(ours.named_parameters(), reference.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-6, rtol=0), name
        changed += not torch.equal(p, _model_with_grads().get_parameter(name))
    assert changed == len(list(ours.parameters()))  # every parameter moved, matrices by Muon's rule


def test_muon_state_round_trips_through_a_state_dict(small_corpus):
    model = _model_with_grads()
    cfg = tiny_config(small_corpus, "optimizer=muon").train
    optimizer = build_optimizer(model, cfg, torch.device("cpu"))
    optimizer.step()
    state = optimizer.state_dict()
    fresh = build_optimizer(model, cfg, torch.device("cpu"))
    fresh.load_state_dict(state)
    # After loading, the inner optimizers must see the loaded state, not the empty one they were built with.
    for inner in fresh._inner:
        for group in inner.param_groups:
            for p in group["params"]:
                assert inner.state[p] is fresh.state[p] and fresh.state[p]
    assert {k for p in fresh.state for k in fresh.state[p]} >= {"momentum_buffer", "exp_avg", "exp_avg_sq"}


def test_resume_with_muon_is_exact(small_corpus, tmp_path):
    common = ("optimizer=muon", "max_steps=10", "eval_interval=5", "checkpoint_interval=1000")
    straight, rec = tiny_trainer(small_corpus, tmp_path / "straight", *common)
    straight.run()
    reference = [s.loss for s in rec.of(ev.Step)]

    first, rec1 = tiny_trainer(small_corpus, tmp_path / "split", *common)
    first.bus.subscribe(lambda e: first.stop() if isinstance(e, ev.Step) and e.step == 4 else None)
    first.run()
    second, rec2 = tiny_trainer(small_corpus, tmp_path / "split", *common, resume=True)
    second.run()
    resumed = [s.loss for s in rec1.of(ev.Step)] + [s.loss for s in rec2.of(ev.Step)]
    assert len(reference) == 10 and resumed == pytest.approx(reference, abs=1e-6, rel=0)


def test_health_reports_muons_momentum(small_corpus, tmp_path):
    trainer, rec = tiny_trainer(small_corpus, tmp_path / "run", "optimizer=muon", "max_steps=4")
    trainer.run()
    health = rec.of(ev.Health)[-1]
    blocks = [i for i, g in enumerate(health.layers) if ".attn" in g or ".mlp" in g]
    assert blocks and all(health.adam_m_norm[i] > 0 for i in blocks)
    assert len(health.update_ratio) == len(health.layers)  # every group's update ratio is measured
    assert not any(math.isnan(r) for r in health.update_ratio)


def test_a_resume_that_changes_lr_keeps_muons_peak_at_muon_lr(small_corpus, tmp_path):
    """Issue 27, item 4: each group's peak is the config's (initial_lr), not a ratio saved with the old lr."""
    common = ("optimizer=muon", "muon_lr=0.02", "max_steps=3", "warmup_steps=0", "schedule=constant")
    first, _ = tiny_trainer(small_corpus, tmp_path / "run", *common, "lr=0.01")
    first.run()
    assert first.error is None, first.error
    first.run_lock.release()
    second, _ = tiny_trainer(small_corpus, tmp_path / "run", *common, "lr=0.001", "max_steps=5", resume=True)
    peaks = {group["muon"]: group["initial_lr"] for group in second.optimizer.param_groups}
    assert peaks == {True: 0.02, False: 0.001}
    second.run()
    assert second.error is None, second.error
    lrs = {group["muon"]: group["lr"] for group in second.optimizer.param_groups}
    assert lrs == {True: pytest.approx(0.02), False: pytest.approx(0.001)}
