"""`tuilm train --headless` as a user runs it: piped output, Ctrl-C, --resume, wandb offline."""

import os
import signal
import subprocess
import sys
import time

from tests.events_factory import make_step
from tests.helpers import TINY, run_tuilm
from tuilm.train.metrics_file import read_events

SETS = [arg for item in TINY for arg in ("--set", item)]


def train(*args, env=None, timeout=120):
    return run_tuilm("train", *args, *SETS, env={**os.environ, **(env or {})}, timeout=timeout)


def kinds(run):
    return [type(e).__name__ for e in read_events(run / "metrics.jsonl")]


def test_piped_output_is_plain_log_lines(small_corpus, tmp_path):
    run = tmp_path / "run"
    out = train(str(small_corpus), "--headless", "--steps", "10", "--out", str(run))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("run run: custom on ")
    assert any(line.startswith("step 1 (10%)") and "tok/s  MFU " in line for line in lines)  # a CPU's peak is measured
    assert any(line.startswith("step 5: val loss") and "bits/char" in line and "bits/byte" in line for line in lines)
    assert lines[-1].startswith("completed (max_steps) at step 10") and "tok/s  MFU " in lines[-1]
    assert "\x1b[" not in out.stdout  # no terminal control codes in a pipe
    assert kinds(run)[0] == "RunStarted" and kinds(run)[-1] == "Finished"
    steps = [e for e in read_events(run / "metrics.jsonl") if e.kind == "step"]
    assert steps and all(0 < e.mfu < 1 for e in steps)
    for name in ("last.safetensors", "best.safetensors", "train_state.safetensors", "config.toml"):
        assert (run / name).is_file()


