"""`tuilm train` against nanoGPT's own `train.py`, as whole processes, at the same shapes (issue 22).

nanoGPT is karpathy/nanoGPT itself, unmodified: cloned into a cache folder (`--cache`, default
~/.cache/tuilm/bench) from `--nanogpt` (GitHub by default; a local clone or bare repository works offline), its
shakespeare_char data prepared by its own prepare.py from tiny_shakespeare.txt (TUILM_DATA_DIR), and run with
command-line overrides only: `train.py config/train_shakespeare_char.py --device=cpu --compile=False ...`.
tuilm is the `tuilm train` command of this checkout's interpreter, headless (`--headless`, output piped) and with
the dashboard (under a pseudo-terminal, 120x40, `q` once the run has finished).

Shapes (byte-level vocabulary for tuilm, nanoGPT's 65 characters; AdamW, no dropout, constant lr after warmup
is irrelevant to speed):
  a  1 layer, d_model 16, 2 heads, seq 16, batch 4: nothing but the loop's overhead
  b  nanoGPT's README CPU example: 4 layers, 4 heads, d_model 128, seq 64, batch 12
  c  the tiny_shakespeare_cpu recipe's shape (2 layers, 4 heads, d_model 128, seq 64, batch 16); tuilm runs the
     recipe itself (Muon, ALiBi, its 4,096-token BPE), nanoGPT the same shape with its own model and AdamW

Each figure is steps/s from each program's own per-step timing, after the first WARMUP share of the steps:
nanoGPT's `iter N: ... time X ms` lines (log_interval 1; the iteration that evaluates is left out), tuilm's
`elapsed` field of its step events in metrics.jsonl (training time: evaluation and checkpoints excluded). Rounds
run the programs interleaved (nanoGPT, tuilm headless, tuilm dashboard, then again) so that the machine's drift
touches each alike; the figure is the median over rounds of the per-round ratio. Both at torch's default threads.

Usage: python benchmarks/vs_nanogpt.py [--shapes a,b,c] [--rounds 3] [--no-dashboard] [--json OUT]
       [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import select
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from anchor import CACHE, SOURCE, nanogpt_checkout, shakespeare

WARMUP = 0.2  # share of the steps left out at the start (allocator, caches, thread start-up)

SHAPES = {
    "a": {"n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 16, "batch_size": 4, "steps": 3000},
    "b": {"n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 64, "batch_size": 12, "steps": 300},
    "c": {"n_layer": 2, "n_head": 4, "n_embd": 128, "block_size": 64, "batch_size": 16, "steps": 300, "recipe": 1},
}


def nanogpt_command(shape: dict, steps: int, device: str, out: Path) -> list[str]:
    return [
        sys.executable,
        "train.py",
        "config/train_shakespeare_char.py",
        f"--device={device}",
        "--compile=False",
        "--eval_iters=1",
        f"--eval_interval={steps + 1}",  # iteration 0 evaluates all the same: it is left out
        "--log_interval=1",
        f"--block_size={shape['block_size']}",
        f"--batch_size={shape['batch_size']}",
        f"--n_layer={shape['n_layer']}",
        f"--n_head={shape['n_head']}",
        f"--n_embd={shape['n_embd']}",
        f"--max_iters={steps}",
        f"--lr_decay_iters={steps}",
        "--dropout=0.0",
        f"--out_dir={out}",
        "--always_save_checkpoint=False",
    ]


def run_nanogpt(repo: Path, shape: dict, steps: int, device: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        done = subprocess.run(
            nanogpt_command(shape, steps, device, Path(tmp)), cwd=repo, capture_output=True, text=True
        )
        wall = time.perf_counter() - t0
    if done.returncode != 0:
        sys.exit(f"nanoGPT failed ({done.returncode}):\n{done.stderr[-3000:]}")
    times = {int(m[1]): float(m[2]) / 1000 for m in re.finditer(r"^iter (\d+): .*?time ([\d.]+)ms", done.stdout, re.M)}
    kept = [dt for it, dt in times.items() if it >= max(2, int(WARMUP * steps))]
    return {"steps_per_s": len(kept) / sum(kept), "steps": len(times), "wall_s": round(wall, 2)}


def tuilm_command(shape: dict, steps: int, device: str, out: Path, headless: bool, extra=()) -> list[str]:
    if shape.get("recipe"):
        args = ["tiny_shakespeare_cpu"]
    else:
        sets = {
            "data.vocab_size": 258,
            "model.n_layers": shape["n_layer"],
            "model.n_heads": shape["n_head"],
            "model.d_model": shape["n_embd"],
            "model.seq_len": shape["block_size"],
            "train.batch_size": shape["batch_size"],
            "train.optimizer": "adamw",
            "model.dropout": 0.0,  # the tiny_shakespeare recipe's 0.1 would also cost SDPA its fused kernel
        }
        args = ["tiny_shakespeare", *(x for k, v in sets.items() for x in ("--set", f"{k}={v}"))]
    quiet = {"train.eval_interval": steps + 1, "train.checkpoint_interval": steps + 1}
    args += [x for k, v in quiet.items() for x in ("--set", f"{k}={v}")]
    args += ["--steps", str(steps), "--out", str(out), "--device", device, *extra]
    return [sys.executable, "-m", "tuilm", "train", *args, *(["--headless"] if headless else [])]


def tuilm_rate(run: Path, steps: int) -> float:
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    marks = [(e["step"], e["elapsed"]) for e in events if e.get("event") == "step"]
    start = next(m for m in marks if m[0] >= max(2, int(WARMUP * steps)))
    end = marks[-1]
    return (end[0] - start[0]) / (end[1] - start[1])


def run_tuilm(shape: dict, steps: int, device: str, headless: bool, extra=()) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        cmd = tuilm_command(shape, steps, device, run, headless, extra)
        t0 = time.perf_counter()
        code, tail = _piped(cmd) if headless else _under_pty(cmd, run)
        wall = time.perf_counter() - t0
        if code != 0:
            sys.exit(f"{' '.join(cmd)} failed ({code}):\n{tail[-3000:]}")
        return {"steps_per_s": tuilm_rate(run, steps), "wall_s": round(wall, 2)}


def _piped(cmd: list[str]) -> tuple[int, str]:
    done = subprocess.run(cmd, capture_output=True, text=True)
    return done.returncode, done.stderr + done.stdout


def _under_pty(cmd: list[str], run: Path) -> tuple[int, str]:
    """The dashboard in a pseudo-terminal: its screen drained as a terminal would, `q` once the run finished."""
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "120", "LINES": "40"}
    proc = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True)
    os.close(slave)
    try:
        return _drive(proc, master, run)
    finally:
        if proc.poll() is None:  # never leave a dashboard behind, waiting for a key
            os.killpg(proc.pid, 9)
        os.close(master)


def _drive(proc, master: int, run: Path) -> tuple[int, str]:
    screen = bytearray()
    finished_at = None
    while proc.poll() is None:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                screen += os.read(master, 65536)
            except OSError:
                break
            del screen[:-20000]
        metrics = run / "metrics.jsonl"
        if finished_at is None and metrics.is_file() and '"event":"finished"' in metrics.read_text():
            finished_at = time.monotonic()
            os.write(master, b"q")
        elif finished_at is not None and time.monotonic() - finished_at > 30:
            proc.kill()  # the dashboard would not quit: the figure is still read from metrics.jsonl
    return proc.wait(), screen.decode(errors="replace")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default="a,b,c")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-dashboard", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--nanogpt", default=SOURCE)
    parser.add_argument("--cache", type=Path, default=CACHE)
    parser.add_argument("--steps", type=int, default=0, help="steps per run (default: the shape's)")
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = parser.parse_args()
    repo = nanogpt_checkout(args.nanogpt, args.cache, shakespeare())
    result: dict = {**header("vs_nanogpt", device=args.device), "shapes": {}}
    for name in args.shapes.split(","):
        shape = SHAPES[name]
        steps = args.steps or shape["steps"]
        rounds = []
        for r in range(args.rounds):
            row = {"nanogpt": run_nanogpt(repo, shape, steps, args.device)}
            row["tuilm_headless"] = run_tuilm(shape, steps, args.device, headless=True)
            if not args.no_dashboard:
                row["tuilm_dashboard"] = run_tuilm(shape, steps, args.device, headless=False)
            base = row["nanogpt"]["steps_per_s"]
            for key in ("tuilm_headless", "tuilm_dashboard"):
                if key in row:
                    row[key]["ratio"] = round(row[key]["steps_per_s"] / base, 3)
            rounds.append(row)
            print(f"shape {name} round {r + 1}: " + json.dumps(row), file=sys.stderr)
        summary = {"shape": shape, "steps": steps, "rounds": rounds}
        for key in ("tuilm_headless", "tuilm_dashboard"):
            if key in rounds[0]:
                summary[f"{key}_median_ratio"] = statistics.median(r[key]["ratio"] for r in rounds)
        if "tuilm_dashboard" in rounds[0]:
            summary["dashboard_vs_headless"] = statistics.median(
                r["tuilm_dashboard"]["steps_per_s"] / r["tuilm_headless"]["steps_per_s"] for r in rounds
            )
        result["shapes"][name] = summary
    publish(result, args.json)


def header(name: str, **extra) -> dict:
    """The start of a benchmark's JSON: its name, the machine and when it started."""
    machine = f"{platform.machine()}, {os.cpu_count()} cores"
    return {
        "benchmark": name,
        **extra,
        "machine": machine,
        "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def publish(result: dict, path: Path | None) -> None:
    text = json.dumps(result, indent=2)
    print(text)
    if path:
        path.write_text(text + "\n")


if __name__ == "__main__":
    main()
