"""`tuilm export RUN|CHECKPOINT --to hf DIR | --to gguf FILE`: the model in a form other programs load.

Nothing is written until it is proven: the hf directory is built in a hidden sibling folder, loaded back through
transformers and made to score the run's val text; it is renamed into place only when its bits/char equal
tuilm's to 1e-4 (ProofFailed, exit 1, otherwise, and the folder is removed).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from tuilm.errors import ConfigError, TuilmError

TOLERANCE = 1e-4  # bits/char
# Per-token log-probabilities too: a barely trained model can score its val text the same with a wrong mapping
# (swapped RoPE pairs moved bits/char by 1e-6 after 4 steps), never with the same log-probability of each token.
LOGPROB_TOLERANCE = 1e-3  # nats
TARGETS = ("hf", "gguf")


class ProofFailed(TuilmError):
    """The exported model does not score the val text as tuilm does: nothing was written."""

    exit_code = 1


def export_command(
    model_path: Path, to: str, out: Path, *, dtype: str = "f32", device: str = "cpu", as_json: bool = False
) -> dict:
    if to not in TARGETS:
        raise ConfigError(f"--to {to}: choose hf (a transformers directory) or gguf (a llama.cpp file)")
    out = Path(out).expanduser()
    if out.exists() or out.is_symlink():
        raise ConfigError(f"{out} already exists; export to a new path (or remove it first)")
    missing = [d for d in (out.parent, *out.parent.parents) if not d.exists()]  # made below, nearest last
    if not (missing[-1].parent if missing else out.parent).is_dir():
        raise ConfigError(f"{out.parent}: a part of the path is a file, not a directory; fix the path")

    from tuilm.checkpoint import load_checkpoint
    from tuilm.device import pick_device
    from tuilm.export.arch import architecture

    if to == "gguf":
        from tuilm.export.gguf import check_dtype, require_gguf

        require_gguf()
        check_dtype(dtype)
    elif dtype != "f32":
        raise ConfigError("--dtype is for --to gguf; the hf directory holds fp32 weights")
    ckpt = load_checkpoint(model_path, pick_device(device))
    arch = architecture(ckpt.model.cfg)  # refused here, before any file exists
    out.parent.mkdir(parents=True, exist_ok=True)  # `--to hf exported/llama` makes `exported` as well
    try:
        result = export_hf(ckpt, arch, out) if to == "hf" else export_gguf(ckpt, arch, out, dtype)
    except BaseException:
        for folder in missing:  # an export that fails leaves nothing behind, the folders made for it included
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    result = {"model": ckpt.name, "path": str(model_path), "to": to, "out": str(out), "architecture": arch, **result}
    if as_json:
        from tuilm.commands.jsonout import print_json

        print_json("export", result)
    else:
        print(_summary(result))
    return result


def export_hf(ckpt, arch: str, out: Path) -> dict:
    from tuilm.commands.eval import own_val_split
    from tuilm.export import hf
    from tuilm.train.evaluate import evaluate

    dataset, what = own_val_split(ckpt)
    device = next(ckpt.model.parameters()).device
    ours = evaluate(ckpt.model, dataset, device)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    try:
        tmp.mkdir()
        hf.write_dir(tmp, ckpt, arch)
        loaded = hf.as_tuilm(hf.load_model(tmp, device), ckpt.model.cfg)
        theirs = evaluate(loaded, dataset, device)
        proof = {
            "data": what,
            "tuilm_bits_per_char": ours.bpc,
            "transformers_bits_per_char": theirs.bpc,
            "difference": abs(ours.bpc - theirs.bpc),
            "tolerance": TOLERANCE,
            "max_logprob_difference": logprob_gap(ckpt.model, loaded, dataset, device),
        }
        if not proof["difference"] <= TOLERANCE:  # NaN fails too
            raise ProofFailed(
                f"transformers scores the val text at {theirs.bpc:.6f} bits/char but tuilm at {ours.bpc:.6f} "
                f"(difference {proof['difference']:.2e} > {TOLERANCE:.0e}); nothing was written"
            )
        if not proof["max_logprob_difference"] <= LOGPROB_TOLERANCE:
            raise ProofFailed(
                f"transformers and tuilm give a val token log-probabilities {proof['max_logprob_difference']:.2e} "
                f"nats apart (> {LOGPROB_TOLERANCE:.0e}); nothing was written"
            )
        (tmp / "README.md").write_text(hf.model_card(ckpt, arch, proof), encoding="utf-8")
        os.rename(tmp, out)  # atomic: the directory appears whole or not at all
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"proof": proof}


def logprob_gap(ours, theirs, dataset, device) -> float:
    """The largest difference of a log-probability (nats) the two models give over the first val batch."""
    import torch

    from tuilm.data.pipeline import collate, eval_batches
    from tuilm.train.evaluate import EVAL_TOKENS

    index = next(iter(eval_batches(dataset.val_rows, EVAL_TOKENS)))
    x = torch.from_numpy(collate(dataset.val_rows, index, trim=True, eos_id=dataset.tokenizer.eos_id).inputs)
    with torch.no_grad():
        a, b = (m(x.to(device)).log_softmax(-1) for m in (ours, theirs))
    return float((a - b).abs().max())


def export_gguf(ckpt, arch: str, out: Path, dtype: str) -> dict:
    from tuilm.export.gguf import write_gguf

    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    try:
        write_gguf(tmp, ckpt, arch, dtype)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return {"dtype": dtype, "bytes": out.stat().st_size}


def _summary(result: dict) -> str:
    line = f"exported {result['model']} as {result['architecture']} to {result['out']}"
    proof = result.get("proof")
    if proof:
        line += (
            f"\nval bits/char: tuilm {proof['tuilm_bits_per_char']:.6f}, transformers "
            f"{proof['transformers_bits_per_char']:.6f} (difference {proof['difference']:.1e})"
        )
    else:
        line += f" ({result['dtype']}, {result['bytes']:,} bytes)"
    return line
