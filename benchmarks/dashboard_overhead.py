"""Training throughput with the live dashboard against headless, and how fast the dashboard answers keys.

Trains the tiny_shakespeare_cpu recipe's model (or the same shape on a synthetic corpus without the data file) for
the same steps, interleaved and repeated so that drift on a shared machine hits each setting alike:
- `headless`: the trainer's thread alone (what `tuilm train --headless` runs, less the progress bar),
- `dashboard`: the same with the dashboard app running (Textual headless, under `run_test`, 160x48: every panel
  on screen), while a pilot presses `l` (log scale) every 1-3 s and times how long each key takes to be handled,
each with torch's CPU thread count at 1 and at torch's default (every core). tokens/s is tokens over training
time (the trainer's own measure, the one the dashboard and the run summary show); wall tokens/s also counts the
time between steps; both leave out the first WARMUP steps. The dashboard runs as run_dashboard sets it up (torch's default threads, startup objects
frozen out of garbage collection). Prints one JSON object; `ratio` is dashboard over headless at torch's default
thread count: the target is >= 0.95, with keys handled within 100 ms.

Measured figures and what they led to: benchmarks/README.md.

Usage: python benchmarks/dashboard_overhead.py [--steps 40] [--repeats 2] [--threads 1 2]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
WARMUP = 5  # steps left out of the rates: torch's first steps are slow, and the app starts meanwhile


def build(source: str, steps: int, run_dir: Path):
    from tuilm.config import apply_overrides
    from tuilm.run_setup import build_trainer, resolve_config

    config = apply_overrides(
        resolve_config("tiny_shakespeare_cpu"),
        [
            f"data.source={json.dumps(source)}",
            f"max_steps={steps}",
            "time=''",
            "eval_interval=1000000",
            "checkpoint_interval=1000000",
            "sample_tokens=0",
        ],
    )
    return build_trainer(config, run_dir, own_thread=True)  # as `tuilm train` builds it


class Clock:
    """Steady-state rates from the Step events after the first WARMUP (which also pay for the app's start)."""

    def __init__(self):
        self.steps: list[tuple[float, object]] = []  # (arrival time, Step)

    def __call__(self, event) -> None:
        from tuilm.train import events as ev

        if isinstance(event, ev.Step):
            self.steps.append((time.perf_counter(), event))

    def rates(self) -> dict:
        (t0, first), (t1, last) = self.steps[WARMUP - 1], self.steps[-1]
        training_time = sum(s.step_time for _, s in self.steps[WARMUP:])
        return {
            "tokens_per_s": round((last.tokens - first.tokens) / training_time),
            "wall_tokens_per_s": round((last.tokens - first.tokens) / (t1 - t0)),
        }


def headless(source: str, steps: int, threads: int) -> dict:
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = build(source, steps, Path(tmp) / "run")
        clock = trainer.bus.subscribe(Clock())
        trainer.start()
        trainer.join()
        assert trainer.error is None, trainer.error
        return clock.rates()


def dashboard(source: str, steps: int, threads: int) -> dict:
    from textual import events

    from tuilm.tui.app import Dashboard
    from tuilm.tui.startup import freeze_startup_objects

    torch.set_num_threads(threads)
    latencies: list[float] = []

    async def drive(app: Dashboard, trainer, clock: Clock) -> float:
        handled = []
        original = app.action_chart

        def timed_action(what: str):
            handled.append(time.perf_counter())
            original(what)

        app.action_chart = timed_action
        async with app.run_test(size=(160, 48)) as pilot:
            while len(clock.steps) < WARMUP:
                await asyncio.sleep(0.1)
            t0, cpu0 = time.perf_counter(), time.thread_time()
            rng = random.Random(0)
            while trainer.thread.is_alive():
                await asyncio.sleep(rng.uniform(1.0, 3.0))  # a key now and then: each redraws the loss chart
                if not trainer.thread.is_alive():
                    break
                # Posted as a terminal's input thread posts it: Pilot's press would add its own waits for an
                # idle process (never, while training), polling fifty times a second.
                pressed, before = time.perf_counter(), len(handled)
                app.post_message(events.Key("l", "l"))
                while len(handled) == before:
                    await asyncio.sleep(0.0005)
                latencies.append(handled[-1] - pressed)
            ui_share = (time.thread_time() - cpu0) / (time.perf_counter() - t0)
            await pilot.press("q")
        return ui_share

    with tempfile.TemporaryDirectory() as tmp:
        trainer = build(source, steps, Path(tmp) / "run")
        clock = trainer.bus.subscribe(Clock())
        app = Dashboard(trainer)
        freeze_startup_objects()  # as run_dashboard does
        ui_share = asyncio.run(drive(app, trainer, clock))
        gc.unfreeze()
        trainer.join()
        assert trainer.error is None, trainer.error
        return {
            **clock.rates(),
            "ui_thread_cpu_share": round(ui_share, 4),
            "key_ms_median": round(1000 * statistics.median(latencies), 1) if latencies else None,
            "key_ms_max": round(1000 * max(latencies), 1) if latencies else None,
            "keys": len(latencies),
        }


def summarise(runs: list[dict]) -> dict:
    out = {"tokens_per_s": round(statistics.median(r["tokens_per_s"] for r in runs))}
    out["wall_tokens_per_s"] = round(statistics.median(r["wall_tokens_per_s"] for r in runs))
    if "key_ms_max" in runs[0]:
        out["ui_thread_cpu_share"] = round(statistics.median(r["ui_thread_cpu_share"] for r in runs), 4)
        out["key_ms_median"] = statistics.median(r["key_ms_median"] for r in runs)
        out["key_ms_max"] = max(r["key_ms_max"] for r in runs)
    out["runs"] = [r["tokens_per_s"] for r in runs]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--threads", type=int, nargs="*", help="torch thread counts to compare (default: 1 and torch's)"
    )
    args = parser.parse_args()
    default_threads = torch.get_num_threads()
    source = "tiny_shakespeare"
    data_dir = os.environ.get("TUILM_DATA_DIR")
    if not data_dir or not (Path(data_dir) / "tiny_shakespeare.txt").is_file():
        from train_throughput import synthetic_corpus

        source = str(synthetic_corpus())
    build(source, 1, Path(tempfile.mkdtemp()) / "warm")  # the tokenizer is trained (and cached) outside the timings

    counts = sorted(set(args.threads or [1, default_threads]) | {default_threads})
    settings = [(mode, n) for n in counts for mode in ("headless", "dashboard")]
    results: dict[tuple[str, int], list[dict]] = {s: [] for s in settings}
    for repeat in range(args.repeats):
        for mode, n in settings if repeat % 2 == 0 else reversed(settings):
            run = headless if mode == "headless" else dashboard
            results[(mode, n)].append(run(source, args.steps, n))

    summary = {f"{mode}_threads{n}": summarise(runs) for (mode, n), runs in results.items()}
    base = summary[f"headless_threads{default_threads}"]
    ours = summary[f"dashboard_threads{default_threads}"]
    print(
        json.dumps(
            {
                "benchmark": "dashboard_overhead",
                "recipe": "tiny_shakespeare_cpu",
                "data": "tiny_shakespeare" if source == "tiny_shakespeare" else "synthetic",
                "steps": args.steps,
                "repeats": args.repeats,
                "cores": os.cpu_count(),
                "torch": torch.__version__,
                "machine": platform.processor() or platform.machine(),
                "torch_default_threads": default_threads,
                **summary,
                "ratio": round(ours["tokens_per_s"] / base["tokens_per_s"], 3),
                "ratio_wall": round(ours["wall_tokens_per_s"] / base["wall_tokens_per_s"], 3),
                "target": ">= 0.95, keys handled within 100 ms",
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
