"""How `tuilm train` should use a CPU's cores (train.parallel, train.threads; tuilm/train/workers.py), measured on
the command itself: each shape trained headless as one whole process per setting, the settings interleaved over
rounds, steps/s from tuilm's own per-step timing (benchmarks/vs_nanogpt.py's reading of metrics.jsonl).

Settings: `ops1` (torch's intra-op parallelism on one thread), `ops` (torch's default threads), `batch` (the step's
rows split over one thread per core), and `auto` (what tuilm picks). Shapes run from the compute-free (64 tokens a
step) to nanoGPT's CPU example (768) and beyond, AdamW, no dropout, the byte-level vocabulary.

Usage: python benchmarks/cpu_parallel.py [--rounds 2] [--steps-scale 1.0] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vs_nanogpt import header, publish, run_tuilm  # the same command line and reading of its timing

SETTINGS = {
    "ops1": ["--set", "train.parallel=ops", "--set", "train.threads=1"],
    "ops": ["--set", "train.parallel=ops"],
    "batch": ["--set", "train.parallel=batch"],
    "auto": [],
}
# (layers, heads, d_model, seq, batch, steps): tokens a step = seq x batch
SHAPES = [
    (1, 2, 16, 16, 4, 2000),  # 64: vs_nanogpt shape a
    (4, 4, 128, 32, 8, 300),  # 256
    (4, 4, 128, 64, 8, 200),  # 512
    (4, 4, 128, 64, 12, 200),  # 768: nanoGPT's README CPU example, vs_nanogpt shape b
    (2, 4, 128, 64, 16, 200),  # 1024: the tiny_shakespeare_cpu recipe's shape
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps-scale", type=float, default=1.0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    result = {**header("cpu_parallel"), "shapes": []}
    for layers, heads, d, seq, batch, steps in SHAPES:
        shape = {"n_layer": layers, "n_head": heads, "n_embd": d, "block_size": seq, "batch_size": batch}
        steps = max(20, int(steps * args.steps_scale))
        rates: dict[str, list[float]] = {k: [] for k in SETTINGS}
        for _ in range(args.rounds):
            for name, extra in SETTINGS.items():
                rates[name].append(run_tuilm(shape, steps, "cpu", headless=True, extra=extra)["steps_per_s"])
        row = {"shape": shape, "tokens": seq * batch, "steps": steps}
        row.update({k: round(statistics.median(v), 2) for k, v in rates.items()})
        row["by_round"] = rates
        print(json.dumps(row), file=sys.stderr)
        result["shapes"].append(row)
    publish(result, args.json)


if __name__ == "__main__":
    main()
