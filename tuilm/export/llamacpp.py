"""llama.cpp itself (through llama-cpp-python) running an exported GGUF file, set beside tuilm: the proof that
the file means what the checkpoint means. Used by tests/test_export.py and benchmarks/export_check.py; needs
`pip install llama-cpp-python` (it builds llama.cpp from source)."""

from __future__ import annotations

from pathlib import Path


def available() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


def open_gguf(path: Path, n_ctx: int):
    from llama_cpp import Llama

    return Llama(model_path=str(path), n_ctx=n_ctx, logits_all=True, verbose=False, n_threads=1, seed=0)


def greedy(llm, context: list[int], n: int) -> list[int]:
    """n tokens of greedy continuation, by argmax of llama.cpp's own logits (no sampler in between)."""
    import numpy as np

    llm.reset()
    llm.eval(context)
    out = []
    for _ in range(n):
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out.append(token)
        llm.eval([token])
    return out


def token_logprobs(llm, ids: list[int]):
    """log p(ids[i+1] | ids[:i+1]) for each i, from llama.cpp's logits (float64 numpy)."""
    import numpy as np

    llm.reset()
    llm.eval(ids)
    scores = np.asarray(llm.scores[: len(ids) - 1], dtype=np.float64)
    scores -= scores.max(-1, keepdims=True)
    logp = scores - np.log(np.exp(scores).sum(-1, keepdims=True))
    return logp[np.arange(len(ids) - 1), ids[1:]]


def tuilm_logprobs(model, ids: list[int]):
    import torch

    with torch.no_grad():
        logp = model(torch.tensor([ids])).double().log_softmax(-1)[0, :-1]
    return logp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].numpy()


def top2_margin(model, ids: list[int]) -> float:
    import torch

    with torch.no_grad():
        top = model(torch.tensor([ids]), last_only=True)[0, -1].double().log_softmax(-1).topk(2).values
    return float(top[0] - top[1])


def compare(path: Path, ckpt, prompts: list[str], val_ids: list[int], n_new: int) -> dict:
    """Greedy continuations of `prompts` (tuilm's context: <|eos|> first) and the log-probs of `val_ids`, in
    llama.cpp and in tuilm."""
    import numpy as np

    from tuilm.sampling import generate
    from tuilm.sampling_settings import SamplingSettings

    cfg, tok = ckpt.model.cfg, ckpt.tokenizer
    llm = open_gguf(path, cfg.seq_len)
    same, tokenized, margins = [], [], []
    for prompt in prompts:
        context = [tok.eos_id, *tok.encode(prompt)]
        tokenized.append(llm.tokenize(prompt.encode(), add_bos=True, special=False) == context)
        n = min(n_new, cfg.seq_len - len(context))  # within the window: past it tuilm re-encodes, llama.cpp stops
        if n < 1:
            raise ValueError(f"the prompt {prompt!r} leaves no room in the {cfg.seq_len}-token window")
        settings = SamplingSettings(temperature=0.0, max_new_tokens=n)
        theirs, ours = greedy(llm, context, n), list(generate(ckpt.model, context, settings))
        same.append(theirs == ours)
        if theirs != ours:
            at = next(i for i, (a, b) in enumerate(zip(theirs, ours, strict=True)) if a != b)
            margins.append(top2_margin(ckpt.model, context + ours[:at]))
    ids = val_ids[: cfg.seq_len]
    gap = np.abs(token_logprobs(llm, ids) - tuilm_logprobs(ckpt.model, ids))
    return {
        "prompts": len(prompts),
        "same_tokenization": sum(tokenized),
        "same_greedy_continuation": sum(same),
        # where they part, how far tuilm's first choice led its second (nats): a near-tie within the numeric
        # agreement of the two programs, or a real disagreement
        "divergence_margins": margins,
        "logprob_tokens": len(ids) - 1,
        "max_logprob_difference": float(gap.max()),
        "mean_logprob_difference": float(gap.mean()),
    }
