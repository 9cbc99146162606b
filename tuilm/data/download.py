"""Fetch a file over HTTP(S) into a cache, verified by sha256, never leaving a partial file behind."""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path

from tuilm.atomic import temp_file
from tuilm.errors import DataError

CHUNK = 1 << 16


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download(url: str, dest: Path, sha256: str, *, progress: bool = True, timeout: float = 30.0) -> Path:
    """Download `url` to `dest`: into a temp file beside it, checked against `sha256`, then renamed.

    The rename is atomic, so `dest` either does not exist or holds the verified file, even after Ctrl-C.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = temp_file(dest, ".part")
    tmp = Path(tmp_name)
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                response = urllib.request.urlopen(url, timeout=timeout)
            except (urllib.error.URLError, OSError, ValueError) as e:
                reason = getattr(e, "reason", e)
                raise DataError(f"could not download {url} ({reason})") from None
            with response:
                total = int(response.headers.get("Content-Length") or 0) or None
                _copy(response, out, digest, total, dest.name, progress)
            out.flush()
            os.fsync(out.fileno())
        got = digest.hexdigest()
        if got != sha256:
            raise DataError(f"the file downloaded from {url} has sha256 {got}, expected {sha256}; nothing was saved")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def _copy(response, out, digest, total: int | None, label: str, progress: bool) -> None:
    def pump(advance=None) -> None:
        while True:
            try:
                chunk = response.read(CHUNK)
            except OSError as e:
                raise DataError(f"download of {label} broke off ({e})") from None
            if not chunk:
                return
            out.write(chunk)
            digest.update(chunk)
            if advance:
                advance(len(chunk))

    if not progress:
        pump()
        return
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    columns = (TextColumn("downloading {task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
    with Progress(*columns, transient=True) as bar:
        task = bar.add_task(label, total=total)
        pump(lambda n: bar.advance(task, n))
