"""A real (tiny) checkpoint, mutated every way a disk, a careless user or an attacker can: the loaders either
give back exactly what was saved or refuse with one CheckpointError line, fast, and never unpickle anything."""

from __future__ import annotations

import json
import math
import pickle
import shutil
import tempfile
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save

from tests.helpers import run_tuilm, tiny_trainer
from tuilm.checkpoint import load_checkpoint, read_metadata, save_checkpoint
from tuilm.checkpoint.header import read_header
from tuilm.checkpoint.integrity import CHECKSUM, tensors_digest
from tuilm.checkpoint.train_state import load_train_state
from tuilm.errors import CheckpointError, TuilmError
from tuilm.model import GPT
from tuilm.train.optim import build_optimizer

FAST = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
# A refusal or a load of the tiny model takes milliseconds; the bound only catches hangs and huge allocations
# (a FIFO read, a 1e9-layer model), so it is generous enough for a busy 2-core machine.
SECONDS = 30


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from tests.conftest import write_corpus

    folder = tmp_path_factory.mktemp("fuzz")
    corpus = write_corpus(folder, "corpus.txt")
    trainer, _ = tiny_trainer(corpus, folder / "run", "max_steps=4", "sample_tokens=0")
    trainer.run()
    return folder / "run"


@pytest.fixture(scope="module")
def original(run_dir):
    """(bytes of last.safetensors, its metadata, its tensors, the loaded reference)."""
    path = run_dir / "last.safetensors"
    with safe_open(str(path), framework="pt") as f:
        metadata = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open handles are not iterable
    return path.read_bytes(), metadata, tensors, load_checkpoint(path)


@pytest.fixture(autouse=True)
def no_unpickling(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("something tried to unpickle")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    monkeypatch.setattr(torch, "load", refuse)


@pytest.fixture(scope="module")
def scratch():
    with tempfile.TemporaryDirectory() as folder:
        yield Path(folder)


def one_line(error: TuilmError) -> None:
    text = str(error)
    assert text and "\n" not in text and len(text) < 600, text


def outcome(path: Path, original, **kwargs) -> str:
    """'loaded' (and then exactly the saved weights, tokenizer and settings) or 'refused' (one line), in time."""
    _, _, tensors, reference = original
    start = time.monotonic()
    try:
        ckpt = load_checkpoint(path, **kwargs)
    except CheckpointError as e:
        one_line(e)
        result = "refused"
    else:
        state = ckpt.model.state_dict()
        assert all(torch.equal(state[k], t) for k, t in tensors.items())
        assert ckpt.tokenizer.to_json() == reference.tokenizer.to_json()
        result = "loaded"
    assert time.monotonic() - start < SECONDS
    return result


def rewrite(path: Path, tensors: dict, metadata: dict, checksum: str) -> None:
    """Write tensors and metadata as safetensors, with the checksum dropped, left stale, or recomputed."""
    metadata = dict(metadata)
    if checksum == "drop":
        metadata.pop(CHECKSUM, None)
    elif checksum == "resign":
        metadata[CHECKSUM] = tensors_digest(metadata, {k: v.contiguous() for k, v in tensors.items()})
    path.write_bytes(save(tensors, metadata=metadata))


# -- bytes ----------------------------------------------------------------------------------------------------


@FAST
@given(cut=st.integers(min_value=0))
def test_truncated_anywhere(original, scratch, cut):
    data = original[0]
    path = scratch / "cut.safetensors"
    path.write_bytes(data[: cut % len(data)])
    assert outcome(path, original) == "refused"


@FAST
@given(bits=st.lists(st.integers(min_value=0), min_size=1, max_size=6), in_header=st.booleans())
def test_bit_flips_in_header_and_data(original, scratch, bits, in_header):
    data = bytearray(original[0])
    header_end = 8 + int.from_bytes(data[:8], "little")
    span = header_end if in_header else len(data)
    for bit in bits:
        byte = bit % span
        data[byte] ^= 1 << (bit // span % 8)
    path = scratch / "flipped.safetensors"
    path.write_bytes(bytes(data))
    result = outcome(path, original)
    assert result == "refused" or bytes(data) == original[0]  # flips that cancel out give back the file itself


def test_a_flipped_bit_in_the_weights_is_a_checksum_mismatch(original, scratch):
    data = bytearray(original[0])
    data[-10] ^= 0x01
    path = scratch / "one-bit.safetensors"
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"corrupt checkpoint \(checksum mismatch\)"):
        load_checkpoint(path)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@FAST
@given(header=st.dictionaries(st.text(max_size=30), json_values, max_size=6), tail=st.binary(max_size=64))
def test_forged_headers(original, scratch, header, tail):
    raw = json.dumps(header).encode()
    path = scratch / "forged.safetensors"
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + tail)
    assert outcome(path, original) == "refused"


