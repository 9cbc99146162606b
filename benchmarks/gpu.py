"""GPU throughput: tokens/s, model FLOPs utilisation, step overhead, torch.compile on/off, dashboard on/off.

Shapes: the `tiny_shakespeare_gpu` recipe's, when it exists (else 6 layers x 384), and a ~100M-parameter GPT-2
small-like one (12 layers x 768, 12 heads, seq 1024). MFU is the trainer's own (tuilm/flops.py): 6N + 12·L·d·T
FLOPs per token (N the matmul weights: parameters without the lookup tables, plus the output head) against the
device's bf16 dense peak from tuilm.flops.PEAKS.

Needs a CUDA device: without one it says so and exits 2. Usage: python benchmarks/gpu.py [--steps 50]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

SHAPES = {
    "tiny_shakespeare_gpu": {"n_layers": 6, "d_model": 384, "n_heads": 6, "seq_len": 256, "batch_size": 64},
    "gpt2_small_100m": {"n_layers": 12, "d_model": 768, "n_heads": 12, "seq_len": 1024, "batch_size": 16},
}


def run(shape: dict, steps: int, *, compile: bool, dashboard: bool) -> dict:
    from tuilm.config import apply_overrides, from_dict
    from tuilm.run_setup import attach_files, build_trainer
    from tuilm.train import events as ev

    overrides = [
        *(f"{k}={v}" for k, v in shape.items()),
        "vocab_size=4096",
        f"max_steps={steps + 10}",
        "eval_interval=1000000",
        "checkpoint_interval=1000000",
        "sample_tokens=0",
        "log_interval=10",
        f"compile={str(compile).lower()}",
    ]
    config = apply_overrides(from_dict({"data": {"source": "tiny_shakespeare"}}, "gpu"), overrides)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = build_trainer(config, Path(tmp) / "run")
        metrics = attach_files(trainer)
        marks = {}
        trainer.bus.subscribe(
            lambda e: marks.setdefault(e.step, time.perf_counter()) if isinstance(e, ev.Step) else None
        )
        if dashboard:
            import asyncio

            from tuilm.tui.app import Dashboard

            async def drive():
                app = Dashboard(trainer)
                async with app.run_test(headless=True) as pilot:
                    while trainer.thread is None or trainer.thread.is_alive():
                        await pilot.pause(0.2)

            asyncio.run(drive())
        else:
            trainer.run()
        metrics.close()
    logged = sorted(marks)
    first, last = logged[0], logged[-1]
    seconds = marks[last] - marks[first]
    steps_done = last - first
    tokens = steps_done * shape["batch_size"] * shape["seq_len"]
    mfu = trainer.flops.mfu(tokens / seconds)
    return {
        "tokens_per_s": round(tokens / seconds),
        "step_ms": round(1000 * seconds / steps_done, 2),
        "tflops": round(tokens / seconds * trainer.flops.per_token / 1e12, 1),
        "mfu": round(mfu, 3) if mfu is not None else None,
        "compile": compile,
        "dashboard": dashboard,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("benchmarks/gpu.py needs a CUDA device, and torch sees none here", file=sys.stderr)
        return 2
    results = {}
    for name, shape in SHAPES.items():
        results[name] = [
            run(shape, args.steps, compile=False, dashboard=False),
            run(shape, args.steps, compile=True, dashboard=False),
            run(shape, args.steps, compile=True, dashboard=True),
        ]
    print(
        json.dumps(
            {"benchmark": "gpu", "device": torch.cuda.get_device_name(), "torch": torch.__version__, **results},
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
