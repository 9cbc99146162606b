"""One call from a data config to everything training needs: corpus, tokenizer, split, rows."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from tuilm.data.pipeline import Rows, TokenizedDocs, encode_docs, eval_rows, make_rows, split_indices
from tuilm.data.sources import Corpus, load_corpus
from tuilm.data.tokenizer import Tokenizer, TokenizerSettings, load_or_train


@dataclass(frozen=True)
class Dataset:
    corpus: Corpus
    tokenizer: Tokenizer
    train: TokenizedDocs
    val: TokenizedDocs
    train_rows: Rows
    val_rows: Rows

    def summary(self) -> dict:
        report = self.train_rows.report
        in_memory = hasattr(self.corpus, "documents")  # a streamed corpus (tuilm.data.large) counts its splits
        return {
            "source": self.corpus.name,
            "fingerprint": self.corpus.fingerprint,
            "documents": len(self.corpus.documents) if in_memory else self.train.n_docs + self.val.n_docs,
            "characters": self.corpus.n_chars if in_memory else self.train.chars + self.val.chars,
            "vocab_size": self.tokenizer.vocab_size,
            "train_documents": self.train.n_docs,
            "val_documents": self.val.n_docs,
            "train_tokens": self.train.n_tokens,
            "val_tokens": self.val.n_tokens,
            "val_characters": self.val.chars,
            "policy": report.policy,
            "train_rows": report.rows,
            "tokens_kept": report.tokens_kept,
            "tokens_dropped": report.tokens_dropped,
            "padding_fraction": round(report.padding_fraction, 4),
        }


def split_corpus(corpus, data) -> tuple[np.ndarray, np.ndarray]:
    """Train and val document indices of `corpus` under the DataConfig `data` (the one rule train and eval share)."""
    lengths = [len(d) + 2 for d in corpus.documents]  # + 2: the blank line that separates documents in a text file
    return split_indices(lengths, data.split, data.val_fraction, data.split_seed)


def tokenizer_part(data) -> str:
    """The training documents a corpus's BPE is trained on, in its cache key: the split that chose them."""
    return f"|train:{data.split}:{data.val_fraction}:{data.split_seed}"


def prepare(
    data,
    seq_len: int,
    batch_size: int = 32,
    *,
    progress: bool = True,
    on_status: Callable[[str], None] | None = None,
    tokenizer: Tokenizer | None = None,
) -> Dataset:
    """`data` is a DataConfig. `progress` shows a download bar; `on_status` hears of tokenizer training;
    `tokenizer` is a given one (GPT-2's) instead of tuilm's BPE trained on the corpus."""
    corpus, tokenizer, train, val = _tokenized_split(data, progress, on_status, tokenizer)
    rows = make_rows(
        train,
        data.policy,
        seq_len,
        stride=data.stride or None,
        overflow_min=data.overflow_min,
        batch_size=batch_size,
    )
    return Dataset(corpus, tokenizer, train, val, rows, eval_rows(val, seq_len, data.val_context))


def _tokenized_split(data, progress, on_status, tokenizer):
    """(corpus, tokenizer, train docs, val docs). A corpus with its own train/val split, or one too large for
    memory, is streamed into memory-mapped tokens; a Hugging Face dataset is first written to local text."""
    from tuilm.data.hf import is_hf
    from tuilm.data.large import is_streamed, streamed_split

    own_split = None
    if is_hf(data.source):
        from dataclasses import replace

        from tuilm.data.hf import materialize

        local = materialize(data.source, data.text_field)
        if isinstance(local, str):
            data = replace(data, source=local)
        else:
            own_split = local
    if own_split is not None or is_streamed(data.source):
        return streamed_split(data, progress=progress, on_status=on_status, tokenizer=tokenizer, corpus=own_split)
    corpus = load_corpus(data.source, progress=progress)
    train_idx, val_idx = split_corpus(corpus, data)
    docs = corpus.documents
    if tokenizer is None:
        # The BPE learns its merges from the training documents only: merges fitted to the val text would
        # lower val bits/char a little, and figures set beside nanoGPT's must not see its val text at all.
        tokenizer = load_or_train(
            corpus,
            TokenizerSettings(data.vocab_size),
            on_train=on_status,
            part=tokenizer_part(data),
            documents=lambda: [docs[i] for i in train_idx],
        )
    if data.train_fraction < 1:
        keep = max(1, round(len(train_idx) * data.train_fraction))
        train_idx = np.sort(np.random.default_rng(data.split_seed + 1).choice(train_idx, keep, replace=False))
    train_texts = [docs[i] for i in train_idx]
    val_texts = [docs[i] for i in val_idx]
    train = encode_docs(tokenizer, train_texts)
    val = encode_docs(tokenizer, val_texts)
    return corpus, tokenizer, train, val
