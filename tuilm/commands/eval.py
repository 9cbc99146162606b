"""`tuilm eval`: a checkpoint's loss, perplexity and bits per character on its own val split or on a text."""

from __future__ import annotations

from pathlib import Path


def eval_command(model_path: Path, data: str | None, device: str) -> None:
    from rich.console import Console
    from rich.table import Table

    from tuilm.checkpoint import load_checkpoint
    from tuilm.config import from_dict
    from tuilm.data.dataset import Dataset
    from tuilm.data.pipeline import eval_rows, make_rows, split_indices, tokenize
    from tuilm.data.sources import load_corpus
    from tuilm.device import pick_device
    from tuilm.errors import DataError
    from tuilm.train.evaluate import evaluate

    ckpt = load_checkpoint(model_path, pick_device(device))
    tokenizer = ckpt.tokenizer
    seq_len = ckpt.model.cfg.seq_len
    if data is None:
        # Rebuild the run's own split from its saved data settings, and check the text is still the same.
        config = from_dict(ckpt.run_config or {}, ckpt.run_config.get("recipe", "custom"))
        corpus = load_corpus(config.data.source)
        if corpus.fingerprint != ckpt.meta.get("data_fingerprint"):
            raise DataError(
                f"{config.data.source} has changed since this model was trained (different content); "
                "evaluate on a file with --data"
            )
        _, val_idx = split_indices(
            len(corpus.documents), config.data.split, config.data.val_fraction, config.data.split_seed
        )
        texts = [corpus.documents[i] for i in val_idx]
        what = f"{corpus.name} (val split, {len(texts):,} documents)"
    else:
        corpus = load_corpus(data)
        texts = corpus.documents
        what = f"{corpus.name} ({len(texts):,} documents)"
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
