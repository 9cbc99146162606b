"""Issue 27 (part A): the third round of probes, each kept as a regression test. A write never replaces what is not a
regular file (vocab --out onto a checkpoint or a device); a directory where a run file belongs; a full disk while
writing metrics.jsonl or at the first save; a run whose weights go non-finite, and a resume from one."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import TINY, run_tuilm, tiny_trainer
from tuilm.atomic import NotAFileError, atomic_write_bytes
from tuilm.checkpoint import read_metadata, read_weights
from tuilm.checkpoint.paths import NEXT_STATE
from tuilm.errors import ConfigError
from tuilm.run_setup import report_outcome
from tuilm.train import events as ev
from tuilm.train.metrics_file import MetricsFile, read_events
from tuilm.train.reports import checkpoint_meta


def one_error_line(out) -> str:
    assert "Traceback" not in out.stderr, out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, out.stderr
    return errors[0]


def special_files(folder: Path) -> dict[str, Path]:
    """A directory, a FIFO and (as root) a character device, each where a file could be written."""
    made = {"directory": folder / "a_dir", "fifo": folder / "a_fifo"}
    made["directory"].mkdir()
    os.mkfifo(made["fifo"])
    if os.geteuid() == 0:
        made["device"] = folder / "a_device"
        os.mknod(made["device"], stat.S_IFCHR | 0o666, os.makedev(1, 7))  # /dev/full's numbers, in tmp
    return made


def test_an_atomic_write_never_replaces_what_is_not_a_regular_file(tmp_path):
    for kind, path in special_files(tmp_path).items():
        before = os.lstat(path)
        with pytest.raises(NotAFileError, match="left alone"):
            atomic_write_bytes(path, b"data")
        after = os.lstat(path)
        assert (after.st_mode, after.st_ino) == (before.st_mode, before.st_ino), kind
    assert not list(tmp_path.glob(".*.tmp"))  # refused before a temp file was made


def test_vocab_out_refuses_a_checkpoint_a_directory_and_a_device(trained_run, small_corpus, tmp_path):
    checkpoint = tmp_path / "last.safetensors"
    shutil.copy(trained_run / "last.safetensors", checkpoint)
    kept = checkpoint.read_bytes()
    for target in [checkpoint, *special_files(tmp_path).values()]:
        out = run_tuilm("vocab", "train", str(small_corpus), "--size", "300", "--out", str(target))
        assert out.returncode == 2 and str(target) in one_error_line(out), out.stderr
    assert checkpoint.read_bytes() == kept
    tokenizer = tmp_path / "tok.json"
    for _ in range(2):  # a tokenizer it wrote may be written again
        out = run_tuilm("vocab", "train", str(small_corpus), "--size", "300", "--out", str(tokenizer))
        assert out.returncode == 0, out.stderr
    assert tokenizer.read_bytes().startswith(b"{")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=st.binary(max_size=300) | st.text(max_size=200).map(lambda t: t.encode()))
def test_vocab_out_never_overwrites_a_file_that_is_not_a_tokenizer(tmp_path, content):
    from tuilm.commands.vocab import refuse_to_clobber

    path = tmp_path / "target"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match="not a tokenizer"):
        refuse_to_clobber(path)
    assert path.read_bytes() == content


@pytest.mark.parametrize("name", ["metrics.jsonl", "config.toml", "best.safetensors"])
def test_a_directory_where_a_run_file_belongs_is_one_line_before_training(small_corpus, tmp_path, name):
    run_dir = tmp_path / "run"
    (run_dir / name).mkdir(parents=True)
    out = run_tuilm("train", str(small_corpus), "--headless", "--out", str(run_dir), "--steps", "2")
    assert out.returncode == 2 and f"{name} is a directory" in one_error_line(out), out.stderr
    assert "tokenizer" not in out.stderr  # refused before the data was prepared
    assert (run_dir / name).is_dir()


def full_after(monkeypatch, budget: int) -> None:
    """metrics.jsonl's os.write takes `budget` bytes in all (the last write only in part), then ENOSPC."""
    from tuilm.train import metrics_file

    real_write = os.write
    left = [budget]

    def write(fd, data):
        if left[0] >= len(data):
            left[0] -= len(data)
            return real_write(fd, data)
        if left[0] > 0:  # the disk fills mid-line: part of it is written
            n, left[0] = left[0], 0
            return real_write(fd, bytes(data[:n]))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(metrics_file.os, "write", write)


