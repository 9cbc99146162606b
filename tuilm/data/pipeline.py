"""From documents to training rows: the split, the four sequence policies, batching and collation.

Everything here is numpy; the trainer turns batches into tensors. The token stream of a set of documents is

    [eos] d0 ... eos d1 ... eos ...

so every document is predicted from the same start-of-document context (the end of the one before it, or a
leading eos for the first). A row is a slice of that stream of at most seq_len+1 tokens: its first seq_len
tokens are inputs, its last seq_len are targets. "Tokens" in reports are targets (what the model learns to
predict): every token of every document, its end-of-sequence included.

Policies (from the studies on block size and on padding vs truncation):
- pack: the stream cut into windows (stride seq_len, or a smaller stride for sliding windows); the tail that
  does not fill a window is dropped.
- pad: one document per row, right-padded; what does not fit is dropped.
- pad-overflow: what does not fit becomes further padded rows; a last piece under `overflow_min` tokens is dropped.
- bucket: the rows of pad-overflow, batched with rows of similar length, each batch padded to its longest row.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tuilm.data.config import POLICIES, SPLITS
from tuilm.data.tokenizer import ENCODE_CHARS, pieces
from tuilm.errors import ConfigError, DataError

IGNORE = -100  # target value the loss skips (PyTorch's cross-entropy default)
BUCKET_GROUP = 64  # batches whose rows are sorted together: larger means less padding but less shuffling


@dataclass(frozen=True)
class TokenizedDocs:
    stream: np.ndarray  # int32, see the module docstring
    bounds: np.ndarray  # int64, n_docs + 1: doc i's targets are stream[bounds[i] + 1 : bounds[i + 1] + 1]
    chars: int  # characters of the documents, each document's end counted as one
    utf8_bytes: int | None = None  # their UTF-8 bytes, each end counted as one; None: not known (an older cache)

    @property
    def n_docs(self) -> int:
        return len(self.bounds) - 1

    @property
    def lengths(self) -> np.ndarray:
        """Tokens of each document, its end-of-sequence included."""
        return np.diff(self.bounds)

    @property
    def n_tokens(self) -> int:
        return len(self.stream) - 1


def tokenize(token_lists: list[list[int]], texts: list[str], eos_id: int) -> TokenizedDocs:
    lengths = np.fromiter((len(t) + 1 for t in token_lists), dtype=np.int64, count=len(token_lists))
    bounds = np.zeros(len(token_lists) + 1, dtype=np.int64)
    np.cumsum(lengths, out=bounds[1:])
    stream = np.full(int(bounds[-1]) + 1, eos_id, dtype=np.int32)
    for start, ids in zip(bounds[:-1], token_lists, strict=True):
        stream[start + 1 : start + 1 + len(ids)] = ids
    return TokenizedDocs(stream, bounds, sum(len(t) for t in texts) + len(texts), utf8_size(texts) + len(texts))


def encode_docs(tokenizer, texts: Sequence[str]) -> TokenizedDocs:
    """`tokenize` of every document, encoded ENCODE_CHARS at a time into int32 arrays (4 bytes a token), so memory
    stays within a small multiple of the text instead of the ~100x that encoding it all at once costs; a longer
    document is encoded in `pieces` whose ids are those of the whole."""
    parts: list[list[np.ndarray]] = [[] for _ in texts]
    batch: list[tuple[int, str]] = []
    size = 0

    def flush() -> None:
        encodings = tokenizer.inner.encode_batch([t for _, t in batch], add_special_tokens=False)
        for (doc, _), enc in zip(batch, encodings, strict=True):
            parts[doc].append(np.asarray(enc.ids, dtype=np.int32))
        batch.clear()

    for doc, text in enumerate(texts):
        for piece in pieces(text):
            batch.append((doc, piece))
            size += len(piece)
            if size >= ENCODE_CHARS:
                flush()
                size = 0
    if batch:
        flush()
    lengths = np.fromiter((sum(len(a) for a in p) + 1 for p in parts), dtype=np.int64, count=len(parts))
    bounds = np.zeros(len(parts) + 1, dtype=np.int64)
    np.cumsum(lengths, out=bounds[1:])
    stream = np.full(int(bounds[-1]) + 1, tokenizer.eos_id, dtype=np.int32)
    for start, arrays in zip(bounds[:-1], parts, strict=True):
        ids = np.concatenate(arrays) if len(arrays) > 1 else arrays[0] if arrays else arrays
        stream[start + 1 : start + 1 + len(ids)] = ids
    return TokenizedDocs(stream, bounds, sum(len(t) for t in texts) + len(texts), utf8_size(texts) + len(texts))


def utf8_size(texts: Sequence[str]) -> int:
    """UTF-8 bytes of the texts: bits per byte compare across tokenizers and scripts, where characters do not
    (a character of Chinese is three bytes, of English one)."""
    total = 0
    for text in texts:
        try:  # undecodable bytes a reader passed on as escapes (U+DC80..U+DCFF) count as the byte each was
            total += len(text.encode("utf-8", "surrogateescape"))
        except UnicodeEncodeError:  # other lone surrogates: as Python would write them
            total += len(text.encode("utf-8", "surrogatepass"))
    return total


def split_indices(docs: int | Sequence[int], mode: str = "random", val_fraction: float = 0.1, seed: int = 1337):
    """Document indices for train and val. `docs` is the documents' lengths in characters (or just their count).

    random: a seeded choice of val_fraction of the documents. tail: the documents after the last val_fraction of
    the characters begins, cut at the first document boundary at or past that point: nanoGPT's val text (the
    last 10% of tiny Shakespeare's characters, plays the model never saw) but for a partial speech at the cut.
    """
    if mode not in SPLITS:
        raise ConfigError(f"unknown split '{mode}'; choose one of: {', '.join(SPLITS)}")
    if not 0 < val_fraction < 1:
        raise ConfigError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    lengths = np.ones(docs, dtype=np.int64) if isinstance(docs, int) else np.asarray(docs, dtype=np.int64)
    n_docs = len(lengths)
    if n_docs < 2:
        raise DataError(
            f"the corpus has {n_docs} document; at least 2 are needed to hold one out for validation "
            "(separate documents with a blank line)"
        )
    if mode == "tail":
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        first = int(np.searchsorted(starts, (1 - val_fraction) * lengths.sum(), side="left"))
        first = min(max(first, 1), n_docs - 1)  # at least one document on each side
        return np.arange(first), np.arange(first, n_docs)
    n_val = min(n_docs - 1, max(1, round(n_docs * val_fraction)))
    val = np.sort(np.random.default_rng(seed).permutation(n_docs)[:n_val])
    train = np.setdiff1d(np.arange(n_docs), val)
    return train, val


@dataclass(frozen=True)
class PolicyReport:
    policy: str
    rows: int
    tokens_kept: int
    tokens_dropped: int
    padding_fraction: float

    @property
    def kept_fraction(self) -> float:
        total = self.tokens_kept + self.tokens_dropped
        return self.tokens_kept / total if total else 0.0


@dataclass(frozen=True)
class Rows:
    stream: np.ndarray
    starts: np.ndarray  # int64: where each row begins in the stream
    lengths: np.ndarray  # int64: tokens in each row (targets + 1)
    seq_len: int
    policy: str
    report: PolicyReport

    def __len__(self) -> int:
        return len(self.starts)

    @functools.cached_property
    def full(self) -> bool:
        """Every row seq_len + 1 tokens long (packed rows are): a batch of them needs no padding."""
        return bool((self.lengths == self.seq_len + 1).all())

    @functools.cached_property
    def window(self) -> np.ndarray:
        return np.arange(self.seq_len + 1)


def validate_policy(policy: str, seq_len: int, stride: int | None = None, overflow_min: int = 1) -> None:
    if policy not in POLICIES:
        raise ConfigError(f"unknown sequence policy '{policy}'; choose one of: {', '.join(POLICIES)}")
    if seq_len < 1:
        raise ConfigError(f"seq_len must be at least 1, got {seq_len}")
    if stride is not None and not 1 <= stride <= seq_len:
        raise ConfigError(f"stride must be between 1 and seq_len ({seq_len}), got {stride}")
    if overflow_min < 1:
        raise ConfigError(f"overflow_min must be at least 1 token, got {overflow_min}")


def make_rows(
    docs: TokenizedDocs,
    policy: str = "pack",
    seq_len: int = 128,
    *,
    stride: int | None = None,
    overflow_min: int = 1,
    batch_size: int = 32,
) -> Rows:
    """Apply a policy. `batch_size` only matters for bucket's padding figure (padding depends on batching)."""
    validate_policy(policy, seq_len, stride, overflow_min)
    total = docs.n_tokens
    if policy == "pack":
        stride = stride or seq_len
        n_rows = (len(docs.stream) - seq_len - 1) // stride + 1 if len(docs.stream) > seq_len else 0
        if n_rows < 1:
            raise DataError(
                f"the corpus is too small for one sequence: {total:,} tokens, but seq_len {seq_len} needs "
                f"{seq_len + 1}; lower seq_len or add text"
            )
        starts = np.arange(n_rows, dtype=np.int64) * stride
        lengths = np.full(n_rows, seq_len + 1, dtype=np.int64)
        kept = int(starts[-1]) + seq_len
        report = PolicyReport(policy, n_rows, kept, total - kept, 0.0)
        return Rows(docs.stream, starts, lengths, seq_len, policy, report)

    doc_len = docs.lengths
    if policy == "pad":
        starts = docs.bounds[:-1].copy()
        targets = np.minimum(doc_len, seq_len)
    else:  # pad-overflow and bucket: each document in pieces of seq_len targets
        pieces = -(-doc_len // seq_len)
        doc = np.repeat(np.arange(docs.n_docs), pieces)
        k = np.arange(len(doc)) - np.repeat(np.cumsum(pieces) - pieces, pieces)
        targets = np.minimum(seq_len, doc_len[doc] - k * seq_len)
        keep = (k == 0) | (targets >= overflow_min)
        starts = (docs.bounds[:-1][doc] + k * seq_len)[keep]
        targets = targets[keep]
    lengths = targets + 1
    kept = int(targets.sum())
    if policy == "bucket":
        batches = bucket_batches(lengths, batch_size, np.random.default_rng(0))
        width = sum(int(lengths[b].max() - 1) * len(b) for b in batches)
    else:
        width = len(starts) * seq_len
    padding = 1.0 - kept / width if width else 0.0
    report = PolicyReport(policy, len(starts), kept, total - kept, padding)
    return Rows(docs.stream, starts, lengths, seq_len, policy, report)


def bucket_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Row indices batched with rows of similar length: shuffle, sort within groups of batches, shuffle batches."""
    order = rng.permutation(len(lengths))
    group = batch_size * BUCKET_GROUP
    batches = []
    for g in range(0, len(order), group):
        chunk = order[g : g + group]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def epoch_batches(rows: Rows, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """The batches of one epoch, reproducible from (seed, epoch) alone so a resumed run sees the same order.

    A last incomplete batch is dropped (each epoch drops different rows) unless it is the only batch.
    """
    rng = np.random.default_rng([seed, epoch])
    if rows.policy == "bucket":
        batches = bucket_batches(rows.lengths, batch_size, rng)
    else:
        order = rng.permutation(len(rows))
        batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    full = [b for b in batches if len(b) == batch_size]
    return full or batches


@dataclass
class Batch:
    inputs: np.ndarray  # int64 (B, T)
    targets: np.ndarray  # int64 (B, T), IGNORE where there is nothing to predict
    mask: np.ndarray  # bool (B, T), True for real tokens (the key-padding mask)
    n_targets: int  # target tokens (not IGNORE), counted where the batch is built
    pos_ids: np.ndarray | None = None  # int64 (B, T) when documents are kept apart inside packed rows
    doc_ids: np.ndarray | None = None


def collate(
    rows: Rows, index: np.ndarray, *, pad_id: int = 0, eos_id: int = 1, doc_mask: bool = False, trim: bool = False
) -> Batch:
    """Rows -> a batch. `trim` pads only to the longest row in the batch (bucket, eval); else to seq_len.

    With `doc_mask`, packed rows also get document ids and positions that restart at each end-of-sequence,
    so attention can be kept inside a document: eos starts the next document's segment at position 0, the
    same context a document gets at the start of a padded row.
    """
    if rows.full:  # the training loop's usual case, in as few numpy calls as it takes: each costs microseconds
        tokens = rows.stream[rows.starts[index, None] + rows.window].astype(np.int64)
        inputs, targets = tokens[:, :-1].copy(), tokens[:, 1:].copy()
        batch = Batch(inputs, targets, np.ones(inputs.shape, dtype=bool), inputs.size)
    else:
        lengths = rows.lengths[index]
        width = int(lengths.max()) - 1 if trim else rows.seq_len
        tokens = np.full((len(index), width + 1), pad_id, dtype=np.int64)
        span = np.arange(width + 1)
        real = span[None, :] < lengths[:, None]
        gather = np.minimum(rows.starts[index, None] + span[None, :], len(rows.stream) - 1)
        tokens[real] = rows.stream[gather][real]
        inputs, targets = np.ascontiguousarray(tokens[:, :-1]), tokens[:, 1:].copy()
        targets[~real[:, 1:]] = IGNORE
        batch = Batch(inputs, targets, real[:, :-1].copy(), int(real[:, 1:].sum()))
    width = inputs.shape[1]
    if doc_mask:
        is_eos = inputs == eos_id
        batch.doc_ids = np.cumsum(is_eos, axis=1)
        idx = np.arange(width)
        starts = np.maximum.accumulate(np.where(is_eos, idx[None, :], 0), axis=1)
        batch.pos_ids = idx[None, :] - starts
    return batch


def eval_rows(docs: TokenizedDocs, seq_len: int, context: str = "document") -> Rows:
    """Validation rows: every target once, nothing dropped, whatever policy trained the model.

    document (the default): every document from its start, in pieces of seq_len, so val loss and bits/char
    compare across policies and block sizes. stream: the documents as one stream in consecutive windows of seq_len
    targets, each window's last token the next one's first, so a document is predicted from the ones before it
    too (up to seq_len tokens back): how nanoGPT scores its val text, for figures set beside its own.
    """
    if context == "document":
        return make_rows(docs, "pad-overflow", seq_len, overflow_min=1)
    if context != "stream":
        raise ConfigError(f"unknown val context '{context}'; choose document or stream")
    n = len(docs.stream)
    starts = np.arange(0, n - 1, seq_len, dtype=np.int64)
    lengths = np.minimum(seq_len + 1, n - starts)
    report = PolicyReport("stream", len(starts), docs.n_tokens, 0, 0.0)
    return Rows(docs.stream, starts, lengths, seq_len, "stream", report)


def eval_batches(rows: Rows, max_tokens: int) -> list[np.ndarray]:
    """Rows sorted by length and grouped to about `max_tokens` tokens per batch, to waste little on padding."""
    order = np.argsort(rows.lengths, kind="stable")
    per_batch = max(1, max_tokens // rows.seq_len)
    return [order[i : i + per_batch] for i in range(0, len(order), per_batch)]
