"""`tuilm data stats`: what a corpus holds and what each sequence policy does with it."""

from __future__ import annotations

import typer


def status(message: str) -> None:
    """Progress of a slow step (download, tokenizer training), on stderr so stdout holds only the answer."""
    typer.echo(message + "…", err=True)


def stats_command(data: str, vocab_size: int, seq_len: int, batch_size: int, as_json: bool = False) -> None:
    from rich.console import Console

    from tuilm.config import RANGES
    from tuilm.data.stats import corpus_stats, render
    from tuilm.values import check_number

    check_number("--seq-len", seq_len, RANGES["model.seq_len"])
    check_number("--batch-size", batch_size, RANGES["train.batch_size"])
    stats = corpus_stats(data, vocab_size, seq_len, batch_size, on_status=status)
    if as_json:
        from tuilm.commands.jsonout import print_json

        lengths = stats.pop("lengths")
        policies = [{**vars(r), "kept_fraction": r.kept_fraction} for r in stats.pop("policies")]
        print_json("data_stats", {**stats, "policies": policies, "mean_length": float(lengths.mean())})
        return
    render(stats, Console())


def list_command() -> None:
    from rich.console import Console

    from tuilm.data.corpora import render_list

    render_list(Console())
