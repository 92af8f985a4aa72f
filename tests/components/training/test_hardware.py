"""The hardware record of a training: CPU model and the flags that change PyTorch's kernels."""

from __future__ import annotations

from pathlib import Path

import torch

from components.training.hardware import hardware_record

CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_tile amx_bf16 amx_int8 avx512_vnni

processor\t: 1
model name\t: Another CPU
flags\t\t: fpu
"""


def test_the_first_processor_s_model_and_kernel_flags_are_recorded(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(CPUINFO)
    record = hardware_record(cpuinfo)
    assert record["hardware_cpu"] == "Intel(R) Xeon(R) Platinum 8480+"
    assert record["hardware_cpu_flags"] == "avx2 avx512f avx512_bf16 avx512_vnni amx_tile amx_bf16 amx_int8"
    assert record["hardware_torch"] == torch.__version__
    assert record["hardware_torch_threads"] == str(torch.get_num_threads())
    assert record["hardware_gpu"] == "none" or torch.cuda.is_available()


def test_a_cpu_without_those_flags_and_a_system_without_cpuinfo(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Old CPU\nflags\t\t: fpu sse2\n")
    assert hardware_record(cpuinfo)["hardware_cpu_flags"] == "none"
    missing = hardware_record(tmp_path / "absent")
    assert missing["hardware_cpu"] and missing["hardware_cpu_flags"] == "none"
