"""The one downloader (named sources and corpora alike), and safe unpacking of a downloaded archive.

`download` keeps what it has received in `<dest>.part`; when the connection breaks it asks the server for the
rest (an HTTP Range request) and, where the server answers 206, appends to the part file instead of starting
over. The finished file is checked against its size and sha256 before it is renamed into place, so the
destination either does not exist or holds the verified file, even after Ctrl-C; a later call resumes.

`safe_extract` unpacks chosen members of a zip archive, refusing the whole archive when any member would land
outside the target folder (absolute paths, `..` components, drive letters, symlinks).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import urllib.error
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath

from tuilm.atomic import FILE_MODE
from tuilm.errors import DataError

CHUNK = 1 << 16
ATTEMPTS = 3  # requests per download: the first, then resumes after a broken connection


def download(
    url: str,
    dest: Path,
    sha256: str | None,
    size: int | None = None,
    *,
    progress: bool = True,
    timeout: float = 30.0,
    attempts: int = ATTEMPTS,
) -> Path:
    """Download `url` to `dest`, resuming a previous partial download; verify size and sha256, then rename.

    A file without a published sha256 (`sha256=None`) is checked by size only.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    error: DataError | None = None
    bar = _Bar(dest.name, size, progress)
    try:
        for _ in range(max(1, attempts)):
            try:
                _request(url, part, size, timeout, bar)
                error = None
                break
            except _Broken as e:
                error = DataError(
                    f"download of {dest.name} broke off after {e.received:,} bytes ({e.reason}); run again to resume"
                )
    finally:
        bar.close()
    if error is not None:
        raise error
    got_size = part.stat().st_size
    if size is not None and got_size != size:
        part.unlink(missing_ok=True)
        raise DataError(f"the file downloaded from {url} has {got_size:,} bytes, expected {size:,}; nothing was saved")
    if sha256 is not None:
        got = sha256_file(part)
        if got != sha256:
            part.unlink(missing_ok=True)
            raise DataError(f"the file downloaded from {url} has sha256 {got}, expected {sha256}; nothing was saved")
    with contextlib.suppress(OSError):
        os.chmod(part, FILE_MODE)
    os.replace(part, dest)
    return dest


class _Broken(Exception):
    def __init__(self, received: int, reason: str):
        super().__init__(reason)
        self.received, self.reason = received, reason


def _request(url: str, part: Path, size: int | None, timeout: float, bar: _Bar) -> None:
    have = part.stat().st_size if part.exists() else 0
    if size is not None and have >= size:
        if have == size:
            return  # complete already: only verification is left
        part.unlink()
        have = 0
    request = urllib.request.Request(url, headers={"User-Agent": "tuilm"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # the range starts at the end: what we have is all there is
            return
        raise DataError(f"could not download {url} (HTTP {e.code} {e.reason})") from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        if have:
            raise _Broken(have, str(getattr(e, "reason", e))) from None
        raise DataError(f"could not download {url} ({getattr(e, 'reason', e)})") from None
    with response:
        resumed = have and response.status == 206
        if not resumed:
            have = 0  # the server ignored the range: start over
        length = response.headers.get("Content-Length")
        expected = have + int(length) if length and length.isdigit() else None
        bar.start(size or expected, have)
        received = have
        with open(part, "ab" if resumed else "wb") as out:
            while True:
                try:
                    chunk = response.read(CHUNK)
                except OSError as e:  # reset, timeout, or http.client.IncompleteRead
                    out.flush()
                    raise _Broken(received, str(e) or type(e).__name__) from None
                if not chunk:
                    break
                out.write(chunk)
                received += len(chunk)
                bar.advance(len(chunk))
            out.flush()
            os.fsync(out.fileno())
        if expected is not None and received < expected:
            raise _Broken(received, f"connection closed at {received:,} of {expected:,} bytes")


class _Bar:
    """A rich progress bar, created on the first response and kept across resumed requests."""

    def __init__(self, label: str, total: int | None, enabled: bool):
        self.label, self.total, self.enabled = label, total, enabled
        self.progress = self.task = None

    def start(self, total: int | None, completed: int) -> None:
        if not self.enabled:
            return
        if self.progress is None:
            from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

            columns = (
                TextColumn("downloading {task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
            )
            self.progress = Progress(*columns, transient=True)
            self.progress.start()
            self.task = self.progress.add_task(self.label, total=total or self.total)
        self.progress.update(self.task, completed=completed)

    def advance(self, n: int) -> None:
        if self.progress is not None:
            self.progress.advance(self.task, n)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def unsafe_member(name: str) -> bool:
    """True for a member name that could land outside the folder it is unpacked into."""
    if not name or "\0" in name or "\\" in name or name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return True
    return any(p == ".." for p in PurePosixPath(name).parts)


def safe_extract(archive: Path, members: list[str], target: Path) -> dict[str, Path]:
    """Unpack `members` of a zip archive into `target`; refuse an archive with any member escaping it."""
    target = Path(target)
    try:
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            for info in infos:
                is_link = (info.external_attr >> 16) & 0o170000 == 0o120000
                if unsafe_member(info.filename) or is_link:
                    raise DataError(
                        f"{archive}: refusing to unpack, member {info.filename!r} would be written outside {target}"
                    )
            by_name = {info.filename: info for info in infos}
            missing = [m for m in members if m not in by_name]
            if missing:
                raise DataError(f"{archive}: the archive has no member {missing[0]!r}; delete it to download again")
            out = {}
            root = target.resolve()
            for name in members:
                dest = (target / name).resolve()
                if root not in dest.parents:
                    raise DataError(f"{archive}: refusing to unpack {name!r} outside {target}")
                dest.parent.mkdir(parents=True, exist_ok=True)
                tmp = dest.with_name(dest.name + ".tmp")
                with zf.open(by_name[name]) as src, open(tmp, "wb") as dst:
                    for chunk in iter(lambda src=src: src.read(1 << 20), b""):
                        dst.write(chunk)
                os.replace(tmp, dest)
                out[name] = dest
            return out
    except zipfile.BadZipFile as e:
        raise DataError(f"{archive}: not a valid zip archive ({e}); delete it to download again") from None
