"""Quality on nanoGPT's val text: nanoGPT's CPU example against tuilm's CPU recipe, back to back.

1. nanoGPT: its README's CPU example (char-level, 4 layers, 4 heads, 128 wide, block 64, batch 12, 2,000
   iterations, lr 1e-3, no dropout) through benchmarks/nanogpt.py, a compact re-implementation, as a subprocess.
2. tuilm: `tuilm train RECIPE --headless` (default tiny_shakespeare_cpu) as a subprocess.

Each wall time is the whole command, start to exit, as a user would time it. Both models are then scored on
the same text, nanoGPT's val split (the last 10% of tiny Shakespeare's characters, data/shakespeare_char/
prepare.py), in the same unit: summed nats over the text / (characters x ln 2), with nanoGPT's count of
predicted characters as the denominator for both. nanoGPT is scored in consecutive windows of its block (each
character from 1-64 characters of context: the whole-split version of its own estimate_loss); tuilm is scored
as `tuilm eval` does, each speech from its start, on its `tail` split, which is that same text less the partial
speech at the cut ("?" and a blank line) and the final newline: 4 of 111,540 characters. tuilm's own
bits/char (its unit counts each blank line between speeches as one character) is printed beside it.

Usage: python benchmarks/quality.py [--recipe tiny_shakespeare_cpu] [--set key=value ...] [--seed N]
       [--skip-nanogpt]   (prints one JSON object; about 5 minutes on 2 cores)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def shakespeare() -> Path:
    folder = os.environ.get("TUILM_DATA_DIR")
    path = Path(folder) / "tiny_shakespeare.txt" if folder else None
    if path is None or not path.is_file():
        sys.exit("quality.py needs tiny_shakespeare.txt: set TUILM_DATA_DIR to the folder holding it")
    return path


def nanogpt_val_chars(text: str) -> int:
    """The characters nanoGPT predicts on its val split (the last 10%), the denominator of its bits/char."""
    return len(text) - int(len(text) * 0.9) - 1


def timed(cmd: list[str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return wall, out.stdout


def run_nanogpt(data: Path, folder: Path) -> dict:
    import torch
    from nanogpt import char_split, load, score

    wall, stdout = timed([sys.executable, str(HERE / "nanogpt.py"), "--data", str(data), "--out", str(folder)])
    model, chars = load(folder)
    chars_now, _, val_ids = char_split(data.read_text(encoding="utf-8"))
    assert chars == chars_now
    with torch.no_grad():
        nats, count = score(model, val_ids)
    return {
        "wall_s": round(wall, 1),
        "train_s": json.loads(stdout.strip().splitlines()[-1])["train_seconds"],
        "val_bpc": round(nats / (count * math.log(2)), 4),
        "val_loss_nats_per_char": round(nats / count, 4),
        "val_characters_scored": count,
    }


def run_tuilm(recipe: str, overrides: list[str], folder: Path, n_val_chars: int) -> dict:
    from tuilm.checkpoint import load_checkpoint
    from tuilm.config import from_dict
    from tuilm.data.dataset import prepare
    from tuilm.train.evaluate import evaluate

    run = folder / "run"
    sets = [x for o in overrides for x in ("--set", o)]
    wall, _ = timed([sys.executable, "-m", "tuilm", "train", recipe, "--headless", "--out", str(run), *sets])
    ckpt = load_checkpoint(run / "last.safetensors")
    config = from_dict(ckpt.run_config, ckpt.run_config.get("recipe", "custom"))
    if config.data.split != "tail":
        sys.exit(f"{recipe} validates on a '{config.data.split}' split; only 'tail' is nanoGPT's val text")
    dataset = prepare(config.data, config.model.seq_len, config.rows_per_step, progress=False, tokenizer=ckpt.tokenizer)
    result = evaluate(ckpt.model, dataset, "cpu")
    nats = result.loss * result.tokens
    return {
        "wall_s": round(wall, 1),
        "steps": ckpt.meta.get("step"),
        "val_bpc": round(nats / (n_val_chars * math.log(2)), 4),
        "val_bpc_tuilm_unit": round(result.bpc, 4),
        "val_characters_tuilm_unit": result.characters,
        "params": sum(p.numel() for p in ckpt.model.parameters()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", default="tiny_shakespeare_cpu")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="override for tuilm's run")
    parser.add_argument("--seed", type=int, default=None, help="tuilm's train.seed")
    parser.add_argument("--skip-nanogpt", action="store_true", help="only tuilm (for tuning runs)")
    args = parser.parse_args()
    data = shakespeare()
    text = data.read_text(encoding="utf-8")
    n_val_chars = nanogpt_val_chars(text)
    overrides = args.overrides + ([f"train.seed={args.seed}"] if args.seed is not None else [])
    with tempfile.TemporaryDirectory() as tmp:
        nano = None if args.skip_nanogpt else run_nanogpt(data, Path(tmp) / "nanogpt")
        ours = run_tuilm(args.recipe, overrides, Path(tmp), n_val_chars)
    report = {
        "benchmark": "quality",
        "val_text": "tiny Shakespeare, last 10% of the characters (nanoGPT's val split)",
        "unit": "bits per character",
        "machine": f"{platform.machine()} {os.cpu_count()} cores",
        "nanogpt_cpu_example": nano,
        "tuilm": {"recipe": args.recipe, "overrides": overrides, **ours},
    }
    if nano:
        report["wall_ratio_tuilm_to_nanogpt"] = round(ours["wall_s"] / nano["wall_s"], 3)
        report["bpc_gain"] = round(nano["val_bpc"] - ours["val_bpc"], 4)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
