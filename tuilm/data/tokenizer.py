"""Byte-level BPE (trained with `tokenizers`), cached per corpus and settings, with exact round trips.

Ids 0 and 1 are `<|pad|>` and `<|eos|>`. Text is always encoded as text: a literal "<|eos|>" typed by a user
stays characters, and only the pipeline appends the real end-of-sequence id, so decode(encode(s)) == s for any s.
"""

from __future__ import annotations

import codecs
import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from tuilm.atomic import atomic_write_bytes
from tuilm.data.places import cache_dir
from tuilm.errors import ConfigError, DataError
from tuilm.resources import shipped_dirs

PAD, EOS = "<|pad|>", "<|eos|>"
PAD_ID, EOS_ID = 0, 1
GPT2_EOS = "<|endoftext|>"  # GPT-2's only special token (tuilm.model.pretrained)
MIN_VOCAB = 256 + 2  # every byte plus the two special tokens
MAX_VOCAB = 1_000_000
FORMAT = "tuilm-bpe-1"  # bump when training settings change meaning, so old cache entries are not reused


@dataclass(frozen=True)
class TokenizerSettings:
    vocab_size: int = 10_000
    min_frequency: int = 2

    def validate(self) -> None:
        if not MIN_VOCAB <= self.vocab_size <= MAX_VOCAB:
            raise ConfigError(
                f"vocab size {self.vocab_size} is impossible for byte-level BPE: it must be between {MIN_VOCAB} "
                f"(256 bytes + {PAD} + {EOS}) and {MAX_VOCAB:,}"
            )
        if self.min_frequency < 1:
            raise ConfigError(f"min_frequency must be at least 1, got {self.min_frequency}")

    def cache_key(self, corpus_fingerprint: str) -> str:
        text = f"{FORMAT}|{corpus_fingerprint}|{self.vocab_size}|{self.min_frequency}"
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _bytes_to_unicode() -> dict[int, str]:
    # The byte <-> printable-character table that byte-level BPE (GPT-2, `tokenizers.ByteLevel`) uses; we need
    # its inverse to turn single tokens into raw bytes, which `decode` cannot do for partial UTF-8 sequences.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


class Tokenizer:
    """A thin wrapper that fixes the special ids and exposes per-token bytes for streaming decode."""

    def __init__(self, inner):
        inner.encode_special_tokens = True
        self.inner = inner
        if inner.token_to_id(PAD) == PAD_ID and inner.token_to_id(EOS) == EOS_ID:
            self.pad_id, self.eos_id = PAD_ID, EOS_ID
        elif inner.token_to_id(GPT2_EOS) is not None and inner.token_to_id(PAD) is None:
            # GPT-2's byte-level BPE (issue 15) has no pad token: padding reuses <|endoftext|>, which is safe
            # because padded positions are masked out of attention and ignored by the loss.
            self.pad_id = self.eos_id = inner.token_to_id(GPT2_EOS)
        else:
            raise DataError(f"tokenizer does not have {PAD} at id {PAD_ID} and {EOS} at id {EOS_ID}")

    @classmethod
    def from_json(cls, text: str) -> Tokenizer:
        from tokenizers import Tokenizer as HFTokenizer

        try:
            return cls(HFTokenizer.from_str(text))
        except Exception as e:  # tokenizers raises a bare Exception for malformed JSON
            raise DataError(f"not a valid tokenizer file ({str(e).splitlines()[0]})") from None

    @classmethod
    def from_file(cls, path: Path) -> Tokenizer:
        try:
            return cls.from_json(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(f"{path}: cannot read tokenizer ({e})") from None

    def to_json(self) -> str:
        return self.inner.to_str()

    @property
    def vocab_size(self) -> int:
        return self.inner.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.inner.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self.inner.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of the ids; end-of-sequence shows as a blank line (the document break it stands for)."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        table = self.token_bytes
        return b"".join(table[i] for i in ids)

    @cached_property
    def token_bytes(self) -> list[bytes]:
        byte_of = {c: b for b, c in _bytes_to_unicode().items()}
        table = []
        for i in range(self.vocab_size):
            token = self.inner.id_to_token(i)
            if i == self.eos_id:
                table.append(b"\n\n")
            elif i == self.pad_id or token is None:
                table.append(b"")
            else:
                table.append(bytes(byte_of[c] for c in token))
        return table

    def stream_decoder(self) -> StreamDecoder:
        return StreamDecoder(self.token_bytes)


class StreamDecoder:
    """Turns ids into text as they arrive, holding back an incomplete UTF-8 character until it is whole."""

    def __init__(self, token_bytes: list[bytes]):
        self._table = token_bytes
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, token_id: int) -> str:
        return self._utf8.decode(self._table[token_id])

    def flush(self) -> str:
        return self._utf8.decode(b"", final=True)


