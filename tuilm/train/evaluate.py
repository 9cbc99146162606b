"""Validation: loss, perplexity and bits per character over the whole val split.

Every val document is scored from its start (after an end-of-sequence token), in pieces of seq_len, with no
token dropped, whatever policy trained the model; so losses compare across policies and block sizes, and
bits per character (summed nats / (characters x ln 2)) compares across tokenizers too.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from tuilm.data.pipeline import IGNORE, collate, eval_batches, eval_rows

EVAL_TOKENS = 8192  # tokens per forward pass: large enough to be efficient, small enough for any CPU


@dataclass(frozen=True)
class EvalResult:
    loss: float  # mean nats per token
    ppl: float
    bpc: float  # bits per character
    tokens: int
    characters: int


@torch.no_grad()
def evaluate(model, dataset, device, precision=None, docs=None) -> EvalResult:
    """Score `docs` (default: the dataset's val split) with `model`; restores the model's train/eval mode."""
    docs = docs if docs is not None else dataset.val
    rows = dataset.val_rows if docs is dataset.val else eval_rows(docs, model.cfg.seq_len)
    was_training = model.training
    model.eval()
    nats = torch.zeros((), dtype=torch.float64, device=device)
    tokens = 0
    try:
        for index in eval_batches(rows, EVAL_TOKENS):
            # Rows are right-padded: causal attention already keeps real tokens from seeing the padding after
            # them, so the key-padding mask would change nothing that is scored.
            batch = collate(rows, index, trim=True, eos_id=dataset.tokenizer.eos_id)
            x = torch.from_numpy(batch.inputs).to(device)
            y = torch.from_numpy(batch.targets).to(device)
            with precision.autocast(device) if precision else contextlib.nullcontext():
                logits = model(x)
            loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), ignore_index=IGNORE, reduction="sum")
            nats += loss.double()
            tokens += batch.n_targets
    finally:
        model.train(was_training)
    total = float(nats)
    mean = total / max(1, tokens)
    return EvalResult(mean, math.exp(min(mean, 700)), total / (docs.chars * math.log(2)), tokens, docs.chars)


def eval_command(model_path: Path, data: str | None, device: str, *, allow_nonfinite: bool = False) -> None:
    from rich.console import Console
    from rich.table import Table

    from tuilm.checkpoint import load_checkpoint
    from tuilm.config import from_dict
    from tuilm.data.dataset import Dataset, split_corpus
    from tuilm.data.pipeline import make_rows, tokenize
    from tuilm.data.sources import load_corpus
    from tuilm.errors import DataError
    from tuilm.train.device import pick_device

    ckpt = load_checkpoint(model_path, pick_device(device), allow_nonfinite=allow_nonfinite)
    tokenizer = ckpt.tokenizer
    seq_len = ckpt.model.cfg.seq_len
    dataset = None
    if data is None:
        # Rebuild the run's own split from its saved data settings, and check the text is still the same.
        config = from_dict(ckpt.run_config or {}, ckpt.run_config.get("recipe", "custom"))
    # -- corpora (issue 15): a streamed corpus (own split, large, hf:) is rebuilt as training built it
    from tuilm.data.hf import is_hf
    from tuilm.data.large import is_streamed

    if data is None and (is_hf(config.data.source) or is_streamed(config.data.source)):
        from tuilm.data.dataset import prepare

        dataset = prepare(config.data, seq_len, tokenizer=tokenizer)
        if dataset.corpus.fingerprint != ckpt.meta.get("data_fingerprint"):
            raise DataError(
                f"{config.data.source} has changed since this model was trained (different content); "
                "evaluate on a file with --data"
            )
        corpus, what = dataset.corpus, f"{config.data.source} (val split, {dataset.val.n_docs:,} documents)"
    # -- end corpora
    elif data is None:
        corpus = load_corpus(config.data.source)
        if corpus.fingerprint != ckpt.meta.get("data_fingerprint"):
            raise DataError(
                f"{config.data.source} has changed since this model was trained (different content); "
                "evaluate on a file with --data"
            )
        _, val_idx = split_corpus(corpus, config.data)
        texts = [corpus.documents[i] for i in val_idx]
        what = f"{corpus.name} (val split, {len(texts):,} documents)"
    elif data in _split_corpora():  # corpora (issue 15): a named corpus's test split (else its val split)
        from tuilm.data.corpora import open_corpus
        from tuilm.data.large import iter_documents

        corpus = open_corpus(data)
        split = "test" if "test" in corpus.splits else "val"
        texts = list(iter_documents(corpus.splits[split], corpus.extra.get("separator", "")))
        what = f"{data} ({split} split, {len(texts):,} documents)"
    else:
        corpus = load_corpus(data)
        texts = corpus.documents
        what = f"{corpus.name} ({len(texts):,} documents)"
    if dataset is None:
        docs = tokenize(tokenizer.encode_batch(texts), texts, tokenizer.eos_id)
        rows = eval_rows(docs, seq_len)
        dataset = Dataset(corpus, tokenizer, docs, docs, make_rows(docs, "pad", seq_len), rows)
    dev = next(ckpt.model.parameters()).device
    result = evaluate(ckpt.model, dataset, dev)
    table = Table(title=f"{ckpt.name} on {what}", title_justify="left")
    for name in ("val loss", "perplexity", "bits/char", "tokens", "characters"):
        table.add_column(name, justify="right")
    table.add_row(
        f"{result.loss:.4f}",
        f"{result.ppl:.2f}",
        f"{result.bpc:.4f}",
        f"{result.tokens:,}",
        f"{result.characters:,}",
    )
    Console().print(table)


def _split_corpora() -> tuple[str, ...]:  # corpora (issue 15)
    from tuilm.data import corpora

    return corpora.SPLIT_CORPORA
