"""What a training ran on, for its record: the same code, data and seeds train to different weights on different
CPUs (oneDNN picks other kernels where a CPU has AMX or only AVX-512 with bfloat16), so a score is only comparable
with another one from the same kind of machine.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

# The instruction-set extensions that change which kernels PyTorch's CPU backends choose.
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16", "amx_int8")
CPUINFO = Path("/proc/cpuinfo")


def hardware_record(cpuinfo: Path = CPUINFO) -> dict[str, str]:
    """``hardware_*`` entries: CPU model and the flags of :data:`CPU_FLAGS` it has (Linux; ``unknown`` elsewhere),
    PyTorch's CPU capability, logical CPUs, torch threads and version, and the CUDA devices (``none`` without)."""
    model, flags = _cpu(cpuinfo)
    gpus = (
        [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    )
    return {
        "hardware_cpu": model,
        "hardware_cpu_flags": " ".join(flag for flag in CPU_FLAGS if flag in flags) or "none",
        "hardware_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "hardware_logical_cpus": str(os.cpu_count()),
        "hardware_torch_threads": str(torch.get_num_threads()),
        "hardware_torch": torch.__version__,
        "hardware_gpu": ", ".join(gpus) or "none",
    }


def _cpu(cpuinfo: Path) -> tuple[str, set[str]]:
    """The model name and flags of the first processor in ``cpuinfo``, or the platform's processor string."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return platform.processor() or platform.machine() or "unknown", set()
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            break  # the first processor's block only
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields.get("model name", platform.machine() or "unknown"), set(fields.get("flags", "").split())
