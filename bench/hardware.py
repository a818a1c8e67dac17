"""What device a run uses, and its peak FLOP/s for MFU.

GPUs: a table of dense (no sparsity) peak tensor throughput from the vendor's data sheets. CPUs: no table is
trustworthy (clocks, cores, AVX-512 / AMX vary), so the peak is the best measured large matmul in the same dtype,
cached per process: :func:`measure_matmul_peak` (also used by ``wxscale bench model``).
"""

from __future__ import annotations

import functools
import os
import platform
import time

import torch

# name fragment (matched against torch.cuda.get_device_name, longest first) -> peak FLOP/s, dense.
# fp32 is the non-tensor-core rate (torch's default for fp32 matmul); tf32 applies when TF32 matmuls are allowed.
GPU_PEAKS: dict[str, dict[str, float]] = {
    # NVIDIA A100 Tensor Core GPU data sheet (2021): bf16/fp16 312 TF, TF32 156 TF, fp32 19.5 TF.
    "A100": {"bf16": 312e12, "fp16": 312e12, "tf32": 156e12, "fp32": 19.5e12},
    # NVIDIA H100 data sheet (2023), SXM: bf16/fp16 989 TF, TF32 495 TF, fp32 67 TF (dense).
    "H100": {"bf16": 989e12, "fp16": 989e12, "tf32": 495e12, "fp32": 67e12},
    # H100 PCIe: bf16/fp16 756 TF, TF32 378 TF, fp32 51 TF.
    "H100 PCIe": {"bf16": 756e12, "fp16": 756e12, "tf32": 378e12, "fp32": 51e12},
    # NVIDIA H200 data sheet (2024), SXM: same compute as H100 SXM (more, faster memory).
    "H200": {"bf16": 989e12, "fp16": 989e12, "tf32": 495e12, "fp32": 67e12},
    # NVIDIA GH200 Grace Hopper data sheet (2024): the H100-class GPU at 989 TF bf16, 67 TF fp32.
    "GH200": {"bf16": 989e12, "fp16": 989e12, "tf32": 495e12, "fp32": 67e12},
}
GPU_PEAK_SOURCE = "NVIDIA data sheets, dense tensor-core rates (A100 2021, H100 2023, H200/GH200 2024)"

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _gpu_entry(name: str) -> dict[str, float] | None:
    for key in sorted(GPU_PEAKS, key=len, reverse=True):
        if key.lower() in name.lower():
            return GPU_PEAKS[key]
    return None


@functools.cache
def _measure(dtype: torch.dtype, device: str, min_time_s: float, threads: int) -> float:
    dev = torch.device(device)
    n = 256
    best = 0.0
    while True:
        a = torch.randn(n, n, device=dev).to(dtype)
        b = torch.randn(n, n, device=dev).to(dtype)
        torch.matmul(a, b)  # warm up kernels and caches
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        reps, elapsed = 0, 0.0
        start = time.perf_counter()
        while elapsed < min_time_s or reps < 3:
            t0 = time.perf_counter()
            torch.matmul(a, b)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            dt = time.perf_counter() - t0
            best = max(best, 2.0 * n**3 / dt)
            reps += 1
            elapsed = time.perf_counter() - start
        # Grow the matrix while one matmul is quick: small ones under-use the machine.
        if elapsed / reps > 0.02 or n >= 4096:
            return best
        n *= 2


def measure_matmul_peak(dtype: torch.dtype | str = torch.float32, device: torch.device | str = "cpu",
                        min_time_s: float = 0.05) -> float:
    """Best achieved FLOP/s of square matmuls (growing to ~20 ms per call), cached per (dtype, device, threads)."""
    if isinstance(dtype, str):
        dtype = _DTYPES[dtype]
    return _measure(dtype, str(torch.device(device)), float(min_time_s), torch.get_num_threads())


def describe_device(device: torch.device | str) -> dict:
    """A JSON-able description: kind, name, count of threads or the GPU's name, torch version."""
    device = torch.device(device)
    out = {"kind": device.type, "torch": torch.__version__}
    if device.type == "cuda":
        idx = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(idx)
        out.update(name=props.name, memory_gib=round(props.total_memory / 2**30, 1),
                   capability=f"{props.major}.{props.minor}")
    else:
        out.update(name=platform.processor() or platform.machine(), threads=torch.get_num_threads())
    return out


def peak_flops(device: torch.device | str, precision: str = "fp32", tf32: bool = False) -> tuple[float | None, str]:
    """Peak FLOP/s of one device for ``precision`` (fp32, bf16, fp16) and where the number comes from.

    A GPU missing from :data:`GPU_PEAKS` has no peak (None): its MFU is left empty rather than guessed.
    """
    device = torch.device(device)
    if device.type == "cuda":
        name = describe_device(device)["name"]
        entry = _gpu_entry(name)
        key = "tf32" if precision == "fp32" and tf32 else precision
        if entry is not None:
            return entry[key], f"{GPU_PEAK_SOURCE}: {name} {key}"
        return None, f"{name} is not in the peak table (wxscale.hardware.GPU_PEAKS): MFU left empty"
    return measure_matmul_peak(_DTYPES[precision], device), f"measured {precision} matmul peak on this CPU"


def model_flops_utilisation(flops_per_s: float, peak: float | None, devices: int = 1) -> float | None:
    """Achieved over peak FLOP/s across ``devices``; None when the peak is unknown (never a guess)."""
    if peak is None or not peak > 0:
        return None
    return flops_per_s / (peak * devices)


def _ranges(cpus: list[int]) -> str:
    """[0, 1, 2, 5] -> "0-2,5" (CPU affinity lists, as taskset prints them)."""
    out: list[str] = []
    for c in sorted(cpus):
        if out and int(out[-1].split("-")[-1]) == c - 1:
            out[-1] = f"{out[-1].split('-')[0]}-{c}"
        else:
            out.append(str(c))
    return ",".join(out)


def speed_settings(device: torch.device | str) -> dict[str, str]:
    """The settings that change training speed, for timing rows and run summaries: TF32, thread counts, CPU
    affinity, and every ``NCCL_*`` environment variable (semicolon-separated ``KEY=VALUE``)."""
    device = torch.device(device)
    affinity = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    cuda = device.type == "cuda"
    return {
        "tf32_matmul": str(torch.backends.cuda.matmul.allow_tf32) if cuda else "",
        "tf32_cudnn": str(torch.backends.cudnn.allow_tf32) if cuda else "",
        "torch_threads": str(torch.get_num_threads()),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS", ""),
        "cpu_affinity": _ranges(affinity),
        "nccl_env": ";".join(f"{k}={v}" for k, v in sorted(os.environ.items()) if k.startswith("NCCL_")),
    }
