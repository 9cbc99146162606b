"""Validation: loss, perplexity, bits per character and bits per UTF-8 byte over the whole val split.

Every val document is scored from its start (after an end-of-sequence token), in pieces of seq_len, with no
token dropped, whatever policy trained the model (or with data.val_context = "stream", the val documents as one
stream, each from the ones before it too: data.pipeline.eval_rows); so losses compare across policies and
block sizes, and
bits per character (summed nats / (characters x ln 2)) compares across tokenizers too; bits per byte (the same
over the text's UTF-8 bytes) also across scripts and with byte-level models. For ASCII text the two are equal.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tuilm.data.pipeline import IGNORE, collate, eval_batches, eval_rows

EVAL_TOKENS = 8192  # tokens per forward pass: large enough to be efficient, small enough for any CPU


@dataclass(frozen=True)
class EvalResult:
    loss: float  # mean nats per token
    ppl: float
    bpc: float  # bits per character
    tokens: int
    characters: int
    bpb: float | None = None  # bits per UTF-8 byte; None when the byte count is not known
    utf8_bytes: int | None = None


@torch.no_grad()
def evaluate(model, dataset, device, precision=None, docs=None, dist=None, workers=None) -> EvalResult:
    """Score `docs` (default: the dataset's val split) with `model`; restores the model's train/eval mode.

    Under DDP (`dist` active) each rank scores every world-th batch and the sums are all-reduced, so every rank
    returns the one-process numbers. `workers` (train/workers.py): the batches are scored on those threads at
    once and their sums added in batch order, the same numbers as one after another.
    """
    docs = docs if docs is not None else dataset.val
    rows = dataset.val_rows if docs is dataset.val else eval_rows(docs, model.cfg.seq_len)
    was_training = model.training
    model.eval()
    rank, world = (dist.rank, dist.world) if dist is not None else (0, 1)
    mine = [index for i, index in enumerate(eval_batches(rows, EVAL_TOKENS)) if i % world == rank]

    def score(index) -> tuple[torch.Tensor, int]:
        # Rows are right-padded: causal attention already keeps real tokens from seeing the padding after
        # them, so the key-padding mask would change nothing that is scored.
        batch = collate(rows, index, trim=True, eos_id=dataset.tokenizer.eos_id)
        x = torch.from_numpy(batch.inputs).to(device)
        y = torch.from_numpy(batch.targets).to(device)
        with torch.no_grad(), precision.autocast(device) if precision else contextlib.nullcontext():
            logits = model(x)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), ignore_index=IGNORE, reduction="sum")
        return loss.double(), batch.n_targets

    try:
        scored = workers.map(score, mine) if workers and len(mine) > 1 else [score(index) for index in mine]
    finally:
        model.train(was_training)
    nats = torch.zeros((), dtype=torch.float64, device=device)
    for loss, _ in scored:
        nats += loss
    tokens = sum(n for _, n in scored)
    if world > 1:
        summed = dist.sum_(torch.stack([nats, torch.tensor(float(tokens), dtype=torch.float64, device=device)]))
        nats, tokens = summed[0], int(summed[1].item())
    total = float(nats)
    mean = total / max(1, tokens)
    bpb = total / (docs.utf8_bytes * math.log(2)) if docs.utf8_bytes else None
    bpc = total / (docs.chars * math.log(2))
    return EvalResult(mean, math.exp(min(mean, 700)), bpc, tokens, docs.chars, bpb, docs.utf8_bytes)
