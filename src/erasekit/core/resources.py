"""Peak memory of a run: resident memory on the CPU, allocated memory on CUDA."""

from __future__ import annotations

from pathlib import Path

import torch


def reset_peak_memory(device: str | torch.device = "cpu") -> str:
    """Reset the peak-memory counter of ``device``; returns the scope the next :func:`peak_memory_mib`
    covers: ``"run"`` after a reset, ``"process"`` where the OS offers none (peak since start)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return "run"
    try:
        with open("/proc/self/clear_refs", "w") as f:  # Linux: resets VmHWM
            f.write("5")
        return "run"
    except OSError:
        return "process"


def peak_memory_mib(device: str | torch.device = "cpu") -> float:
    """Peak memory in MiB since :func:`reset_peak_memory`: CUDA allocations, else VmHWM (or ru_maxrss)."""
    device = torch.device(device)
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
