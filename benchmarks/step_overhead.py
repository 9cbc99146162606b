"""Step overhead: steps/s at a shape where the math is negligible, so what the loop does besides it decides.

Shape: 1 layer, d_model 16, 2 heads, seq 16, batch 4 (vocab 258, bytes).
- `reference`: a nanoGPT-style loop (benchmarks/nanogpt.py: forward, loss, backward, clip 1.0, AdamW, one
  loss.item() a step as nanoGPT's train.py does at log_interval 1).
- `tuilm`: tuilm's Trainer with everything on (data pipeline, events, metrics.jsonl, health monitor at its
  default cadence), on tiny Shakespeare or a synthetic corpus, at the default train.log_interval = 1.
- `tuilm_lean`: the same with train.log_interval = 10 (--log-interval): nothing read back between logged steps.
All three run in this process, interleaved over --rounds rounds so that the machine's drift touches them alike.
Prints one JSON object: each round's figures and the median over rounds of the ratio of steps/s (tuilm /
reference).

Usage: python benchmarks/step_overhead.py [--steps 1000] [--rounds 3] [--threads 1] [--log-interval 10]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from nanogpt import reference_step
from train_throughput import synthetic_corpus

SHAPE = {"n_layers": 1, "n_heads": 2, "d_model": 16, "seq_len": 16, "batch_size": 4}


def reference(steps: int, step=None) -> dict:
    step = step or reference_step(258, SHAPE, bias=False)

    for _ in range(20):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = time.perf_counter() - t0
    return {"steps_per_s": round(steps / seconds, 1), "step_ms_mean": round(1000 * seconds / steps, 3)}


def tuilm_trainer(steps: int, log_interval: int) -> dict:
    from tuilm.config import apply_overrides, from_dict
    from tuilm.run_setup import attach_files, build_trainer
    from tuilm.train import events as ev

    source = "tiny_shakespeare"
    data_dir = os.environ.get("TUILM_DATA_DIR")
    if not data_dir or not (Path(data_dir) / "tiny_shakespeare.txt").is_file():
        source = str(synthetic_corpus())
    warm = 20
    overrides = [
        "vocab_size=258",
        *(f"{k}={v}" for k, v in SHAPE.items()),
        "dropout=0",
        f"max_steps={steps + warm}",
        "eval_interval=1000000",
        "checkpoint_interval=1000000",
        "sample_tokens=0",
        "warmup_steps=5",
        f"log_interval={log_interval}",
    ]
    config = apply_overrides(from_dict({"data": {"source": source}}, "bench"), overrides)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = build_trainer(config, Path(tmp) / "run")
        metrics = attach_files(trainer)  # everything on: metrics.jsonl is written as in any run
        marks: dict[str, float] = {}

        def clock(event) -> None:
            if isinstance(event, ev.Step) and event.step >= warm and "start" not in marks:
                marks["start"] = time.perf_counter()
            if isinstance(event, ev.Step):
                marks["end"], marks["last"] = time.perf_counter(), event.step

        trainer.bus.subscribe(clock)
        trainer.run()
        metrics.close()
    measured = marks["last"] - warm
    seconds = marks["end"] - marks["start"]
    return {
        "steps_per_s": round(measured / seconds, 1),
        "step_ms_mean": round(1000 * seconds / measured, 3),
        "health_interval": trainer.config.health.interval,
        "log_interval": log_interval,
        "data": "tiny_shakespeare" if source == "tiny_shakespeare" else "synthetic",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of (reference, tuilm, lean), interleaved")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--log-interval", type=int, default=10, help="train.log_interval of the lean run")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    step = reference_step(258, SHAPE, bias=False)
    rounds = []
    for _ in range(args.rounds):  # interleaved, so a drift of the machine's speed touches all three alike
        rounds.append(
            (reference(args.steps, step), tuilm_trainer(args.steps, 1), tuilm_trainer(args.steps, args.log_interval))
        )
    ratios = [ours["steps_per_s"] / ref["steps_per_s"] for ref, ours, _ in rounds]
    lean_ratios = [lean["steps_per_s"] / ref["steps_per_s"] for ref, _, lean in rounds]
    print(
        json.dumps(
            {
                "benchmark": "step_overhead",
                "shape": SHAPE,
                "threads": torch.get_num_threads(),
                "torch": torch.__version__,
                "machine": platform.processor() or platform.machine(),
                "rounds": args.rounds,
                "reference_nanogpt_style": [r[0] for r in rounds],
                "tuilm": [r[1] for r in rounds],
                "tuilm_lean": [r[2] for r in rounds],
                "ratios_tuilm_to_reference": [round(r, 3) for r in ratios],
                "ratio_tuilm_to_reference": round(statistics.median(ratios), 3),
                "ratio_tuilm_lean_to_reference": round(statistics.median(lean_ratios), 3),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
