"""Sampling from a model, token by token, through the KV cache.

A prompt is encoded after an end-of-sequence token, the context every document started from in training.
When the context window fills, the oldest tokens are dropped and the kept ones re-encoded into the cache.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from tuilm.errors import CheckpointError, ConfigError
from tuilm.sampling_settings import SamplingSettings
from tuilm.stop_strings import cut_at_stop


def next_token(
    logits: torch.Tensor, s: SamplingSettings, generator: torch.Generator | None, history=None
) -> torch.Tensor:
    """Sample ids (B,) from logits (B, V) with temperature, top-k, top-p (nucleus) and min-p filtering; with a
    repetition penalty, the logits of the ids in `history` (the context so far) are divided by it first (the
    negative ones multiplied: CTRL, Keskar et al. 2019), greedy decoding included."""
    if s.repetition_penalty != 1.0 and history:
        seen = torch.tensor(sorted(set(history)), device=logits.device)
        logits = logits.float().clone()
        picked = logits[:, seen]
        logits[:, seen] = torch.where(picked > 0, picked / s.repetition_penalty, picked * s.repetition_penalty)
    if s.temperature == 0:
        return logits.argmax(dim=-1)
    # Shifted so the likeliest logit is 0, and the temperature no smaller than float32's tiniest normal number:
    # the rest go to -inf rather than overflow to NaN, so a temperature of 1e-300 samples as greedy decoding does
    # (among exact ties, uniformly: the limit as the temperature goes to 0).
    logits = logits.float()
    logits = (logits - logits.amax(dim=-1, keepdim=True)) / max(s.temperature, torch.finfo(torch.float32).tiny)
    if s.min_p > 0:  # Nguyen et al. 2024: a floor relative to the likeliest token
        probs = logits.softmax(dim=-1)
        logits = logits.masked_fill(probs < s.min_p * probs.amax(dim=-1, keepdim=True), float("-inf"))
    if s.top_k and s.top_k < logits.shape[-1]:
        kth = torch.topk(logits, s.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if s.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop = cumulative - sorted_logits.softmax(dim=-1) >= s.top_p  # keep the token that crosses top_p
        drop[:, 0] = False  # and always the likeliest: a top_p below float32's range (1e-46) would drop them all
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(dim=-1)
    if not bool(torch.isfinite(probs).all()):
        raise CheckpointError(
            "the model's next-token probabilities are NaN (its weights or activations are not finite); "
            "sample greedily with --temperature 0 to see what it does, or use another checkpoint"
        )
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(
    model,
    context: list[int],
    settings: SamplingSettings,
    *,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
    stop_ids: tuple[int, ...] = (),
    on_truncate: Callable[[int], None] | None = None,
    probs: list[float] | None = None,
) -> Iterator[int]:
    """Yield up to max_new_tokens ids continuing `context` (which should start with the eos id).

    `stop_ids` end generation (the stop token is yielded first). `on_truncate(n)` is told whenever n of the
    oldest tokens leave the context window. `probs`, when given, hears the probability the model itself gave each
    token before it is yielded (temperature 1, no filtering or penalty): what /probs colours a reply by.
    """
    window = model.cfg.seq_len
    device = next(model.parameters()).device
    tokens = list(context)
    if len(tokens) > window:
        if on_truncate:
            on_truncate(len(tokens) - window)
        tokens = tokens[-window:]
    was_training = model.training
    model.eval()
    try:
        cache = model.new_cache(1) if use_cache else None
        fed = 0  # tokens of `tokens` already in the cache
        for _ in range(settings.max_new_tokens):
            if len(tokens) > window:
                # Keep the newest half-window so one re-encode buys many cheap cached steps.
                keep = max(1, window // 2) if use_cache else window
                if on_truncate:
                    on_truncate(len(tokens) - keep)
                tokens = tokens[-keep:]
                fed = 0
                if cache is not None:
                    cache.reset()
            if cache is not None:
                x = torch.tensor([tokens[fed:]], device=device)
                logits = model(x, cache=cache, last_only=True)[:, -1]
                fed = len(tokens)
            else:
                logits = model(torch.tensor([tokens], device=device), last_only=True)[:, -1]
            token = int(next_token(logits, settings, generator, tokens).item())
            if probs is not None:
                probs.append(float(torch.softmax(logits[0].float(), dim=-1)[token]))
            tokens.append(token)
            yield token
            if token in stop_ids:
                return
    finally:
        model.train(was_training)


def sample_text(model, tokenizer, prompt: str, settings: SamplingSettings, seed: int | None = None) -> str:
    generator = make_generator(seed, next(model.parameters()).device)
    ids = generate(model, [tokenizer.eos_id, *tokenizer.encode(prompt)], settings, generator=generator)
    return cut_at_stop(tokenizer.decode(list(ids)), settings.stop)


def make_generator(seed: int | None, device) -> torch.Generator | None:
    if seed is None:
        return None
    if isinstance(seed, bool) or not 0 <= seed <= 2**63 - 1:
        why = "is negative" if seed < 0 else "does not fit in 64 bits"
        raise ConfigError(f"seed {seed} {why}; use an integer in [0, {2**63 - 1}]")
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator
