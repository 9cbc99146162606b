"""A Hugging Face model directory that transformers loads with no tuilm and no remote code.

Files: config.json and model.safetensors (tuilm.export.arch), tokenizer.json (tuilm's byte-level BPE, unchanged
but for a post-processor that puts <|eos|> first, as tuilm starts every context), tokenizer_config.json and
special_tokens_map.json (its special tokens), generation_config.json, README.md (the model card) and
tuilm_run.json (the run's settings and figures, so `tuilm eval` finds the run's own val split again).
"""

from __future__ import annotations

import json
from pathlib import Path

from tuilm.export.arch import CLASSES, hf_config, hf_tensors

RUN_FILE = "tuilm_run.json"


def tokenizer_json(tokenizer) -> str:
    """tuilm's tokenizer.json with <|eos|> prepended by the post-processor: what `tokenizer(text)` then gives
    is the context `tuilm sample` starts from. tuilm itself encodes without special tokens, so it reads the
    file back unchanged."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers.processors import TemplateProcessing

    inner = HFTokenizer.from_str(tokenizer.to_json())
    eos = inner.id_to_token(tokenizer.eos_id)
    inner.post_processor = TemplateProcessing(
        single=f"{eos} $A", pair=f"{eos} $A {eos} $B:1", special_tokens=[(eos, tokenizer.eos_id)]
    )
    return inner.to_str()


def text_files(ckpt, arch: str) -> dict[str, str]:
    """Every file but the weights and the model card, as text."""
    tok, cfg = ckpt.tokenizer, ckpt.model.cfg
    eos, pad = tok.inner.id_to_token(tok.eos_id), tok.inner.id_to_token(tok.pad_id)
    special = {"bos_token": eos, "eos_token": eos, "pad_token": pad}
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **special,
        "model_max_length": cfg.seq_len,
        "clean_up_tokenization_spaces": False,
    }
    generation = {"bos_token_id": tok.eos_id, "eos_token_id": tok.eos_id, "pad_token_id": tok.pad_id}
    run = {"run_config": ckpt.run_config, "meta": ckpt.meta, "model_config": cfg.to_dict()}
    files = {
        "config.json": hf_config(cfg, arch, pad_id=tok.pad_id, eos_id=tok.eos_id),
        "tokenizer_config.json": tokenizer_config,
        "special_tokens_map.json": special,
        "generation_config.json": generation,
        RUN_FILE: run,
    }
    out = {name: json.dumps(body, indent=2, default=str) + "\n" for name, body in files.items()}
    return {**out, "tokenizer.json": tokenizer_json(tok)}


def write_dir(folder: Path, ckpt, arch: str) -> None:
    """The loadable directory (all but README.md, which carries the proof's figures) into an existing folder."""
    from safetensors.torch import save_file

    for name, text in text_files(ckpt, arch).items():
        (folder / name).write_text(text, encoding="utf-8")
    tensors = hf_tensors(ckpt.model.state_dict(), ckpt.model.cfg, arch)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})


def load_model(folder: Path, device="cpu"):
    """The directory through transformers' own loader: what a user without tuilm gets (fp32, eval mode)."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging

    logging.disable_progress_bar()  # a command's output is its own lines, not a loader's progress bar
    logging.set_verbosity_error()
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    return model.to(device).eval()


def as_tuilm(hf_model, cfg):
    """A transformers model with the call tuilm's evaluate makes, `model(ids) -> float logits`, and its cfg."""
    from torch import nn

    class AsTuilm(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner, self.cfg = hf_model, cfg

        def forward(self, idx):
            return self.inner(input_ids=idx).logits.float()

    return AsTuilm()


def model_card(ckpt, arch: str, proof: dict) -> str:
    """README.md: what was trained on what, for how long, how well, and the proof that this file agrees."""
    meta, run, cfg = ckpt.meta, ckpt.run_config or {}, ckpt.model.cfg
    data = (run.get("data") or {}).get("source", "unknown")
    shape = ", ".join(f"{k}={v}" for k, v in cfg.to_dict().items() if k not in ("dropout", "checkpoint_activations"))
    tokens = meta.get("tokens")

    def number(v, spec):
        return format(v, spec) if isinstance(v, int | float) else "unknown"

    return f"""---
library_name: transformers
pipeline_tag: text-generation
tags: [tuilm, {arch}]
---

# {ckpt.path.parent.name}

A small byte-level BPE language model trained with tuilm and exported as
`{CLASSES[arch]}` (no remote code).

| | |
|---|---|
| data | `{data}` |
| steps | {number(meta.get("step"), ",")} |
| tokens seen | {number(tokens, ",")} |
| val bits/char (at save) | {number(meta.get("val_bpc"), ".4f")} |
| recipe | `{run.get("recipe", "custom")}` |
| model | {shape} |

## Export proof

The run's val text ({proof["data"]}) scored before this directory was written:
tuilm {proof["tuilm_bits_per_char"]:.6f} bits/char, transformers {proof["transformers_bits_per_char"]:.6f}
bits/char (difference {proof["difference"]:.1e}, tolerance {proof["tolerance"]:.0e}).

## Use

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained("PATH")
tok = AutoTokenizer.from_pretrained("PATH")
ids = tok("ROMEO:", return_tensors="pt").input_ids  # starts with <|eos|>, the document break tuilm starts from
print(tok.decode(model.generate(ids, max_new_tokens=50, do_sample=False)[0], skip_special_tokens=True))
```

The recipe this run was trained with is in `tuilm_run.json`.
"""
