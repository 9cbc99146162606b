"""Data-parallel training on CPU: gloo, 2 processes launched by torch.distributed.run, a tiny model."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import write_corpus
from tests.helpers import TINY

# A hung job fails the test instead of blocking the suite; both limits are far above a run's time on a loaded
# 2-core machine (a rank waits in a collective while the other starts Python and torch or builds its data).
TIMEOUT = 480  # seconds, a whole job
DIST_TIMEOUT = 240  # seconds, one collective
# A constant rate after warmup: a run stopped at 15 steps and resumed to 30 follows the 30-step run.
STEPS = [
    "--set",
    "eval_interval=10",
    "--set",
    "sample_tokens=0",
    "--set",
    "warmup_steps=5",
    "--set",
    "schedule=constant",
]


def tiny_args(corpus: Path) -> list[str]:
    args = [str(corpus)]
    for override in TINY:
        args += ["--set", override]
    return [*args, *STEPS, "--device", "cpu", "--headless"]


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "TUILM_DIST_TIMEOUT": str(DIST_TIMEOUT)}


def run(args: list[str], nproc: int = 1, module: list[str] | None = None) -> subprocess.CompletedProcess:
    target = module or ["-m", "tuilm"]
    if nproc == 1:
        command = [sys.executable, *target, "train", *args]
    else:
        launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
        command = [sys.executable, *launcher, *target, "train", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT, env=env())


def steps_of(run_dir: Path) -> dict[int, dict]:
    events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [e for e in events if e.get("type") == "step" or e.get("event") == "step"]
    assert steps, events[:3]
    by_step = {e["step"]: e for e in steps}
    assert len(by_step) == len(steps), "a step was written twice: more than one rank writes metrics"
    return by_step


def evals_of(run_dir: Path) -> dict[int, float]:
    events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {e["step"]: e["val_loss"] for e in events if "val_loss" in e and e.get("type", e.get("event")) == "eval"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("dist")
    path = write_corpus(folder, "corpus.txt")
    return path


@pytest.fixture(scope="module")
def one_process(corpus) -> Path:
    out = corpus.parent / "one"
    result = run([*tiny_args(corpus), "--steps", "30", "--out", str(out)])
    assert result.returncode == 0, result.stderr
    return out


def test_two_ranks_match_one_process_and_only_rank_0_writes(corpus, one_process):
    out = corpus.parent / "two"
    result = run([*tiny_args(corpus), "--steps", "30", "--out", str(out)], nproc=2)
    assert result.returncode == 0, result.stderr
    one, two = steps_of(one_process), steps_of(out)
    assert sorted(two) == list(range(1, 31))
    for step in range(1, 31):
        assert two[step]["loss"] == pytest.approx(one[step]["loss"], abs=1e-4), step
        assert two[step]["tokens"] == one[step]["tokens"]
    # Evaluation is sharded over the ranks and all-reduced: the one-process numbers.
    assert evals_of(out) == pytest.approx(evals_of(one_process), abs=1e-5)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in one_process.iterdir())
    started = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert (started["event"], started["ranks"], started["device"], started["dtype"]) == (
        "run_started",
        2,
        "cpu",
        "fp32",
    )
    # Rank 1 prints nothing but errors: one progress bar's worth of output, and no error line.
    assert "error" not in result.stderr.lower()


def test_two_rank_run_resumes_in_one_process(corpus, one_process):
    out = corpus.parent / "resumed"
    first = run([*tiny_args(corpus), "--steps", "15", "--out", str(out)], nproc=2)
    assert first.returncode == 0, first.stderr
    second = run(["--resume", str(out), "--steps", "30", "--device", "cpu", "--headless"])
    assert second.returncode == 0, second.stderr
    one, resumed = steps_of(one_process), steps_of(out)
    assert sorted(resumed) == list(range(1, 31))
    for step in range(16, 31):  # the continuation in one process is the uninterrupted one-process run
        assert resumed[step]["loss"] == pytest.approx(one[step]["loss"], abs=1e-4), step


# The end of every wrapper script below: after its prelude has patched tuilm, run the CLI as `tuilm` would.
RUN_TUILM = """
sys.argv = ["tuilm", *sys.argv[1:]]
from tuilm.cli import main
main()
"""

TEARDOWN_WITNESS = (
    """
