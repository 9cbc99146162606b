"""Model FLOPs utilisation (MFU): the FLOPs a step of the model needs, over what the device could do in that time.

FLOPs per token (forward and backward) follow PaLM's appendix B: 6N + 12·L·d·T, with N the weights used in a
matmul (the parameters without the token and position lookup tables, plus the output head's d x V, which is a
matmul whether or not it is tied to the token embedding), L layers, d the model width and T the context length.
Recomputation, padding and the optimizer are not counted: MFU says how much of the device the model itself uses.

The device's peak: dense bf16 from the vendors' data sheets for known GPUs (matched on the CUDA device name); for
a CPU, a short fp32 matmul measured once per process (what the CPU reaches at its best, not a data-sheet figure).
Any other device (MPS, an unknown GPU) has no peak, and then no MFU: guessing would make it a number to distrust.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass

PEAKS: dict[
    str, float | None
] = {  # dense bf16 FLOP/s (no sparsity); more specific names first, since the first substring match wins
    "GH200": 989e12,
    "H200": 989e12,
    "H100 PCIe": 756e12,
    "H100": 989e12,
    "H800": 989e12,
    "B200": 2250e12,
    "A100": 312e12,
    "A800": 312e12,
    "A6000": 155e12,
    "L40S": 362e12,
    "L40": 181e12,
    "L4": 121e12,
    "A10G": None,  # no data-sheet figure we trust; listed so that "A10" does not match it
    "A10": 125e12,
    "RTX 5090": 210e12,
    "RTX 4090": 165e12,
    "RTX 4080": 97e12,
    "RTX 3090": 71e12,
    "V100": 125e12,  # fp16 tensor cores: V100 has no bf16
    "T4": 65e12,  # fp16 likewise
}
CPU_BENCH_SECONDS = 0.15  # the whole CPU measurement stays well under half a second
CPU_BENCH_SIZE = 512


def flops_per_token(n_matmul_params: int, n_layers: int, d_model: int, seq_len: int) -> int:
    """Training FLOPs per token: 6N (forward 2N, backward 4N) plus attention's 12·L·d·T."""
    return 6 * n_matmul_params + 12 * n_layers * d_model * seq_len


def model_flops_per_token(model) -> int:
    """flops_per_token of a tuilm GPT: its non-embedding parameters plus the output head."""
    cfg = model.cfg
    n = model.num_params(embeddings=False) + cfg.d_model * cfg.vocab_size
    return flops_per_token(n, cfg.n_layers, cfg.d_model, cfg.seq_len)


def gpu_peak(name: str) -> float | None:
    """Dense bf16 FLOP/s of a GPU named `name` (torch.cuda.get_device_name), None when not in PEAKS."""
    return next((v for k, v in PEAKS.items() if k.lower() in name.lower()), None)


def cpu_peak(threads: int = 0) -> float:
    """FLOP/s of the best of a few fp32 matmuls on this CPU on `threads` cores (0: torch's current thread count),
    measured once per count in a process."""
    import torch

    return _cpu_peak(threads or torch.get_num_threads())


@functools.cache
def _cpu_peak(threads: int) -> float:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _best_matmul(torch)
    finally:
        torch.set_num_threads(before)


def _best_matmul(torch) -> float:
    a = torch.randn(CPU_BENCH_SIZE, CPU_BENCH_SIZE)
    b = torch.randn(CPU_BENCH_SIZE, CPU_BENCH_SIZE)
    a @ b  # warm-up: the first call pays for allocation and thread start-up
    best = float("inf")
    deadline = time.perf_counter() + CPU_BENCH_SECONDS
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * CPU_BENCH_SIZE**3 / max(best, 1e-9)


def device_peak(device, threads: int = 0) -> float | None:
    """The peak FLOP/s of one torch device (on the CPU: of `threads` cores, 0 for torch's current count); None
    where it is not known (then MFU is left out)."""
    if device.type == "cuda":
        import torch

        return gpu_peak(torch.cuda.get_device_name(device))
    if device.type == "cpu":
        return cpu_peak(threads)
    return None


@dataclass(frozen=True)
class Flops:
    """What MFU needs, fixed for a run: FLOPs per token and the peak of every device it runs on together."""

    per_token: int
    peak: float | None  # FLOP/s of all the devices (one per DDP rank); None: unknown

    def mfu(self, tokens_per_s: float) -> float | None:
        """The fraction of the peak that `tokens_per_s` (all ranks' tokens) uses; None without a peak."""
        if not self.peak or not tokens_per_s > 0:
            return None
        return tokens_per_s * self.per_token / self.peak


def run_flops(model, device, world: int = 1, threads: int = 0) -> Flops:
    """`threads`: the CPU cores one process trains on (0: torch's current thread count)."""
    peak = device_peak(device, threads)
    return Flops(model_flops_per_token(model), peak * world if peak else None)
