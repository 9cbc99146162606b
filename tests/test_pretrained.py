"""GPT-2 import (issue 15) without network: a small random GPT2LMHeadModel saved by transformers itself."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from tests import helpers  # noqa: E402
from tuilm.model import pretrained  # noqa: E402
from tuilm.train.sliding import sliding_window_nats  # noqa: E402

TEXT = "\n\n".join(
    f"The story of number {i}: it went {'up' if i % 2 else 'down'} the hill and {'came back' if i % 3 else 'stayed'}."
    for i in range(200)
)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory) -> Path:
    """config.json + model.safetensors (save_pretrained) + tokenizer.json (a tiny byte-level BPE)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    folder = tmp_path_factory.mktemp("gpt2-tiny")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(TEXT.split("\n\n"), trainer)
    tok.save(str(folder / "tokenizer.json"))
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(
        vocab_size=tok.get_vocab_size(), n_positions=64, n_embd=32, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0
    )
    model = transformers.GPT2LMHeadModel(cfg)
    with torch.no_grad():  # random biases and norms too, so a mistake in any of them shows
        for name, p in model.named_parameters():
            if "ln" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(folder, safe_serialization=True)
    assert (folder / "model.safetensors").is_file()
    return folder


def test_logits_equal_transformers(hf_dir):
    model, tokenizer = pretrained.load_pretrained(str(hf_dir))
    assert model.cfg.act == "gelu_tanh" and model.cfg.bias and model.cfg.seq_len == 64
    assert tokenizer.eos_id == tokenizer.pad_id == tokenizer.inner.token_to_id("<|endoftext|>")
    ref = transformers.GPT2LMHeadModel.from_pretrained(hf_dir).eval()
    ids = torch.tensor([tokenizer.encode(TEXT[:400])[:64], tokenizer.encode(TEXT[500:900])[:64]])
    with torch.no_grad():
        theirs = ref(ids).logits
        ours = model(ids)
    assert ours.shape == theirs.shape
    assert torch.allclose(ours, theirs, atol=1e-4), (ours - theirs).abs().max()


def test_shorter_seq_len_keeps_the_first_positions(hf_dir):
    cfg = pretrained.model_config(hf_dir, seq_len=16)
    from tuilm.model.gpt import GPT

    model = GPT(cfg)
    pretrained.load_weights(model, hf_dir)
    full, _ = pretrained.load_pretrained(str(hf_dir))
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    with torch.no_grad():
        assert torch.allclose(model(ids), full(ids), atol=1e-5)
    with pytest.raises(Exception, match="longer than the 64 positions"):
        pretrained.model_config(hf_dir, seq_len=65)


def test_sliding_window_matches_the_hf_guide(hf_dir):
    """The perplexity guide's loop, run on transformers' model, gives the same nats as tuilm's on its own."""
    model, tokenizer = pretrained.load_pretrained(str(hf_dir))
    ref = transformers.GPT2LMHeadModel.from_pretrained(hf_dir).eval()
    ids = np.asarray(tokenizer.encode(TEXT[:1500]), dtype=np.int64)
    for stride in (64, 24):
        nats, tokens, _ = sliding_window_nats(model, ids, stride, "cpu")
        enc = torch.from_numpy(ids)[None]
        total, count, prev_end = 0.0, 0, 0
        for begin in range(0, enc.size(1), stride):
            end = min(begin + 64, enc.size(1))
            trg_len = end - prev_end
            x = enc[:, begin:end]
            y = x.clone()
            y[:, :-trg_len] = -100
            with torch.no_grad():
                out = ref(x, labels=y)
            n_scored = int((y[:, 1:] != -100).sum())
            total += float(out.loss) * n_scored
            count += n_scored
            prev_end = end
            if end == enc.size(1):
                break
        assert tokens == count
        assert math.isclose(nats, total, rel_tol=1e-4)


def run_tuilm(*args, input=None, cwd=None):
    return helpers.run_tuilm(*args, input=input, cwd=cwd, timeout=240)


def test_fine_tune_save_chat_resume_eval(hf_dir, tmp_path, capsys):
    from tuilm.commands.eval import sliding_eval_command
    from tuilm.commands.train import TrainOptions, train_command

    data = tmp_path / "stories.txt"
    data.write_text(TEXT, encoding="utf-8")
    run = tmp_path / "run"
    common = ["seq_len=32", "batch_size=4", "warmup_steps=1", "eval_interval=2", "sample_tokens=4"]
    options = TrainOptions(str(data), common, headless=True, out=run, steps=3, init=str(hf_dir))
    assert train_command(options) == 0
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(run / "last.safetensors"), "pt") as f:  # an ordinary, self-contained tuilm checkpoint
        meta = f.metadata()
        cfg = json.loads(meta["model_config"])
        assert cfg["act"] == "gelu_tanh" and cfg["bias"] and cfg["vocab_size"] == 400 and cfg["seq_len"] == 32
        assert "<|endoftext|>" in meta["tokenizer"] and json.loads(meta["step"]) == 3
        # fine-tuning started from the GPT-2 weights, not from a random init: the embeddings are close to them
        start = load_file(hf_dir / "model.safetensors")["transformer.wte.weight"]
        assert (f.get_tensor("tok_emb.weight") - start).abs().max() < 0.05
    chat = run_tuilm("chat", "--model-path", str(run), "-n", "5", "--seed", "1", input="The story of\n")
    assert chat.returncode == 0, chat.stderr
    assert chat.stdout.strip()
    with pytest.MonkeyPatch.context() as mp:  # resuming needs only the run: not the hub, not the model dir
        mp.setattr(pretrained, "resolve", lambda spec: pytest.fail("resume looked for the pre-trained model"))
        assert train_command(TrainOptions(resume=run, steps=5, headless=True)) == 0
    with safe_open(str(run / "last.safetensors"), "pt") as f:
        assert json.loads(f.metadata()["step"]) == 5
    capsys.readouterr()
    result = sliding_eval_command(None, str(hf_dir), str(data), 32, "cpu")
    assert "stride 32" in capsys.readouterr().out
    assert result.tokens > 0 and 1 < result.ppl < 400  # a random model's perplexity is about its vocabulary size


def test_bad_init_is_one_line(tmp_path):
    from tuilm.commands.eval import sliding_eval_command
    from tuilm.errors import ConfigError

    out = run_tuilm("train", str(tmp_path), "--init", str(tmp_path / "nope"), "--headless")
    assert out.returncode == 2
    assert "not one of gpt2" in out.stderr and "Traceback" not in out.stderr
    (tmp_path / "m").mkdir()
    with pytest.raises(ConfigError, match=r"needs config\.json, model\.safetensors, tokenizer\.json"):
        sliding_eval_command(None, str(tmp_path / "m"), "x.txt", 0, "cpu")


def test_init_from_non_finite_weights_is_one_line(hf_dir, tmp_path):
    """Issue 27, item 5: --init refuses NaN weights before training, as --resume does."""
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "nan-gpt2"
    shutil.copytree(hf_dir, folder)
    tensors = load_file(folder / "model.safetensors")
    name = next(k for k in tensors if k.endswith("wte.weight"))
    tensors[name][0, 0] = float("nan")
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    (tmp_path / "data.txt").write_text(TEXT)
    args = ["--init", str(folder), "--headless", "--steps", "2", "--set", "seq_len=32", "--set", "batch_size=4"]
    out = helpers.run_tuilm("train", str(tmp_path / "data.txt"), *args)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "NaN or Inf" in errors[0], out.stderr