import atexit
import os
import sys

atexit.register(lambda: print(f"interpreter teardown on rank {os.environ.get('RANK')}", flush=True))
"""
    + RUN_TUILM
)


def test_ranks_leave_without_the_interpreter_teardown_that_can_abort_them(corpus, tmp_path):
    # Gloo's worker threads can free a collective's tensor during the interpreter's teardown, which aborts the
    # rank in C++ after a finished run (1 run in ~100 under load): a rank leaves once the process group is down.
    script = tmp_path / "witness.py"
    script.write_text(TEARDOWN_WITNESS)
    out = tmp_path / "run"
    result = run([*tiny_args(corpus), "--steps", "3", "--out", str(out)], nproc=2, module=[str(script)])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "completed (max_steps) at step 3" in result.stdout
    assert (out / "last.safetensors").is_file()
    assert "interpreter teardown" not in result.stdout


FAILING_RANK = (
    """
import sys
from tuilm.commands import train
from tuilm.train import distributed
from tuilm.train import events as ev

build = train.build_trainer

def build_failing(*args, **kwargs):
    # through the trainer's public surface: a subscriber that raises inside the loop, as a bug in a step would
    trainer = build(*args, **kwargs)

    def explode(event):
        if isinstance(event, ev.Step) and event.step == 4:
            raise RuntimeError("planted failure on rank 1")

    if distributed.current().rank == 1:
        trainer.bus.subscribe(explode)
    return trainer

train.build_trainer = build_failing
"""
    + RUN_TUILM
)


def test_a_rank_that_raises_ends_the_job(corpus, tmp_path):
    script = tmp_path / "failing_rank.py"
    script.write_text(FAILING_RANK)
    out = tmp_path / "failed"
    result = run([*tiny_args(corpus), "--steps", "1000", "--out", str(out)], nproc=2, module=[str(script)])
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if "planted failure" in line and "rank 1" in line]
    assert lines, result.stderr[-3000:]
    assert "rank 1: training failed at step 4: RuntimeError: planted failure on rank 1" in lines[0]


OOM_ON_RANK_1 = (
    """
import sys
import torch
from tuilm.model import GPT
from tuilm.train import distributed, overlap

overlap.BUCKET_BYTES = 4096  # a bucket a parameter or so: some are sent before rank 1 runs out of memory
init = GPT.__init__

def init_with_limit(self, *args, **kwargs):
    init(self, *args, **kwargs)

    def limited(module, grad_input, grad_output):
        # rank 1 alone runs out of memory, as CUDA would, in the backward pass of more than 2 rows, once the
        # later blocks' gradients are on their way to the other rank
        if distributed.current().rank == 1 and grad_output[0].shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")

    self.blocks[0].register_full_backward_hook(limited)

