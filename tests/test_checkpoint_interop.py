"""Every file tuilm writes is an ordinary safetensors file (issue 24): the official library reads last, best,
step-N and train_state, transformers' own loader reads a checkpoint's tensors, and every dtype torch can hold is
either stored so that safetensors reads it back bit for bit or refused at save time in one line."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from tests.conftest import write_corpus
from tests.helpers import tiny_trainer
from tuilm.checkpoint import integrity, read_weights
from tuilm.errors import CheckpointError


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("interop")
    trainer, _ = tiny_trainer(
        write_corpus(folder), folder / "run", "max_steps=4", "checkpoint_interval=2", "keep_checkpoints=2",
        "sample_tokens=0", "eval_interval=2",
    )  # fmt: skip
    trainer.run()
    return folder / "run"


def test_every_kind_of_file_reads_through_the_official_library(run):
    names = {p.name for p in run.glob("*.safetensors")}
    assert {"last.safetensors", "best.safetensors", "train_state.safetensors", "step-4.safetensors"} <= names
    for name in names:
        path = run / name
        loaded = load_file(path)
        with safe_open(path, framework="pt") as f:
            assert set(f.keys()) == set(loaded)
            metadata = f.metadata()
            for key in loaded:
                assert torch.equal(f.get_tensor(key), loaded[key])
        assert metadata["checksum"].startswith(integrity.IN_FILE_ORDER)
        if name != "train_state.safetensors":
            ours = read_weights(path)  # tuilm's own reader, checksum verified
            assert set(ours) == set(loaded) and all(torch.equal(ours[k], loaded[k]) for k in ours)


def test_transformers_loader_reads_a_checkpoint(run):
    transformers_utils = pytest.importorskip("transformers.modeling_utils")
    state = transformers_utils.load_state_dict(str(run / "last.safetensors"))
    assert torch.equal(state["tok_emb.weight"], load_file(run / "last.safetensors")["tok_emb.weight"])


STORED = list(integrity.DTYPE_NAMES)
REFUSED = sorted(
    {getattr(torch, n) for n in dir(torch) if isinstance(getattr(torch, n), torch.dtype)} - set(STORED), key=str
)


def _sample(dtype: torch.dtype) -> torch.Tensor:
    """A few values of every kind the dtype holds (negative, fractional, large) where it holds them."""
    values = torch.tensor([[0.0, 1.0, -2.5, 3.25], [100.0, -0.125, 7.0, 0.5]], dtype=torch.float64)
    if dtype == torch.bool:
        return values > 0
    if not (dtype.is_floating_point or dtype.is_complex):
        values = values.abs().round() if str(dtype).startswith("torch.uint") else values.round()
    return values.to(dtype)


@pytest.mark.parametrize("dtype", STORED, ids=str)
def test_each_dtype_safetensors_knows_round_trips(dtype, tmp_path):
    t = _sample(dtype)
    integrity.write(tmp_path / "x.safetensors", {"x": t, "y": torch.ones(3)}, {"format": "test"})
    back = load_file(tmp_path / "x.safetensors")["x"]
    assert back.dtype == dtype and back.shape == t.shape
    assert torch.equal(back.view(torch.uint8), t.view(torch.uint8))  # bit for bit, NaN-free comparison


@pytest.mark.parametrize("dtype", REFUSED, ids=str)
def test_every_other_dtype_is_refused_in_one_line_before_writing(dtype, tmp_path):
    try:
        t = torch.empty(4, dtype=dtype)
    except (RuntimeError, TypeError):
        pytest.skip(f"torch cannot make a tensor of {dtype}")
    with pytest.raises(CheckpointError) as e:
        integrity.write(tmp_path / "x.safetensors", {"w": t}, {})
    assert str(dtype) in str(e.value) and "\n" not in str(e.value) and "float32" in str(e.value)
    assert list(tmp_path.iterdir()) == []
