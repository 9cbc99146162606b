"""The transformer: cache/no-cache agreement for every variant, masking semantics, configs, parameter counts."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from tuilm.errors import ConfigError
from tuilm.model import GPT, KVCache, ModelConfig
from tuilm.model.config import ACT_CHOICES, NORM_CHOICES, POS_CHOICES
from tuilm.model.gpt import alibi_slopes

V, T = 50, 12


def tiny(**kw) -> GPT:
    torch.manual_seed(0)
    settings = dict(vocab_size=V, seq_len=16, d_model=32, n_layers=2, n_heads=4) | kw
    return GPT(ModelConfig(**settings)).eval()


def tokens(b: int = 2, t: int = T, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, V, (b, t), generator=torch.Generator().manual_seed(seed))


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


# --- KV cache ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("pos", "act", "norm"), list(itertools.product(POS_CHOICES, ACT_CHOICES, NORM_CHOICES)))
def test_cached_decoding_matches_full_forward(pos, act, norm):
    model = tiny(pos=pos, act=act, norm=norm, bias=True)
    x = tokens()
    with torch.no_grad():
        full = model(x)
        cache = model.new_cache(2)
        steps = [model(x[:, :5], cache=cache)] + [model(x[:, i : i + 1], cache=cache) for i in range(5, T)]
        assert cache.length == T
        assert max_diff(torch.cat(steps, 1), full) < 1e-5

        cache.reset()  # prefill, then a multi-token chunk at an offset, then single tokens
        chunks = [model(x[:, :4], cache=cache), model(x[:, 4:9], cache=cache)]
        chunks += [model(x[:, i : i + 1], cache=cache) for i in range(9, T)]
        assert max_diff(torch.cat(chunks, 1), full) < 1e-5


def test_cache_overflow_raises():
    model = tiny(pos="rope")
    x = tokens()
    with torch.no_grad():
        cache = model.new_cache(2, max_len=T)
        model(x, cache=cache)
        with pytest.raises(ValueError, match="overflow"):
            model(x[:, :1], cache=cache)
        with pytest.raises(ValueError, match="seq_len"):
            model(tokens(t=17))
        with pytest.raises(ValueError):
            model.new_cache(2, max_len=17)
    assert isinstance(cache, KVCache) and cache.k[0].shape == (2, 4, T, 8)


@pytest.mark.parametrize("pos", POS_CHOICES)
def test_left_padded_batch_generation_through_cache(pos):
    """A left-padded prefill (mask + positions from the first real token) then mask-free decoding steps."""
    model = tiny(pos=pos)
    x, pad = tokens(1), 3
    padded = torch.cat([torch.zeros(1, pad, dtype=torch.long), x[:, :6]], 1)
    keep = torch.arange(pad + 6)[None] >= pad
    pos_ids = (torch.arange(pad + 6) - pad).clamp(min=0)[None]
    with torch.no_grad():
        full = model(x)
        cache = model.new_cache(1)
        first = model(padded, pos_ids=pos_ids, key_padding_mask=keep, cache=cache)[:, pad:]
        rest = [model(x[:, i : i + 1], cache=cache) for i in range(6, T)]  # positions continue from the cache
    assert max_diff(torch.cat([first, *rest], 1), full) < 1e-5


# --- masking ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pos", POS_CHOICES)
def test_causality(pos):
    model = tiny(pos=pos)
    x = tokens()
    y = x.clone()
    y[:, 7] = (y[:, 7] + 1) % V
    with torch.no_grad():
        a, b = model(x), model(y)
    assert max_diff(a[:, :7], b[:, :7]) == 0
    assert max_diff(a[:, 7:], b[:, 7:]) > 0


@pytest.mark.parametrize("pos", POS_CHOICES)
def test_right_padding_needs_no_mask(pos):
    model = tiny(pos=pos)
    x = tokens()
    keep = torch.ones_like(x, dtype=torch.bool)
    keep[1, 8:] = False
    x[1, 8:] = 0
    with torch.no_grad():
        masked, plain = model(x, key_padding_mask=keep), model(x)
    assert torch.isfinite(masked).all()
    assert max_diff(masked[keep], plain[keep]) < 1e-5


@pytest.mark.parametrize("pos", POS_CHOICES)
def test_left_padding_with_relative_positions(pos):
    """Spec'd for rope and alibi; learned/sinusoidal agree too because positions count from the first real token."""
    model = tiny(pos=pos)
    x, pad = tokens(1, 9), 3
    padded = torch.cat([torch.full((1, pad), 7), x], 1)
    keep = torch.arange(pad + 9)[None] >= pad
    pos_ids = (torch.arange(pad + 9) - pad).clamp(min=0)[None]
    with torch.no_grad():
        out = model(padded, pos_ids=pos_ids, key_padding_mask=keep)
        ref = model(x)
    assert torch.isfinite(out).all()  # padding queries see at least themselves
    assert max_diff(out[:, pad:], ref) < 1e-5


