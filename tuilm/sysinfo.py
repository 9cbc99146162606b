"""What the machine is doing while a run trains: CPU, memory and, on CUDA, the GPU's use, memory and power.

CPU and RAM come from psutil (a dependency already); the GPU from NVML through nvidia-ml-py, an optional extra
(`pip install 'tuilm[gpu]'`): without it the GPU figures say how to get them. A `SystemProbe` is read from a
thread of its own about once a second (the dashboard's system panel), never from the training thread.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

GPU_EXTRA = "pip install 'tuilm[gpu]' (nvidia-ml-py) for the GPU's use, memory and power"


@dataclass(frozen=True)
class GpuSample:
    name: str
    utilization: float  # percent of the last sample period the GPU was busy
    memory_used: int  # bytes
    memory_total: int
    power_w: float | None  # None where the board does not report it
    power_limit_w: float | None


@dataclass(frozen=True)
class SystemSample:
    process_cpu: float  # percent of one core (top's convention: 2 busy cores are 200%)
    system_cpu: float  # percent of all cores
    cores: int
    load: float | None  # 1-minute load average; None where the OS has none
    process_rss: int  # bytes
    memory_used: int  # bytes, the whole machine
    memory_total: int
    gpu: GpuSample | None = None
    gpu_note: str = ""  # why there is no GPU sample, when the run is on CUDA


class SystemProbe:
    """Reads a SystemSample; `device` (a torch device) says which GPU to read, if any."""

    def __init__(self, device=None):
        import psutil

        self.psutil = psutil
        self.process = psutil.Process()
        self.process.cpu_percent(None)  # the first call starts the measurement; later ones cover the interval
        psutil.cpu_percent(None)
        self.cuda = device is not None and getattr(device, "type", "") == "cuda"
        self._gpu = None  # NVML handle, found on the first read
        self.gpu_note = ""
        if self.cuda:
            self._gpu, self.gpu_note = nvml_handle(device)

    def read(self) -> SystemSample:
        ps = self.psutil
        memory = ps.virtual_memory()
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):  # Windows
            load = None
        gpu, note = None, self.gpu_note
        if self._gpu is not None:
            try:
                gpu = read_gpu(self._gpu)
            except Exception as e:  # a GPU that fell off the bus must not take the dashboard with it
                note = f"NVML: {e}"
        return SystemSample(
            process_cpu=self.process.cpu_percent(None),
            system_cpu=ps.cpu_percent(None),
            cores=ps.cpu_count() or 1,
            load=load,
            process_rss=self.process.memory_info().rss,
            memory_used=memory.total - memory.available,
            memory_total=memory.total,
            gpu=gpu,
            gpu_note=note,
        )


def nvml_handle(device):
    """(NVML handle of the torch CUDA `device`, "") or (None, why not)."""
    try:
        import pynvml
    except ImportError:
        return None, GPU_EXTRA
    try:
        pynvml.nvmlInit()
        bus_id = _pci_bus_id(device)
        if bus_id:  # CUDA's numbering can differ from NVML's (CUDA_VISIBLE_DEVICES): the bus id does not
            return pynvml.nvmlDeviceGetHandleByPciBusId(bus_id), ""
        return pynvml.nvmlDeviceGetHandleByIndex(device.index or 0), ""
    except Exception as e:  # no driver, no permission: say so in the panel
        return None, f"NVML unavailable: {e}"


def _pci_bus_id(device) -> str | None:
    """NVML's `domain:bus:device.function` for a torch CUDA device; None where torch does not say."""
    try:
        import torch

        p = torch.cuda.get_device_properties(device)
        return f"{p.pci_domain_id:08X}:{p.pci_bus_id:02X}:{p.pci_device_id:02X}.0"
    except Exception:
        return None


def read_gpu(handle) -> GpuSample:
    import pynvml

    name = pynvml.nvmlDeviceGetName(handle)
    memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
    try:
        power = pynvml.nvmlDeviceGetPowerUsage(handle) / 1000  # milliwatts
        limit = pynvml.nvmlDeviceGetEnforcedPowerLimit(handle) / 1000
    except pynvml.NVMLError:
        power = limit = None
    return GpuSample(
        name=name.decode() if isinstance(name, bytes) else str(name),
        utilization=float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu),
        memory_used=int(memory.used),
        memory_total=int(memory.total),
        power_w=power,
        power_limit_w=limit,
    )
