"""Step-time overhead of tuilm.Monitor in a plain PyTorch loop at its default cadence, against the same loop
without it.

The model is tuilm's GPT in the tiny_shakespeare_cpu recipe's shape (vocab 4096, seq 128, d_model 128, 4 layers,
batch 32) on random tokens; the loop is what a user writes: forward, backward, clip, AdamW step. The monitored
loop adds `mon.before_step()` and `mon.step(loss, tokens=n)` (one gradient norm and one host sync a step, the
per-layer measurement every health.interval steps). Runs alternate back to back, repeated, so drift on a
shared machine hits both alike. Prints one JSON object; the target is ratio <= 1.05 (and monitor_share, the
fraction of a step spent inside the monitor's calls, measured directly, <= 0.05).

Usage: python benchmarks/monitor_overhead.py [--steps 100] [--repeats 3] [--batch 32]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch
import torch.nn.functional as F


def loop(steps: int, batch: int, monitored: bool, seed: int = 0) -> tuple[float, float]:
    """(Mean seconds per step, mean seconds of it inside the monitor's calls) over `steps` steps after 3 warm-up
    steps. The second is a direct measurement, less at the mercy of a busy machine than the ratio of two runs."""
    from tuilm.config import ModelConfig
    from tuilm.model import GPT
    from tuilm.monitor import Monitor

    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=4096, seq_len=128, d_model=128, n_layers=4, n_heads=4)
    model = GPT(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    data = [torch.randint(0, cfg.vocab_size, (batch, cfg.seq_len + 1), generator=g) for _ in range(8)]
    with tempfile.TemporaryDirectory() as tmp:
        mon = Monitor(model, optimizer, run_dir=tmp, grad_clip=1.0) if monitored else None
        t0 = inside = 0.0
        for i in range(steps + 3):
            if i == 3:
                t0, inside = time.perf_counter(), 0.0
            rows = data[i % len(data)]
            x, y = rows[:, :-1], rows[:, 1:]
            loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
            loss.backward()
            if mon:
                t = time.perf_counter()
                mon.before_step()
                inside += time.perf_counter() - t
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            if mon:
                t = time.perf_counter()
                mon.step(loss, tokens=y.numel())
                inside += time.perf_counter() - t
            else:
                float(loss.detach())  # a plain loop logs its loss too
            optimizer.zero_grad(set_to_none=True)
        elapsed = time.perf_counter() - t0
        if mon:
            mon.close()
    return elapsed / steps, inside / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--steps", type=int, default=100, help="timed steps per run (the default cadence measures every 25)"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    plain, monitored, inside = [], [], []
    for r in range(args.repeats):
        order = (False, True) if r % 2 == 0 else (True, False)
        for m in order:
            step_s, in_monitor_s = loop(args.steps, args.batch, m)
            (monitored if m else plain).append(step_s)
            if m:
                inside.append(in_monitor_s / step_s)
    p, m = min(plain), min(monitored)
    print(
        json.dumps(
            {
                "steps": args.steps,
                "repeats": args.repeats,
                "batch": args.batch,
                "threads": torch.get_num_threads(),
                "plain_step_s": round(p, 5),
                "monitored_step_s": round(m, 5),
                "ratio": round(m / p, 4),
                "monitor_share": round(min(inside), 4),  # of a monitored step's time, spent in the monitor's calls
                "plain_runs": [round(x, 5) for x in plain],
                "monitored_runs": [round(x, 5) for x in monitored],
                "target": "ratio <= 1.05",
            }
        )
    )


if __name__ == "__main__":
    main()
