"""bf16 autocast against fp32 on the CPU at the tiny_shakespeare_cpu shape (issue 12, section 4).

Shape: 4 layers, 4 heads, d_model 128, seq 128, batch 32, vocab 4096 (baseline's tiny_shakespeare_cpu recipe).
One training step is tuilm's model, forward under autocast (or not), cross-entropy, backward, fused AdamW, over
random token ids. The two precisions run back to back in alternating rounds, so that a load that comes and goes
on a shared machine falls on both; the figure is the ratio of median step times.

Prints one JSON object. Usage: python benchmarks/cpu_bf16.py [--steps 20] [--rounds 3] [--threads 0]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from tuilm.device import cpu_native_bf16
from tuilm.model import GPT
from tuilm.model.config import ModelConfig

SHAPE = {"vocab_size": 4096, "seq_len": 128, "d_model": 128, "n_layers": 4, "n_heads": 4}
BATCH = 32


def make_step(bf16: bool):
    torch.manual_seed(0)
    model = GPT(ModelConfig(**SHAPE))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    x = torch.randint(0, SHAPE["vocab_size"], (BATCH, SHAPE["seq_len"]))

    def step() -> float:
        cast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with cast:
            logits = model(x)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), x.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    return step


def timed(step, steps: int) -> list[float]:
    out = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    steps = {"fp32": make_step(False), "bf16": make_step(True)}
    for step in steps.values():  # warm up: allocator, oneDNN kernel selection
        timed(step, 3)
    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for _ in range(args.rounds):
        for name, step in steps.items():
            times[name] += timed(step, args.steps)
    median = {k: statistics.median(v) for k, v in times.items()}
    tokens = BATCH * SHAPE["seq_len"]
    print(
        json.dumps(
            {
                "shape": {**SHAPE, "batch_size": BATCH},
                "native_bf16": cpu_native_bf16(),
                "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                "threads": torch.get_num_threads(),
                "torch": torch.__version__,
                "machine": platform.processor() or platform.machine(),
                "fp32_step_ms": round(1000 * median["fp32"], 1),
                "bf16_step_ms": round(1000 * median["bf16"], 1),
                "fp32_tokens_per_s": round(tokens / median["fp32"]),
                "bf16_tokens_per_s": round(tokens / median["bf16"]),
                "bf16_speedup": round(median["fp32"] / median["bf16"], 3),
                "steps_per_precision": args.steps * args.rounds,
            }
        )
    )


if __name__ == "__main__":
    main()
