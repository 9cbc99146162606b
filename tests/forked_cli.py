"""`python -m tuilm ARGS` in child processes forked from a server that has already imported torch.

A fresh interpreter spends 1.5 s of this machine's time importing torch, more than most commands the tests run
take to do their work, and the suite runs some 150 of them. This server (a process of its own, started once per
test session by tests/helpers.py) imports the heavy third-party libraries, never tuilm itself, and forks a child
per command. The child is still its own process, as a user's would be: its own environment, working directory,
stdin, stdout and stderr (files), argv, exit code and exit handlers, and it imports every tuilm module afresh.
What it does not repeat is the interpreter's start-up, so tests about start-up itself (`tuilm --help` must not
import torch, a sitecustomize on PYTHONPATH) start a real interpreter instead.

Protocol, one JSON object per line: the server reads {"run": [args, env, cwd, stdin, stdout, stderr], "id": n}
or {"kill": pid} on its stdin and writes {"id": n, "pid": pid} when it forked and {"pid": pid, "code": rc} when
a child ended (rc as subprocess gives it: negative for a signal). multiprocessing's forkserver would do the
forking, but imports the parent's __main__ (pytest) into every child.

Linux only (a fork after importing torch is not safe on macOS).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import locale
import os
import runpy
import select
import signal
import sys
import traceback

PRELOAD = ["torch", "numpy", "tokenizers", "safetensors", "typer", "rich.console", "prompt_toolkit", "textual.app"]


def serve() -> None:
    import importlib

    for name in PRELOAD:
        with contextlib.suppress(ImportError):  # an optional one missing: its commands fail as they would
            importlib.import_module(name)
    control, replies = sys.stdin.buffer, sys.stdout.buffer
    pending = b""
    while True:
        ready, _, _ = select.select([control], [], [], 0.02)
        if ready:
            chunk = os.read(control.fileno(), 65536)
            if not chunk:  # the tests are over
                return
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                request = json.loads(line)
                if "kill" in request:
                    _kill(request["kill"])
                    continue
                pid = os.fork()
                if pid == 0:
                    child(*request["run"])  # never returns
                _reply(replies, {"id": request["id"], "pid": pid})
        while True:  # reap every child that has ended
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            _reply(replies, {"pid": pid, "code": os.waitstatus_to_exitcode(status)})


def _reply(stream, message: dict) -> None:
    stream.write(json.dumps(message).encode() + b"\n")
    stream.flush()


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
        os.kill(pid, signal.SIGKILL)


def child(args: list[str], env: dict[str, str], cwd: str | None, stdin: str, stdout: str, stderr: str) -> None:
    """The forked child's whole life: become the command's process, run `python -m tuilm`, exit with its code."""
    code = 1
    try:
        os.environ.clear()
        os.environ.update(env)
        if cwd is not None:
            os.chdir(cwd)
        sys.path[0] = os.getcwd()  # `python -m` puts the working directory first, as this script's folder was
        for fd, path, flags in ((0, stdin, os.O_RDONLY), (1, stdout, os.O_WRONLY), (2, stderr, os.O_WRONLY)):
            opened = os.open(path, flags)
            os.dup2(opened, fd)
            os.close(opened)
        encoding, errors = _io_encoding(env)
        # The streams a fresh interpreter would open on those descriptors (not closed: os._exit ends it all).
        sys.stdin = open(0, encoding=encoding, errors=errors, closefd=False)  # noqa: SIM115
        sys.stdout = open(1, "w", encoding=encoding, errors=errors, closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", encoding=encoding, errors="backslashreplace", closefd=False, buffering=1)  # noqa: SIM115
        sys.argv = ["tuilm", *args]
        code = 0
        try:
            runpy.run_module("tuilm", run_name="__main__", alter_sys=True)
        except SystemExit as e:
            code = _exit_code(e.code)
        except BaseException:  # what an uncaught exception does to a Python process
            traceback.print_exc()
            code = 1
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


def _exit_code(code) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)  # sys.exit("message") prints it and exits 1
    return 1


def _io_encoding(env: dict[str, str]) -> tuple[str, str]:
    """The encoding and errors a fresh interpreter would give its standard streams in this environment."""
    if env.get("PYTHONIOENCODING"):
        name, _, errors = env["PYTHONIOENCODING"].partition(":")
        return name or "utf-8", errors or "strict"
    if sys.flags.utf8_mode:
        return "utf-8", "surrogateescape"
    return locale.getpreferredencoding(False), "strict"


if __name__ == "__main__":
    serve()
