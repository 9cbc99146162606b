"""How a run uses the CPU's cores (train.parallel, train.threads): torch's intra-op threads, one thread for a
tiny step, or the step's rows split over threads.

`auto` (the default) leaves torch its intra-op threads, except for a step too small to share: below
SMALL_STEP_FLOPS the step is mostly Python and dispatch, and one thread, which never waits at a barrier for
another, does it fastest. Measured on the `tuilm train` command itself on a quiet 2-core VM
(benchmarks/cpu_parallel.py, benchmarks/README.md): one thread 1.2-1.3x two at 3-35 MFLOP a step, about even at
190-340 MFLOP, two threads 1.5x one from 1.3 GFLOP up.

`batch` splits the step's rows into one micro-batch per thread, each thread on one core with one intra-op thread,
meeting once a step when their gradients are added. On a quiet machine it is no faster than torch's own threads
(0.9-1.0x at 512-1024 tokens), so it is not the default; where other processes take the cores now and then, it
degrades less, since torch's threads meet at a barrier in every operation and a core taken away stalls them all
(1.2-1.7x torch's threads, measured with other work at idle priority on the same VM). The gradients are the
micro-batches' own, added in micro-batch order, so a step is exactly the step that runs the same micro-batches one
after another (`parallel = "ops"`, `threads = 1`, `micro_batch_size = rows / workers`), whichever thread finishes
first; tests/test_workers.py checks it. Dropout would draw from one random generator in an order the threads
decide, so "batch" needs model.dropout = 0.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from tuilm.errors import ConfigError
from tuilm.flops import model_flops_per_token
from tuilm.train.accel import wants_compile

# Below this many training FLOPs a step (per process), one intra-op thread beats more (module docstring).
SMALL_STEP_FLOPS = 3e8
# torch's intra-op default (physical cores, or OMP_NUM_THREADS), read before any run of this process changes it.
DEFAULT_THREADS = torch.get_num_threads()


@dataclass(frozen=True)
class Plan:
    threads: int  # intra-op threads of the training thread (0: torch's default)
    # > 1: the step's micro-batches run on this many threads at once, one intra-op thread each, while the training
    # thread waits; what it runs itself (the optimizer step, clipping) keeps its threads: the cores are free then.
    workers: int
    why: str  # one line for the start of the run ("" when nothing is decided beyond the settings)

    def used(self) -> int:
        """The cores a step runs on (for MFU's peak), once start() has applied the plan."""
        return max(self.workers, torch.get_num_threads())


def plan(config, device: torch.device, precision, world: int, compile_on: bool, flops_per_token: float) -> Plan:
    """The threads of one process for this run: train.parallel and train.threads resolved (module docstring)."""
    t = config.train
    rows = -(-config.rows_per_step // world)
    if device.type != "cpu":
        return Plan(t.threads, 1, "")
    if t.parallel == "batch":
        blocker = batch_blocker(config, precision, world, compile_on, rows)
        if blocker:
            raise ConfigError(f"train.parallel = batch {blocker}; or use train.parallel = ops")
        n = min(t.threads or DEFAULT_THREADS, rows)
        return Plan(0, n, f"cpu: the step's {rows} rows split over {n} threads (train.parallel = batch)")
    if t.parallel == "ops" or t.threads:  # threads set alone: torch's own parallelism, as asked
        return Plan(t.threads, 1, "")
    flops = flops_per_token * rows * config.model.seq_len
    if flops < SMALL_STEP_FLOPS and DEFAULT_THREADS > 1:
        return Plan(1, 1, f"cpu: one thread for a step of {flops / 1e6:.0f} MFLOP (train.parallel, train.threads)")
    return Plan(0, 1, "")


def batch_blocker(config, precision, world: int, compile_on: bool, rows: int) -> str:
    """Why the rows cannot be split over threads ("" when they can), as the end of a sentence."""
    if config.model.dropout > 0:
        return f"needs model.dropout = 0 (it is {config.model.dropout}): dropout's random draws would depend on timing"
    if world > 1:
        return "is for one process: under --nproc each process already trains a share of the rows"
    if compile_on:
        return "runs the eager model: turn torch.compile off (--no-compile)"
    if precision.scaler:
        return "does not run fp16 with a GradScaler: use bf16 or fp32"
    if config.train.micro_batch_size not in ("auto", 0):
        return "sets the micro-batch itself: leave train.micro_batch_size = auto"
    if rows < 2:
        return "needs at least 2 rows a step"
    return ""


class Workers:
    """The threads that run a step's micro-batches at once (Plan.workers of them, one intra-op thread each)."""

    def __init__(self, n: int):
        self.n = n
        self.pool = ThreadPoolExecutor(
            n, thread_name_prefix="tuilm-worker", initializer=torch.set_num_threads, initargs=(1,)
        )

    def map(self, fn, items: list) -> list:
        """fn over items on the workers; the results in the items' order (exceptions re-raised here, first first)."""
        futures = [self.pool.submit(fn, item) for item in items]
        return [f.result() for f in futures]

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def setup(config, device: torch.device, precision, world: int, model) -> tuple[Plan, Workers | None]:
    """The plan for this run, applied on the training thread (torch's default again where it decides nothing: an
    earlier run in this process may have changed it), and its workers started."""
    compile_on = wants_compile(config.train.compile, device)
    p = plan(config, device, precision, world, compile_on, model_flops_per_token(model))
    torch.set_num_threads(p.threads or DEFAULT_THREADS)
    return p, Workers(p.workers) if p.workers > 1 else None


def close(workers: Workers | None) -> None:
    """End the workers' threads (None: nothing to end); returns None, what the trainer holds after."""
    if workers:
        workers.close()
