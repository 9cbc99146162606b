"""`tuilm sample`: one completion of a prompt, streamed as it is sampled."""

from __future__ import annotations

import sys
from pathlib import Path

from tuilm.errors import ConfigError


def sample_command(
    model_path: Path,
    prompt: str,  # - reads standard input
    settings,  # tuilm.sampling_settings.SamplingSettings
    seed: int | None,
    use_cache: bool = True,
    device: str = "auto",
    truncate: bool = False,
    allow_nonfinite: bool = False,
) -> None:
    from contextlib import closing

    from tuilm.commands.sampling import load_for_sampling
    from tuilm.formatting import valid_text, visible
    from tuilm.sampling import generate, make_generator
    from tuilm.stop_strings import StopFilter

    if prompt == "-":
        prompt = sys.stdin.buffer.read().decode("utf-8", "surrogateescape")
    prompt, changed = valid_text(prompt)
    ckpt = load_for_sampling(model_path, settings, device, allow_nonfinite)
    if changed:
        print("note: the prompt was not valid UTF-8; the bad bytes became U+FFFD", file=sys.stderr)
    tokenizer = ckpt.tokenizer
    context = [tokenizer.eos_id, *tokenizer.encode(prompt)]
    window = ckpt.model.cfg.seq_len
    if len(context) > window:
        fits = f"only its last {window - 1} fit the model's {window}-token context window"
        if not truncate:
            raise ConfigError(f"the prompt is {len(context) - 1} tokens and {fits}; shorten it, or pass --truncate")
        print(f"note: the prompt is {len(context) - 1} tokens; {fits}", file=sys.stderr)
    generator = make_generator(seed, next(ckpt.model.parameters()).device)
    decoder, stops = tokenizer.stream_decoder(), StopFilter(settings.stop)
    out = sys.stdout
    show = visible if out.isatty() else str  # on a terminal, what the model writes cannot drive it

    def write(pieces) -> None:
        out.write(show("".join(p.text for p in pieces)))
        out.flush()

    out.write(show(prompt))  # a stop string counts in the completion only, never in the prompt
    sampled = 0
    try:
        with closing(generate(ckpt.model, context, settings, generator=generator, use_cache=use_cache)) as tokens:
            for token in tokens:
                sampled += 1
                write(stops.feed(decoder.feed(token)))
                if stops.stopped:
                    break
    except KeyboardInterrupt:  # a long -n: Ctrl-C ends it, and what was sampled stays
        write(stops.feed(decoder.flush()) + stops.flush())
        out.write("\n")
        print(f"stopped by Ctrl-C after {sampled:,} of {settings.max_new_tokens:,} tokens", file=sys.stderr)
        raise SystemExit(130) from None
    write(stops.feed(decoder.flush()) + stops.flush())
    out.write("\n")
