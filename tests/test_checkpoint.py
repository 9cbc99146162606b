"""Checkpoints end to end: `tuilm sample` and `tuilm eval` on a trained run, and every bad checkpoint refused."""

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.helpers import run_tuilm as tuilm
from tuilm.checkpoint import load_checkpoint, read_metadata, save_checkpoint
from tuilm.errors import CheckpointError


@pytest.fixture(scope="module")
def run_dir(trained_run):
    return trained_run


def test_load_checkpoint_restores_the_trained_weights(run_dir):
    ckpt = load_checkpoint(run_dir)
    assert ckpt.path.name == "best.safetensors"
    saved = load_file(str(run_dir / "best.safetensors"))
    for name, tensor in saved.items():
        assert torch.equal(ckpt.model.state_dict()[name], tensor)
    assert ckpt.model.head.weight is ckpt.model.tok_emb.weight
    assert ckpt.meta["step"] == 10 and not ckpt.model.training


def test_sample_command_is_reproducible_with_a_seed(run_dir):
    args = ["sample", "--model-path", str(run_dir), "--prompt", "SPEAKER 1:", "-n", "20", "--seed", "3"]
    first, second = tuilm(*args), tuilm(*args)
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout and first.stdout.startswith("SPEAKER 1:")
    assert len(first.stdout) > len("SPEAKER 1:")


def test_sample_with_and_without_cache_agree_greedy(run_dir):
    base = ["sample", "--model-path", str(run_dir / "last.safetensors"), "-p", "word", "-n", "12", "-t", "0"]
    cached, uncached = tuilm(*base), tuilm(*base, "--no-cache")
    assert cached.returncode == uncached.returncode == 0
    assert cached.stdout == uncached.stdout


def test_sample_prompt_from_stdin(run_dir):
    out = tuilm("sample", "-m", str(run_dir), "-p", "-", "-n", "5", "--seed", "1", input="SPEAKER 2:")
    assert out.returncode == 0 and out.stdout.startswith("SPEAKER 2:")


def test_a_prompt_longer_than_the_context_is_refused_unless_truncated(run_dir):
    long_prompt = " ".join(["word1"] * 40)  # the tiny model's window is 16 tokens
    out = tuilm("sample", "-m", str(run_dir), "-p", long_prompt, "-n", "3")
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.count("\n") == 1 and "context window" in out.stderr and "--truncate" in out.stderr
    out = tuilm("sample", "-m", str(run_dir), "-p", long_prompt, "-n", "3", "--truncate", "--seed", "1")
    assert out.returncode == 0 and out.stdout.startswith(long_prompt) and "note:" in out.stderr


def test_eval_command_reproduces_the_runs_val_split(run_dir):
    out = tuilm("eval", "--model-path", str(run_dir))
    assert out.returncode == 0, out.stderr
    meta = read_metadata(run_dir / "best.safetensors")
    assert f"{json.loads(meta['val_loss']):.4f}" in out.stdout
    assert "bits/char" in out.stdout and "perplexity" in out.stdout


def test_eval_on_other_data(run_dir, tmp_path):
    path = tmp_path / "other.txt"
    path.write_text("SPEAKER 1:\nword1 word2\n\nSPEAKER 2:\nword3", encoding="utf-8")
    out = tuilm("eval", "-m", str(run_dir), "--data", str(path))
    assert out.returncode == 0, out.stderr
    assert "2 documents" in out.stdout


def assert_refused(path, *fragments):
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    for fragment in fragments:
        assert fragment in str(err.value)
    out = tuilm("sample", "--model-path", str(path), "-n", "1")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_missing_checkpoint(tmp_path):
    assert_refused(tmp_path / "nope.safetensors", "no such checkpoint")
    assert_refused(tmp_path, "no best.safetensors or last.safetensors")


def test_pickle_is_refused_without_unpickling(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"weights": torch.zeros(2)}, path)
    assert_refused(path, "refusing to load a PyTorch pickle", "arbitrary code")
    renamed = tmp_path / "model.safetensors"
    renamed.write_bytes(path.read_bytes())
    assert_refused(renamed, "pickle")


def test_a_protocol_2_pickle_is_refused_too(tmp_path):
    path = tmp_path / "legacy.safetensors"
    torch.save({"weights": torch.zeros(2)}, path, _use_new_zipfile_serialization=False)
    assert path.read_bytes()[:2] == b"\x80\x02"
    assert_refused(path, "pickle")


