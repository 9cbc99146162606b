"""Step-time overhead of the gradient-health monitor at its default cadence, against none.

Trains the tiny_shakespeare_cpu recipe's model (or the same shape on a synthetic corpus without the data file)
for the same steps three ways: health off (interval 0), the default interval, and every step (interval 1, to
show the cost of one measurement). Runs are interleaved and repeated so that drift on a shared machine hits
each setting alike. Prints one JSON object; the target is ratio_default <= 1.05.

Usage: python benchmarks/health_overhead.py [--steps 100] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import torch


def mean_step_time(interval: int, steps: int, source: str) -> float:
    from tuilm.config import apply_overrides
    from tuilm.run_setup import build_trainer, resolve_config
    from tuilm.train import events as ev

    config = resolve_config("tiny_shakespeare_cpu")
    config = apply_overrides(
        config,
        [
            f"data.source={json.dumps(source)}",
            f"health.interval={interval}",
            f"max_steps={steps + 5}",
            "time=''",
            "eval_interval=1000000",
            "checkpoint_interval=1000000",
            "sample_tokens=0",
        ],
    )
    with tempfile.TemporaryDirectory() as tmp:
        trainer = build_trainer(config, Path(tmp) / "run")
        times = []
        trainer.bus.subscribe(lambda e: times.append(e.step_time) if isinstance(e, ev.Step) else None)
        trainer.run()
    return sum(times[5:]) / len(times[5:])


def main() -> None:
    from tuilm.config import HealthConfig

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(2)
    source = "tiny_shakespeare"
    data_dir = os.environ.get("TUILM_DATA_DIR")
    if not data_dir or not (Path(data_dir) / "tiny_shakespeare.txt").is_file():
        from train_throughput import synthetic_corpus

        source = str(synthetic_corpus())
    default = HealthConfig().interval
    settings = {"off": 0, "default": default, "every_step": 1}
    results: dict[str, list[float]] = {k: [] for k in settings}
    for _ in range(args.repeats):
        for name, interval in settings.items():
            results[name].append(mean_step_time(interval, args.steps, source))
    mean = {k: sum(v) / len(v) for k, v in results.items()}
    print(
        json.dumps(
            {
                "benchmark": "health_overhead",
                "recipe": "tiny_shakespeare_cpu",
                "steps": args.steps,
                "repeats": args.repeats,
                "threads": torch.get_num_threads(),
                "default_interval": default,
                "step_ms": {k: round(1000 * v, 2) for k, v in mean.items()},
                "ratio_default": round(mean["default"] / mean["off"], 4),
                "ratio_every_step": round(mean["every_step"] / mean["off"], 4),
                "target": "ratio_default <= 1.05",
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
