"""Training throughput at the shape of nanoGPT's CPU example, against a nanoGPT-style reference loop.

Shape: 4 layers, 4 heads, d_model 128, seq 64, batch 12, no dropout (nanoGPT's shakespeare_char CPU example).
- `reference`: benchmarks/nanogpt.py, a compact re-implementation of nanoGPT's model.py and train.py step
  (fused-qkv attention through SDPA, GELU MLP with bias, tied embeddings, AdamW, grad clip 1.0) over random
  character ids, vocab 65.
- `tuilm`: tuilm's own Trainer, everything included (data pipeline, events, health monitor at its default
  cadence), training byte-level (vocab 258: every byte a token, the closest BPE gets to characters) on tiny
  Shakespeare, or on a synthetic corpus when the file is not available.
- `tuilm_bpe10k`: the same shape with the baseline's 10,000-token vocabulary, to show what the larger output
  layer costs.

Prints one JSON object. Usage: python benchmarks/train_throughput.py [--steps 60] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from nanogpt import reference_step

SHAPE = {"n_layers": 4, "n_heads": 4, "d_model": 128, "seq_len": 64, "batch_size": 12}


def reference(steps: int) -> dict:
    step = reference_step(65, SHAPE, bias=True)

    return timed(step, steps, SHAPE["batch_size"] * SHAPE["seq_len"])


def timed(step, steps: int, tokens_per_step: int) -> dict:
    for _ in range(5):
        step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    times.sort()
    median = times[len(times) // 2]
    return {"tokens_per_s": round(tokens_per_step / median), "step_ms_median": round(1000 * median, 2)}


def tuilm_trainer(steps: int, vocab: int) -> dict:
    from tuilm.config import apply_overrides, from_dict
    from tuilm.run_setup import build_trainer
    from tuilm.train import events as ev

    source = "tiny_shakespeare"
    data_dir = os.environ.get("TUILM_DATA_DIR")
    if not data_dir or not (Path(data_dir) / "tiny_shakespeare.txt").is_file():
        source = str(synthetic_corpus())
    s = SHAPE
    overrides = [
        f"vocab_size={vocab}",
        *(f"{k}={v}" for k, v in s.items()),
        "dropout=0",
        f"max_steps={steps + 5}",
        "eval_interval=1000000",
        "checkpoint_interval=1000000",
        "sample_tokens=0",
        "warmup_steps=5",
    ]
    config = apply_overrides(from_dict({"data": {"source": source}}, "bench"), overrides)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = build_trainer(config, Path(tmp) / "run")
        times = []
        trainer.bus.subscribe(lambda e: times.append(e) if isinstance(e, ev.Step) else None)
        trainer.run()
    steady = sorted(e.step_time for e in times[5:])
    median = steady[len(steady) // 2]
    tokens = s["batch_size"] * s["seq_len"]
    mean = sum(steady) / len(steady)  # the mean includes the health-monitor steps
    return {
        "tokens_per_s": round(tokens / median),
        "tokens_per_s_mean": round(tokens / mean),
        "step_ms_median": round(1000 * median, 2),
        "vocab_size": trainer.dataset.tokenizer.vocab_size,
        "health_interval": trainer.config.health.interval,
        "data": "tiny_shakespeare" if source == "tiny_shakespeare" else "synthetic",
    }


def synthetic_corpus() -> Path:
    import random

    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 8))) for _ in range(500)]
    docs = [" ".join(rng.choice(words) for _ in range(rng.randint(5, 60))) for _ in range(3000)]
    path = Path(tempfile.mkdtemp()) / "synthetic.txt"
    path.write_text("\n\n".join(docs), encoding="utf-8")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ref = reference(args.steps)
    ours = tuilm_trainer(args.steps, 258)
    bpe = tuilm_trainer(args.steps, 10_000)
    print(
        json.dumps(
            {
                "benchmark": "train_throughput",
                "shape": SHAPE,
                "threads": torch.get_num_threads(),
                "torch": torch.__version__,
                "machine": platform.processor() or platform.machine(),
                "reference_nanogpt_style": ref,
                "tuilm_bytes": ours,
                "tuilm_bpe10k": bpe,
                "ratio_tuilm_to_reference": round(ours["tokens_per_s"] / ref["tokens_per_s"], 3),
                "ratio_mean_with_health": round(ours["tokens_per_s_mean"] / ref["tokens_per_s"], 3),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