def test_every_header_length_loads_including_128_mod_256(run_dir, tmp_path):
    """safetensors pads its header to 8 bytes, so its length's low byte takes 32 values; 0x80 is one of them."""
    ckpt = load_checkpoint(run_dir)
    seen = set()
    for pad in range(256):
        path = tmp_path / f"pad{pad}.safetensors"
        save_checkpoint(path, ckpt.model, ckpt.tokenizer, ckpt.run_config, note="x" * pad)
        low = path.read_bytes()[0]
        seen.add(low)
        assert read_metadata(path)["note"] == json.dumps("x" * pad)
        if low == 0x80:
            loaded = load_checkpoint(path)
            assert torch.equal(loaded.model.tok_emb.weight, ckpt.model.tok_emb.weight)
    assert len(seen) == 32  # 256 one-byte steps of the header cover every 8-byte-aligned low byte, 0x80 too


def test_not_a_safetensors_file(tmp_path):
    path = tmp_path / "garbage.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{broken header...")
    assert_refused(path, "not a safetensors file")


def test_foreign_safetensors_file(tmp_path):
    path = tmp_path / "foreign.safetensors"
    save_file({"weight": torch.zeros(3, 3)}, str(path))
    assert_refused(path, "not written by tuilm")


def test_truncated_checkpoint(run_dir, tmp_path):
    data = (run_dir / "best.safetensors").read_bytes()
    path = tmp_path / "truncated.safetensors"
    path.write_bytes(data[: len(data) // 2])
    assert_refused(path, "not a safetensors file, or a corrupt one")


def test_weights_that_do_not_match_their_config(run_dir, tmp_path):
    from safetensors import safe_open

    with safe_open(str(run_dir / "best.safetensors"), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open handles are not iterable
    config = json.loads(meta["model_config"])
    config["d_model"] = 64
    meta["model_config"] = json.dumps(config)
    path = tmp_path / "mismatch.safetensors"
    save_file(tensors, str(path), metadata=meta)
    assert_refused(path, "do not match the model config")


# -- what reaches the terminal ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def babbler(run_dir, tmp_path_factory):
    """The trained model with its final norm zeroed: every token equally likely, control characters included."""
    ckpt = load_checkpoint(run_dir)
    with torch.no_grad():
        ckpt.model.norm_f.weight.zero_()
    path = tmp_path_factory.mktemp("babbler") / "babbler.safetensors"
    save_checkpoint(path, ckpt.model, ckpt.tokenizer, ckpt.run_config)
    return path


def on_a_terminal(*args) -> str:
    """Run tuilm with stdout on a pseudo-terminal; what the terminal received, decoded."""
    import os
    import pty

    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "tuilm", *args], stdout=slave, stderr=subprocess.PIPE)
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO once the child has closed its end
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    assert proc.wait(timeout=120) == 0, proc.stderr.read()
    return b"".join(chunks).decode("utf-8")


CONTROLS = {chr(c) for c in [*range(32), 0x7F, *range(0x80, 0xA0)]} - set("\n\t\r")  # \r: the tty's own newline


def test_sample_neutralises_control_characters_on_a_terminal(babbler):
    args = ["sample", "-m", str(babbler), "-p", "x", "-n", "80", "--seed", "4", "-t", "1", "--top-p", "1"]
    piped = tuilm(*args)
    assert piped.returncode == 0 and CONTROLS & set(piped.stdout)  # the model does write them: kept in a pipe
    shown = on_a_terminal(*args)
    assert not CONTROLS & set(shown), sorted(CONTROLS & set(shown))
    assert any(0x2400 <= ord(c) <= 0x2421 for c in shown)  # shown as control pictures instead


def test_prompts_that_are_not_utf8_are_replaced_with_a_note(run_dir):
    base = ["sample", "-m", str(run_dir), "-n", "3", "--seed", "1"]
    for prompt in (b"caf\xe9", b"a\xed\xa0\x80b"):  # Latin-1 bytes, an encoded surrogate
        out = tuilm(*base, "-p", prompt, text=False)
        stderr = out.stderr.decode()
        assert out.returncode == 0 and "Traceback" not in stderr, stderr
        assert "not valid UTF-8" in stderr and out.stdout.decode().count("\ufffd") >= 1
    out = tuilm(*base, "-p", "-", input=b"caf\xe9", text=False)
    assert out.returncode == 0 and out.stdout.decode().startswith("caf\ufffd"), out.stderr.decode()
    out = tuilm("chat", "-m", str(run_dir), "-n", "3", input=b"caf\xe9\n", text=False)
    assert out.returncode == 0 and "Traceback" not in out.stderr.decode(), out.stderr.decode()
