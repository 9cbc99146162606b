"""`tuilm export` (issue 24): each architecture mapping computes what tuilm computes, the proof refuses a wrong
export and leaves nothing behind, unexportable features are refused in one line, and directories come back in."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from tests import helpers  # noqa: E402
from tests.conftest import write_corpus  # noqa: E402
from tuilm.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from tuilm.checkpoint.model import open_model  # noqa: E402
from tuilm.commands.export import ProofFailed, export_command  # noqa: E402
from tuilm.export import arch  # noqa: E402
from tuilm.model import GPT  # noqa: E402
from tuilm.model.config import ModelConfig  # noqa: E402
from tuilm.sampling import generate  # noqa: E402
from tuilm.sampling_settings import SamplingSettings  # noqa: E402

SHAPES = {
    "gpt2-gelu": ("gpt2", ["pos=learned", "act=gelu"]),
    "gpt2-gelu_tanh-untied-bias": ("gpt2", ["pos=learned", "act=gelu_tanh", "tie_embeddings=false", "bias=true"]),
    "llama-tied": ("llama", ["pos=rope", "norm=rmsnorm", "act=swiglu"]),
    "llama-untied-bias": ("llama", ["pos=rope", "norm=rmsnorm", "act=swiglu", "tie_embeddings=false", "bias=true"]),
    "qwen3": ("qwen3", ["pos=rope", "norm=rmsnorm", "act=swiglu", "qk_norm=true", "tie_embeddings=false"]),
}
GREEDY = SamplingSettings(temperature=0.0, max_new_tokens=10)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """One tiny run per shape, trained a few steps (so no weight is at its initial value)."""
    folder = tmp_path_factory.mktemp("export")
    corpus = write_corpus(folder, "corpus.txt")
    out = {}
    for name, (_, overrides) in SHAPES.items():
        trainer, _ = helpers.tiny_trainer(corpus, folder / name, "max_steps=4", "sample_tokens=0", *overrides)
        trainer.run()
        out[name] = folder / name
    return out


@pytest.fixture(scope="module")
def exported(runs) -> dict[str, tuple[dict, Path]]:
    out = {}
    for name, run in runs.items():
        target = run.parent / f"{name}-hf"
        out[name] = (export_command(run, "hf", target, as_json=True), target)
    return out


@pytest.mark.parametrize("name", SHAPES)
def test_transformers_computes_what_tuilm_computes(name, runs, exported, capsys):
    result, folder = exported[name]
    assert result["architecture"] == SHAPES[name][0]
    proof = result["proof"]
    assert proof["difference"] <= 1e-4 and proof["tuilm_bits_per_char"] > 0
    ckpt = load_checkpoint(runs[name])
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()  # no trust_remote_code
    assert type(hf).__name__ == arch.CLASSES[SHAPES[name][0]]
    ids = torch.randint(2, ckpt.model.cfg.vocab_size, (3, ckpt.model.cfg.seq_len))
    with torch.no_grad():
        torch.testing.assert_close(hf(input_ids=ids).logits, ckpt.model(ids), atol=1e-5, rtol=1e-5)
    card = (folder / "README.md").read_text()
    assert "val bits/char" in card and f"{proof['tuilm_bits_per_char']:.6f}" in card
    assert not [p for p in folder.parent.iterdir() if ".tmp-" in p.name]


def test_tokenizer_and_generate_without_tuilm(runs, exported):
    """AutoTokenizer gives tuilm's context (<|eos|> first), and greedy generate continues as tuilm sample does."""
    _, folder = exported["llama-tied"]
    ckpt = load_checkpoint(runs["llama-tied"])
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    assert tok.eos_token == "<|eos|>" and tok.pad_token_id == ckpt.tokenizer.pad_id
    for prompt in ("SPEAKER 3:", "word1 word7", "héllo, wörld!"):
        context = [ckpt.tokenizer.eos_id, *ckpt.tokenizer.encode(prompt)]
        ids = tok(prompt, return_tensors="pt").input_ids
        assert ids[0].tolist() == context
        assert tok.decode(ids[0], skip_special_tokens=True) == prompt
        ours = list(generate(ckpt.model, context, GREEDY))
        out = hf.generate(ids, max_new_tokens=10, do_sample=False)[0, len(context) :].tolist()  # ends at eos
        assert out == ours[: len(out)] and (len(out) == len(ours) or out[-1] == ckpt.tokenizer.eos_id)


