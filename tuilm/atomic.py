"""Atomic file writes: a reader (or a crash) sees the old file or the new one, never half of one. And the one
check every reader of a user's file makes first: that it is a regular file."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from tuilm.errors import TuilmError


class NotAFileError(TuilmError):
    """A write would replace a directory, FIFO, device or socket: the rename would swap it for a file."""


def _read_umask() -> int:
    # The only portable way to read the umask is to set it; done once, at import, before any thread writes.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_read_umask()


def temp_file(path: Path, suffix: str = ".tmp") -> tuple[int, str]:
    """A temp file beside `path`, with the permissions a plain open() would give (mkstemp makes it 0600)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    with contextlib.suppress(OSError):  # a filesystem without modes keeps what it has
        os.fchmod(fd, FILE_MODE)
    return fd, tmp


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write_with(path, lambda f: f.write(data))


def atomic_write_with(path: Path, fill: Callable[[BinaryIO], object]) -> None:
    """Atomically replace `path` with what `fill` writes into the open file it is given (it may seek back)."""
    path = Path(path)
    try:
        _write(path, fill)
    except OSError as e:
        # Say which file could not be written: the user's path, never the temp file beside it. A parent that is a
        # file fails mkdir with EEXIST; what the user must fix is that a part of the path is not a directory.
        code = errno.ENOTDIR if e.errno == errno.EEXIST else e.errno
        if code is not None and (code != e.errno or e.filename != str(path)):
            raise OSError(code, os.strerror(code), str(path)) from e
        raise


def check_replaceable(path: Path) -> None:
    """NotAFileError unless `path` is absent or a regular file (or a link to one). os.replace() swaps whatever is
    there, so without this a write to /dev/full as root would replace the device node, and one to a directory's
    name fails half way with a bare OS error."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return  # absent (or a dangling link): nothing to lose; any other problem, the write itself reports
    if not stat.S_ISREG(mode):
        kind = "a directory" if stat.S_ISDIR(mode) else "a FIFO, device or socket"
        raise NotAFileError(f"{path} is {kind} where tuilm writes a file; it is left alone: move it or write elsewhere")


def _write(path: Path, fill: Callable[[BinaryIO], object]) -> None:
    check_replaceable(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_file(path)
    try:
        with os.fdopen(fd, "wb") as f:
            fill(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)  # the file under `path`, if any, is untouched
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable; not possible on every platform, and harmless to skip there.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def check_regular(path: Path, error: type[Exception], give: str) -> None:
    """Raise `error` unless `path` is a regular file: a FIFO would block the first read forever and a device never
    ends. `give` names what the user should pass instead ("a checkpoint file")."""
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        raise error(f"{path}: cannot read ({e.strerror})") from None
    if not stat.S_ISREG(mode):
        raise error(f"{path}: not a regular file (a FIFO, device or socket); give {give}")
