"""The run-directory lock: one writer at a time, and a dead writer (even after kill -9) never blocks the next."""

import os
import signal

import pytest

from tests.helpers import hold_lock_in_child
from tuilm.runlock import RunLock, RunLockedError, holder


def test_a_second_writer_is_refused_with_the_holders_pid(tmp_path):
    child = hold_lock_in_child(tmp_path)
    try:
        with pytest.raises(RunLockedError) as err:
            RunLock(tmp_path).acquire()
        assert f"process {child.pid}" in str(err.value) and "--out" in str(err.value)
        assert holder(tmp_path)["pid"] == child.pid
    finally:
        child.kill()
        child.wait()


def test_a_lock_left_by_kill_9_is_taken_over(tmp_path):
    child = hold_lock_in_child(tmp_path)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert (tmp_path / ".lock").exists()  # the file stays behind ...
    assert holder(tmp_path) is None  # ... but nobody holds it: the run is dead, not running
    with RunLock(tmp_path) as lock:
        assert holder(tmp_path)["pid"] == os.getpid()
        assert lock.path.read_text().count(str(os.getpid())) == 1
    assert holder(tmp_path) is None


def test_no_lock_file_means_no_holder(tmp_path):
    assert holder(tmp_path) is None
    assert holder(tmp_path / "missing") is None
