"""`tuilm vocab train`: train (or fetch from the cache) a byte-level BPE tokenizer and write it out."""

from __future__ import annotations

from pathlib import Path

import typer

from tuilm.commands.data import status


def vocab_train_command(data: str, size: int, out: Path | None) -> None:
    from tuilm.data.sources import load_corpus
    from tuilm.data.tokenizer import TokenizerSettings, load_or_train, save_tokenizer, vocab_filename

    corpus = load_corpus(data)
    settings = TokenizerSettings(size)
    tokenizer = load_or_train(corpus, settings, on_train=status)
    path = out or Path(vocab_filename(corpus.name, settings, settings.cache_key(corpus.fingerprint)))
    save_tokenizer(tokenizer, path)
    typer.echo(f"wrote {path} ({tokenizer.vocab_size:,} tokens)")
