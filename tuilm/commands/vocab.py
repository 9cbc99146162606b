"""`tuilm vocab train`: train (or fetch from the cache) a byte-level BPE tokenizer and write it out."""

from __future__ import annotations

from pathlib import Path

import typer

from tuilm.commands.data import status
from tuilm.errors import ConfigError

MAX_TOKENIZER_BYTES = 256 << 20  # a 1M-token BPE is ~60 MB of JSON; anything larger is not one of ours


def vocab_train_command(data: str, size: int, out: Path | None) -> None:
    from tuilm.data.sources import load_corpus
    from tuilm.data.tokenizer import TokenizerSettings, load_or_train, save_tokenizer, vocab_filename

    if out is not None:
        refuse_to_clobber(Path(out))  # before the corpus is read: training may take minutes
    corpus = load_corpus(data)
    settings = TokenizerSettings(size)
    tokenizer = load_or_train(corpus, settings, on_train=status)
    path = out or Path(vocab_filename(corpus.name, settings, settings.cache_key(corpus.fingerprint)))
    save_tokenizer(tokenizer, path)
    typer.echo(f"wrote {path} ({tokenizer.vocab_size:,} tokens)")


def refuse_to_clobber(path: Path) -> None:
    """--out may replace a tokenizer (a new vocabulary for the same name), never anything else: a checkpoint or a
    corpus given by mistake would be lost. Directories and devices are the atomic writer's to refuse."""
    from tuilm.atomic import check_replaceable
    from tuilm.data.tokenizer import Tokenizer
    from tuilm.errors import DataError

    check_replaceable(path)
    if not path.is_file():
        return
    try:
        with open(path, "rb") as f:
            looks_like_json = f.read(1) == b"{"
        if looks_like_json and path.stat().st_size <= MAX_TOKENIZER_BYTES:
            Tokenizer.from_file(path)
            return
    except (OSError, DataError):
        pass
    raise ConfigError(f"{path} exists and is not a tokenizer file; refusing to overwrite it: give another --out")
