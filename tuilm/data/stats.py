"""`tuilm data stats`: what a corpus looks like to the model, and what each sequence policy keeps of it."""

from __future__ import annotations

import numpy as np
from rich.bar import Bar
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from tuilm.data.pipeline import POLICIES, encode_docs, make_rows
from tuilm.data.sources import load_corpus
from tuilm.data.tokenizer import TokenizerSettings, load_or_train


def corpus_stats(source: str, vocab_size: int, seq_len: int, batch_size: int, on_status=None) -> dict:
    corpus = load_corpus(source)
    tokenizer = load_or_train(corpus, TokenizerSettings(vocab_size), on_train=on_status)
    docs = encode_docs(tokenizer, corpus.documents)
    lengths = docs.lengths
    reports = [make_rows(docs, p, seq_len, batch_size=batch_size).report for p in POLICIES]
    return {
        "source": corpus.name,
        "documents": docs.n_docs,
        "characters": corpus.n_chars,
        "tokens": docs.n_tokens,
        "vocab_size": tokenizer.vocab_size,
        "chars_per_token": corpus.n_chars / max(1, docs.n_tokens - docs.n_docs),
        "lengths": lengths,
        "percentiles": {
            name: int(np.percentile(lengths, q, method="nearest"))
            for name, q in (("min", 0), ("p50", 50), ("p90", 90), ("p99", 99), ("max", 100))
        },
        "over_seq_len": float((lengths > seq_len).mean()),
        "seq_len": seq_len,
        "batch_size": batch_size,
        "policies": reports,
    }


def histogram(lengths: np.ndarray, seq_len: int, bins: int = 12, width: int = 40) -> Table:
    """Document lengths in log-spaced bins (lengths are heavy-tailed), with seq_len's bin marked."""
    low, top = int(lengths.min()), max(int(lengths.min()) + 1, int(lengths.max()))
    edges = np.unique(np.round(np.geomspace(low, top + 1, bins + 1)).astype(int))
    counts, _ = np.histogram(lengths, bins=edges)
    table = Table(box=None, show_header=True, pad_edge=False)
    table.add_column("tokens", justify="right")
    table.add_column("documents", justify="right")
    table.add_column("")
    table.add_column("")
    peak = max(1, counts.max())
    for lo, hi, count in zip(edges[:-1], edges[1:], counts, strict=True):
        label = f"{lo}-{hi - 1}" if hi - 1 > lo else f"{lo}"
        here = lo <= seq_len < hi
        bar = Bar(size=peak, begin=0, end=count, width=width, color="yellow" if here else "cyan")
        table.add_row(label, f"{count:,}", bar, Text("◂ seq_len" if here else "", style="dim"))
    return table


def render(stats: dict, console: Console) -> None:
    p = stats["percentiles"]
    overview = Table.grid(padding=(0, 2))
    overview.add_column(style="bold")
    overview.add_column()
    for label, value in [
        ("source", stats["source"]),
        ("documents", f"{stats['documents']:,}"),
        ("characters", f"{stats['characters']:,}"),
        ("tokens", f"{stats['tokens']:,} (vocab {stats['vocab_size']:,}; end-of-sequence tokens included)"),
        ("characters per token", f"{stats['chars_per_token']:.2f}"),
        (
            "tokens per document",
            f"min {p['min']}  p50 {p['p50']}  p90 {p['p90']}  p99 {p['p99']}  max {p['max']}",
        ),
        (f"longer than {stats['seq_len']}", f"{stats['over_seq_len']:.1%} of documents"),
    ]:
        overview.add_row(label, value)

    policies = Table(title=f"sequence policies at seq_len {stats['seq_len']}", title_justify="left")
    for name in ("policy", "rows", "kept %", "dropped %", "padding %"):
        policies.add_column(name, justify="left" if name == "policy" else "right")
    for r in stats["policies"]:
        policies.add_row(
            r.policy,
            f"{r.rows:,}",
            f"{100 * r.kept_fraction:.1f}",
            f"{100 * (1 - r.kept_fraction):.1f}",
            f"{100 * r.padding_fraction:.1f}",
        )
    note = Text(
        f"kept/dropped count target tokens; bucket's padding is for batches of {stats['batch_size']} rows.",
        style="dim",
    )
    console.print(Group(overview, Text(""), histogram(stats["lengths"], stats["seq_len"]), Text(""), policies, note))