def test_a_header_that_promises_more_than_the_file_holds(original, scratch):
    header = {"w": {"dtype": "F32", "shape": [10**9, 10**9], "data_offsets": [0, 4 * 10**18]}}
    raw = json.dumps(header).encode()
    path = scratch / "huge.safetensors"
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + b"\0" * 16)
    with pytest.raises(CheckpointError, match="outside the file"):
        read_header(path)
    deep = b"[" * 100_000 + b"]" * 100_000
    path.write_bytes(len(deep).to_bytes(8, "little") + deep)
    with pytest.raises(CheckpointError, match="not valid JSON"):
        read_header(path)


# -- metadata -------------------------------------------------------------------------------------------------

META_KEYS = [
    "format",
    "format_version",
    "model_config",
    "tokenizer",
    "train_config",
    "step",
    "tokens",
    "val_loss",
    "data_fingerprint",
    "data",
    "recipe",
    CHECKSUM,
]
odd_strings = st.one_of(
    json_values.map(json.dumps),
    st.text(max_size=50),
    st.sampled_from(["", "1e999", "NaN", "-1", "99999999999999999999", "[" * 5000 + "]" * 5000, "x" * 200_000]),
)


@FAST
@given(
    key=st.sampled_from(META_KEYS),
    value=st.one_of(odd_strings, st.none()),
    checksum=st.sampled_from(["drop", "stale", "resign"]),
)
def test_metadata_values_of_every_wrong_type_and_size(original, scratch, key, value, checksum):
    _, metadata, tensors, _ = original
    metadata = dict(metadata)
    if value is None:
        metadata.pop(key)
    else:
        metadata[key] = value
    path = scratch / "meta.safetensors"
    rewrite(path, tensors, metadata, checksum)
    result = outcome(path, original)
    if checksum == "stale" and key != CHECKSUM:
        assert result == "refused"


model_values = st.one_of(
    json_values,
    st.sampled_from([10**9, 10**18, -1, 0, 1.5, "128", True, None, [128], {"d": 1}, float("nan")]),
)


@FAST
@given(
    key=st.sampled_from(["vocab_size", "seq_len", "d_model", "n_layers", "n_heads", "d_ff", "pos", "act", "dropout"]),
    value=model_values,
    checksum=st.sampled_from(["drop", "resign"]),
)
def test_model_configs_that_lie_about_the_tensors(original, scratch, key, value, checksum):
    _, metadata, tensors, _ = original
    config = json.loads(metadata["model_config"])
    config[key] = value
    metadata = {**metadata, "model_config": json.dumps(config)}
    path = scratch / "config.safetensors"
    rewrite(path, tensors, metadata, checksum)
    outcome(path, original)  # a harmless change (dropout 0.5) loads the same weights; anything else is refused


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("n_layers", 10**9, "n_layers 1000000000 is absurd"),
        ("d_model", 10**9, "d_model 1000000000 is absurd"),
        ("vocab_size", 10**9, "vocab_size 1000000000 is absurd"),
        ("n_layers", 3, "the config says 3 layers, the weights hold 2"),
        ("vocab_size", 500, "tok_emb.weight"),
        ("n_layers", "2", "n_layers must be a whole number"),
    ],
)
def test_absurd_or_lying_sizes_are_refused_before_anything_is_built(original, scratch, key, value, fragment):
    _, metadata, tensors, _ = original
    config = {**json.loads(metadata["model_config"]), key: value}
    path = scratch / f"{key}.safetensors"
    rewrite(path, tensors, {**metadata, "model_config": json.dumps(config)}, "resign")
    start = time.monotonic()
    with pytest.raises(CheckpointError, match=fragment):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match=fragment):
        read_metadata(path)  # what --resume reads before it builds the model from the saved settings
    assert time.monotonic() - start < SECONDS