def test_a_wrong_export_fails_its_proof_and_leaves_nothing(runs, tmp_path, monkeypatch):
    """Pairing RoPE dimensions as llama.cpp does (not as transformers does) must be caught: exit 1. The run's
    queries and keys are scaled up first: after 4 steps attention is nearly uniform and no pairing shows."""
    from tuilm.export import gguf, hf

    ckpt = load_checkpoint(runs["llama-tied"])
    with torch.no_grad():
        for block in ckpt.model.blocks:
            block.attn.qkv.weight[: 2 * ckpt.model.cfg.d_model] *= 30
    meta = {k: v for k, v in ckpt.meta.items() if k in ("step", "tokens", "data_fingerprint")}
    sharp = save_checkpoint(tmp_path / "sharp.safetensors", ckpt.model, ckpt.tokenizer, ckpt.run_config, **meta)
    real = hf.hf_tensors

    def wrong(state, cfg, kind):
        tensors = real(state, cfg, kind)
        for name in [n for n in tensors if n.endswith(("q_proj.weight", "k_proj.weight"))]:
            tensors[name] = gguf.interleave_rope(tensors[name], cfg.n_heads)
        return tensors

    export_command(sharp, "hf", tmp_path / "right")  # the model itself exports
    monkeypatch.setattr(hf, "hf_tensors", wrong)
    with pytest.raises(ProofFailed, match="nothing was written") as e:
        export_command(sharp, "hf", tmp_path / "wrong")
    assert e.value.exit_code == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["right", "sharp.safetensors"]
    with pytest.raises(ProofFailed):  # the folders made for a failed export go with it
        export_command(sharp, "hf", tmp_path / "new" / "deeper" / "wrong")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["right", "sharp.safetensors"]
    monkeypatch.setattr(hf, "hf_tensors", real)
    export_command(sharp, "hf", tmp_path / "exported" / "right")  # as docs/export.md writes it: the folder is made
    assert (tmp_path / "exported" / "right" / "config.json").is_file()


@pytest.mark.parametrize(
    ("overrides", "feature", "closest"),
    [
        ({"pos": "alibi"}, "pos=alibi", "pos=rope"),
        ({"pos": "sinusoidal"}, "pos=sinusoidal", "pos=rope"),
        ({"act": "relu2"}, "act=relu2", "act=gelu_tanh"),
        ({"pos": "rope", "norm": "rmsnorm", "act": "relu2"}, "act=relu2", "act=swiglu"),
        ({"pos": "rope", "act": "swiglu"}, "norm=layernorm", "norm=rmsnorm"),
        ({"norm": "rmsnorm"}, "norm=rmsnorm", "norm=layernorm"),
        ({"qk_norm": True}, "qk_norm", "qk_norm=false"),
        ({"pos": "rope", "norm": "rmsnorm", "act": "swiglu", "qk_norm": True, "bias": True}, "bias=true", "bias=false"),
    ],
)
def test_unexportable_features_are_named_with_the_closest_setting(overrides, feature, closest):
    with pytest.raises(arch.Unexportable) as e:
        arch.architecture(ModelConfig(**{"d_model": 32, "n_heads": 2, **overrides}))
    message = str(e.value)
    assert feature in message and closest in message and "\n" not in message
    assert e.value.exit_code == 2


def test_cli_refuses_alibi_in_one_line_and_writes_nothing(runs, tmp_path):
    ckpt = load_checkpoint(runs["llama-tied"])
    cfg = ModelConfig(**{**ckpt.model.cfg.to_dict(), "pos": "alibi"})
    run_config = {**ckpt.run_config, "model": cfg.to_dict()}
    path = save_checkpoint(tmp_path / "alibi.safetensors", GPT(cfg), ckpt.tokenizer, run_config, step=1)
    for to in ("hf", "gguf"):
        r = helpers.run_tuilm("export", str(path), "--to", to, str(tmp_path / f"out-{to}"))
        assert r.returncode == 2, r.stderr
        assert r.stderr.count("\n") == 1 and "pos=alibi" in r.stderr and "pos=rope" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alibi.safetensors"]


