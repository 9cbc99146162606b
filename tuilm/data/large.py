"""Corpora too large to hold as Python strings: streamed, tokenized in parallel batches, cached as memory maps.

A `SplitCorpus` (tuilm.data.corpora) names a text slice per split. Each slice is read in blocks of a few MB,
cut into documents at blank lines (as tuilm.data.sources does), and tokenized a batch at a time with
`tokenizers`' encode_batch (which runs on every core). The ids go straight to a file on disk; the result is a
`TokenizedDocs` whose stream and bounds are read-only `numpy.memmap`s, so rows are sliced from the page cache and
the corpus never lives in memory. The files are cached under ~/.cache/tuilm/tokens, keyed by the corpus's
fingerprint, the split, the tokenizer and the format, and reused by every later run.

Named corpora with their own split always take this path; a local .txt file larger than `LARGE_FILE_BYTES` does
too, its last `val_fraction` of bytes (from the next document break) held out for validation.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from tuilm.data.corpora import CORPORA, SPLIT_CORPORA, SplitCorpus, TextSlice, cache_dir, open_corpus
from tuilm.data.pipeline import TokenizedDocs, utf8_size
from tuilm.errors import ConfigError, DataError

FORMAT = "tuilm-tokens-1"
LARGE_FILE_BYTES = 256 << 20  # local text files above this are streamed rather than read whole
BLOCK_BYTES = 4 << 20  # bytes read per block
BATCH_CHARS = 1 << 20  # characters per encode_batch call (its Encoding objects cost ~100x the text)
TOKENIZER_TRAIN_BYTES = 512 << 20  # BPE is trained on at most this much of the training split


def is_streamed(source: str) -> bool:
    """Whether `source` (a data.source) goes through this module rather than the in-memory path."""
    if source in SPLIT_CORPORA:
        return True
    path = Path(source).expanduser()
    return path.is_file() and path.suffix.lower() == ".txt" and path.stat().st_size > LARGE_FILE_BYTES


def open_streamed(source: str, val_fraction: float = 0.1, *, progress: bool = True) -> SplitCorpus:
    if source in CORPORA:
        return open_corpus(source, progress=progress)
    return split_local_file(Path(source).expanduser(), val_fraction)


def split_local_file(path: Path, val_fraction: float) -> SplitCorpus:
    """A large local text file: train is everything before the last `val_fraction` of bytes, val the rest."""
    if not 0 < val_fraction < 1:
        raise ConfigError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    size = path.stat().st_size
    cut = int(size * (1 - val_fraction))
    st = path.stat()
    ident = f"{FORMAT}|{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{cut}"
    fingerprint = hashlib.sha256(ident.encode()).hexdigest()
    slices = {"train": TextSlice(path, 0, cut), "val": TextSlice(path, cut, None, tail_cut=True)}
    return SplitCorpus(str(path), path, slices, fingerprint, own_split=False)


def iter_documents(part: TextSlice, separator: str = "", max_bytes: int | None = None) -> Iterator[str]:
    """The documents of a text slice, read a block at a time (blank lines, or `separator`, end a document).

    A slice that starts at a cut tuilm made (tail_cut) begins at the first document break after it, and one that
    ends at such a cut ends at the document it is in (so no document is split between train and val).
    """
    from tuilm.data.sources import _BLANK_LINES

    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    end = part.end if part.end is not None else part.path.stat().st_size
    if max_bytes is not None:
        end = min(end, part.start + max_bytes)
    rest, skip = "", part.tail_cut
    with open(part.path, "rb") as f:
        f.seek(part.start)
        left = end - part.start
        while left > 0:
            block = f.read(min(BLOCK_BYTES, left))
            if not block:
                break
            left -= len(block)
            if b"\0" in block:
                raise DataError(f"{part.path}: looks like a binary file (NUL byte); tuilm trains on UTF-8 text")
            text = rest + decoder.decode(block, final=left <= 0)
            if separator:
                text = text.replace(separator, "\n\n")
            pieces = _BLANK_LINES.split(text)
            rest = pieces.pop()
            if skip and pieces:
                pieces, skip = pieces[1:], False
            for doc in pieces:
                doc = doc.strip("\r\n")
                if doc.strip():
                    yield doc
    if not skip:
        rest = rest.strip("\r\n")
        if rest.strip():
            yield rest


def _batches(docs: Iterator[str], chars: int) -> Iterator[list[str]]:
    batch, n = [], 0
    for doc in docs:
        batch.append(doc)
        n += len(doc)
        if n >= chars:
            yield batch
            batch, n = [], 0
    if batch:
        yield batch


def _encode(tokenizer, batch: list[str]):
    return tokenizer.inner.encode_batch(batch, add_special_tokens=False)


def tokens_key(corpus: SplitCorpus, split: str, tokenizer) -> str:
    tok = hashlib.sha256(tokenizer.to_json().encode()).hexdigest()
    part = corpus.splits[split]
    sep = corpus.extra.get("separator", "")
    text = f"{FORMAT}|{corpus.fingerprint}|{split}|{part.start}|{part.end}|{part.tail_cut}|{sep}|{tok}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def tokenize_streamed(
    corpus: SplitCorpus,
    split: str,
    tokenizer,
    *,
    batch_chars: int = BATCH_CHARS,
    on_status: Callable[[str], None] | None = None,
) -> TokenizedDocs:
    """The split's tokens as memory-mapped arrays, cached by (corpus, split, tokenizer)."""
    key = tokens_key(corpus, split, tokenizer)
    stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in Path(corpus.name).name)[:40]
    folder = cache_dir() / "tokens"
    base = folder / f"{stem}-{split}-{key}"
    meta_path = base.with_suffix(".json")
    if not meta_path.is_file():
        if on_status:
            on_status(f"tokenizing {corpus.name} ({split}) into a memory-mapped cache")
        _write_tokens(corpus, split, tokenizer, base, batch_chars)
    meta = json.loads(meta_path.read_text())
    stream = np.memmap(base.with_suffix(".ids"), dtype=np.int32, mode="r")
    bounds = np.load(base.with_suffix(".bounds.npy"), mmap_mode="r")
    if len(stream) != meta["tokens"] or len(bounds) != meta["documents"] + 1:
        raise DataError(f"{base}.*: the token cache is damaged; delete those files to rebuild it")
    return TokenizedDocs(stream, bounds, meta["chars"], meta.get("bytes"))


