"""`tuilm eval`: a checkpoint's loss, perplexity, bits per character and per UTF-8 byte on its own val split or on
a text."""

from __future__ import annotations

from pathlib import Path


def eval_or_sliding(
    model_path: Path | None,
    data: str | None,
    device: str,
    init: str | None,
    stride: int,
    *,
    allow_nonfinite: bool = False,
    as_json: bool = False,
) -> None:
    """`tuilm eval`: a checkpoint's val loss, or with --init or --stride sliding-window perplexity (e.g. of GPT-2)."""
    from tuilm.errors import ConfigError

    if init or stride:
        sliding_eval_command(model_path, init, data, stride, device, allow_nonfinite=allow_nonfinite, as_json=as_json)
        return
    if model_path is None:
        raise ConfigError("say which model: --model-path CHECKPOINT (or --init gpt2)")
    eval_command(model_path, data, device, allow_nonfinite=allow_nonfinite, as_json=as_json)


def eval_command(
    model_path: Path, data: str | None, device: str, *, allow_nonfinite: bool = False, as_json: bool = False
) -> None:

    from tuilm.checkpoint.model import open_model
    from tuilm.device import pick_device
    from tuilm.errors import ConfigError
    from tuilm.train.evaluate import evaluate

    ckpt = open_model(model_path, pick_device(device), allow_nonfinite=allow_nonfinite)
    if data is None and not ckpt.run_config:
        raise ConfigError(f"{model_path} was not trained by tuilm, so it has no val split; evaluate it with --data")
    dataset, what = own_val_split(ckpt) if data is None else other_text(ckpt, data)
    result = evaluate(ckpt.model, dataset, next(ckpt.model.parameters()).device)
    if as_json:
        from tuilm.commands.jsonout import print_json

        print_json("eval", _numbers(ckpt.name, str(model_path), what, result))
        return
    print_result(f"{ckpt.name} on {what}", result, "val loss")


def print_result(title: str, result, loss_name: str, **more: int) -> None:
    """One table row: loss, perplexity, bits/char, bits/byte, tokens, characters (and any extra counts), and the
    UTF-8 bytes where there are more of them than characters; it fits in 80 columns."""
    from rich.console import Console
    from rich.table import Table

    from tuilm.formatting import fmt

    table = Table(title=title, title_justify="left")
    cells = {
        loss_name: f"{result.loss:.4f}",
        "perplexity": f"{result.ppl:.2f}",
        "bits/char": f"{result.bpc:.4f}",
        "bits/byte": fmt(result.bpb),
        "tokens": f"{result.tokens:,}",
        "chars": f"{result.characters:,}",
        **{k: f"{v:,}" for k, v in more.items()},
    }
    if result.utf8_bytes not in (None, result.characters):  # ASCII text: as many bytes as characters
        cells = {**cells, "bytes": f"{result.utf8_bytes:,}"}
    for name in cells:
        table.add_column(name, justify="right")
    table.add_row(*cells.values())
    Console().print(table)


def _numbers(name: str, path: str, what: str, result, **more) -> dict:
    return {
        "model": name,
        "path": path,
        "data": what,
        "val_loss": result.loss,
        "perplexity": result.ppl,
        "bits_per_char": result.bpc,
        "bits_per_byte": result.bpb,
        "tokens": result.tokens,
        "characters": result.characters,
        "bytes": result.utf8_bytes,
        **more,
    }


def own_val_split(ckpt):
    """The run's own val split, rebuilt from its saved data settings, after checking the text is unchanged."""
    from tuilm.checkpoint.metadata import saved_run_config
    from tuilm.data.dataset import prepare, split_corpus
    from tuilm.data.hf import is_hf
    from tuilm.data.large import is_streamed
    from tuilm.data.sources import load_corpus
    from tuilm.errors import DataError

    config = saved_run_config(ckpt.path, ckpt.run_config or {})
    source = config.data.source
    if is_hf(source) or is_streamed(source):  # rebuilt exactly as training built it
        dataset = prepare(config.data, ckpt.model.cfg.seq_len, tokenizer=ckpt.tokenizer)
        corpus, n_docs, name = dataset.corpus, dataset.val.n_docs, source
    else:
        corpus = load_corpus(source)
        _, val_idx = split_corpus(corpus, config.data)
        dataset, n_docs, name = None, len(val_idx), corpus.name
    if corpus.fingerprint != ckpt.meta.get("data_fingerprint"):
        raise DataError(
            f"{source} has changed since this model was trained (different content); evaluate on a file with --data"
        )
    context = config.data.val_context  # scored as the run scored its own evaluations
    if dataset is None:
        dataset = _scored(ckpt, corpus, [corpus.documents[i] for i in val_idx], context)
    how = ", scored as one stream" if context == "stream" else ""
    return dataset, f"{name} (val split, {n_docs:,} documents{how})"