def test_cli_export_json_and_existing_target(runs, tmp_path):
    target = tmp_path / "out"
    r = helpers.run_tuilm("export", str(runs["qwen3"]), "--to", "hf", str(target), "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["kind"] == "export" and doc["architecture"] == "qwen3"
    assert abs(doc["proof"]["tuilm_bits_per_char"] - doc["proof"]["transformers_bits_per_char"]) <= 1e-4
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json", "README.md"} <= {
        p.name for p in target.iterdir()
    }
    again = helpers.run_tuilm("export", str(runs["qwen3"]), "--to", "hf", str(target))
    assert again.returncode == 2 and "already exists" in again.stderr and again.stderr.count("\n") == 1


@pytest.mark.parametrize("name", ["gpt2-gelu_tanh-untied-bias", "llama-untied-bias", "qwen3"])
def test_exported_directory_comes_back_as_the_same_model(name, runs, exported):
    ckpt = load_checkpoint(runs[name])
    back = open_model(exported[name][1])
    assert back.model.cfg.pos == ckpt.model.cfg.pos and back.meta["step"] == ckpt.meta["step"]
    ids = torch.randint(2, ckpt.model.cfg.vocab_size, (2, ckpt.model.cfg.seq_len))
    with torch.no_grad():
        torch.testing.assert_close(back.model(ids), ckpt.model(ids), atol=1e-5, rtol=1e-5)


