"""nanoGPT itself, the anchor the whole-command benchmarks compare against: its checkout, its data, its scoring.

karpathy/nanoGPT is cloned unmodified into a cache folder (from GitHub by default; a local clone or bare
repository works offline), and its shakespeare_char data is prepared by its own prepare.py from the
tiny_shakespeare.txt that TUILM_DATA_DIR holds. Its checkpoints are scored with its own model.py.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

SOURCE = "https://github.com/karpathy/nanoGPT"
CACHE = Path.home() / ".cache" / "tuilm" / "bench"

# The README's CPU example ("I only have a macbook"), word for word.
CPU_EXAMPLE = [
    "config/train_shakespeare_char.py",
    "--device=cpu",
    "--compile=False",
    "--eval_iters=20",
    "--log_interval=1",
    "--block_size=64",
    "--batch_size=12",
    "--n_layer=4",
    "--n_head=4",
    "--n_embd=128",
    "--max_iters=2000",
    "--lr_decay_iters=2000",
    "--dropout=0.0",
]


def shakespeare() -> Path:
    folder = os.environ.get("TUILM_DATA_DIR")
    path = Path(folder) / "tiny_shakespeare.txt" if folder else None
    if path is None or not path.is_file():
        sys.exit("this benchmark needs tiny_shakespeare.txt: set TUILM_DATA_DIR to the folder holding it")
    return path


def nanogpt_val_chars(text: str) -> int:
    """The characters nanoGPT predicts on its val split (the last 10%), the denominator of its bits/char."""
    return len(text) - int(len(text) * 0.9) - 1


def nanogpt_checkout(source: str, cache: Path, text: Path) -> Path:
    """nanoGPT cloned into the cache once, with its shakespeare_char data prepared by its own script."""
    repo = cache / "nanoGPT"
    if not (repo / "train.py").is_file():
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run(["git", "clone", "--quiet", source, str(repo)], check=True)
    data = repo / "data" / "shakespeare_char"
    if not (data / "train.bin").is_file():
        shutil.copyfile(text, data / "input.txt")  # prepare.py downloads it only when it is missing
        subprocess.run([sys.executable, "prepare.py"], cwd=data, check=True, capture_output=True)
    return repo


def score_checkpoint(repo: Path, out_dir: Path) -> dict:
    """nanoGPT's ckpt.pt scored by its own model.py on its whole val split (data/shakespeare_char/val.bin), in
    consecutive windows of its block: every character after the first, from 1 to block_size characters of
    context, which is what its estimate_loss samples. Summed nats / (characters x ln 2) is bits per character."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    sys.path.insert(0, str(repo))
    try:
        from model import GPT, GPTConfig  # nanoGPT's own
    finally:
        sys.path.remove(str(repo))
    # The file was written a moment ago by the nanoGPT run this benchmark started; weights_only unpickles
    # nothing but tensors and plain containers all the same.
    ckpt = torch.load(out_dir / "ckpt.pt", map_location="cpu", weights_only=True)
    model = GPT(GPTConfig(**ckpt["model_args"]))
    model.load_state_dict({k.removeprefix("_orig_mod."): v for k, v in ckpt["model"].items()})
    model.eval()
    ids = torch.from_numpy(
        np.fromfile(repo / "data" / "shakespeare_char" / "val.bin", dtype=np.uint16).astype(np.int64)
    )
    block = model.config.block_size
    pieces = []  # (inputs, targets): the whole windows 64 at a time, then the part window at the end
    n = (len(ids) - 1) // block
    for first in range(0, n, 64):
        rows = range(first, min(first + 64, n))
        pieces.append(
            (
                torch.stack([ids[r * block : (r + 1) * block] for r in rows]),
                torch.stack([ids[r * block + 1 : (r + 1) * block + 1] for r in rows]),
            )
        )
    if (len(ids) - 1) % block:
        pieces.append((ids[n * block : -1][None], ids[n * block + 1 :][None]))
    nats, count = 0.0, 0
    with torch.no_grad():
        for x, y in pieces:
            logits, _ = model(x, y)  # with targets, nanoGPT's forward returns every position's logits
            nats += float(F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum"))
            count += y.numel()
    return {
        "iter": int(ckpt["iter_num"]),
        "val_bpc": round(nats / (count * math.log(2)), 4),
        "val_loss_nats_per_char": round(nats / count, 4),
        "val_characters_scored": count,
    }