def test_a_pos_table_too_large_to_build_is_refused(original, scratch):
    _, metadata, tensors, _ = original
    config = {**json.loads(metadata["model_config"]), "pos": "rope", "seq_len": 1 << 20, "d_model": 32}
    tensors = {k: v for k, v in tensors.items() if k != "pos_emb.weight"}
    path = scratch / "rope.safetensors"
    metadata = {k: v for k, v in metadata.items() if k != "train_config"}
    rewrite(path, tensors, {**metadata, "model_config": json.dumps(config)}, "resign")
    with pytest.raises(CheckpointError, match="seq_len 1048576 is absurd"):
        load_checkpoint(path)


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("format_version", "one", "format_version 'one' is not a number"),
        ("step", '"10"', "step must be a whole number"),
        ("step", "1.5", "step must be a whole number"),
        ("train_config", "[1, 2]", "train_config must be a JSON object"),
        ("train_config", '{"train": {"lr": [1]}}', "train_config train.'lr' has the wrong type"),
        ("train_config", '{"model": {"n_layers": 7}}', "train_config model.n_layers = 7 but the model is 2"),
        ("model_config", '{"d_model": 32, "n_layers": 2, "x": 1}', "unknown model setting 'x'"),
        ("tokenizer", "{}", "tokenizer"),
    ],
)
def test_metadata_of_the_wrong_type_says_which(original, scratch, key, value, fragment):
    _, metadata, tensors, _ = original
    path = scratch / "typed.safetensors"
    rewrite(path, tensors, {**metadata, key: value}, "resign")
    with pytest.raises(CheckpointError, match=fragment) as err:
        load_checkpoint(path)
    one_line(err.value)


# -- tensors --------------------------------------------------------------------------------------------------


@FAST
@given(
    change=st.sampled_from(["drop", "add", "dtype", "reshape", "rename"]),
    which=st.integers(min_value=0),
    dtype=st.sampled_from([torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int8, torch.bool]),
    checksum=st.sampled_from(["drop", "resign"]),
)
def test_extra_missing_and_mistyped_tensors(original, scratch, change, which, dtype, checksum):
    _, metadata, tensors, _ = original
    tensors = dict(tensors)
    name = sorted(tensors)[which % len(tensors)]
    if change == "drop":
        del tensors[name]
    elif change == "add":
        tensors[f"blocks.{which % 100}.extra"] = torch.zeros(3)
    elif change == "dtype":
        tensors[name] = tensors[name].to(dtype)
    elif change == "reshape":
        tensors[name] = tensors[name].reshape(-1)[:-1].contiguous() if tensors[name].numel() > 1 else torch.zeros(2)
    else:
        tensors[name + "_"] = tensors.pop(name)
    path = scratch / "tensors.safetensors"
    rewrite(path, tensors, metadata, checksum)
    assert outcome(path, original) == "refused"