ENCODE_CHARS = 1 << 18  # characters per encode_batch call: its Encoding objects cost ~100x the text they hold
_CUTS = re.compile(r"(?<=\S) (?=\S)")  # one space between two non-spaces: a GPT-2 pre-token starts at the space


def pieces(text: str) -> list[str]:
    """`text` in pieces of at most ENCODE_CHARS, cut before a single space between two non-spaces, where GPT-2's
    pre-tokenizer (tuilm's BPE, GPT-2's own) starts a new pre-token anyway: encoding or counting the pieces gives
    what the whole would, at a fraction of the memory (a one-line corpus is one document)."""
    if len(text) <= ENCODE_CHARS:
        return [text]
    out, start = [], 0
    while len(text) - start > ENCODE_CHARS:
        cut = _CUTS.search(text, start + ENCODE_CHARS // 2, start + ENCODE_CHARS)
        end = cut.start() if cut else start + ENCODE_CHARS  # no space in half a megabyte: cut anywhere (rare)
        out.append(text[start:end])
        start = end
    return [*out, text[start:]]


def train_tokenizer(documents: Sequence[str], settings: TokenizerSettings) -> Tokenizer:
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    settings.validate()
    inner = HFTokenizer(models.BPE())
    inner.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    inner.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=settings.vocab_size,
        min_frequency=settings.min_frequency,
        special_tokens=[PAD, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    inner.train_from_iterator((p for d in documents for p in pieces(d)), trainer, length=len(documents))
    return Tokenizer(inner)


def vocab_filename(corpus_name: str, settings: TokenizerSettings, key: str) -> str:
    stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in Path(corpus_name).name)[:40]
    return f"{stem}-bpe{settings.vocab_size}-{key}.json"


# Peak memory of training BPE on a corpus held in memory, then encoding it, per character of the corpus: about 9
# measured for the training alone (benchmarks/corpus_memory.py), with room for the text itself and its ids.
MEMORY_PER_CHAR = 16


def check_memory(name: str, n_chars: int, available: int | None = None) -> None:
    """DataError with the numbers, before training starts, when this machine cannot hold what it would take."""
    if available is None:
        import psutil

        available = psutil.virtual_memory().available
    need = n_chars * MEMORY_PER_CHAR
    if need > available:
        raise DataError(
            f"{name}: {n_chars / 1e6:,.0f}M characters need about {need / 2**30:,.1f} GiB of memory to train a "
            f"tokenizer and tokenize, and {available / 2**30:,.1f} GiB is available; use a smaller corpus or "
            "data.train_fraction, or a .txt file over 256 MB, which is streamed"
        )


def load_or_train(corpus, settings: TokenizerSettings, *, on_train=None, part: str = "", documents=None) -> Tokenizer:
    """The tokenizer for (corpus content, settings): shipped in vocab/, cached, or trained now and cached.

    `on_train` is called with a message before a (slow) training starts, so front ends can say what is happening.
    A streamed corpus trains on `documents()` (an iterable) instead of `corpus.documents`, and names that `part`
    of the corpus in the cache key.
    """
    settings.validate()
    key = settings.cache_key(corpus.fingerprint + part)
    cache = cache_dir() / "tokenizers"
    for folder in [*shipped_dirs("vocab"), cache]:
        for path in folder.glob(f"*-{key}.json"):
            return Tokenizer.from_file(path)
    if hasattr(corpus, "n_chars"):  # held in memory (a streamed corpus trains on a bounded sample)
        check_memory(corpus.name, corpus.n_chars)
    if on_train:
        on_train(f"training a {settings.vocab_size:,}-token BPE tokenizer on {corpus.name} (cached afterwards)")
    tokenizer = train_tokenizer(documents() if documents else corpus.documents, settings)
    save_tokenizer(tokenizer, cache / vocab_filename(corpus.name, settings, key))
    return tokenizer


def save_tokenizer(tokenizer: Tokenizer, path: Path) -> Path:
    atomic_write_bytes(Path(path), tokenizer.to_json().encode("utf-8"))
    return path
