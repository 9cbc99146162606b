"""The named corpora: one table of where each comes from, how it is checked, its license and its own split.

Each corpus is a `NamedCorpus`: the files to download (URL, size, sha256 and where those figures come from), and
its train/val(/test) split as slices of those files (a member of a zip archive, and a byte range of it). A file
whose sha256 we could not find published says so in `checksum_source` (it starts with "unverified") and is
checked by size alone.

Files are looked for in $TUILM_DATA_DIR, then in the user cache (~/.cache/tuilm/datasets), else downloaded
there (resumably, with a progress bar). Offline, the error names the file to put under $TUILM_DATA_DIR.
Corpora with their own split are read as streams (tuilm.data.large) and never held whole in memory.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from tuilm.data.places import DATA_DIR_ENV, cache_dir, candidates, find_local
from tuilm.errors import DataError


@dataclass(frozen=True)
class RemoteFile:
    filename: str  # the name it has in $TUILM_DATA_DIR and in the cache
    url: str
    size: int | None  # bytes, None if not published
    sha256: str | None  # None: no published hash found, checked by size only
    checksum_source: str  # where size and sha256 come from ("unverified: ..." when there is no hash)


@dataclass(frozen=True)
class Split:
    file: str  # a RemoteFile.filename
    member: str | None = None  # the member of a zip archive holding the text
    start: int = 0  # byte range of the (unpacked) text
    end: int | None = None


@dataclass(frozen=True)
class NamedCorpus:
    name: str
    description: str
    license: str
    homepage: str
    files: tuple[RemoteFile, ...]
    splits: tuple[tuple[str, Split], ...] = ()  # ("train", ...), ("val", ...), optionally ("test", ...)
    notes: str = ""
    separator: str = ""  # a document separator besides blank lines

    @property
    def split_map(self) -> dict[str, Split]:
        return dict(self.splits)

    @property
    def size(self) -> int | None:
        sizes = [f.size for f in self.files]
        return None if None in sizes else sum(sizes)

    def file(self, filename: str) -> RemoteFile:
        return next(f for f in self.files if f.filename == filename)


_S3 = "https://s3.amazonaws.com/research.metamind.io/wikitext"
_TS = "https://huggingface.co/datasets/roneneldan/TinyStories/resolve/main"
_WIKITEXT_LICENSE = "CC BY-SA 3.0"

CORPORA: dict[str, NamedCorpus] = {
    c.name: c
    for c in (
        NamedCorpus(
            name="tiny_shakespeare",
            description="Karpathy's 1.1 MB of Shakespeare (char-rnn); no split of its own: data.split applies",
            license="public domain",
            homepage="https://github.com/karpathy/char-rnn",
            files=(
                RemoteFile(
                    "tiny_shakespeare.txt",
                    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
                    1_115_394,
                    "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
                    "tuilm (tuilm.data.sources.NAMED_SOURCES, checked against the file)",
                ),
            ),
        ),
        NamedCorpus(
            name="wikitext2",
            description="WikiText-2 (raw): 2M words of verified Good and Featured Wikipedia articles",
            license=_WIKITEXT_LICENSE,
            homepage="https://blog.salesforceairesearch.com/the-wikitext-long-term-dependency-language-modeling-dataset/",
            files=(
                RemoteFile(
                    "wikitext-2-raw-v1.zip",
                    f"{_S3}/wikitext-2-raw-v1.zip",
                    4_721_645,
                    "ef7edb566e3e2b2d31b29c1fdb0c89a4cc683597484c3dc2517919c615435a11",
                    "third-party pin of the same archive (ggml-org/ci mirror, as fetched by llama.cpp's "
                    "scripts/get-wikitext-2.sh); size matches Hugging Face's wikitext download_size",
                ),
            ),
            splits=(
                ("train", Split("wikitext-2-raw-v1.zip", "wikitext-2-raw/wiki.train.raw")),
                ("val", Split("wikitext-2-raw-v1.zip", "wikitext-2-raw/wiki.valid.raw")),
                ("test", Split("wikitext-2-raw-v1.zip", "wikitext-2-raw/wiki.test.raw")),
            ),
        ),
        NamedCorpus(
            name="wikitext103",
            description="WikiText-103 (raw): 103M words of verified Good and Featured Wikipedia articles",
            license=_WIKITEXT_LICENSE,
            homepage="https://blog.salesforceairesearch.com/the-wikitext-long-term-dependency-language-modeling-dataset/",
            files=(
                RemoteFile(
                    "wikitext-103-raw-v1.zip",
                    f"{_S3}/wikitext-103-raw-v1.zip",
                    191_984_949,
                    "91c00ae287f0d699e18605c84afc9e45c192bc6b7797ff8837e5474655a33794",
                    "third-party pins of the canonical S3 archive (two download scripts agree on size and sha256)",
                ),
            ),
            splits=(
                ("train", Split("wikitext-103-raw-v1.zip", "wikitext-103-raw/wiki.train.raw")),
                ("val", Split("wikitext-103-raw-v1.zip", "wikitext-103-raw/wiki.valid.raw")),
                ("test", Split("wikitext-103-raw-v1.zip", "wikitext-103-raw/wiki.test.raw")),
            ),
        ),
        NamedCorpus(
            name="tinystories",
            description="TinyStories V2 (GPT-4 generated short stories for small models), its train/valid files",
            license="CDLA-Sharing-1.0",
            homepage="https://huggingface.co/datasets/roneneldan/TinyStories",
            files=(
                RemoteFile(
                    "TinyStoriesV2-GPT4-train.txt",
                    f"{_TS}/TinyStoriesV2-GPT4-train.txt",
                    None,
                    None,
                    "unverified: no published sha256 or size found; not checked beyond downloading whole",
                ),
                RemoteFile(
                    "TinyStoriesV2-GPT4-valid.txt",
                    f"{_TS}/TinyStoriesV2-GPT4-valid.txt",
                    22_502_601,
                    None,
                    "unverified: no published sha256 found; size from a third-party listing, checked",
                ),
            ),
            splits=(
                ("train", Split("TinyStoriesV2-GPT4-train.txt")),
                ("val", Split("TinyStoriesV2-GPT4-valid.txt")),
            ),
            notes="stories are separated by <|endoftext|> lines, read as document breaks",
            separator="<|endoftext|>",
        ),
        NamedCorpus(
            name="enwik8",
            description="enwik8: the first 10^8 bytes of an English Wikipedia XML dump (Hutter Prize); bits per byte",
            license="CC BY-SA / GFDL",
            homepage="http://mattmahoney.net/dc/textdata.html",
            files=(
                RemoteFile(
                    "enwik8.zip",
                    "http://mattmahoney.net/dc/enwik8.zip",
                    36_445_475,
                    "547994d9980ebed1288380d652999f38a14fe291a6247c157c3d33d4932534bc",
                    "third-party pins (three independent projects agree; the unpacked enwik8 is 100,000,000 "
                    "bytes with sha256 2b49720ec4d78c3c9fabaee6e4179a5e997302b3a70029f30f2d582218c024a8)",
                ),
            ),
            splits=(
                ("train", Split("enwik8.zip", "enwik8", 0, 90_000_000)),
                ("val", Split("enwik8.zip", "enwik8", 90_000_000, 95_000_000)),
                ("test", Split("enwik8.zip", "enwik8", 95_000_000, 100_000_000)),
            ),
            notes="the standard 90M/5M/5M byte split; bytes that are not UTF-8 at a split edge read as U+FFFD",
        ),
    )
}

SPLIT_CORPORA = tuple(name for name, c in CORPORA.items() if c.splits)


@dataclass(frozen=True)
class TextSlice:
    path: Path
    start: int = 0
    end: int | None = None
    tail_cut: bool = False  # the slice begins at a cut made by tuilm (skip to the next document)

    @property
    def n_bytes(self) -> int:
        end = self.end if self.end is not None else self.path.stat().st_size
        return max(0, end - self.start)


@dataclass(frozen=True)
class SplitCorpus:
    """A corpus read as streams of text, one per split (never whole in memory)."""

    name: str
    path: Path
    splits: dict[str, TextSlice]
    fingerprint: str
    own_split: bool = True  # False: a large local file cut into train/val by tuilm
    extra: dict = field(default_factory=dict)

    @property
    def n_bytes(self) -> int:
        return sum(s.n_bytes for k, s in self.splits.items() if k in ("train", "val"))


def _verified(path: Path, remote: RemoteFile) -> bool:
    """Check a local file once (size, sha256); a stamp beside it remembers the check while the file is unchanged."""
    st = path.stat()
    if remote.size is not None and st.st_size != remote.size:
        raise DataError(
            f"{path} is not the expected {remote.filename} ({st.st_size:,} bytes, expected {remote.size:,}); "
            "delete or replace it"
        )
    if remote.sha256 is None:
        return True
    stamp = path.with_name(f".{path.name}.verified")
    record = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": remote.sha256}
    try:
        if json.loads(stamp.read_text()) == record:
            return True
    except (OSError, ValueError):
        pass
    from tuilm.data.download import sha256_file

    got = sha256_file(path)
    if got != remote.sha256:
        raise DataError(
            f"{path} is not the expected {remote.filename} (sha256 {got[:12]}… mismatch); delete or replace it"
        )
    with contextlib.suppress(OSError):
        stamp.write_text(json.dumps(record))
    return True


def local_file(remote: RemoteFile, *, progress: bool = True) -> Path:
    """$TUILM_DATA_DIR/<file>, then the cache, else a resumable verified download into the cache."""
    from tuilm.data.download import download

    found = find_local(remote.filename, lambda path: _verified(path, remote))
    if found is not None:
        return found
    try:
        path = download(remote.url, candidates(remote.filename)[-1], remote.sha256, remote.size, progress=progress)
    except DataError as e:
        raise DataError(
            f"{e}; to work offline, put {remote.filename} (from {remote.url}) in the folder named by ${DATA_DIR_ENV}"
        ) from None
    if remote.sha256 is not None:
        _verified(path, remote)  # write the stamp
    return path


def open_corpus(name: str, *, progress: bool = True) -> SplitCorpus:
    """The named corpus's split files on disk (downloading and unpacking them if needed)."""
    from tuilm.data.download import safe_extract

    corpus = CORPORA[name]
    if not corpus.splits:
        raise DataError(f"{name} has no split of its own; load it with tuilm.data.sources.load_corpus")
    files = {f.filename: local_file(f, progress=progress) for f in corpus.files}
    slices, hasher = {}, hashlib.sha256()
    for split, spec in corpus.splits:
        path = files[spec.file]
        if spec.member is not None:
            target = cache_dir() / "datasets" / name
            unpacked = target / spec.member
            if not unpacked.is_file():
                safe_extract(path, [spec.member], target)
            path = unpacked
        slices[split] = TextSlice(path, spec.start, spec.end)
        remote = corpus.file(spec.file)
        # Keyed on the published hash when there is one; otherwise on the file's size and name.
        ident = remote.sha256 or f"{remote.filename}:{files[spec.file].stat().st_size}"
        hasher.update(f"{split}|{ident}|{spec.member}|{spec.start}|{spec.end}\0".encode())
    extra = {"separator": corpus.separator} if corpus.separator else {}
    return SplitCorpus(name, files[corpus.splits[0][1].file], slices, hasher.hexdigest(), extra=extra)


# ---------------------------------------------------------------------------------------------------------------
# `tuilm data list`


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    return str(n)


def render_list(console) -> None:
    """Print the table of named corpora (the CLI's `tuilm data list`), then where each file comes from."""
    from rich.table import Table
    from rich.text import Text

    table = Table(title="named corpora: tuilm train NAME", title_justify="left")
    table.add_column("name", style="bold", no_wrap=True)
    table.add_column("size", justify="right", no_wrap=True)
    table.add_column("split", no_wrap=True)
    table.add_column("sha256", no_wrap=True)
    table.add_column("license")
    for c in CORPORA.values():
        split = "/".join(k for k, _ in c.splits) if c.splits else "data.split"
        checks = []
        for f in c.files:
            checks.append(f"{f.sha256[:12]}…" if f.sha256 else "unverified" + (" (size)" if f.size else ""))
        table.add_row(c.name, _size(c.size), split, "\n".join(checks), c.license)
    console.print(table)
    for c in CORPORA.values():
        console.print(Text.assemble((c.name, "bold"), ": ", c.description, (f" ({c.notes})" if c.notes else "", "dim")))
        for f in c.files:
            console.print(Text.assemble("  ", f.url, "\n", (f"  checksum: {f.checksum_source}", "dim")))
