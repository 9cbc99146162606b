"""Where training text comes from: named datasets (found locally or downloaded) and local files.

A corpus is a list of documents. Plain text splits on blank lines; JSONL (optionally zstd-compressed, the Pile's
format) gives one document per record's `text` field; a directory gives the documents of every .txt file in it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tuilm import atomic
from tuilm.data.download import download, sha256_file
from tuilm.data.places import DATA_DIR_ENV, candidates, find_local
from tuilm.errors import DataError

MAX_LINE = 64 * 2**20  # bytes in one JSONL record: far above any document, far below a file that has no newlines
_SURROGATES = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True)
class NamedSource:
    name: str
    filename: str
    url: str
    sha256: str
    size: int


NAMED_SOURCES = {
    "tiny_shakespeare": NamedSource(
        name="tiny_shakespeare",
        filename="tiny_shakespeare.txt",
        url="https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
        sha256="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
        size=1_115_394,
    ),
}


@dataclass(frozen=True)
class Corpus:
    name: str  # the named source, or the path as given
    path: Path
    documents: list[str]
    fingerprint: str  # sha256 of the raw bytes read, so caches keyed on it follow the content

    @property
    def n_chars(self) -> int:
        return sum(len(d) for d in self.documents)


def dataset_path(source: NamedSource, *, progress: bool = True) -> Path:
    """The local file for a named source: $TUILM_DATA_DIR, then the user cache, else a verified download."""

    def accept(path: Path) -> bool:
        if sha256_file(path) != source.sha256:
            raise DataError(f"{path} is not the expected {source.name} file (sha256 mismatch); delete or replace it")
        return True

    found = find_local(source.filename, accept)
    if found is not None:
        return found
    places = candidates(source.filename)
    try:
        return download(source.url, places[-1], source.sha256, source.size, progress=progress)
    except DataError as e:
        where = " or ".join(str(p) for p in places)
        if not os.environ.get(DATA_DIR_ENV):
            where += f", or in a folder named by ${DATA_DIR_ENV}"
        raise DataError(f"{e}; to work offline, put {source.filename} at {where}") from None


def load_corpus(spec: str | Path, *, progress: bool = True) -> Corpus:
    """A named dataset or a local path (.txt, .jsonl, .jsonl.zst, or a directory of .txt files)."""
    spec = str(spec)
    if spec in NAMED_SOURCES:
        source = NAMED_SOURCES[spec]
        path = dataset_path(source, progress=progress)
        docs, digest = _read_text_file(path)
        return Corpus(spec, path, docs, digest)
    path = Path(spec).expanduser()
    from tuilm.data.corpora import SPLIT_CORPORA  # corpora (issue 15)
    from tuilm.data.hf import is_hf

    if (spec in SPLIT_CORPORA or is_hf(spec)) and not path.exists():
        raise DataError(
            f"{spec} is read as a stream with its own train/val split: `tuilm train {spec}` and "
            f"`tuilm eval --data {spec}` use it, but this command reads a whole corpus into memory"
        )
    if not path.exists():
        known = ", ".join(NAMED_SOURCES)
        raise DataError(f"{spec}: no such file or directory (named datasets: {known})")
    if not path.is_dir():
        check_regular(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.txt") if p.is_file())
        if not files:
            raise DataError(f"{path}: the directory holds no .txt files")
        docs, hasher = [], hashlib.sha256()
        for f in files:
            file_docs, digest = _read_text_file(f, allow_empty=True)
            docs += file_docs
            hasher.update(f"{f.relative_to(path)}\0{digest}\0".encode())
        if not docs:
            raise DataError(f"{path}: every .txt file in the directory is empty")
        return Corpus(spec, path, docs, hasher.hexdigest())
    name = path.name.lower()
    if name.endswith((".jsonl", ".jsonl.zst", ".json.zst")):
        docs, digest = _read_jsonl(path)
    else:
        docs, digest = _read_text_file(path)
    return Corpus(spec, path, docs, digest)


_BLANK_LINES = re.compile(r"\r?\n(?:[ \t]*\r?\n)+")


def split_documents(text: str) -> list[str]:
    """Documents are separated by one or more blank lines; surrounding line breaks are dropped."""
    docs = (d.strip("\r\n") for d in _BLANK_LINES.split(text))
    return [d for d in docs if d.strip()]


def decode_utf8(data: bytes, path: Path) -> str:
    """Decode strictly, naming the offset of the first bad byte so the user can find it."""
    nul = data.find(b"\0")
    if nul != -1:
        raise DataError(f"{path}: looks like a binary file (NUL byte at offset {nul}); tuilm trains on UTF-8 text")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            f"{path}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start} is invalid); "
            "convert it with e.g. `iconv -t UTF-8`"
        ) from None


def _jsonl_lines(path: Path) -> Iterator[bytes]:
    """The file's lines, newline kept, decompressed when it is .zst; DataError for a line over MAX_LINE (a file
    with no newlines would otherwise be held whole)."""
    pending, lineno = b"", 0
    for chunk in _chunks(path):
        *lines, pending = (pending + chunk).split(b"\n")
        for line in [*lines, pending]:
            if len(line) > MAX_LINE:
                raise DataError(
                    f"{path}:{lineno + 1}: a line longer than {MAX_LINE:,} bytes; JSONL holds one record per line"
                )
            if line is not pending:
                lineno += 1
                yield line + b"\n"
    if pending:
        yield pending


def _chunks(path: Path, size: int = 1 << 20) -> Iterator[bytes]:
    with open(path, "rb") as raw:
        if not path.name.lower().endswith(".zst"):
            yield from iter(lambda: raw.read(size), b"")
            return
        import zstandard

        # The Pile's shards were written with long windows; the default limit refuses them.
        decompressor = zstandard.ZstdDecompressor(max_window_size=2**31)
        frame, fed = decompressor.decompressobj(), False
        try:
            for block in iter(lambda: raw.read(size), b""):
                while block:
                    fed = True
                    yield frame.decompress(block)
                    block = frame.unused_data if frame.eof else b""
                    if frame.eof:  # the next frame of a multi-frame file
                        frame, fed = decompressor.decompressobj(), bool(block)
        except zstandard.ZstdError as e:
            raise DataError(f"{path}: not a valid zstd-compressed file ({e})") from None
        if fed and not frame.eof:
            raise DataError(f"{path}: the compressed file is cut short (truncated download?); fetch it again")


def check_regular(path: Path) -> None:
    atomic.check_regular(path, DataError, "a text or JSONL file")


def _read_text_file(path: Path, *, allow_empty: bool = False) -> tuple[list[str], str]:
    check_regular(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
    docs = split_documents(decode_utf8(data, path))
    if not docs and not allow_empty:
        raise DataError(f"{path}: the file is empty (no text to train on)")
    return docs, hashlib.sha256(data).hexdigest()


def _read_jsonl(path: Path) -> tuple[list[str], str]:
    hasher = hashlib.sha256()
    docs = []
    check_regular(path)
    for lineno, line in enumerate(_jsonl_lines(path), start=1):
        hasher.update(line)
        if not line.strip():
            continue
        if b"\0" in line:
            raise DataError(f"{path}:{lineno}: looks like binary data (NUL byte); expected JSON lines")
        try:
            # Numbers are kept as their text: only "text" is read, and a 100,000-digit one is valid JSON.
            record = json.loads(line, parse_int=str, parse_float=str)
        except (ValueError, UnicodeDecodeError) as e:
            if not line.endswith(b"\n"):  # the last line, broken off mid-record (a zstd frame can end anywhere)
                raise DataError(f"{path}:{lineno}: the file is cut short mid-record (truncated download?)") from None
            raise DataError(f"{path}:{lineno}: not a JSON object ({e})") from None
        except RecursionError:
            raise DataError(
                f"{path}:{lineno}: JSON nested too deeply (over {sys.getrecursionlimit():,} levels)"
            ) from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise DataError(f"{path}:{lineno}: each line must be a JSON object with a string 'text' field")
        text = record["text"]
        if _SURROGATES.search(text):  # "\ud800" escapes decode to characters no encoder takes
            text = _SURROGATES.sub("\ufffd", text)
        if text.strip():
            docs.append(text)
    if not docs:
        raise DataError(f"{path}: the file is empty (no records with text)")
    return docs, hasher.hexdigest()
