"""Tokenizing a corpus larger than memory allows to hold as Python strings: tokens/s and peak memory.

Writes `--mb` megabytes (default 1024, i.e. ~1 GB) of generated English-like text to a temp file, a block at a
time, then runs the library path that corpora above the size threshold take (tuilm.data.large): a byte-level BPE
trained on the first `--train-mb` MB of it, then the whole file streamed in blocks, cut into documents,
tokenized with `tokenizers`' parallel encode_batch and written to a memory-mapped token cache; finally every
packed row is walked once through the memory map. Reports tokens/s of the tokenization stage, the peak resident
memory of the process (sampled every 50 ms, and the kernel's high-water mark), and the text size: the peak
staying far below the text size (the same text as Python str would take at least as much again) is the point.

Usage (from the repository root, in the venv; 1 GB takes some minutes on a laptop, longer on a busy machine):

    python benchmarks/tokenize_large.py                # ~1 GB
    python benchmarks/tokenize_large.py --mb 64        # a quicker check

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

_WORDS = (
    "the of and to in a is that for it as was with be by on not he this are or his from at which but have an they "
    "you were her all she there would their we him been has when who will more no if out so said what up its about "
    "into than them can only other new some could time these two may then do first any my now such like our over "
    "man me even most made after also did many before must through back years where much your way well down should "
    "because each just those people how too little state good very make world still own see men work long get here"
)
WORDS = _WORDS.split(" ")


def generate(path: Path, n_bytes: int, seed: int = 0) -> int:
    rng = random.Random(seed)
    written = 0
    with open(path, "w", encoding="utf-8") as f:
        while written < n_bytes:
            paras = []
            for _ in range(200):
                sentences = [
                    " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 18))).capitalize() + "."
                    for _ in range(rng.randint(1, 6))
                ]
                paras.append(" ".join(sentences))
            block = "\n\n".join(paras) + "\n\n"
            f.write(block)
            written += len(block.encode())
    return written


class PeakRSS:
    def __init__(self):
        import psutil

        self.proc = psutil.Process()
        self.peak = self.proc.memory_info().rss
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self.stop.wait(0.05):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=1024, help="megabytes of text to generate")
    parser.add_argument("--train-mb", type=float, default=32, help="megabytes the BPE is trained on")
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--seq-len", type=int, default=256)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ["XDG_CACHE_HOME"] = str(tmp / "cache")
        from tuilm.config import from_dict
        from tuilm.data import large
        from tuilm.data.pipeline import make_rows
        from tuilm.data.tokenizer import TokenizerSettings

        text = tmp / "big.txt"
        t0 = time.perf_counter()
        size = generate(text, int(args.mb * 1e6))
        gen_s = time.perf_counter() - t0
        large.TOKENIZER_TRAIN_BYTES = int(args.train_mb * 1e6)
        data = from_dict({"data": {"source": str(text), "vocab_size": args.vocab_size}}, "bench").data
        with PeakRSS() as rss:
            base_rss = rss.peak
            corpus = large.split_local_file(text, data.val_fraction)
            t0 = time.perf_counter()
            tokenizer = large.load_or_train_streamed(corpus, TokenizerSettings(args.vocab_size))
            train_tok_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            train = large.tokenize_streamed(corpus, "train", tokenizer)
            val = large.tokenize_streamed(corpus, "val", tokenizer)
            tok_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            rows = make_rows(train, "pack", args.seq_len)
            checksum = 0
            for start in range(0, len(rows), 4096):  # touch every row through the memory map
                checksum += int(train.stream[rows.starts[start] : rows.starts[start] + args.seq_len + 1].sum())
            walk_s = time.perf_counter() - t0
        tokens = train.n_tokens + val.n_tokens
        print(
            json.dumps(
                {
                    "text_bytes": size,
                    "documents": train.n_docs + val.n_docs,
                    "tokens": tokens,
                    "generate_s": round(gen_s, 1),
                    "bpe_train_s": round(train_tok_s, 1),
                    "tokenize_s": round(tok_s, 1),
                    "tokens_per_s": round(tokens / tok_s),
                    "mb_per_s": round(size / 1e6 / tok_s, 1),
                    "rows": len(rows),
                    "row_walk_s": round(walk_s, 2),
                    "rss_before_mb": round(base_rss / 2**20),
                    "peak_rss_mb": round(rss.peak / 2**20),
                    "ru_maxrss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                    "cpus": os.cpu_count(),
                    "train_mb": args.train_mb,
                    "vocab_size": args.vocab_size,
                }
            )
        )


if __name__ == "__main__":
    main()