def test_nonfinite_weights_are_refused_unless_asked_for(original, scratch):
    _, metadata, tensors, _ = original
    tensors = dict(tensors)
    tensors["norm_f.weight"] = tensors["norm_f.weight"].clone()
    tensors["norm_f.weight"][0] = math.nan
    path = scratch / "nan.safetensors"
    rewrite(path, tensors, metadata, "resign")
    with pytest.raises(CheckpointError, match=r"NaN or Inf .*--allow-nonfinite") as err:
        load_checkpoint(path)
    one_line(err.value)
    ckpt = load_checkpoint(path, allow_nonfinite=True)
    assert torch.isnan(ckpt.model.norm_f.weight[0])


def test_a_checkpoint_without_a_checksum_loads_with_a_note(original, scratch, capsys):
    _, metadata, tensors, _ = original
    path = scratch / "old.safetensors"
    rewrite(path, tensors, metadata, "drop")
    assert outcome(path, original) == "loaded"
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no checksum" in err and "older tuilm" in err


def test_the_checksum_is_written_and_covers_the_metadata(original, scratch):
    _, metadata, tensors, reference = original
    assert metadata[CHECKSUM].startswith("xxh3-128.2:") and metadata[CHECKSUM] != "xxh3-128.2:" + "0" * 32
    state = read_header(Path(str(original[3].path).replace("last", "train_state")))
    assert state.metadata[CHECKSUM].startswith("xxh3-128.2:")
    path = scratch / "resaved.safetensors"
    save_checkpoint(path, reference.model, reference.tokenizer, reference.run_config, step=4)
    assert outcome(path, original) == "loaded"
    rewrite(path, tensors, {**metadata, "step": "5"}, "stale")  # a changed value under the old checksum
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        load_checkpoint(path)


def test_fifo_and_devices_are_refused_without_blocking(scratch):
    import os

    fifo = scratch / "pipe.safetensors"
    os.mkfifo(fifo)
    for path in (fifo, Path("/dev/zero")):
        start = time.monotonic()
        with pytest.raises(CheckpointError, match="not a regular file"):
            load_checkpoint(path)
        assert time.monotonic() - start < SECONDS


# -- training state -------------------------------------------------------------------------------------------


def fresh_optimizer(reference, run_config):
    from tuilm.config import from_dict

    config = from_dict(run_config)
    model = GPT(reference.model.cfg)
    return model, build_optimizer(model, config.train, torch.device("cpu"))


@pytest.fixture(scope="module")
def state_original(run_dir, original):
    path = run_dir / "train_state.safetensors"
    with safe_open(str(path), framework="pt") as f:
        metadata = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    return path.read_bytes(), metadata, tensors


def state_outcome(path: Path, original) -> str:
    reference = original[3]
    model, optimizer = fresh_optimizer(reference, reference.run_config)
    start = time.monotonic()
    try:
        extra, rng = load_train_state(path, optimizer)
    except CheckpointError as e:
        one_line(e)
        return "refused"
    finally:
        assert time.monotonic() - start < SECONDS
    # What the trainer does next must work: restore the RNG and take an optimizer step.
    torch.set_rng_state(rng["torch"])
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    assert isinstance(extra["step"], int)
    return "loaded"


def test_the_untouched_training_state_loads(original, state_original, scratch):
    path = scratch / "state.safetensors"
    path.write_bytes(state_original[0])
    assert state_outcome(path, original) == "loaded"


