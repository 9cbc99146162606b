"""What the checkpoint checksum costs a save: the target is < 2% of save_checkpoint's time.

For each model shape, saves the same model back to back, alternating a save with the checksum (what tuilm does),
one by the same one-pass writer with a hash that does nothing, and one with the hash timed from inside,
`--repeats` times each; interleaving makes drift on a shared machine hit all alike, and the fastest of each is
compared (the least disturbed). Also times the hash alone on the same tensors as a pass of its own over memory
(xxh3-128, and sha256 for comparison): what the checksum cost before the writer hashed each piece while it was
still in the cache.
Prints one JSON object, per shape: `ratio` = save with checksum / save without - 1 (what a save pays),
`ratio_inline` = the time spent inside the hash during a save / that save's time (median; the steadiest figure
on a busy machine), `ratio_hash` = the hash as a pass of its own / save time (what it cost before).

Usage: python benchmarks/checkpoint_hash.py [--repeats 7] [--dir DIR]   (DIR: where to write, default a temp dir)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
import xxhash

from tuilm.checkpoint import integrity, save_checkpoint
from tuilm.checkpoint.integrity import tensors_digest
from tuilm.model import GPT, ModelConfig
from tuilm.model.weights import model_tensors

SHAPES = {
    "default (d128 x 2, vocab 10k)": dict(vocab_size=10_000, d_model=128, n_layers=2, n_heads=4),
    "medium (d384 x 6, vocab 10k)": dict(vocab_size=10_000, d_model=384, n_layers=6, n_heads=6),
    "large (d768 x 12, vocab 16k)": dict(vocab_size=16_000, d_model=768, n_layers=12, n_heads=12),
}


class NoHash:
    """Stands in for xxh3 in the save without a checksum: same writer, same calls, no hashing."""

    def update(self, data) -> None:
        pass

    def hexdigest(self) -> str:
        return "0" * 32


class TimedHash:
    """xxh3, adding the time spent inside it to `spent`: the checksum's share of a save measured inside the save,
    which the machine's drift (fsync above all) cannot blur as it blurs the difference of two saves."""

    spent = 0.0

    def __init__(self) -> None:
        self.h = xxhash.xxh3_128()

    def update(self, data) -> None:
        start = time.perf_counter()
        self.h.update(data)
        TimedHash.spent += time.perf_counter() - start

    def hexdigest(self) -> str:
        return self.h.hexdigest()


class FakeTokenizer:
    """save_checkpoint only asks for the JSON; a 10k-token BPE's is about this long."""

    def to_json(self) -> str:
        return json.dumps({"model": {"vocab": {f"t{i}": i for i in range(10_000)}}})


def sha256(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for t in tensors.values():
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--dir", default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    results = {}
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        path = Path(folder) / "bench.safetensors"
        for name, shape in SHAPES.items():
            model = GPT(ModelConfig(**shape))
            tokenizer = FakeTokenizer()
            real = integrity.HASHER
            with_hash, without, inline = [], [], []
            save_checkpoint(path, model, tokenizer, {})  # warm the page cache and allocator
            for _ in range(args.repeats):
                start = time.perf_counter()
                save_checkpoint(path, model, tokenizer, {})
                with_hash.append(time.perf_counter() - start)
                integrity.HASHER = NoHash
                try:
                    start = time.perf_counter()
                    save_checkpoint(path, model, tokenizer, {})
                    without.append(time.perf_counter() - start)
                    TimedHash.spent, integrity.HASHER = 0.0, TimedHash
                    start = time.perf_counter()
                    save_checkpoint(path, model, tokenizer, {})
                    inline.append(TimedHash.spent / (time.perf_counter() - start))
                finally:
                    integrity.HASHER = real
            tensors = model_tensors(model)
            metadata = {"tokenizer": tokenizer.to_json()}
            xxh = median_time(lambda: tensors_digest(metadata, tensors), args.repeats)  # noqa: B023
            sha = median_time(lambda: sha256(tensors), args.repeats)  # noqa: B023
            save, plain = min(with_hash), min(without)
            results[name] = {
                "bytes": path.stat().st_size,
                "save_s": round(save, 5),
                "save_without_checksum_s": round(plain, 5),
                "median_save_s": round(statistics.median(with_hash), 5),
                "median_save_without_checksum_s": round(statistics.median(without), 5),
                "xxh3_s": round(xxh, 5),
                "sha256_s": round(sha, 5),
                "ratio": round(save / plain - 1, 4),
                "ratio_inline": round(statistics.median(inline), 4),
                "ratio_hash": round(xxh / save, 4),
                "ratio_sha256": round(sha / save, 4),
            }
    print(json.dumps({"repeats": args.repeats, "target_ratio": 0.02, "shapes": results}, indent=2))


if __name__ == "__main__":
    main()
