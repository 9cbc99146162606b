"""The one-pass checksummed writer (tuilm/checkpoint/integrity.py): the files safetensors would write, checksums computed
here independently from the file's bytes, and checkpoints with the older (by-name) checksum still verified."""

import json

import pytest
import torch
import xxhash
from safetensors import safe_open
from safetensors.torch import load_file, save

from tuilm.checkpoint import integrity, load_checkpoint
from tuilm.checkpoint.integrity import CHECKSUM
from tuilm.errors import CheckpointError

DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.int16]
DTYPES += [torch.int8, torch.uint8, torch.bool]


def mixed_tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    tensors = {}
    for i, dtype in enumerate(DTYPES):
        for prefix in "zb":  # two of each dtype: the order within a dtype is by name
            tensors[f"{prefix}{i}"] = (torch.randn(3, 5, generator=g) * 10).to(dtype)
    tensors["scalar"] = torch.tensor(2.5)
    tensors["empty"] = torch.zeros(0, 4)
    tensors["odd"] = torch.arange(7, dtype=torch.uint8)  # 7 bytes: alignment after it matters
    return tensors


def split(raw: bytes) -> tuple[dict, bytes]:
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def digest_of_file(raw: bytes) -> str:
    """The one-pass checksum from its definition: metadata, then each tensor in file order."""
    header, data = split(raw)
    metadata = header.pop("__metadata__")
    h = xxhash.xxh3_128()
    h.update(json.dumps(sorted((k, v) for k, v in metadata.items() if k != CHECKSUM)).encode())
    for name, entry in sorted(header.items(), key=lambda item: item[1]["data_offsets"][0]):
        start, end = entry["data_offsets"]
        h.update(json.dumps([name, entry["dtype"], entry["shape"]]).encode())
        h.update(data[start:end])
    return "xxh3-128.2:" + h.hexdigest()


def by_name_digest(metadata: dict, tensors: dict[str, torch.Tensor]) -> str:
    """The checksum older tuilm wrote: tensors sorted by name."""
    h = xxhash.xxh3_128()
    h.update(json.dumps(sorted((k, v) for k, v in metadata.items() if k != CHECKSUM)).encode())
    for name in sorted(tensors):
        t = tensors[name]
        dtype = {torch.float32: "F32"}[t.dtype]
        h.update(json.dumps([name, dtype, list(t.shape)]).encode())
        h.update(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return "xxh3-128:" + h.hexdigest()


def test_the_writer_lays_out_a_file_as_safetensors_does(tmp_path):
    tensors, metadata = mixed_tensors(), {"format": "x", "note": 'é\n"quoted" \\ {"checksum":"y"}'}
    path = tmp_path / "mixed.safetensors"
    checksum = integrity.write(path, tensors, dict(metadata))
    raw = path.read_bytes()
    reference = save(tensors, metadata={**metadata, CHECKSUM: checksum})
    assert split(raw) == split(reference)  # same header (its metadata order aside) and the same data bytes
    assert int.from_bytes(raw[:8], "little") % 8 == 0
    loaded = load_file(str(path))
    assert loaded.keys() == tensors.keys() and all(torch.equal(loaded[k], t) for k, t in tensors.items())
    with safe_open(str(path), "pt") as f:  # memory-mapped: every tensor must be aligned for its dtype
        assert all(torch.equal(f.get_tensor(k), t) for k, t in tensors.items())
        assert f.metadata() == {**metadata, CHECKSUM: checksum}


def test_the_stored_checksum_is_the_one_the_definition_gives(tmp_path):
    tensors = mixed_tensors()
    path = tmp_path / "c.safetensors"
    stored = integrity.write(path, tensors, {"k": "v"})
    assert stored == digest_of_file(path.read_bytes())
    assert integrity.tensors_digest({"k": "v"}, tensors) == stored
    changed = dict(tensors, z0=tensors["z0"] + 1)
    assert integrity.tensors_digest({"k": "v"}, changed) != stored
    assert integrity.tensors_digest({"k": "w"}, tensors) != stored


def test_a_write_that_fails_midway_leaves_the_old_file_and_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "c.safetensors"
    integrity.write(path, {"w": torch.ones(4)}, {})
    before = path.read_bytes()

    class Broken:
        def update(self, data):
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(integrity, "HASHER", Broken)
    with pytest.raises(OSError):
        integrity.write(path, {"w": torch.zeros(4)}, {})
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["c.safetensors"]


def resaved(source, path, metadata_change=None, checksum=None):
    """The checkpoint at `source` rewritten by safetensors itself, under a checksum of our choosing."""
    tensors = load_file(str(source))
    with safe_open(str(source), "pt") as f:
        metadata = dict(f.metadata())
    metadata.update(metadata_change or {})
    metadata[CHECKSUM] = checksum(metadata, tensors) if checksum else metadata[CHECKSUM]
    path.write_bytes(save(tensors, metadata=metadata))
    return tensors, metadata


def test_a_checkpoint_with_the_older_by_name_checksum_still_verifies(trained_run, tmp_path):
    path = tmp_path / "old.safetensors"
    tensors, _ = resaved(trained_run / "last.safetensors", path, checksum=by_name_digest)
    ckpt = load_checkpoint(path)
    assert all(torch.equal(ckpt.model.state_dict()[k], t) for k, t in tensors.items())
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0x10  # one bit of the last weight
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=r"corrupt checkpoint \(checksum mismatch\)"):
        load_checkpoint(path)


def test_new_checkpoints_carry_the_one_pass_checksum_and_changes_are_caught(trained_run, tmp_path):
    raw = (trained_run / "last.safetensors").read_bytes()
    assert split(raw)[0]["__metadata__"][CHECKSUM] == digest_of_file(raw)
    path = tmp_path / "stale.safetensors"
    resaved(trained_run / "last.safetensors", path, {"step": "999"})  # the old checksum over changed metadata
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        load_checkpoint(path)


def test_a_checksum_of_an_unknown_kind_asks_for_an_upgrade(trained_run, tmp_path):
    path = tmp_path / "future.safetensors"
    resaved(trained_run / "last.safetensors", path, {CHECKSUM: "blake9:00"})
    with pytest.raises(CheckpointError, match=r"unknown kind.*upgrade tuilm"):
        load_checkpoint(path)
