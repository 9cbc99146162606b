"""Perplexity with sliding windows, the method of Hugging Face's perplexity guide, to check published figures.

The evaluation text is tokenized as one stream. Windows of the model's context length start every `stride`
tokens; each window scores only the tokens the previous window did not, so every token is predicted once, with
up to (context - stride) tokens of context before it. stride = context gives disjoint windows (the quickest, and
the most pessimistic); a smaller stride is slower and closer to the model's real ability. The first token has
no context and is not scored; like the guide, the stream does not start with an end-of-sequence token.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tuilm.errors import ConfigError, DataError


@dataclass(frozen=True)
class SlidingResult:
    loss: float
    ppl: float
    bpc: float
    tokens: int
    characters: int
    windows: int
    bpb: float | None = None  # bits per UTF-8 byte
    utf8_bytes: int | None = None


def sliding_window_nats(model, ids: np.ndarray, stride: int, device, batch_windows: int = 4) -> tuple[float, int, int]:
    """(summed nats, scored tokens, windows) of `ids` under `model`, windows of model.cfg.seq_len tokens."""
    import torch
    import torch.nn.functional as F

    window = model.cfg.seq_len
    if not 1 <= stride <= window:
        raise ConfigError(f"stride must be between 1 and the model's context {window}, got {stride}")
    n = len(ids)
    if n < 2:
        raise DataError("the evaluation text is shorter than two tokens")
    plans = []  # (begin, end, scored): score the last `scored` targets of ids[begin:end]
    prev_end = 0
    for begin in range(0, n, stride):
        end = min(begin + window, n)
        scored = end - prev_end if begin else end - 1  # the first token has nothing to be predicted from
        if scored > 0:
            plans.append((begin, end, scored))
        prev_end = end
        if end == n:
            break
    nats, tokens = 0.0, 0
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for i in range(0, len(plans), batch_windows):
                group = plans[i : i + batch_windows]
                width = max(e - b for b, e, _ in group)
                x = torch.zeros(len(group), width, dtype=torch.long)
                y = torch.full((len(group), width), -100, dtype=torch.long)
                for r, (b, e, scored) in enumerate(group):
                    seg = torch.from_numpy(np.asarray(ids[b:e], dtype=np.int64))
                    x[r, : e - b] = seg
                    targets = seg[1:].clone()
                    targets[: len(targets) - min(scored, len(targets))] = -100
                    y[r, : e - b - 1] = targets
                logits = model(x[:, :-1].to(device) if width > 1 else x.to(device))
                if width > 1:
                    loss = F.cross_entropy(
                        logits.flatten(0, 1).float(), y[:, :-1].flatten().to(device), ignore_index=-100, reduction="sum"
                    )
                    nats += float(loss)
                    tokens += int((y[:, :-1] != -100).sum())
    finally:
        model.train(was_training)
    return nats, tokens, len(plans)


def evaluation_text(data: str) -> tuple[str, str]:
    """(text, what): a named corpus's test split (else its val split), or a file's whole text."""
    from tuilm.data.corpora import CORPORA

    if data in CORPORA and CORPORA[data].splits:
        from tuilm.data.corpora import open_corpus

        corpus = open_corpus(data)
        split = "test" if "test" in corpus.splits else "val"
        part = corpus.splits[split]
        with open(part.path, "rb") as f:
            f.seek(part.start)
            raw = f.read(part.n_bytes)
        return raw.decode("utf-8", errors="replace"), f"{data} ({split} split)"
    from tuilm.data.sources import load_corpus

    corpus = load_corpus(data)
    return "\n\n".join(corpus.documents), corpus.name
