"""How long the dashboard's charts take with a long run: thinning 100,000 points for a chart, and one redraw of
every slow panel (the frame included) over 100,000 steps. These were timing assertions in tests/test_tui.py
(under 50 ms and under 0.5 s on the CI machine); as figures they do not fail a suite on a busy machine.

Prints one JSON object. Usage: python benchmarks/chart_speed.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

import numpy as np

from tuilm.train import events as ev
from tuilm.tui.app import Dashboard
from tuilm.tui.store import RunStore, downsample

STEPS = 100_000


def downsample_ms(repeats: int) -> float:
    x = np.arange(STEPS, dtype=float)
    y = np.sin(x / 1000)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        downsample(x, y, 200)
        times.append(time.perf_counter() - t0)
    return round(1000 * statistics.median(times), 2)


async def redraw_cost_ms() -> float:
    store = RunStore()
    for i in range(1, STEPS + 1):
        store(ev.Step(i, i / 1000, i * 512, 5 / (1 + i / 1e4), 1e-3, 5e4, 0.01, 0.5, i % 3 == 0, i * 0.01, i / 1e5))
    app = Dashboard(store=store)
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.pause(0.3)  # the first redraw, then a pull that reads what it cost
        return round(1000 * app._pacer.cost, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    result = {
        "steps": STEPS,
        "downsample_ms": downsample_ms(args.repeats),
        "panel_redraw_cpu_ms": asyncio.run(redraw_cost_ms()),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