@pytest.mark.parametrize("pos", POS_CHOICES)
def test_packed_documents_are_isolated(pos):
    model = tiny(pos=pos)
    a, b = tokens(1, 5, seed=2), tokens(1, 7, seed=3)
    row = torch.cat([a, b], 1)
    doc_ids = torch.tensor([[0] * 5 + [1] * 7])
    pos_ids = torch.cat([torch.arange(5), torch.arange(7)])[None]
    with torch.no_grad():
        packed = model(row, pos_ids=pos_ids, doc_ids=doc_ids)
        assert max_diff(packed[:, 5:], model(b)) < 1e-5
        assert max_diff(packed[:, :5], model(a)) < 1e-5


def test_fast_path_uses_is_causal_without_mask(monkeypatch):
    calls = []
    sdpa = F.scaled_dot_product_attention

    def spy(q, k, v, **kw):
        calls.append(kw)
        return sdpa(q, k, v, **kw)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    model, x = tiny(), tokens()
    with torch.no_grad():
        model(x)
        assert all(c["is_causal"] and c["attn_mask"] is None for c in calls)
        calls.clear()
        model(x, key_padding_mask=torch.ones_like(x, dtype=torch.bool))
        assert all(not c["is_causal"] and c["attn_mask"].shape == (2, 1, T, T) for c in calls)
        calls.clear()
        tiny(pos="alibi")(x)
        assert all(c["attn_mask"].shape == (1, 4, T, T) for c in calls)


def test_alibi_slopes():
    assert alibi_slopes(8).tolist() == [2.0**-i for i in range(1, 9)]
    # Non-power of 2 (reference code): the 4-head slopes, then every other slope of the 8-head set.
    assert alibi_slopes(6).tolist() == [2.0**-2, 2.0**-4, 2.0**-6, 2.0**-8, 2.0**-1, 2.0**-3]


# --- config -----------------------------------------------------------------------------------------------------


def test_impossible_configs():
    with pytest.raises(ConfigError, match="divisible") as e:
        ModelConfig(d_model=128, n_heads=6)
    assert "1, 2, 4, 8, 16, 32, 64, 128" in str(e.value)
    with pytest.raises(ConfigError, match="learned, sinusoidal, rope, alibi"):
        ModelConfig(pos="xpos")
    with pytest.raises(ConfigError, match="even"):
        ModelConfig(d_model=24, n_heads=8, pos="rope")
    for bad in (dict(vocab_size=1), dict(seq_len=0), dict(n_layers=0), dict(dropout=1.0), dict(act="tanh")):
        with pytest.raises(ConfigError):
            ModelConfig(**bad)


def test_dict_round_trip_and_typo():
    cfg = ModelConfig(pos="alibi", act="swiglu", d_ff=256)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="unknown model setting 'n_layer'; did you mean 'n_layers'\\?"):
        ModelConfig.from_dict({"n_layer": 4})


def test_ff_hidden_sizes():
    assert ModelConfig(d_model=128).ff_hidden == 512
    assert ModelConfig(d_model=128, act="swiglu").ff_hidden == 344
    assert ModelConfig(d_model=128, d_ff=300).ff_hidden == 300
    model = tiny(act="swiglu")
    assert model.blocks[0].mlp.fc.out_features == model.blocks[0].mlp.gate.out_features == 88


# --- parameters -------------------------------------------------------------------------------------------------