def _write_tokens(corpus: SplitCorpus, split: str, tokenizer, base: Path, batch_chars: int) -> None:
    base.parent.mkdir(parents=True, exist_ok=True)
    ids_tmp = base.with_suffix(f".ids.{os.getpid()}.tmp")
    eos = tokenizer.eos_id
    lengths: list[np.ndarray] = []
    chars = n_bytes = n_docs = 0
    try:
        with open(ids_tmp, "wb") as out:
            np.array([eos], dtype=np.int32).tofile(out)  # the stream starts with an end-of-sequence
            docs = iter_documents(corpus.splits[split], corpus.extra.get("separator", ""))
            for batch in _batches(docs, batch_chars):
                # One parallel call per batch; each document's ids then its end-of-sequence.
                encoded = [np.asarray(e.ids, dtype=np.int32) for e in _encode(tokenizer, batch)]
                sizes = np.fromiter((len(e) + 1 for e in encoded), dtype=np.int64, count=len(encoded))
                eos_col = np.full(1, eos, dtype=np.int32)
                np.concatenate([x for ids in encoded for x in (ids, eos_col)]).tofile(out)
                del encoded
                lengths.append(sizes)
                chars += sum(len(d) for d in batch) + len(batch)
                n_bytes += utf8_size(batch) + len(batch)
                n_docs += len(batch)
            out.flush()
            os.fsync(out.fileno())
        if n_docs == 0:
            raise DataError(f"{corpus.name}: the {split} split holds no text")
        bounds = np.zeros(n_docs + 1, dtype=np.int64)
        np.cumsum(np.concatenate(lengths), out=bounds[1:])
        bounds_tmp = base.with_suffix(f".bounds.{os.getpid()}.tmp.npy")
        np.save(bounds_tmp, bounds)
        os.replace(bounds_tmp, base.with_suffix(".bounds.npy"))
        os.replace(ids_tmp, base.with_suffix(".ids"))
        meta = {"format": FORMAT, "tokens": int(bounds[-1]) + 1, "documents": n_docs, "chars": chars, "bytes": n_bytes}
        base.with_suffix(".json").write_text(json.dumps(meta))  # written last: its presence marks a whole cache
    finally:
        ids_tmp.unlink(missing_ok=True)


def load_or_train_streamed(corpus: SplitCorpus, settings, *, on_train=None):
    """As tuilm.data.tokenizer.load_or_train, training on (at most TOKENIZER_TRAIN_BYTES of) the train split."""
    from tuilm.data.tokenizer import load_or_train

    def documents():
        return _Docs(iter_documents(corpus.splits["train"], corpus.extra.get("separator", ""), TOKENIZER_TRAIN_BYTES))

    return load_or_train(
        corpus, settings, on_train=on_train, part=f"|train|{TOKENIZER_TRAIN_BYTES}", documents=documents
    )


class _Docs:
    """An iterable with a len() (train_tokenizer passes len(documents) as a progress hint; 0 = unknown)."""

    def __init__(self, it):
        self.it = it

    def __iter__(self):
        return iter(self.it)

    def __len__(self) -> int:
        return 0


def streamed_split(data, *, progress: bool = True, on_status=None, tokenizer=None, corpus=None):
    """(corpus, tokenizer, train docs, val docs) for a streamed corpus, tuilm.data.dataset.prepare's other path:
    the corpus's own train/val split, tokens memory-mapped from the cache."""
    from tuilm.data.tokenizer import TokenizerSettings

    if data.train_fraction < 1:
        raise ConfigError(f"data.train_fraction is not supported for the streamed corpus {data.source}")
    corpus = corpus or open_streamed(data.source, data.val_fraction, progress=progress)
    if tokenizer is None:
        tokenizer = load_or_train_streamed(corpus, TokenizerSettings(data.vocab_size), on_train=on_status)
    train = tokenize_streamed(corpus, "train", tokenizer, on_status=on_status)
    val = tokenize_streamed(corpus, "val", tokenizer, on_status=on_status)
    return corpus, tokenizer, train, val
