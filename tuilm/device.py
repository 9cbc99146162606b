"""Which device to train on and at what precision."""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass

import torch

from tuilm.errors import ConfigError
from tuilm.values import check_device_name


def pick_device(name: str = "auto") -> torch.device:
    """auto prefers CUDA, then Apple's MPS, then the CPU; an explicit device must be usable."""
    check_device_name("auto" if name is None else name)
    name = name.lower() if name is not None else "auto"
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device '{name}'; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("CUDA is not available here (no GPU, or torch built without CUDA); use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"there is no {name}: {torch.cuda.device_count()} CUDA device(s) visible")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("MPS is not available here (Apple silicon with a recent macOS); use --device cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"device '{name}' is not supported; use auto, cpu, cuda, cuda:N or mps")
    return device


@dataclass(frozen=True)
class Precision:
    name: str  # fp32 | bf16 | fp16
    dtype: torch.dtype | None  # autocast dtype; None means plain fp32
    scaler: bool  # fp16 needs loss scaling to keep small gradients from flushing to zero
    note: str = ""  # why the precision is not the one asked for (a feature this device lacks), said at start

    def autocast(self, device: torch.device):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.dtype)


def pick_precision(device: torch.device, name: str = "auto") -> Precision:
    """Weights and optimizer stay fp32; autocast runs matmuls in bf16 (or fp16 with a GradScaler) on GPUs."""
    name = name.lower() if name is not None else "auto"
    if name == "auto":
        if device.type == "cuda":
            name = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        elif device.type == "mps":
            name = "fp16" if _mps_autocast_works() else "fp32"
        else:
            name = "fp32"
    if name == "fp32":
        return Precision("fp32", None, False)
    if name == "bf16":
        if device.type == "mps" and not _mps_autocast_works(torch.bfloat16):
            fallback = pick_precision(device, "auto")
            note = f"MPS: bf16 autocast needs macOS 14 or newer; training in {fallback.name} instead (train.dtype)"
            return Precision(fallback.name, fallback.dtype, fallback.scaler, note)
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ConfigError("this GPU does not support bf16; use --set train.dtype=fp16")
        if device.type == "cpu" and not cpu_native_bf16():
            # A recipe tuned on a CPU with AMX (tiny_shakespeare_cpu) still runs here, as asked, but say why it is slow.
            note = "this CPU has no native bf16 (AVX512-BF16/AMX): bf16 autocast is emulated, slower than fp32 here (--set train.dtype=fp32)"
            return Precision("bf16", torch.bfloat16, False, note)
        return Precision("bf16", torch.bfloat16, False)
    if name == "fp16":
        # On the CPU it is slow and no better than bf16, but it is the path a GPU without bf16 takes (autocast and
        # GradScaler both run on the CPU), so tests and a user can try that path without a GPU.
        note = "fp16 on the CPU: slow, for trying the GPU's fp16 path; bf16 or fp32 train better here"
        return Precision("fp16", torch.float16, True, note if device.type == "cpu" else "")
    raise ConfigError(f"unknown dtype '{name}'; use auto, fp32, bf16 or fp16")


def _mps_autocast_works(dtype: torch.dtype = torch.float16) -> bool:
    try:
        with torch.autocast(device_type="mps", dtype=dtype):
            x = torch.ones(2, 2, device="mps")
            (x @ x).sum().item()
        return True
    except Exception:  # older macOS/torch: autocast on MPS raises; train in fp32 there
        return False


def cpu_native_bf16() -> bool:
    """Whether this processor computes bf16 natively (AVX512-BF16 or AMX), where bf16 autocast can pay off
    (torch's get_cpu_capability says AVX512 for both and for neither, so the kernel's flags decide)."""
    return bool(_cpu_flags() & {"avx512_bf16", "amx_bf16"})


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:  # not Linux: no flags to read, so no claim of native bf16
        pass
    return set()


def free_memory(device: torch.device) -> None:
    """Hand cached allocator blocks back after an out-of-memory error (issue 12), so a smaller retry can fit."""
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()


def memory_mb(device: torch.device) -> float:
    """CUDA: peak allocated; MPS: currently allocated; CPU: this process's resident memory."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    if device.type == "mps":
        return torch.mps.current_allocated_memory() / 2**20
    return _rss.read()


class _ResidentMemory:
    """This process's resident memory, read from the OS at most every `every` seconds: a read opens a /proc file,
    some 0.1 ms, as long as a whole step of a small model on a GPU, and a Step event asks at every step."""

    every = 0.5

    def __init__(self) -> None:
        self._process = None
        self._at, self._mb = -math.inf, 0.0

    def read(self) -> float:
        now = time.monotonic()
        if now - self._at >= self.every:
            if self._process is None or self._process.pid != os.getpid():  # a forked child reads its own
                import psutil

                self._process = psutil.Process()
            self._at, self._mb = now, self._process.memory_info().rss / 2**20
        return self._mb


_rss = _ResidentMemory()