def test_tying_and_param_counts():
    d, h, blocks = 32, 128, 2
    per_block = 2 * d + d * 3 * d + d * d + d * h + h * d  # two bias-free norms, qkv, proj, fc, proj
    body = blocks * per_block + d  # + final norm
    tied, untied = tiny(), tiny(tie_embeddings=False)
    assert tied.head.weight is tied.tok_emb.weight
    assert untied.head.weight is not untied.tok_emb.weight
    assert tied.num_params() == body + V * d + 16 * d
    assert tied.num_params(embeddings=False) == body
    assert untied.num_params() == body + 2 * V * d + 16 * d
    assert untied.num_params(embeddings=False) == body

    h = 88  # swiglu, rmsnorm, biases, rope: no position parameters, rmsnorm has no bias
    per_block = 2 * d + (3 * d * d + 3 * d) + (d * d + d) + 2 * (d * h + h) + (h * d + d)
    model = tiny(act="swiglu", norm="rmsnorm", bias=True, pos="rope")
    assert model.num_params() == blocks * per_block + d + V * d
    assert model.num_params(embeddings=False) == blocks * per_block + d


def test_fixed_tables_stay_out_of_checkpoints():
    for pos in ("sinusoidal", "rope", "alibi"):
        keys = tiny(pos=pos).state_dict().keys()
        assert not any(k.startswith(("pos_table", "rope_", "alibi_")) for k in keys)


def test_sinusoidal_positions_do_not_drown_the_tokens():
    """At initialisation the token signal and the fixed table are of one order (Vaswani et al.'s sqrt(d) scale)."""
    model = tiny(pos="sinusoidal", d_model=128, n_heads=4, seq_len=64)
    x = tokens(t=64)
    embedded = model.drop(model.tok_emb(x))  # what the blocks would see without positions
    inputs = {}
    model.blocks[0].register_forward_pre_hook(lambda module, args: inputs.update(x=args[0]))
    model(x)
    positions = inputs["x"] - embedded * 128**0.5
    assert torch.allclose(positions[0], model.pos_table[:64], atol=1e-5)  # the table, added once, unscaled
    ratio = (embedded * 128**0.5).norm(dim=-1).mean() / positions.norm(dim=-1).mean()
    assert 0.2 < ratio < 5


@pytest.mark.parametrize("pos", POS_CHOICES)
def test_gradient_reaches_every_parameter(pos):
    model = tiny(pos=pos, act="swiglu", bias=True, dropout=0.1, tie_embeddings=False).train()
    x = tokens()
    F.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing


# --- activations and monitoring hooks ---------------------------------------------------------------------------


@pytest.mark.parametrize("act", ACT_CHOICES)
def test_act_module_outputs_hidden_activation(act):
    model = tiny(act=act)
    mlp, seen = model.blocks[1].mlp, {}
    mlp.act.register_forward_hook(lambda m, args, out: seen.update(args=args, out=out))
    model.blocks[1].register_forward_hook(lambda m, args, out: seen.update(block=out))
    with torch.no_grad():
        model(tokens())
    h = seen["args"][0]
    expected = {
        "gelu": F.gelu(h),
        "gelu_tanh": F.gelu(h, approximate="tanh"),  # GPT-2's (issue 15)
        "relu": F.relu(h),
        "relu2": F.relu(h) ** 2,
        "swiglu": F.silu(seen["args"][-1]) * h,
    }[act]
    assert seen["out"].shape == (2, T, mlp.proj.in_features)
    assert torch.equal(seen["out"], expected)
    assert seen["block"].shape == (2, T, 32)


@pytest.mark.parametrize("pos", POS_CHOICES)
def test_attention_entropy(pos):
    model = tiny(pos=pos).train()
    ent = model.attention_entropy(tokens())
    assert model.training  # mode restored
    assert ent.shape == (2,)
    assert torch.isfinite(ent).all()
    assert (ent >= 0).all() and (ent <= math.log(T)).all()
    # At init attention is near uniform over the causal prefix: mean over queries of ln(i + 1).
    uniform = sum(math.log(i + 1) for i in range(T)) / T
    assert ent.max().item() <= uniform + 1e-4
    assert ent.min().item() > 0.9 * uniform


def test_last_only_matches_the_last_position_of_the_full_logits():
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=50, seq_len=16, d_model=32, n_layers=2, n_heads=2)).eval()
    idx = torch.randint(0, 50, (2, 10))
    full = model(idx)
    last = model(idx, last_only=True)
    assert last.shape == (2, 1, 50)
    assert torch.allclose(full[:, -1:], last, atol=1e-6)
