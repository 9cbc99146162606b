"""Sampling speed on the CPU: first-token latency and tokens/s, with and without the KV cache, by context length.

Model: the tiny_shakespeare recipe's shape (d_model 128, 2 layers, 4 heads, vocab 10,000) with seq_len 512 so
a 512-token context fits; random weights, since speed does not depend on what the weights say.

For each context C the prompt is C random token ids and `tuilm.sampling.generate` samples --new-tokens more
with the chat defaults (temperature 0.8, top-p 0.95), exactly as `tuilm chat` and `tuilm sample` do.
- first_token_ms: from the call to the first sampled id (the prompt's forward pass plus one sampling step).
- decode_tokens_per_s: the tokens after the first, over the time after the first.
- tokens_per_s: all sampled tokens over the whole time, the first token included.
Each figure is the median over --repeats runs, after one warm-up run. When C + new tokens exceed the window it
slides, as in real use: with the cache once (the newest half window is re-encoded), without it every step
recomputes the full 512 tokens; `window_slides` marks those rows.

Prints one JSON object. Usage: python benchmarks/sampling.py [--threads 2] [--new-tokens 64] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from tuilm.model import GPT, ModelConfig
from tuilm.sampling import SamplingSettings, generate, make_generator

SHAPE = {"vocab_size": 10_000, "seq_len": 512, "d_model": 128, "n_layers": 2, "n_heads": 4}
CONTEXTS = (64, 128, 256, 512)


def run_once(model, prompt: list[int], settings: SamplingSettings, use_cache: bool) -> tuple[float, float, int]:
    generator = make_generator(0, "cpu")
    start = time.perf_counter()
    tokens = generate(model, prompt, settings, generator=generator, use_cache=use_cache)
    next(tokens)
    first = time.perf_counter() - start
    n = 1 + sum(1 for _ in tokens)
    return first, time.perf_counter() - start, n


def measure(model, context: int, new_tokens: int, use_cache: bool, repeats: int) -> dict:
    prompt = torch.randint(2, SHAPE["vocab_size"], (context,), generator=torch.Generator().manual_seed(context))
    settings = SamplingSettings(temperature=0.8, top_k=0, top_p=0.95, max_new_tokens=new_tokens)
    run_once(model, prompt.tolist(), settings, use_cache)
    runs = [run_once(model, prompt.tolist(), settings, use_cache) for _ in range(repeats)]
    firsts = [first for first, _, _ in runs]
    decode = [(n - 1) / (total - first) for first, total, n in runs]
    overall = [n / total for _, total, n in runs]
    return {
        "context": context,
        "cache": use_cache,
        "first_token_ms": round(1000 * statistics.median(firsts), 2),
        "decode_tokens_per_s": round(statistics.median(decode), 1),
        "tokens_per_s": round(statistics.median(overall), 1),
        "window_slides": context + new_tokens - 1 > SHAPE["seq_len"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = GPT(ModelConfig(**SHAPE, dropout=0.0)).eval()
    rows = [measure(model, c, args.new_tokens, cache, args.repeats) for c in CONTEXTS for cache in (True, False)]
    by = {(r["context"], r["cache"]): r for r in rows}
    print(
        json.dumps(
            {
                "benchmark": "sampling",
                "device": "cpu",
                "threads": torch.get_num_threads(),
                "torch": torch.__version__,
                "machine": platform.processor() or platform.machine(),
                "model": {**SHAPE, "parameters": model.num_params()},
                "new_tokens": args.new_tokens,
                "repeats": args.repeats,
                "sampling": {"temperature": 0.8, "top_k": 0, "top_p": 0.95},
                "results": rows,
                "cache_speedup_decode": {
                    c: round(by[c, True]["decode_tokens_per_s"] / by[c, False]["decode_tokens_per_s"], 2)
                    for c in CONTEXTS
                },
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
