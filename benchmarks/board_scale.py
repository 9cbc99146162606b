"""`tuilm board` at scale: 200 runs with 1,000,000 metrics.jsonl lines in all must open in under 2 s and under
500 MB, and each later look must read only what was appended.

    python benchmarks/board_scale.py                # writes the runs to a temporary folder, then measures
    python benchmarks/board_scale.py --dir /tmp/bs  # keeps them there (written once, reused by later calls)

The runs are synthetic (tests/board_runs.py: a trainer's line formats, a health measurement every 25 steps, an
evaluation every 50, an alert in every tenth run). The measurement runs in a fresh process so that its peak
resident memory is the board's: the time from nothing to the board's table drawn (BoardModel's first read of every
run, then the Textual app mounted headless at 120x40 with its table filled), peak RSS, then 1,000 lines appended to
each of 20 runs and one more look timed, checking that exactly the appended bytes were read. The files are in the
page cache, as they are for a board opened on runs being written.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RUNS = 200
LINES = 1_000_000
OPEN_LIMIT_S = 2.0
MEMORY_LIMIT_MB = 500


def write(folder: Path) -> int:
    from tests.board_runs import write_run

    # steps + steps/25 health + steps/50 evals + start and end lines = LINES / RUNS
    steps = int((LINES / RUNS - 2) / (1 + 1 / 25 + 1 / 50)) + 1
    for i in range(RUNS):
        sweep = folder / f"sweep{i // 20}"
        write_run(
            sweep, f"run{i:03d}", steps, lr=1e-3 * (1 + i % 4), seed=i % 5, alerts_at=(100,) if i % 10 == 0 else ()
        )
    return sum(p.read_bytes().count(b"\n") for p in folder.rglob("metrics.jsonl"))


def measure(folder: Path) -> dict:
    """In this (fresh) process: open the board, then one incremental look."""
    from textual.widgets import DataTable

    from tests.board_runs import step_line
    from tuilm.tui.board import Board
    from tuilm.tui.board_data import BoardModel

    out: dict = {}

    async def open_board() -> None:
        start = time.perf_counter()
        model = BoardModel([folder])
        model.poll(discover=True)
        out["read_s"] = time.perf_counter() - start
        app = Board(model)
        async with app.run_test(size=(120, 40)) as pilot:
            while app.query_one("#runs", DataTable).row_count < len(model.runs):
                await pilot.pause(0.01)
            out["open_s"] = time.perf_counter() - start
            out["runs"] = len(model.runs)
            out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            # Incremental: 1,000 more lines in each of 20 runs; the next look reads those bytes, no others.
            runs = list(model.runs.values())[:20]
            before = {r.path: r.tail.offset for r in runs}
            appended = 0
            for r in runs:
                text = "".join(step_line(r.step + k, 10**6, 2.0, 1e-3, 0.5) for k in range(1, 1001))
                with open(r.path / "metrics.jsonl", "a") as f:
                    f.write(text)
                appended += len(text.encode())
            t = time.perf_counter()
            model.poll()
            out["look_s"] = time.perf_counter() - t
            out["look_bytes_read"] = sum(r.tail.offset - before[r.path] for r in runs)
            out["look_bytes_appended"] = appended
            for r in runs:  # as they were, for the next measurement of a kept --dir
                with open(r.path / "metrics.jsonl", "r+b") as f:
                    f.truncate(before[r.path])

    asyncio.run(open_board())
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", type=Path, help="where to write the runs (kept; reused when already there)")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # the fresh process's part
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure)))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.dir or Path(tmp) / "runs"
        if folder.exists() and any(folder.rglob("metrics.jsonl")):
            lines = sum(p.read_bytes().count(b"\n") for p in folder.rglob("metrics.jsonl"))
        else:
            t = time.perf_counter()
            lines = write(folder)
            print(f"wrote {RUNS} runs, {lines:,} lines in {time.perf_counter() - t:.0f} s")
        size = sum(p.stat().st_size for p in folder.rglob("metrics.jsonl"))
        result = subprocess.run(
            [sys.executable, __file__, "--measure", str(folder)], capture_output=True, text=True, check=True
        )
        r = json.loads(result.stdout.strip().splitlines()[-1])
    ok_open, ok_mem = r["open_s"] < OPEN_LIMIT_S, r["peak_rss_mb"] < MEMORY_LIMIT_MB
    ok_look = r["look_bytes_read"] == r["look_bytes_appended"]
    print(f"{r['runs']} runs, {lines:,} lines, {size / 1e6:.0f} MB of metrics.jsonl")
    print(
        f"open (read every run, table drawn): {r['open_s']:.2f} s (read {r['read_s']:.2f} s)  limit {OPEN_LIMIT_S} s  {'ok' if ok_open else 'OVER'}"
    )
    print(f"peak resident memory: {r['peak_rss_mb']:.0f} MB  limit {MEMORY_LIMIT_MB} MB  {'ok' if ok_mem else 'OVER'}")
    print(
        f"next look after 20,000 appended lines: {r['look_s'] * 1000:.0f} ms, read {r['look_bytes_read']:,} bytes "
        f"of {r['look_bytes_appended']:,} appended  {'ok' if ok_look else 'WRONG'}"
    )
    print(json.dumps({"runs": r["runs"], "lines": lines, "bytes": size, **r, "ok": ok_open and ok_mem and ok_look}))
    return 0 if ok_open and ok_mem and ok_look else 1


if __name__ == "__main__":
    sys.exit(main())
