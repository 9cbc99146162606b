"""`tuilm sample`: one completion of a prompt, streamed as it is sampled."""

from __future__ import annotations

import sys
from pathlib import Path

from tuilm.errors import ConfigError


def sample_command(
    model_path: Path,
    prompt: str,
    max_new_tokens: int,
    temperature: float,
    top_k: int,
    top_p: float,
    seed: int | None,
    use_cache: bool,
    device: str,
    truncate: bool = False,
    *,
    allow_nonfinite: bool = False,
    min_p: float = 0.0,
    repetition_penalty: float = 1.0,
) -> None:
    from tuilm.checkpoint import load_checkpoint
    from tuilm.device import pick_device
    from tuilm.formatting import valid_text, visible
    from tuilm.sampling import SamplingSettings, generate, make_generator

    settings = SamplingSettings(temperature, top_k, top_p, max_new_tokens, min_p, repetition_penalty)
    settings.validate()
    prompt, changed = valid_text(prompt)
    if changed:
        print("note: the prompt was not valid UTF-8; the bad bytes became U+FFFD", file=sys.stderr)
    ckpt = load_checkpoint(model_path, pick_device(device), allow_nonfinite=allow_nonfinite)
    tokenizer = ckpt.tokenizer
    context = [tokenizer.eos_id, *tokenizer.encode(prompt)]
    window = ckpt.model.cfg.seq_len
    if len(context) > window:
        fits = f"only its last {window - 1} fit the model's {window}-token context window"
        if not truncate:
            raise ConfigError(f"the prompt is {len(context) - 1} tokens and {fits}; shorten it, or pass --truncate")
        print(f"note: the prompt is {len(context) - 1} tokens; {fits}", file=sys.stderr)
    generator = make_generator(seed, next(ckpt.model.parameters()).device)
    decoder = tokenizer.stream_decoder()
    out = sys.stdout
    show = visible if out.isatty() else str  # on a terminal, what the model writes cannot drive it
    out.write(show(prompt))
    for token in generate(ckpt.model, context, settings, generator=generator, use_cache=use_cache):
        out.write(show(decoder.feed(token)))
        out.flush()
    out.write(show(decoder.flush()) + "\n")
