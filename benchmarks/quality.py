"""Quality on nanoGPT's val text: nanoGPT's own CPU example against tuilm's CPU recipe, back to back.

For each seed, one after the other (so the machine's drift touches both alike):
1. nanoGPT: karpathy/nanoGPT's own train.py, unmodified, with its README's CPU example (char-level, 4 layers,
   4 heads, 128 wide, block 64, batch 12, 2,000 iterations, lr 1e-3, no dropout; benchmarks/anchor.py), as a
   subprocess in its checkout (`--nanogpt`, cloned once into `--cache`).
2. tuilm: `tuilm train RECIPE --headless` (default tiny_shakespeare_cpu) with `train.seed` set, as a subprocess.

Each wall time is the whole command, start to exit, as a user would time it. Both models are then scored on
the same text, nanoGPT's val split (the last 10% of tiny Shakespeare's characters, data/shakespeare_char/
prepare.py), in the same unit: summed nats over the text / (characters x ln 2), with nanoGPT's count of
predicted characters as the denominator for both. And by the same method: the text as one stream in
consecutive windows of each model's own block, every character (token) after the first predicted once, from the
text before it in its window, across speech boundaries. nanoGPT's checkpoint is scored so by its own model.py
(1-64 characters of context: the whole-split version of its own estimate_loss, whose last printed val loss is
reported beside it); tuilm's as `data.val_context = "stream"` scores a val split (1 to seq_len tokens of
context), on its `tail` split, which is that same text less the partial speech at the cut ("?" and a blank
line) and the final newline (4 of 111,540 characters), with an end-of-sequence token where the text has a
blank line between speeches.

tuilm is also scored "per speech" (`data.val_context = "document"`, the default): each speech from its
start, with nothing of the speech before it, the stricter of the two for a model that has learnt to use the
text before a speech (who spoke last, who is on stage); and in tuilm's own unit, which counts each blank line
between speeches as one character.

The record (issue 23), on the first scoring (nanoGPT's method): the recipe's mean over the seeds at most
--target-mean, every seed at most --target-each, and every tuilm command no longer than the nanoGPT command run
just before it.

Usage: python benchmarks/quality.py [--recipe tiny_shakespeare_cpu] [--set key=value ...] [--seeds 3 | --seed N]
       [--skip-nanogpt] [--nanogpt SOURCE] [--cache DIR] [--json OUT]
Prints one JSON object and a Markdown table; about 3 minutes a seed on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from anchor import CACHE, CPU_EXAMPLE, SOURCE, nanogpt_checkout, nanogpt_val_chars, score_checkpoint, shakespeare  # noqa: E402
from vs_nanogpt import header, publish  # noqa: E402

from tuilm.sweep.stats import describe  # noqa: E402

SEEDS = (1337, 1, 2, 3, 4, 5, 6, 7, 8, 9)  # --seeds N takes the first N; 1337 is nanoGPT's own


def timed(cmd: list[str], cwd: Path | None = None) -> tuple[float, str]:
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return wall, out.stdout


def run_nanogpt(repo: Path, folder: Path) -> dict:
    wall, stdout = timed([sys.executable, "train.py", *CPU_EXAMPLE, f"--out_dir={folder}"], cwd=repo)
    evals = re.findall(r"^step (\d+): train loss ([\d.]+), val loss ([\d.]+)", stdout, re.M)
    step, _, val_loss = evals[-1]
    return {
        "wall_s": round(wall, 1),
        **score_checkpoint(repo, folder),
        "own_estimate": {
            "step": int(step),
            "val_loss": float(val_loss),
            "val_bpc": round(float(val_loss) / math.log(2), 4),
        },
    }


def run_tuilm(recipe: str, overrides: list[str], folder: Path, n_val_chars: int) -> dict:
    from tuilm.checkpoint import load_checkpoint
    from tuilm.config import from_dict
    from tuilm.data.dataset import prepare
    from tuilm.data.pipeline import eval_rows
    from tuilm.train.evaluate import evaluate

    run = folder / "run"
    sets = [x for o in overrides for x in ("--set", o)]
    wall, _ = timed([sys.executable, "-m", "tuilm", "train", recipe, "--headless", "--out", str(run), *sets])
    ckpt = load_checkpoint(run / "last.safetensors")
    config = from_dict(ckpt.run_config, ckpt.run_config.get("recipe", "custom"))
    if config.data.split != "tail":
        sys.exit(f"{recipe} validates on a '{config.data.split}' split; only 'tail' is nanoGPT's val text")
    dataset = prepare(config.data, config.model.seq_len, config.rows_per_step, progress=False, tokenizer=ckpt.tokenizer)
    scored = {
        context: evaluate(
            ckpt.model, replace(dataset, val_rows=eval_rows(dataset.val, config.model.seq_len, context)), "cpu"
        )
        for context in ("stream", "document")
    }
    stream, speeches = scored["stream"], scored["document"]

    def nanogpt_unit(result) -> float:  # summed nats over nanoGPT's count of the val characters
        return round(result.loss * result.tokens / (n_val_chars * math.log(2)), 4)

    return {
        "wall_s": round(wall, 1),
        "steps": ckpt.meta.get("step"),
        "val_bpc": nanogpt_unit(stream),
        "val_bpc_per_speech": nanogpt_unit(speeches),
        "val_bpc_tuilm_unit": round(stream.bpc, 4),
        "val_bpc_per_speech_tuilm_unit": round(speeches.bpc, 4),
        "val_characters_tuilm_unit": stream.characters,
        "params": sum(p.numel() for p in ckpt.model.parameters()),
    }


def verdict(rows: list[dict], target_mean: float, target_each: float) -> dict:
    scores = [r["tuilm"]["val_bpc"] for r in rows]
    mean, sd, n = describe(scores)
    out = {"mean_bpc": round(mean, 4), "sd_bpc": None if sd is None else round(sd, 4), "worst_bpc": max(scores), "n": n}
    ratios = [r["wall_ratio"] for r in rows if "wall_ratio" in r]
    if ratios:
        out["worst_wall_ratio"] = max(ratios)
    misses = []
    if out["mean_bpc"] > target_mean:
        misses.append(f"mean {out['mean_bpc']} > {target_mean}")
    if out["worst_bpc"] > target_each:
        misses.append(f"a seed scored {out['worst_bpc']} > {target_each}")
    if ratios and max(ratios) > 1:
        misses.append(f"a tuilm command took {max(ratios)}x nanoGPT's")
    if not ratios:
        misses.append("not timed against nanoGPT (--skip-nanogpt)")
    out["record"] = "met" if not misses else "not met: " + "; ".join(misses)
    return out


def table(rows: list[dict]) -> str:
    lines = [
        "| seed | nanoGPT wall | nanoGPT bits/char (its own estimate) | tuilm wall | tuilm steps | tuilm bits/char "
        "| tuilm per speech | wall ratio |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        n, t = r.get("nanogpt"), r["tuilm"]
        nano = f"{n['wall_s']} s | {n['val_bpc']:.4f} ({n['own_estimate']['val_bpc']:.3f})" if n else " | "
        lines.append(
            f"| {r['seed']} | {nano} | {t['wall_s']} s | {t['steps']} | **{t['val_bpc']:.4f}** "
            f"| {t['val_bpc_per_speech']:.4f} | {r.get('wall_ratio', '')} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", default="tiny_shakespeare_cpu")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="override for tuilm's run")
    parser.add_argument("--seeds", type=int, default=1, help=f"this many seeds, from {SEEDS[:3]}...")
    parser.add_argument("--seed", type=int, default=None, help="one seed, this one (instead of --seeds)")
    parser.add_argument("--skip-nanogpt", action="store_true", help="only tuilm (for tuning runs)")
    parser.add_argument("--nanogpt", default=SOURCE, help="where to clone nanoGPT from (a local clone works)")
    parser.add_argument("--cache", type=Path, default=CACHE, help="folder for nanoGPT's checkout")
    parser.add_argument("--target-mean", type=float, default=2.10)
    parser.add_argument("--target-each", type=float, default=2.12)
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = parser.parse_args()
    if not 1 <= args.seeds <= len(SEEDS):
        sys.exit(f"--seeds must be 1 to {len(SEEDS)}")
    data = shakespeare()
    n_val_chars = nanogpt_val_chars(data.read_text(encoding="utf-8"))
    repo = None if args.skip_nanogpt else nanogpt_checkout(args.nanogpt, args.cache, data)
    seeds = [args.seed] if args.seed is not None else list(SEEDS[: args.seeds])
    head = header("quality", val_text="tiny Shakespeare, last 10% of the characters (nanoGPT's val split)")
    rows = []
    for seed in seeds:
        row: dict = {"seed": seed}
        with tempfile.TemporaryDirectory() as tmp:
            if repo:
                row["nanogpt"] = run_nanogpt(repo, Path(tmp) / "nanogpt")
            row["tuilm"] = run_tuilm(args.recipe, [*args.overrides, f"train.seed={seed}"], Path(tmp), n_val_chars)
        if repo:
            row["wall_ratio"] = round(row["tuilm"]["wall_s"] / row["nanogpt"]["wall_s"], 3)
        rows.append(row)
        print(f"seed {seed}: " + json.dumps(row), file=sys.stderr)
    report = {
        **head,  # made before the runs: `started` is when they started
        "unit": "bits per character",
        "recipe": args.recipe,
        "overrides": args.overrides,
        "seeds": rows,
        "summary": verdict(rows, args.target_mean, args.target_each),
    }
    publish(report, args.json)
    print("\n" + table(rows), file=sys.stderr)


if __name__ == "__main__":
    main()
