"""DDP gradient all-reduce: overlapped with the backward pass (tuilm/train/overlap.py, what the trainer does) against
after it (what the trainer did before issue 22: every backward pass first, one all-reduce of the ranks'
out-of-memory flags, then the gradients in flattened buckets).

Two gloo ranks on this machine, one thread each, tuilm's GPT at a shape whose gradients are large next to its
compute (the all-reduce is visible), AdamW. The two ways alternate A B A B over the rounds in the same processes;
the figure is the median ratio of step times. Usage:

    python benchmarks/ddp_overlap.py [--rounds 5] [--steps 20] [--d-model 256] [--layers 4] [--seq 32] [--rows 4]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time


def after_backward(params, world: int, bucket_elements: int = 1 << 24) -> None:
    """The pre-issue-22 step end: the flags' all-reduce, then the gradients in flattened buckets."""
    import torch

    flags = torch.zeros(world, dtype=torch.int64)
    torch.distributed.all_reduce(flags)
    grads = [p.grad for p in params]
    bucket, size = [], 0
    for i, g in enumerate(grads):
        bucket.append(g)
        size += g.numel()
        if size >= bucket_elements or i == len(grads) - 1:
            flat = torch.cat([b.reshape(-1) for b in bucket])
            torch.distributed.all_reduce(flat)
            flat /= world
            offset = 0
            for b in bucket:
                b.copy_(flat[offset : offset + b.numel()].view_as(b))
                offset += b.numel()
            bucket, size = [], 0


def rank_main(rank: int, world: int, args, out: str) -> None:
    import torch
    import torch.nn.functional as F

    from tuilm.model import GPT
    from tuilm.model.config import ModelConfig
    from tuilm.train.overlap import OverlappedReducer

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(args.port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=256, seq_len=args.seq, d_model=args.d_model, n_layers=args.layers, n_heads=4)
    model = GPT(cfg)
    params = list(model.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    reducer = OverlappedReducer(params, rank, world)
    x = torch.randint(0, 256, (args.rows, args.seq))

    def step(way: str) -> None:
        if way == "overlapped":
            reducer.arm()
        loss = F.cross_entropy(model(x).flatten(0, 1), x.flatten())
        loss.backward()
        if way == "overlapped":
            assert not reducer.finish(False)
        elif way == "after":
            after_backward(params, world)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    ways = ("after", "overlapped", "no_communication")  # the last: what the step costs without any all-reduce
    for way in ways:  # warm-up
        for _ in range(3):
            step(way)
    times: dict[str, list[float]] = {way: [] for way in ways}
    for _ in range(args.rounds):
        for way in ways:
            torch.distributed.barrier()
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step(way)
            times[way].append((time.perf_counter() - t0) / args.steps)
    if rank == 0:
        ratios = [a / o for a, o in zip(times["after"], times["overlapped"], strict=True)]
        report = {
            "benchmark": "ddp_overlap",
            "ranks": world,
            "backend": "gloo",
            "shape": vars(args) | {"params": sum(p.numel() for p in params), "buckets": len(reducer.buckets)},
            "step_ms_after": [round(t * 1e3, 2) for t in times["after"]],
            "step_ms_overlapped": [round(t * 1e3, 2) for t in times["overlapped"]],
            "step_ms_no_communication": [round(t * 1e3, 2) for t in times["no_communication"]],
            "median_speedup_overlapped": round(statistics.median(ratios), 3),
        }
        with open(out, "w") as f:
            json.dump(report, f, indent=2)
    torch.distributed.destroy_process_group()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--seq", type=int, default=32)
    parser.add_argument("--rows", type=int, default=4)
    parser.add_argument("--port", type=int, default=29533)
    args = parser.parse_args()
    import tempfile

    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "report.json")
        mp.spawn(rank_main, args=(2, args, out), nprocs=2)
        with open(out) as f:
            print(f.read())
    return 0


if __name__ == "__main__":
    sys.exit(main())