def test_a_full_disk_while_writing_metrics_keeps_whole_lines_and_says_so(small_corpus, tmp_path, monkeypatch):
    trainer, _ = tiny_trainer(small_corpus, tmp_path / "run", "max_steps=50", "checkpoint_interval=1000")
    metrics = MetricsFile(trainer.run_dir / "metrics.jsonl")
    trainer.bus.subscribe(metrics)
    full_after(monkeypatch, 6000)  # RunStarted and a few steps fit, then the disk is full mid-line
    trainer.run()  # in this thread: an exception escaping a subscriber would be raised here
    monkeypatch.undo()
    metrics.close()
    assert isinstance(trainer.error, OSError) and trainer.error.errno == errno.ENOSPC
    raw = (trainer.run_dir / "metrics.jsonl").read_bytes()
    assert raw.endswith(b"\n") and 0 < len(raw) <= 6000  # cut back to its last whole line
    events = read_events(trainer.run_dir / "metrics.jsonl")
    assert not [e for e in events if isinstance(e, ev.CheckpointSaved)]  # nothing promised that was not written
    with pytest.raises(ConfigError) as caught:
        report_outcome(trainer)
    assert "metrics.jsonl" in str(caught.value) and "no checkpoint of this run was written" in str(caught.value)
    trainer.run_lock.release()


def test_a_full_disk_at_the_first_save_says_there_is_no_checkpoint_and_cleans_up(small_corpus, tmp_path, monkeypatch):
    from tuilm import atomic

    real_temp_file = atomic.temp_file

    def full_for_last(path: Path, suffix: str = ".tmp"):
        if path.name == "last.safetensors":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_temp_file(path, suffix)

    monkeypatch.setattr(atomic, "temp_file", full_for_last)
    trainer, _ = tiny_trainer(small_corpus, tmp_path / "run", "max_steps=3", "eval_interval=1000")
    trainer.run()
    with pytest.raises(ConfigError) as caught:
        report_outcome(trainer)
    message = str(caught.value)
    assert "no checkpoint of this run was written" in message and "intact" not in message
    assert not (trainer.run_dir / NEXT_STATE).exists() and not list(trainer.run_dir.glob(".*.tmp"))
    trainer.run_lock.release()


def poison_at(trainer, step: int) -> None:
    """The weights turn NaN after `step`: the remaining steps are skipped, fewer than health's 10 in a row."""

    def poison(event: ev.Event) -> None:
        if isinstance(event, ev.Step) and event.step == step:
            with torch.no_grad():
                next(trainer.model.parameters()).fill_(float("nan"))

    trainer.bus.subscribe(poison)


def test_a_run_whose_weights_go_non_finite_ends_diverged_and_saves_none_of_them(small_corpus, tmp_path, capsys):
    trainer, _ = tiny_trainer(small_corpus, tmp_path / "run", "max_steps=6", "checkpoint_interval=2", "eval_interval=1")
    poison_at(trainer, 3)
    result = trainer.run()
    assert result.status == "diverged" and result.reason == "nonfinite"
    assert report_outcome(trainer) == 1
    assert "training diverged (nonfinite) at step 4" in capsys.readouterr().err  # the save at step 4 found NaN
    for name in ("last.safetensors", "best.safetensors"):
        weights = read_weights(trainer.run_dir / name)
        assert all(bool(torch.isfinite(t).all()) for t in weights.values()), name
    assert int(read_metadata(trainer.run_dir / "last.safetensors")["step"]) == 2  # the last finite save
    trainer.run_lock.release()


def test_a_resume_from_non_finite_weights_is_one_line(small_corpus, tmp_path):
    trainer, _ = tiny_trainer(small_corpus, tmp_path / "run", "max_steps=2")
    trainer.run()
    with torch.no_grad():
        next(trainer.model.parameters()).fill_(float("nan"))
    trainer.files.save_model(trainer.files.last, trainer.model, checkpoint_meta(trainer))  # as an older tuilm did
    trainer.run_lock.release()
    out = run_tuilm("train", "--resume", str(trainer.run_dir), "--headless", "--steps", "4")
    assert out.returncode == 2 and "NaN or Inf" in one_error_line(out), out.stderr


def test_a_run_that_diverges_in_fewer_than_10_skips_exits_non_zero_with_one_line(small_corpus, tmp_path):
    sets = [a for item in [*TINY, "optimizer=adamw", "lr=1e6"] for a in ("--set", item)]
    out = run_tuilm("train", str(small_corpus), "--headless", "--out", str(tmp_path / "run"), "--steps", "6", *sets)
    assert out.returncode == 1 and "diverged" in one_error_line(out), out.stderr


@pytest.mark.parametrize("setting", ["train.z_loss=inf", "train.muon_lr=1e308"])
def test_settings_that_can_only_diverge_are_refused_before_training(small_corpus, tmp_path, setting):
    sets = [a for item in [*TINY, setting] for a in ("--set", item)]
    out = run_tuilm("train", str(small_corpus), "--headless", "--out", str(tmp_path / "run"), "--steps", "6", *sets)
    assert out.returncode == 2 and setting.split("=")[0] in one_error_line(out), out.stderr


