"""`--notify CMD`: a run that finishes, fails, dies, alerts or reaches a target is told once, to a shell command,
as JSON on its stdin; what was already known when the board or watch started is not news."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.board_runs import line, started, step_line, write_run
from tests.events_factory import make_eval, make_step
from tests.helpers import run_tuilm
from tuilm.commands import board as board_commands
from tuilm.errors import ConfigError
from tuilm.notify import Notifier, parse_target
from tuilm.runlock import RunLock
from tuilm.train import events as ev
from tuilm.tui.board_data import BoardModel

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


def told(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def look_all(model: BoardModel, notifier: Notifier, times: int = 1) -> None:
    for _ in range(times):
        for run, new in model.poll(discover=True):
            notifier.look(run, new)


def append(run_dir: Path, *events: ev.Event) -> None:
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write("".join(line(e) for e in events))


def watching(tmp_path: Path, steps: int = 5, target: str | None = None, **run):
    """A running-looking run under tmp_path/runs, a model of the folder and a notifier appending to told.jsonl."""
    run_dir = write_run(tmp_path / "runs", "r", steps, end=None, **run)
    out = tmp_path / "told.jsonl"
    notifier = Notifier(f"cat >> {out}", parse_target(target) if target else None)
    return run_dir, out, notifier, BoardModel([tmp_path / "runs"])


WRITER = """
import sys, time
from tuilm.runlock import RunLock
lock = RunLock(sys.argv[1]).acquire()
with open(sys.argv[1] + "/metrics.jsonl", "a") as f:
    f.write(sys.argv[2])
