"""The whole export proof of issue 24 on one run: the programs that load the exported files agree with tuilm.

For RUN (a run directory or checkpoint, e.g. one trained by
`tuilm train tiny_shakespeare_cpu --set model.pos=rope --set model.norm=rmsnorm --set model.act=swiglu --time 1m`):
1. `--to hf`: the proof's val bits/char in tuilm and transformers, then transformers' greedy `generate` of 5
   prompts against tuilm's greedy continuation (`tuilm sample --temperature 0`), token for token;
2. `--to gguf` at f32 and q8_0, run by llama.cpp (llama-cpp-python, when installed): the same greedy
   continuations, and per-token log-probabilities of the run's val text (max and mean difference, in nats).
Prints one JSON object and, with --out, writes it there too.

Usage: python benchmarks/export_check.py RUN [--tokens 40] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from tuilm.checkpoint.model import open_model
from tuilm.commands.eval import own_val_split
from tuilm.commands.export import export_command
from tuilm.export import llamacpp
from tuilm.sampling import generate
from tuilm.sampling_settings import SamplingSettings

PROMPTS = ["ROMEO:", "JULIET:\nO", "First Citizen:\nWe are", "KING HENRY", "The"]


def transformers_greedy(folder: Path, ckpt, n: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok, model = AutoTokenizer.from_pretrained(folder), AutoModelForCausalLM.from_pretrained(folder).eval()
    settings = SamplingSettings(temperature=0.0, max_new_tokens=n)
    same, texts = 0, []
    for prompt in PROMPTS:
        ids = tok(prompt, return_tensors="pt").input_ids
        with torch.no_grad():  # generate stops at <|eos|> (and emits it); forcing it on (min_new_tokens) would
            # suppress <|eos|> and change the greedy choice, so tuilm's continuation is compared up to there
            out = model.generate(ids, max_new_tokens=n, do_sample=False)[0, ids.shape[1] :].tolist()
        ours = list(generate(ckpt.model, ids[0].tolist(), settings))[: len(out)]
        same += out == ours
        texts.append({"prompt": prompt, "tuilm": ckpt.tokenizer.decode(ours), "transformers": tok.decode(out)})
    return {"prompts": len(PROMPTS), "same_greedy_continuation": same, "texts": texts}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run", type=Path)
    parser.add_argument("--tokens", type=int, default=40, help="greedy tokens per prompt")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    ckpt = open_model(args.run)
    result = {"run": str(args.run), "step": ckpt.meta.get("step"), "model": ckpt.model.cfg.to_dict()}
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        hf = export_command(args.run, "hf", Path(tmp) / "hf")
        result["hf"] = {**hf["proof"], "export_s": round(time.perf_counter() - start, 2)}
        result["hf"] |= transformers_greedy(Path(tmp) / "hf", ckpt, args.tokens)
        dataset, _ = own_val_split(ckpt)
        val = dataset.val.stream[: ckpt.model.cfg.seq_len].tolist()  # starts at a document break
        for dtype in ("f32", "q8_0"):
            path = Path(tmp) / f"model-{dtype}.gguf"
            size = export_command(args.run, "gguf", path, dtype=dtype)["bytes"]
            entry = {"bytes": size}
            if llamacpp.available():
                entry |= llamacpp.compare(path, ckpt, PROMPTS, val, args.tokens)
            else:
                entry["llama_cpp"] = "not installed (pip install llama-cpp-python)"
            result[f"gguf_{dtype}"] = entry
    text = json.dumps(result, indent=2, ensure_ascii=False)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
