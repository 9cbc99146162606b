"""Peak resident memory of `tuilm data stats` against the size of the corpus (issue 27, item 24).

Each measurement is one `python -m tuilm data stats FILE` in a fresh child process; its peak RSS is the child's
own (os.wait4's ru_maxrss), so the sizes do not mix. The corpus is tiny Shakespeare repeated to each size, as
ordinary text (documents at blank lines) and as one line (blank lines and newlines replaced by spaces: one document).
Prints one JSON object: for each size and shape the peak RSS in MB and its ratio to the corpus size, and the
baseline (the same command on a 100 kB corpus: the interpreter, torch and tokenizers themselves).

Usage: TUILM_DATA_DIR=... python benchmarks/corpus_memory.py [--sizes 5,20,50] [--vocab 2000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from tuilm.data.sources import load_corpus


def peak_rss_mb(args: list[str], env: dict[str, str]) -> tuple[float, int]:
    """(peak RSS of the child in MB, its exit status)."""
    child = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        print(child.stderr.read().decode(errors="replace")[-500:], file=sys.stderr)
    return usage.ru_maxrss / 1024, child.returncode  # ru_maxrss is in kB on Linux


def write_corpus(path: Path, megabytes: float, one_line: bool) -> None:
    text = "\n\n".join(load_corpus("tiny_shakespeare").documents)
    if one_line:
        text = " ".join(text.split())
    size = int(megabytes * 1e6)
    with open(path, "w", encoding="utf-8") as f:
        written = 0
        while written < size:
            chunk = text[: size - written]
            f.write(chunk + (" " if one_line else "\n\n"))
            written += len(chunk) + 1


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="5,20,50", help="Corpus sizes in MB.")
    parser.add_argument("--vocab", type=int, default=2000)
    opts = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        # Its own tokenizer cache: every size trains its BPE, as a first run on a new corpus does.
        env = {**os.environ, "XDG_CACHE_HOME": scratch}
        command = [sys.executable, "-m", "tuilm", "data", "stats", "--vocab-size", str(opts.vocab)]
        base = Path(scratch) / "base.txt"
        write_corpus(base, 0.1, False)
        results["baseline_mb"] = round(peak_rss_mb([*command, str(base)], env)[0], 1)
        for mb in (float(x) for x in opts.sizes.split(",")):
            for one_line in (False, True):
                path = Path(scratch) / f"{mb:g}mb{'-one-line' if one_line else ''}.txt"
                write_corpus(path, mb, one_line)
                peak, code = peak_rss_mb([*command, str(path)], env)
                key = f"{mb:g}MB{' one line' if one_line else ''}"
                results[key] = {
                    "peak_rss_mb": round(peak, 1),
                    "x_corpus": round(peak / mb, 1),
                    "x_corpus_over_baseline": round((peak - results["baseline_mb"]) / mb, 1),
                    "exit": code,
                }
                path.unlink()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