def test_a_recipe_too_large_for_a_checkpoint_header_is_refused_at_load(tmp_path, small_corpus):
    recipe = tmp_path / "huge.toml"
    recipe.write_text(f'description = "{"x" * (2 << 20)}"\n[data]\nsource = "{small_corpus}"\n')
    out = run_tuilm("train", str(recipe), "--headless", "--out", str(tmp_path / "run"), "--steps", "2")
    assert out.returncode == 2 and "too large for a recipe" in one_error_line(out), out.stderr
    assert not (tmp_path / "run").exists()


def test_a_header_over_safetensors_limit_is_never_written_and_never_called_truncated(
    trained_run, tmp_path, monkeypatch
):
    from tuilm.checkpoint import header, integrity
    from tuilm.errors import CheckpointError

    path = tmp_path / "last.safetensors"
    shutil.copy(trained_run / "last.safetensors", path)
    kept = path.read_bytes()
    monkeypatch.setattr(integrity, "MAX_HEADER", 1000)  # a few KB of header, as if the config were 100 MiB long
    trainer, _ = tiny_trainer(trained_run.parent / "corpus.txt", tmp_path / "other", "max_steps=1")
    with pytest.raises(CheckpointError, match="over safetensors' limit"):
        trainer.files.save_model(path, trainer.model, checkpoint_meta(trainer))
    trainer.run_lock.release()
    assert path.read_bytes() == kept  # the file it would have replaced is untouched
    monkeypatch.setattr(header, "MAX_HEADER", 1000)  # a reader meets a header over the limit
    with pytest.raises(CheckpointError) as caught:
        read_metadata(path)
    assert "over safetensors' limit" in str(caught.value) and "truncated" not in str(caught.value)


def test_counts_that_cannot_mean_anything_are_refused_before_any_work(small_corpus, tmp_path):
    sweep = run_tuilm("sweep", "tiny_shakespeare_cpu", "--grid", "lr=1e-3", "--budget", "2", "--seeds", "100000000")
    assert sweep.returncode == 2 and "100,000,000 runs" in one_error_line(sweep), sweep.stderr
    lrfind = run_tuilm("lr-find", str(small_corpus), "--steps", "1000000000")
    assert lrfind.returncode == 2 and "--steps 1000000000" in one_error_line(lrfind), lrfind.stderr
    assert "tokenizer" not in lrfind.stderr  # refused before the data was prepared


def test_a_long_sample_stops_on_ctrl_c_and_keeps_what_it_sampled(trained_run):
    import signal
    import subprocess
    import sys

    child = subprocess.Popen(
        [sys.executable, "-m", "tuilm", "sample", "-m", str(trained_run), "-n", "1000000000", "--seed", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # a background shell ignores it
    )
    first = child.stdout.read(1)  # sampling has started
    child.send_signal(signal.SIGINT)
    out, err = child.communicate(timeout=60)
    assert child.returncode == 130, err
    assert first and out.endswith(b"\n")
    assert b"stopped by Ctrl-C after" in err and b"Traceback" not in err


@pytest.mark.parametrize("how", ["SIGTERM", "SIGHUP with the terminal closed"])
def test_the_dashboard_saves_and_exits_on_sigterm_and_a_closed_terminal(small_corpus, tmp_path, how):
    """Issue 27, item 6: the dashboard in a real terminal (a pty) saves and exits 0, as headless does; it used to
    save, then wait for a key (and spin, the terminal gone)."""
    import pty
    import select
    import signal
    import sys
    import time

    run_dir = tmp_path / "run"
    sets = [a for item in [*TINY, "max_steps=100000", "eval_interval=10"] for a in ("--set", item)]
    pid, fd = pty.fork()
    if pid == 0:  # the child: the dashboard, as a user starts it in a terminal
        os.execv(
            sys.executable, [sys.executable, "-m", "tuilm", "train", str(small_corpus), "--out", str(run_dir), *sets]
        )
    deadline = time.monotonic() + 120
    try:
        while not (run_dir / "last.safetensors").exists() and time.monotonic() < deadline:
            if select.select([fd], [], [], 0.1)[0]:
                os.read(fd, 1 << 16)  # keep the terminal drained
        assert (run_dir / "last.safetensors").exists(), "training did not get to its first save"
        if how == "SIGTERM":
            os.kill(pid, signal.SIGTERM)
        else:
            os.close(fd)  # the window closes: the kernel sends SIGHUP
        while time.monotonic() < deadline:
            if how == "SIGTERM" and select.select([fd], [], [], 0.1)[0]:
                with contextlib.suppress(OSError):
                    os.read(fd, 1 << 16)
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.05)
        else:
            raise AssertionError("the dashboard did not exit")
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)
        with contextlib.suppress(ProcessLookupError, ChildProcessError):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    finished = [e for e in read_events(run_dir / "metrics.jsonl") if isinstance(e, ev.Finished)]
    assert len(finished) == 1 and finished[0].status == "stopped"
    assert int(read_metadata(run_dir / "last.safetensors")["step"]) == finished[0].step