def test_sample_eval_and_train_init_accept_an_exported_directory(runs, exported, tmp_path):
    run, folder = runs["llama-tied"], exported["llama-tied"][1]
    greedy = ("--temperature", "0", "--max-new-tokens", "12", "--prompt", "SPEAKER 1:")
    a = helpers.run_tuilm("sample", "--model-path", str(run), *greedy)
    b = helpers.run_tuilm("sample", "--model-path", str(folder), *greedy)
    assert a.returncode == b.returncode == 0, b.stderr
    assert a.stdout == b.stdout and len(a.stdout) > len("SPEAKER 1:")
    ours = json.loads(helpers.run_tuilm("eval", "-m", str(run), "--json").stdout)
    theirs = json.loads(helpers.run_tuilm("eval", "-m", str(folder), "--json").stdout)
    assert abs(ours["bits_per_char"] - theirs["bits_per_char"]) <= 1e-4
    corpus = write_corpus(tmp_path)
    r = helpers.run_tuilm(
        "train", str(corpus), "--init", str(folder), "--headless", "--steps", "2", "--out", str(tmp_path / "ft"),
        *[x for o in helpers.TINY if not o.startswith(("vocab_size", "d_model", "n_layers", "n_heads")) for x in ("--set", o)],
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    tuned = load_checkpoint(tmp_path / "ft")
    assert tuned.model.cfg.pos == "rope" and tuned.meta["step"] == 2


def test_a_foreign_llama_directory_loads_and_gqa_is_refused(runs, tmp_path):
    """A LlamaForCausalLM saved by transformers itself (random, with its norms perturbed) gives tuilm's logits."""
    tok = load_checkpoint(runs["llama-tied"]).tokenizer
    config = transformers.LlamaConfig(
        vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=32, rms_norm_eps=1e-5, tie_word_embeddings=False,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(tmp_path / "llama")
    (tmp_path / "llama" / "tokenizer.json").write_text(tok.to_json())
    back = open_model(tmp_path / "llama")
    ids = torch.randint(2, tok.vocab_size, (2, 32))
    with torch.no_grad():
        torch.testing.assert_close(back.model(ids), model(input_ids=ids).logits, atol=1e-5, rtol=1e-5)
    r = helpers.run_tuilm("eval", "-m", str(tmp_path / "llama"))
    assert r.returncode == 2 and "--data" in r.stderr
    cfg = json.loads((tmp_path / "llama" / "config.json").read_text())
    (tmp_path / "llama" / "config.json").write_text(json.dumps({**cfg, "num_key_value_heads": 2}))
    r = helpers.run_tuilm("sample", "-m", str(tmp_path / "llama"), "--prompt", "a")
    assert r.returncode == 2 and "num_key_value_heads 2" in r.stderr and r.stderr.count("\n") == 1


# -- GGUF -------------------------------------------------------------------------------------------------------

gguf = pytest.importorskip("gguf")
PROMPTS = ["SPEAKER 3:", "word1 word7", "SPEAKER", "hé!", "\n"]  # a 16-token window: short prompts


def _dequantized(reader, name: str):
    import numpy as np

    t = next(t for t in reader.tensors if t.name == name)
    return torch.tensor(np.array(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32))


@pytest.mark.parametrize(("dtype", "tol"), [("f32", 0.0), ("f16", 1e-3), ("bf16", 1e-2), ("q8_0", 1e-2)])
def test_gguf_holds_the_weights_and_the_tokenizer(runs, tmp_path, dtype, tol):
    from tuilm.export.gguf import interleave_rope

    ckpt = load_checkpoint(runs["llama-tied"])
    export_command(runs["llama-tied"], "gguf", tmp_path / "m.gguf", dtype=dtype)
    reader = gguf.GGUFReader(tmp_path / "m.gguf")
    field = reader.get_field
    assert field("general.architecture").contents() == "llama"
    assert field("tokenizer.ggml.pre").contents() == "gpt-2" and field("tokenizer.ggml.model").contents() == "gpt2"
    assert field("tokenizer.ggml.tokens").contents() == [
        ckpt.tokenizer.inner.id_to_token(i) for i in range(ckpt.tokenizer.vocab_size)
    ]
    assert field("tokenizer.ggml.bos_token_id").contents() == ckpt.tokenizer.eos_id
    assert field("tokenizer.ggml.token_type").contents()[:3] == [3, 3, 1]  # <|pad|>, <|eos|> are control tokens
    d, heads = ckpt.model.cfg.d_model, ckpt.model.cfg.n_heads
    q = ckpt.model.blocks[1].attn.qkv.weight[:d].detach()
    stored = _dequantized(reader, "blk.1.attn_q.weight")
    torch.testing.assert_close(stored, interleave_rope(q, heads), atol=tol * float(q.abs().max()), rtol=0)
    assert not torch.equal(interleave_rope(q, heads), q)  # the permutation is not the identity
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_gguf_refusals_are_one_line(runs, tmp_path, monkeypatch):
    with pytest.raises(arch.ConfigError, match="export this model with --to hf"):
        export_command(runs["gpt2-gelu"], "gguf", tmp_path / "a.gguf")
    with pytest.raises(arch.ConfigError, match="choose one of f32, f16, bf16, q8_0"):
        export_command(runs["llama-tied"], "gguf", tmp_path / "a.gguf", dtype="q4_k")
    monkeypatch.setitem(__import__("sys").modules, "gguf", None)  # as if not installed
    with pytest.raises(arch.ConfigError, match=r"pip install 'tuilm\[export\]'"):
        export_command(runs["llama-tied"], "gguf", tmp_path / "a.gguf")
    assert list(tmp_path.iterdir()) == []


llama_cpp_only = pytest.mark.skipif(
    not __import__("tuilm.export.llamacpp", fromlist=["available"]).available(), reason="llama_cpp not installed"
)


@llama_cpp_only
@pytest.mark.parametrize(("name", "dtype"), [("llama-tied", "f32"), ("qwen3", "f32"), ("llama-tied", "q8_0")])
def test_llama_cpp_runs_the_file_as_tuilm_runs_the_checkpoint(runs, tmp_path, name, dtype):
    from tuilm.export.llamacpp import compare

    ckpt = load_checkpoint(runs[name])
    export_command(runs[name], "gguf", tmp_path / "m.gguf", dtype=dtype)
    val = ckpt.tokenizer.encode(write_corpus(tmp_path).read_text()[-400:])
    result = compare(tmp_path / "m.gguf", ckpt, PROMPTS, [ckpt.tokenizer.eos_id, *val], n_new=8)
    assert result["same_tokenization"] == len(PROMPTS)
    if dtype == "f32":
        # After 4 steps the model's choices can be near-ties: a continuation may part only where tuilm's first and
        # second choice are closer than the two programs' agreement (the 1-minute run agrees on 5 of 5 outright)
        assert result["same_greedy_continuation"] + len(result["divergence_margins"]) == len(PROMPTS)
        assert all(m <= 1e-3 for m in result["divergence_margins"]), result["divergence_margins"]
        assert result["same_greedy_continuation"] >= 3
        assert result["max_logprob_difference"] <= 1e-3
    else:
        assert result["mean_logprob_difference"] <= 0.01