@FAST
@given(
    cut=st.integers(min_value=0),
    bits=st.lists(st.integers(min_value=0), max_size=4),
    truncate=st.booleans(),
)
def test_training_state_truncated_or_flipped(original, state_original, scratch, cut, bits, truncate):
    data = bytearray(state_original[0])
    for bit in bits:
        data[bit % len(data)] ^= 1 << (bit // len(data) % 8)
    if truncate:
        data = data[: cut % len(data)]
    path = scratch / "state-bytes.safetensors"
    path.write_bytes(bytes(data))
    result = state_outcome(path, original)
    assert result == "refused" or bytes(data) == state_original[0]


@pytest.mark.parametrize("which", ["model", "state"])
@pytest.mark.parametrize("at", [0, 3, 7])
def test_a_bit_flipped_in_the_checksum_key_is_refused(original, state_original, scratch, which, at):
    """Found by the fuzz test above: "checksum" -> "chebksum" read as a file of an older tuilm, which has no
    checksum to verify, and loaded."""
    data = bytearray((original if which == "model" else state_original)[0])
    data[data.index(b'"checksum"') + 1 + at] ^= 1
    path = scratch / f"flipped-key-{which}.safetensors"
    path.write_bytes(bytes(data))
    result = outcome(path, original) if which == "model" else state_outcome(path, original)
    assert result == "refused"


state_keys = st.sampled_from(["format", "format_version", "param_groups", "optim_scalars", "state", CHECKSUM])
state_fields = st.sampled_from(
    ["step", "tokens", "epoch", "batch_in_epoch", "elapsed", "train_losses", "health", "scaler", "best_val_loss"]
)


@FAST
@given(
    key=state_keys,
    field=state_fields,
    value=st.one_of(json_values, st.sampled_from([-1, 10**30, "7", [None], {"seen": "x"}])),
    whole=st.booleans(),
    checksum=st.sampled_from(["drop", "resign"]),
    tensor_change=st.sampled_from([None, "drop", "reshape", "dtype", "add"]),
)
def test_training_state_metadata_and_tensors(
    original, state_original, scratch, key, field, value, whole, checksum, tensor_change
):
    _, metadata, tensors = state_original
    metadata, tensors = dict(metadata), dict(tensors)
    if whole or key != "state":
        metadata[key] = json.dumps(value) if key not in ("format", "format_version") else str(value)
    else:
        extra = json.loads(metadata["state"])
        extra[field] = value
        metadata["state"] = json.dumps(extra)
    name = sorted(tensors)[len(value) % len(tensors) if isinstance(value, str) else 0]
    if tensor_change == "drop":
        del tensors[name]
    elif tensor_change == "reshape":
        tensors[name] = torch.zeros(7)
    elif tensor_change == "dtype":
        tensors[name] = tensors[name].to(torch.int64)
    elif tensor_change == "add":
        tensors["optim.999.exp_avg"] = torch.zeros(2)
    path = scratch / "state-meta.safetensors"
    rewrite(path, tensors, metadata, checksum)
    state_outcome(path, original)


def test_a_training_state_whose_moments_fit_no_parameter(original, state_original, scratch):
    _, metadata, tensors = state_original
    tensors = dict(tensors)
    name = next(k for k in sorted(tensors) if k.endswith("exp_avg") and tensors[k].dim() == 2)
    tensors[name] = tensors[name].t().contiguous()  # same size, other shape: would fail only at the first step
    path = scratch / "state-transposed.safetensors"
    rewrite(path, tensors, metadata, "resign")
    with pytest.raises(CheckpointError, match="fits no parameter"):
        load_train_state(path, fresh_optimizer(original[3], original[3].run_config)[1])


# -- the commands, as a user runs them ------------------------------------------------------------------------


def tuilm(*args, input=None):
    return run_tuilm(*args, input=input, timeout=120)


def assert_clean(out, *, allowed=(0, 2)):
    assert out.returncode in allowed, (out.returncode, out.stderr[-500:])
    assert "Traceback" not in out.stderr
    if out.returncode == 2:
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr


@pytest.fixture(scope="module")
def mutants(original, tmp_path_factory):
    data, metadata, tensors, _ = original
    folder = tmp_path_factory.mktemp("mutants")
    paths = {}
    paths["truncated"] = folder / "truncated.safetensors"
    paths["truncated"].write_bytes(data[: len(data) * 2 // 3])
    flipped = bytearray(data)
    flipped[len(data) - 100] ^= 0x10
    paths["flipped"] = folder / "flipped.safetensors"
    paths["flipped"].write_bytes(bytes(flipped))
    paths["absurd"] = folder / "absurd.safetensors"
    config = {**json.loads(metadata["model_config"]), "n_layers": 10**9}
    rewrite(paths["absurd"], tensors, {**metadata, "model_config": json.dumps(config)}, "resign")
    paths["version"] = folder / "version.safetensors"
    rewrite(paths["version"], tensors, {**metadata, "format_version": "v1"}, "drop")
    nan = dict(tensors)
    nan["norm_f.weight"] = torch.full_like(nan["norm_f.weight"], math.inf)
    paths["nan"] = folder / "nan.safetensors"
    rewrite(paths["nan"], nan, metadata, "resign")
    return paths


@pytest.mark.parametrize(
    ("command", "mutant", "fragment"),
    [
        ("sample", "truncated", "truncated"),
        ("sample", "flipped", "checksum mismatch"),
        ("sample", "absurd", "absurd"),
        ("sample", "nan", "--allow-nonfinite"),
        ("eval", "version", "format_version"),
        ("chat", "nan", "NaN or Inf"),
    ],
)
def test_commands_on_mutated_checkpoints_exit_2_with_one_line(mutants, command, mutant, fragment):
    args = [command, "-m", str(mutants[mutant])]
    out = tuilm(*args, *(["-n", "3"] if command == "sample" else []), input="hello\n")
    assert_clean(out, allowed=(2,))
    assert fragment in out.stderr


def test_sample_and_chat_allow_nonfinite_weights_when_asked(mutants):
    out = tuilm("sample", "-m", str(mutants["nan"]), "-n", "3", "-p", "a", "-t", "0", "--allow-nonfinite")
    assert_clean(out, allowed=(0,))
    assert out.stdout.startswith("a")
    out = tuilm("sample", "-m", str(mutants["nan"]), "-n", "3", "-p", "a", "--allow-nonfinite")  # sampled: no odds
    assert_clean(out, allowed=(2,))
    assert "probabilities are NaN" in out.stderr and "--temperature 0" in out.stderr
    out = tuilm("chat", "-m", str(mutants["nan"]), "-n", "3", "-t", "0", "--allow-nonfinite", input="hello\n")
    assert_clean(out, allowed=(0,))
    out = tuilm("eval", "-m", str(mutants["nan"]), "--allow-nonfinite")
    assert_clean(out, allowed=(0,))
    assert "nan" in out.stdout.lower() or "inf" in out.stdout.lower()


@pytest.mark.parametrize("damage", ["flipped last", "transposed state", "absurd last"])
def test_resume_from_a_damaged_run_exits_2_with_one_line(run_dir, original, state_original, tmp_path, damage):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    data, metadata, tensors, _ = original
    if damage == "flipped last":
        flipped = bytearray(data)
        flipped[len(data) - 50] ^= 0x04
        (run / "last.safetensors").write_bytes(bytes(flipped))
    elif damage == "absurd last":
        config = {**json.loads(metadata["model_config"]), "d_model": 10**9}
        rewrite(run / "last.safetensors", tensors, {**metadata, "model_config": json.dumps(config)}, "resign")
    else:
        _, smeta, stensors = state_original
        stensors = dict(stensors)
        name = next(k for k in sorted(stensors) if k.endswith("exp_avg") and stensors[k].dim() == 2)
        stensors[name] = stensors[name].t().contiguous()
        rewrite(run / "train_state.safetensors", stensors, smeta, "resign")
    config_before = (run / "config.toml").read_text()
    out = tuilm("train", "--resume", str(run), "--headless", "--steps", "6")
    assert_clean(out, allowed=(2,))
    assert ("checksum mismatch" if damage == "flipped last" else "absurd" if "absurd" in damage else "fits no") in (
        out.stderr
    )
    assert (run / "config.toml").read_text() == config_before
