"""Small rules tested on their own: the learning-rate schedule, top-k/top-p filtering, weight-decay groups,
overrides and the TOML round trip, non-finite numbers through event JSON, the training state and alert
highlights (the per-layer judging rule: tests/test_verdict.py)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tests.events_factory import make_step
from tuilm.config import TrainConfig, apply_overrides, from_dict, parse_override
from tuilm.errors import ConfigError
from tuilm.sampling import SamplingSettings, next_token
from tuilm.train import events as ev
from tuilm.train.optim import build_optimizer
from tuilm.train.schedule import lr_at
from tuilm.train.state import TrainState
from tuilm.tui.alerts import ALERT_STEPS, AlertHighlights

# -- lr_at -----------------------------------------------------------------------------------------------------


def test_lr_warms_up_linearly_then_follows_the_schedule():
    cfg = TrainConfig(lr=1.0, min_lr=0.1, warmup_steps=4, schedule="cosine")
    assert [lr_at(s, 0.0, cfg) for s in range(4)] == [0.2, 0.4, 0.6, 0.8]
    assert lr_at(4, 0.0, cfg) == 1.0  # the top, at the start of the decay
    assert lr_at(10, 0.5, cfg) == pytest.approx(0.1 + 0.5 * 0.9)  # halfway down a cosine
    assert lr_at(10, 1.0, cfg) == pytest.approx(0.1)
    assert lr_at(10, 2.0, cfg) == pytest.approx(0.1)  # past the end it stays at min_lr


def test_lr_linear_constant_and_without_a_stopping_criterion():
    linear = TrainConfig(lr=1.0, min_lr=0.0, warmup_steps=0, schedule="linear")
    assert lr_at(5, 0.25, linear) == pytest.approx(0.75)
    constant = TrainConfig(lr=0.3, warmup_steps=0, schedule="constant")
    assert lr_at(5, 0.9, constant) == 0.3
    cosine = TrainConfig(lr=0.3, warmup_steps=0, schedule="cosine")
    assert lr_at(5, math.nan, cosine) == 0.3  # no criterion: nothing to decay towards


# -- top-k / top-p -------------------------------------------------------------------------------------------------


def sampled(logits: list[float], n: int = 400, **settings) -> set[int]:
    generator = torch.Generator().manual_seed(0)
    s = SamplingSettings(temperature=1.0, **settings)
    batch = torch.tensor([logits] * n)
    return set(next_token(batch, s, generator).tolist())


def test_top_k_keeps_only_the_k_most_likely():
    assert sampled([0.0, 3.0, 1.0, 2.0], top_k=2, top_p=1.0) == {1, 3}
    assert sampled([0.0, 3.0, 1.0, 2.0], top_k=1, top_p=1.0) == {1}


def test_top_p_keeps_the_smallest_set_holding_p_including_the_token_that_crosses_it():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log().tolist()
    assert sampled(logits, top_p=0.5) == {0}  # 0.5 alone reaches p
    assert sampled(logits, top_p=0.6) == {0, 1}  # 0.5 is short of 0.6: the token that crosses it is kept
    assert sampled(logits, top_p=0.9) == {0, 1, 2}
    assert sampled(logits, top_p=1.0) == {0, 1, 2, 3}


def test_temperature_zero_is_greedy():
    logits = torch.tensor([[0.0, 5.0, 1.0]])
    assert next_token(logits, SamplingSettings(temperature=0.0), None).tolist() == [1]


# -- weight decay groups ---------------------------------------------------------------------------------------------


def test_weight_decay_applies_to_matrices_only():
    model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    cfg = TrainConfig(optimizer="adamw", weight_decay=0.1)
    optimizer = build_optimizer(model, cfg, torch.device("cpu"))
    decayed, plain = optimizer.param_groups
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert {p.dim() for p in decayed["params"]} == {2} and {p.dim() for p in plain["params"]} == {1}
    assert len(decayed["params"]) + len(plain["params"]) == len(list(model.parameters()))


# -- overrides and TOML ------------------------------------------------------------------------------------------------


def test_override_strings_and_typed_pairs_parse_alike():
    assert parse_override("lr=3e-4") == ("train.lr", 3e-4)
    assert parse_override(("lr", 3e-4)) == ("train.lr", 3e-4)
    assert parse_override('device="cuda:1"') == ("train.device", "cuda:1")
    assert parse_override(("train.device", "cuda:1")) == ("train.device", "cuda:1")
    assert parse_override("compile=true") == ("train.compile", True)
    assert parse_override(("model.d_ff", "auto")) == ("model.d_ff", None)
    assert parse_override("max_steps=1_000") == ("train.max_steps", 1000)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("lr", "must look like key=value"),
        ("lrr=1", "did you mean 'train.lr'"),
        (("max_steps", "many"), "train.max_steps must be int"),
        ("seq_len=ten", "model.seq_len must be int"),
    ],
)
def test_bad_overrides_are_one_clear_error(override, message):
    with pytest.raises(ConfigError, match=message):
        parse_override(override)


def test_a_config_survives_the_toml_round_trip():
    import tomllib

    config = apply_overrides(
        from_dict({"data": {"source": "notes.txt"}}, "r"),
        ["lr=3e-4", "model.d_ff=512", ("train.time", "90s"), "data.doc_mask=true", 'sample_prompt="\\n\\"x\\""'],
    )
    again = from_dict(tomllib.loads(config.to_toml()), "r")
    assert again == config


# -- events ---------------------------------------------------------------------------------------------------------


def test_non_finite_numbers_survive_event_json():
    step = make_step(
        step=3, tokens=30, loss=math.nan, tokens_per_s=math.inf, grad_norm=-math.inf, elapsed=0.3, progress=math.nan
    )
    health = ev.Health(5, ["a"], [math.nan], [1.0], [math.inf], blocks=["b0"], act_std=[math.nan], act_max=[-math.inf])
    for event in (step, health):
        line = json.dumps(event.to_dict(), allow_nan=False)  # strict JSON: no bare NaN or Infinity
        back = ev.from_dict(json.loads(line))
        assert type(back) is type(event)
        assert repr(back) == repr(event)  # nan == nan is False; their reprs compare


# -- training state -----------------------------------------------------------------------------------------------


def test_train_state_round_trips_through_json_with_infinite_bests():
    state = TrainState(step=7, tokens=700, epoch=1, batch_in_epoch=2, elapsed=1.5, train_losses=[2.0, 1.0])
    data = json.loads(json.dumps(state.to_dict(), allow_nan=False))
    assert data["best_val_loss"] is None  # inf until the first evaluation
    assert TrainState.from_dict(data) == state


def test_train_state_counts_evaluations_towards_patience():
    state = TrainState(train_losses=[3.0, 1.0])
    assert state.take_train_loss() == 2.0 and math.isnan(state.take_train_loss())
    assert state.record_eval(2.0, 1.0) and state.evals_since_best == 0
    assert not state.record_eval(2.5, 1.2) and state.evals_since_best == 1
    assert state.best_val_loss == 2.0 and state.best_val_bpc == 1.0


# -- alert highlights ---------------------------------------------------------------------------------------------


def alert(step, code, severity="bad", layer=None):
    return ev.Alert(step, code, severity, "message", layer)


def test_an_alert_highlights_its_panels_and_page_for_a_while():
    rule = AlertHighlights()
    rule.add(alert(10, "loss_spike", "warn"))
    rule.add(alert(12, "vanishing", "bad", layer="block1.mlp"))
    now = rule.at(20)
    assert now.panels == {"loss": "warn", "layers": "bad", "heatmap": "bad"}
    assert now.pages == {"train": "warn", "health": "bad"}
    assert now.layers == frozenset({"block1.mlp"})
    later = rule.at(12 + ALERT_STEPS)
    assert later.panels == {} and later.pages == {} and later.layers == frozenset()


def test_a_bad_alert_outranks_a_warning_on_the_same_page():
    rule = AlertHighlights()
    rule.add(alert(1, "vanishing", "bad"))  # layers and heatmap, health page
    rule.add(alert(2, "dead_units", "warn"))  # acts, health page
    assert rule.at(3).pages == {"health": "bad"}
    rule.add(alert(3, "exploding", "bad"))  # the gradient norm sits on the first page
    assert rule.at(4).pages == {"health": "bad", "train": "bad"}
