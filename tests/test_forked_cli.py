"""The test helper that forks CLI commands from a server (tests/forked_cli.py) gives what a fresh interpreter
gives: the same exit code, stdout and stderr, stdin, environment and working directory."""

import os
import sys

import pytest

from tests.helpers import _fork_server, _Plain, run_tuilm

pytestmark = pytest.mark.skipif(_fork_server() is None, reason="the fork server is Linux-only (or turned off)")


def fresh(*args, input=None, env=None, cwd=None):
    return _Plain([sys.executable, "-m", "tuilm", *args], input, env, cwd, True).wait(120)


@pytest.mark.parametrize(
    "args",
    [("--version",), ("sample", "-m", "no-such.safetensors"), ("train", "no_such_recipe", "--headless")],
)
def test_a_forked_command_matches_a_fresh_interpreter(args, tmp_path):
    forked, plain = run_tuilm(*args, cwd=tmp_path), fresh(*args, cwd=tmp_path)
    assert (forked.returncode, forked.stdout, forked.stderr) == (plain.returncode, plain.stdout, plain.stderr)


def test_stdin_and_cwd_reach_the_command(trained_run):
    args = ("chat", "-m", trained_run.name, "-n", "2", "-t", "0")  # relative to the working directory
    out, same = (
        run_tuilm(*args, input="hello\n", cwd=trained_run.parent),
        fresh(*args, input="hello\n", cwd=trained_run.parent),
    )
    assert out.returncode == same.returncode == 0, out.stderr
    assert out.stdout == same.stdout and out.stdout.strip()  # the reply to "hello", greedy


def test_the_environment_reaches_the_command():
    narrow, wide = ({**os.environ, "COLUMNS": str(n)} for n in (60, 200))
    tables = [run_tuilm("data", "list", env=env).stdout for env in (narrow, wide)]
    assert tables[0] == fresh("data", "list", env=narrow).stdout
    assert max(map(len, tables[0].splitlines())) <= 60 < max(map(len, tables[1].splitlines()))


def test_a_changed_start_up_gets_a_fresh_interpreter(tmp_path):
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text("import sys\nsys.stderr.write('site hook ran\\n')\n")
    out = run_tuilm("--version", env={**os.environ, "PYTHONPATH": str(hook)})
    assert out.returncode == 0 and "site hook ran" in out.stderr
