"""The data settings ([data] in a recipe) and the names of the ways documents become rows: a leaf module, like
model/config.py, so that the run config above and the pipeline below both read the one list."""

from __future__ import annotations

from dataclasses import dataclass

POLICIES = ("pack", "pad", "pad-overflow", "bucket")  # how documents become fixed-length rows (data.pipeline)
SPLITS = ("random", "tail")  # which documents are held out for validation
VAL_CONTEXTS = ("document", "stream")  # what a val token is predicted from (data.pipeline.eval_rows)


@dataclass(frozen=True)
class DataConfig:
    source: str = "tiny_shakespeare"  # a named dataset, or a path to .txt / .jsonl / .jsonl.zst / a directory
    vocab_size: int = 10_000
    policy: str = "pack"  # pack | pad | pad-overflow | bucket
    stride: int = 0  # pack only: window stride; 0 means seq_len (no overlap)
    overflow_min: int = 1  # pad-overflow and bucket: shortest overflow piece kept, in tokens
    doc_mask: bool = False  # pack only: attention never crosses a document end; positions restart
    split: str = "random"  # random | tail
    val_fraction: float = 0.1
    split_seed: int = 1337
    train_fraction: float = 1.0  # use only this (seeded) fraction of the training documents
    val_context: str = "document"  # document: each val document from its start | stream: the text before it too
    # corpora (issue 15): "" trains tuilm's BPE; "gpt2"... or a Hugging Face model dir uses that model's tokenizer
    tokenizer: str = ""
    text_field: str = "text"  # hf:<name> sources: the column holding the text