print("ready", flush=True)
time.sleep(600)
"""


def test_a_run_killed_with_sigkill_is_told_dead_exactly_once(tmp_path):
    run_dir = tmp_path / "runs" / "doomed"
    run_dir.mkdir(parents=True)
    first = line(started("doomed")) + step_line(1, 100, 5.0, 1e-3, 1.0)
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(run_dir), first], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        out = tmp_path / "told.jsonl"
        notifier = Notifier(f"cat >> {out}")
        model = BoardModel([tmp_path / "runs"])
        look_all(model, notifier, 2)
        assert model.runs[run_dir].status == "running" and told(out) == []
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        look_all(model, notifier, 5)
        notifier.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    notices = told(out)
    assert [n["event"] for n in notices] == ["dead"]
    assert notices[0]["run"] == "doomed" and notices[0]["status"] == "dead" and notices[0]["step"] == 1
    assert notices[0]["text"].startswith("tuilm: doomed died at step 1")


def test_an_alert_is_told_once_then_the_end(tmp_path):
    run_dir, out, notifier, model = watching(tmp_path, 30)
    with RunLock(run_dir):
        look_all(model, notifier)
        append(run_dir, ev.Alert(31, "exploding", "bad", "gradient norm 1e5", layer="block0.mlp"))
        look_all(model, notifier, 4)
        append(run_dir, ev.Alert(40, "exploding", "bad", "gradient norm 1e6", layer="block0.mlp"))
        look_all(model, notifier, 2)
        append(run_dir, ev.Finished(50, "max_steps", "completed", 3.0, 6400, None, 1.5, None, 1.5, 2000.0, None, None))
        look_all(model, notifier, 3)
    look_all(model, notifier, 2)  # the lock is gone, but the run ended: not dead
    notifier.close()
    notices = told(out)
    assert [(n["event"], n.get("alert_step")) for n in notices] == [("alert", 31), ("alert", 40), ("finished", None)]
    assert notices[0]["code"] == "exploding" and notices[0]["layer"] == "block0.mlp"
    assert notices[2]["reason"] == "max_steps" and notices[2]["status"] == "completed"


def test_what_was_known_at_the_start_is_not_news_but_a_new_run_is(tmp_path):
    write_run(tmp_path / "runs", "old", 20, alerts_at=(5,))
    write_run(tmp_path / "runs", "old-failed", 20, end="failed")
    out = tmp_path / "told.jsonl"
    notifier = Notifier(f"cat >> {out}")
    model = BoardModel([tmp_path / "runs"])
    look_all(model, notifier, 2)
    write_run(tmp_path / "runs" / "sweep", "new", 20, end="failed")
    look_all(model, notifier, 2)
    notifier.close()
    assert [(n["event"], n["run"]) for n in told(out)] == [("failed", "sweep/new")]


def test_a_target_is_told_once(tmp_path):
    run_dir, out, notifier, model = watching(tmp_path, 10, "val_bpc=1.5", eval_every=0)
    with RunLock(run_dir):
        look_all(model, notifier)
        append(run_dir, make_eval(step=11, val_loss=3.0, val_ppl=20.0, val_bpc=1.6, best_val_loss=3.0, train_loss=3.0))
        look_all(model, notifier)
        append(
            run_dir,
            make_eval(step=12, val_bpc=1.4),
            make_eval(step=13, val_loss=1.9, val_ppl=6.7, val_bpc=1.3, best_val_loss=1.9, train_loss=1.9),
        )
        look_all(model, notifier, 3)
    notifier.close()
    notices = told(out)
    assert [(n["event"], n["target"]) for n in notices] == [("target", "val_bpc=1.5")]
    assert notices[0]["best_val_bpc"] == 1.3  # the best when it was read


def test_watch_notify_thread_tells_the_end(tmp_path, monkeypatch):
    monkeypatch.setattr(board_commands, "NOTIFY_INTERVAL", 0.05)
    run_dir = write_run(tmp_path, "watched", 10, end=None)
    out = tmp_path / "told.jsonl"
    with RunLock(run_dir):
        notices = board_commands.watch_notices(run_dir, f"cat >> {out}", "step=12")
        append(
            run_dir,
            make_step(
                step=12,
                epoch=1.0,
                tokens=1536,
                tokens_per_s=2000.0,
                step_time=0.05,
                grad_norm=1.0,
                elapsed=0.6,
                progress=0.012,
            ),
        )
        time.sleep(0.5)
        append(run_dir, ev.Failed(12, "RuntimeError: out of memory"))
        time.sleep(0.5)
    notices.stop()
    events = [(n["event"], n["run"]) for n in told(out)]
    assert events == [("target", "watched"), ("failed", "watched")]


def test_a_failing_command_is_noted_not_raised(tmp_path):
    run_dir, _, _, model = watching(tmp_path)
    notifier = Notifier("exit 7")
    with RunLock(run_dir):
        look_all(model, notifier)
        append(run_dir, ev.Alert(6, "loss_spike", "warn", "spike"))
        look_all(model, notifier)
    notifier.close()
    assert notifier.failures == ["notify: 'exit 7' exited with 7"]


async def test_the_board_tells_while_it_shows(tmp_path):
    from tuilm.tui.board import Board

    run_dir, out, notifier, model = watching(tmp_path)
    with RunLock(run_dir):
        look_all(model, notifier)
        app = Board(model, notifier=notifier)
        async with app.run_test(size=(80, 24)):
            append(run_dir, ev.Alert(6, "loss_spike", "warn", "spike"))
            app.tick()
            app.tick()
    notifier.close()
    assert [n["event"] for n in told(out)] == ["alert"]


def test_bad_targets_are_refused_in_one_line(tmp_path):
    for text in ("loss", "val_bpc=abc", "speed=3", "step=nan"):
        with pytest.raises(ConfigError):
            parse_target(text)
    (tmp_path / "runs").mkdir()
    result = run_tuilm("board", str(tmp_path / "runs"), "--notify", "cat", "--target", "val_bpc=fast")
    assert result.returncode == 2 and "--target" in result.stderr and "Traceback" not in result.stderr
    result = run_tuilm("board", str(tmp_path / "runs"), "--target", "step=5")
    assert result.returncode == 2 and "--notify" in result.stderr
    run_dir = write_run(tmp_path / "runs", "r", 5)
    result = run_tuilm("watch", str(run_dir), "--notify", "cat", "--target", "tokens")
    assert result.returncode == 2 and "--target" in result.stderr and "Traceback" not in result.stderr


def test_a_target_reads_as_train_writes_it():
    # one reading of a score target: `tuilm train --target 2.2` and `tuilm board --target 2.2` mean the same
    assert parse_target("2.2") == parse_target("bpc=2.2") == parse_target("val_bpc=2.2")
    assert (parse_target("2.2").metric, parse_target("2.2").value) == ("val_bpc", 2.2)
    assert (parse_target("step=500").metric, parse_target("tokens=1e6").value) == ("step", 1e6)
    with pytest.raises(ConfigError, match="val bits/char"):
        parse_target("loss=1.5")  # a row holds the best val bits/char only