GPT.__init__ = init_with_limit
"""
    + RUN_TUILM
)


def test_an_out_of_memory_on_one_rank_halves_the_micro_batch_on_every_rank(corpus, tmp_path):
    steps = ["--steps", "12", "--set", "health.interval=1000"]
    reference = tmp_path / "reference"
    result = run([*tiny_args(corpus), *steps, "--set", "micro_batch_size=2", "--out", str(reference)], nproc=2)
    assert result.returncode == 0, result.stderr
    script = tmp_path / "oom_rank.py"
    script.write_text(OOM_ON_RANK_1)
    healed = tmp_path / "healed"
    result = run([*tiny_args(corpus), *steps, "--out", str(healed)], nproc=2, module=[str(script)])
    assert result.returncode == 0, result.stderr[-3000:]
    events = [json.loads(line) for line in (healed / "metrics.jsonl").read_text().splitlines()]
    notes = [e["message"] for e in events if e.get("event") == "log" and "out of memory" in e["message"]]
    assert notes == ["out of memory on rank 1 at micro-batch 4 rows: now 2, step 1 redone"]
    one, two = steps_of(reference), steps_of(healed)
    assert sorted(two) == list(range(1, 13))
    for step in range(1, 13):
        assert two[step]["loss"] == pytest.approx(one[step]["loss"], abs=1e-6), step


@contextlib.contextmanager
def launched(corpus, tmp_path):
    """`tuilm train --nproc 2` started and run until its first save: (launcher, its 2 ranks' pids, run dir); the
    launcher is killed on the way out if it is still there."""
    import time

    out = tmp_path / "run"
    args = [*tiny_args(corpus), "--set", "checkpoint_interval=2", "--steps", "100000", "--out", str(out)]
    child = subprocess.Popen(
        [sys.executable, "-m", "tuilm", "train", *args, "--nproc", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env(),
    )
    try:
        deadline = time.monotonic() + TIMEOUT
        while not (out / "last.safetensors").exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        ranks = subprocess.run(["pgrep", "-P", str(child.pid)], capture_output=True, text=True).stdout.split()
        assert len(ranks) == 2, ranks
        yield child, ranks, out
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def none_left(ranks: list[str]) -> bool:
    return all(
        not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text() for pid in ranks
    )


@pytest.mark.parametrize("signame", ["SIGTERM"])
def test_a_signal_to_the_launcher_stops_and_saves_every_rank_then_exits(corpus, tmp_path, signame):
    """Issue 27, item 7: `tuilm train --nproc 2` forwards SIGTERM to the ranks, waits while they save, and exits
    143; no torchrun or rank is left training as an orphan."""
    import signal

    with launched(corpus, tmp_path) as (child, ranks, out):
        child.send_signal(getattr(signal, signame))
        _, stderr = child.communicate(timeout=TIMEOUT)
    assert child.returncode == 128 + getattr(signal, signame), stderr
    assert "Traceback" not in stderr and "ChildFailedError" not in stderr
    assert none_left(ranks)  # the launcher waited for its ranks
    events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert events[-1]["event"] == "finished" and events[-1]["reason"] == "interrupted"


def test_a_rank_killed_with_sigkill_is_named_in_one_line(corpus, tmp_path):
    """Issue 27, item 7: kill -9 of rank 1 ends the job with one line naming it (not also rank 0's lost
    connection, nor torch's ChildFailedError), exit 1, no rank left."""
    import signal

    with launched(corpus, tmp_path) as (child, ranks, _):
        rank1 = [pid for pid in ranks if b"\0RANK=1\0" in b"\0" + Path(f"/proc/{pid}/environ").read_bytes()]
        assert len(rank1) == 1, ranks
        os.kill(int(rank1[0]), signal.SIGKILL)
        _, stderr = child.communicate(timeout=TIMEOUT)
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert child.returncode == 1, stderr
    assert errors == ["error: rank 1 was killed (SIGKILL); the other ranks were stopped: resume with --resume"]
    assert "Traceback" not in stderr and "ChildFailedError" not in stderr and "Connection" not in stderr
    assert none_left(ranks)


def test_the_reducer_buckets_every_parameter_once_in_reverse_order():
    import torch

    from tuilm.train.overlap import OverlappedReducer

    params = [torch.zeros(n, requires_grad=True) for n in (10, 300, 5, 2000, 7)]
    shapes = [[p.numel() for p in b] for b in OverlappedReducer(params, 0, 2, bucket_bytes=4096).buckets]
    assert shapes == [[7], [2000], [5, 300, 10]]  # a parameter larger than a bucket gets one of its own
    shapes = [[p.numel() for p in b] for b in OverlappedReducer(params, 0, 2, bucket_bytes=1 << 20).buckets]
    assert shapes == [[7, 2000, 5, 300, 10]]
