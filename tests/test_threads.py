"""Every torch op of a run on one thread (tuilm.train.controls.RunThread, issue 22).

A main thread that ran one OpenMP-parallel op keeps a team of worker threads for the life of the process, and
with it libgomp manages more threads than there are cores: the training thread's workers then stop spinning
between parallel regions, and a small model's steps slow down 2-3x. The OS names threads by the thread that
created them, so a run that keeps torch off the main thread adds no thread under the main thread's name; the run
thread's own workers carry its name (`tuilm-trainer`) and end with it. Measured in fresh interpreters with two
OpenMP threads (the suite's workers run with one, which starts no team at all).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from tests.helpers import TINY

PROBE = textwrap.dedent(
    """
    import json, os, sys, threading

    def named(name):
        # threads of this process (the main one aside) whose kernel name is `name`, by thread id
        me = threading.get_native_id()
        tids = [int(t) for t in os.listdir("/proc/self/task") if int(t) != me]
        return sorted(t for t in tids if open(f"/proc/self/task/{t}/comm").read().strip() == name)

    import numpy, torch  # their own start-up threads (numpy's OpenBLAS server) are there before the run
    main_name = open("/proc/self/comm").read().strip()
    before = named(main_name)
    sys.argv = ["tuilm", *sys.argv[1:]]
    from tuilm.cli import app
    try:
        app()
    except SystemExit as e:
        code = e.code
    print(json.dumps({"code": code, "added": len(set(named(main_name)) - set(before)),
                      "run_threads_left": len(named("tuilm-trainer"))}))
    """
)


def probe(*args: str, cwd) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    env.pop("TUILM_TEST_FORK", None)
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def settings(*extra: str) -> list[str]:
    return [x for s in [*TINY, "max_steps=6", "eval_interval=3", *extra] for x in ("--set", s)]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/task")
def test_headless_training_leaves_no_torch_thread_on_the_main_thread(small_corpus, tmp_path):
    out = probe("train", str(small_corpus), *settings(), "--headless", "--out", str(tmp_path / "run"), cwd=tmp_path)
    assert out["code"] in (0, None)
    assert out["added"] == 0, "the main thread started OpenMP workers: it ran a parallel torch op"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/task")
def test_a_sweep_builds_and_trains_each_run_on_that_runs_own_thread(small_corpus, tmp_path):
    grid = ["--grid", "lr=1e-3,2e-3", "--budget", "4"]
    out = probe("sweep", str(small_corpus), *grid, *settings(), "--out", str(tmp_path / "sweep"), cwd=tmp_path)
    assert out["code"] in (0, None)
    assert out["added"] == 0