def test_default_run_dir_is_named_after_the_source(small_corpus, tmp_path):
    out = run_tuilm("train", str(small_corpus), "--headless", "--steps", "2", *SETS, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1 and runs[0].name.startswith("small-")


def test_a_second_ctrl_c_quits_at_once_with_130(small_corpus, tmp_path):
    """Not an abort in torch's C++ shutdown (exit 134, "terminate called without an active exception")."""
    run = tmp_path / "run"
    wide = ["--set", "d_model=256", "--set", "n_layers=4"]  # steps long enough for the second Ctrl-C to cut one
    proc = subprocess.Popen(
        [sys.executable, "-m", "tuilm", "train", str(small_corpus), "--headless", "--out", str(run), *SETS, *wide],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    metrics = run / "metrics.jsonl"
    deadline = time.monotonic() + 300  # a loaded machine starts Python and torch slowly
    while not (metrics.exists() and '"event":"step"' in metrics.read_text()):
        assert time.monotonic() < deadline and proc.poll() is None, "training did not start"
        time.sleep(0.05)
    for _ in range(2):
        proc.send_signal(signal.SIGINT)
        time.sleep(0.05)
    _, stderr = proc.communicate(timeout=180)
    assert "stopping now without saving" in stderr
    assert proc.returncode == 130 and "terminate called" not in stderr, (proc.returncode, stderr[-500:])


def test_ctrl_c_stops_cleanly_and_saves_then_resume_continues(small_corpus, tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tuilm", "train", str(small_corpus), "--headless", "--out", str(run), *SETS],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    metrics = run / "metrics.jsonl"
    deadline = time.monotonic() + 300  # a loaded machine starts Python and torch slowly
    while not (metrics.exists() and sum(1 for line in metrics.open() if '"event":"step"' in line) >= 3):
        assert time.monotonic() < deadline and proc.poll() is None, "training did not get to step 3"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 0, stderr
    assert "stopping after this step and saving" in stderr
    events = read_events(metrics)
    finished = events[-1]
    assert type(finished).__name__ == "Finished" and finished.reason == "interrupted"
    assert (run / "last.safetensors").is_file() and f"saved {run / 'last.safetensors'}" in stdout
    stopped_at = finished.step

    out = train("--resume", str(run), "--headless", "--steps", str(stopped_at + 3))
    assert out.returncode == 0, out.stderr
    events = read_events(metrics)
    started = [e for e in events if type(e).__name__ == "RunStarted"]
    assert len(started) == 2 and started[1].resumed_step == stopped_at
    assert events[-1].step == stopped_at + 3
    assert f"resumed at step {stopped_at}" in out.stdout
    assert f"max_steps = {stopped_at + 3}" in (run / "config.toml").read_text()  # what the run now is


def test_resume_needs_a_run(tmp_path):
    out = train("--resume", str(tmp_path), "--headless")
    assert out.returncode == 2 and "nothing to resume" in out.stderr


def test_existing_run_dir_is_not_overwritten(small_corpus, tmp_path):
    run = tmp_path / "run"
    assert train(str(small_corpus), "--headless", "--steps", "1", "--out", str(run)).returncode == 0
    out = train(str(small_corpus), "--headless", "--steps", "1", "--out", str(run))
    assert out.returncode == 2 and "--resume" in out.stderr


def test_wandb_offline(small_corpus, tmp_path):
    run = tmp_path / "run"
    out = train(
        str(small_corpus),
        "--headless",
        "--steps",
        "6",
        "--out",
        str(run),
        "--wandb",
        "--wandb-project",
        "tuilm-test",
        env={"WANDB_MODE": "offline", "WANDB_SILENT": "true"},
        timeout=180,
    )
    assert out.returncode == 0, out.stderr
    offline = list((run / "wandb").glob("offline-run-*"))
    assert len(offline) == 1
    files = list(offline[0].glob("*.wandb"))
    assert len(files) == 1
    # The offline log is protobuf records; the metric names are stored as plain strings in it.
    data = files[0].read_bytes()
    for key in (b"train/loss", b"train/tokens_per_s", b"val/bpc", b"health/grad_norm/block0.attn", b"best_val_bpc"):
        assert key in data, key


def test_finished_line_names_the_reason_only_when_it_adds_something():
    from tuilm.train import events as ev
    from tuilm.train.summaries import finished_line

    def end(status, reason):
        return ev.Finished(60, reason, status, 42.0, 1000, 6.87, 2.72, 6.87, 2.72, 5758.0, None, None)

    assert finished_line(end("stopped", "stopped")).startswith("stopped at step 60 after 42s of training")
    assert finished_line(end("stopped", "interrupted")).startswith("stopped (interrupted) at step 60")
    assert "best val loss 6.8700 (bits/char 2.7200)" in finished_line(end("completed", "time"))


# -- the progress bar follows the limit that ends the run first ------------------------------------------------------


def _step(step=76, tokens=76 * 512, epoch=0.4, elapsed=70.0, progress=0.0):

    return make_step(step=step, epoch=epoch, tokens=tokens, elapsed=elapsed, progress=progress)


def test_the_leading_limit_is_the_one_nearest_its_end():
    from tuilm.train.progress import leading_limit, limit_text

    config = {"train": {"max_steps": 100_000, "time": "2m"}}
    limit = leading_limit(config, _step(elapsed=60.0))
    assert limit.name == "time" and limit.fraction == 0.5
    assert limit_text(_step(elapsed=60.0), limit) == "76 · time 1m00s/2m00s"
    assert "100,000" not in limit_text(_step(elapsed=60.0), limit)
    steps = leading_limit({"train": {"max_steps": 100, "time": "2h"}}, _step())
    assert steps.name == "steps" and limit_text(_step(), steps) == "76/100"
    tokens = leading_limit({"train": {"max_steps": 1000, "max_tokens": 40_000}}, _step())
    assert tokens.name == "tokens" and tokens.fraction == 76 * 512 / 40_000
    epochs = leading_limit({"train": {"max_steps": 1000, "epochs": 1}}, _step(epoch=0.4))
    assert epochs.name == "epochs" and "epoch 0.40/1" in limit_text(_step(), epochs)
    assert leading_limit({"train": {}}, _step()) is None and limit_text(_step(), None) == "76"


def test_the_headless_bar_fills_towards_the_time_budget_not_max_steps():
    import io

    from tuilm.train import events as ev
    from tuilm.train.progress import HeadlessProgress

    bar = HeadlessProgress(stream=io.StringIO(), force_plain=False)
    config = {"train": {"max_steps": 100_000, "time": "2m"}}
    bar(ev.RunStarted("r", "r", "tiny", config, 10, 5, "cpu", "fp32", {}, 100_000))
    bar(_step(elapsed=90.0, progress=0.75))
    task = bar._progress.tasks[0]
    assert (task.completed, task.total) == (750, 1000)
    assert task.fields["limit"] == "76 · time 1m30s/2m00s"
    bar.close()