def other_text(ckpt, data: str):
    """All of a text; for a named corpus with its own split, its test split (its val split if it has no test)."""
    from tuilm.data.corpora import SPLIT_CORPORA, open_corpus
    from tuilm.data.large import iter_documents
    from tuilm.data.sources import load_corpus

    if data in SPLIT_CORPORA:
        corpus = open_corpus(data)
        split = "test" if "test" in corpus.splits else "val"
        texts = list(iter_documents(corpus.splits[split], corpus.extra.get("separator", "")))
        return _scored(ckpt, corpus, texts), f"{data} ({split} split, {len(texts):,} documents)"
    corpus = load_corpus(data)
    return _scored(ckpt, corpus, corpus.documents), f"{corpus.name} ({len(corpus.documents):,} documents)"


def _scored(ckpt, corpus, texts: list[str], context: str = "document"):
    from tuilm.data.dataset import Dataset
    from tuilm.data.pipeline import encode_docs, eval_rows, make_rows

    tokenizer, seq_len = ckpt.tokenizer, ckpt.model.cfg.seq_len
    docs = encode_docs(tokenizer, texts)
    rows = eval_rows(docs, seq_len, context)
    return Dataset(corpus, tokenizer, docs, docs, make_rows(docs, "pad", seq_len), rows)


def sliding_eval_command(
    model_path: Path | None,
    init: str | None,
    data: str | None,
    stride: int,
    device: str,
    *,
    allow_nonfinite=False,
    as_json: bool = False,
):
    """Sliding-window perplexity (Hugging Face's method) of a checkpoint or of pre-trained GPT-2 (--init)."""
    import math

    import numpy as np

    from tuilm.data.pipeline import utf8_size
    from tuilm.device import pick_device
    from tuilm.errors import ConfigError
    from tuilm.train.sliding import SlidingResult, evaluation_text, sliding_window_nats

    dev = pick_device(device)
    if init:
        from tuilm.model.pretrained import load_pretrained

        model, tokenizer = load_pretrained(init, device=dev)
        name = init
    elif model_path is not None:
        from tuilm.checkpoint.model import open_model

        ckpt = open_model(model_path, dev, allow_nonfinite=allow_nonfinite)
        model, tokenizer, name = ckpt.model, ckpt.tokenizer, ckpt.name
    else:
        raise ConfigError("say what to evaluate: --model-path CHECKPOINT or --init gpt2 (or a model directory)")
    if not data:
        raise ConfigError("--stride and --init need --data (a named corpus such as wikitext2, or a file)")
    stride = stride or model.cfg.seq_len
    text, what = evaluation_text(data)
    ids = np.asarray(tokenizer.encode(text), dtype=np.int64)
    nats, tokens, windows = sliding_window_nats(model, ids, stride, dev)
    loss = nats / max(1, tokens)
    n_bytes = utf8_size([text])
    bpc, bpb = nats / (len(text) * math.log(2)), nats / (n_bytes * math.log(2))
    result = SlidingResult(loss, math.exp(min(loss, 700)), bpc, tokens, len(text), windows, bpb, n_bytes)
    if as_json:
        from tuilm.commands.jsonout import print_json

        extra = {"context": model.cfg.seq_len, "stride": stride, "windows": windows}
        print_json("eval", _numbers(name, str(model_path or init), what, result, **extra))
        return result
    print_result(f"{name} on {what}, context {model.cfg.seq_len}, stride {stride}", result, "loss", windows=windows)
    return result
