"""Where a bench runs: this machine's CPU (one process, one thread, stands for a GPU) or
its CUDA GPUs, and what that fixes: the model's dtype, the planner's GPU type, the
process group's backend and the prediction-error target."""

from __future__ import annotations

import gc
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from exegpt.planner.architecture import Dtype
from exegpt.planner.hardware import PRESETS, GpuType
from exegpt.runner.profiler import CPU_GPU_TYPE, match_gpu

CPU_TARGET_ERROR_PCT = 10.0  # tiny models on a shared CPU
GPU_TARGET_ERROR_PCT = 5.0  # on a GPU


class NoDevice(RuntimeError):
    """The bench was asked for a device this machine does not have."""


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name as the kernel reports it (``model name``), or "unknown":
    benchmarks on the CPU differ by machine, so their records name it."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "unknown"
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and value.strip():
            return value.strip()
    return "unknown"


def gpu_type_of(device_name: str, memory_bytes: int) -> GpuType:
    """The planner's GPU type of a CUDA device (its name and memory), or, for a GPU the
    catalog does not know, the CPU stand-in's figures under the device's name."""
    for gpu in PRESETS.values():
        if match_gpu(gpu.name, device_name, memory_bytes):
            return gpu
    return CPU_GPU_TYPE.model_copy(update={"name": device_name.lower().replace(" ", "-")})


def gpu_type_here() -> GpuType:
    """The planner's GPU type of CUDA device 0."""
    if not torch.cuda.is_available():
        raise NoDevice("no CUDA device here: run on a GPU node, or use --device cpu")
    props = torch.cuda.get_device_properties(0)
    return gpu_type_of(torch.cuda.get_device_name(0), int(props.total_memory))


@dataclass(frozen=True)
class BenchDevice:
    """``cpu``: every process is one "GPU" of the CPU stand-in type, float32, one torch
    thread, gloo between processes. ``cuda``: process ``r`` runs on CUDA device ``r``
    (``gpus`` of them), float16, NCCL between processes."""

    kind: Literal["cpu", "cuda"]
    gpu: GpuType
    dtype: Dtype
    gpus: int
    target_error_pct: float

    @classmethod
    def cpu(cls) -> BenchDevice:
        return cls("cpu", CPU_GPU_TYPE, "float32", 1, CPU_TARGET_ERROR_PCT)

    @classmethod
    def cuda(cls) -> BenchDevice:
        gpu = gpu_type_here()
        return cls("cuda", gpu, "float16", torch.cuda.device_count(), GPU_TARGET_ERROR_PCT)

    @property
    def backend(self) -> str:
        return "nccl" if self.kind == "cuda" else "gloo"

    def torch_device(self, rank: int = 0) -> torch.device:
        """The device of a replica's process ``rank``."""
        return torch.device("cuda", rank) if self.kind == "cuda" else torch.device("cpu")

    def release(self) -> None:
        """Hand back what a finished replica held, before the next profile and replica:
        on a GPU its weights and caches (collected, and the CUDA cache emptied)."""
        if self.kind == "cuda":
            gc.collect()
            torch.cuda.empty_cache()

    def fits(self, processes: int) -> bool:
        """Whether a replica of ``processes`` processes can run here (on the CPU, any
        number share the cores; on GPUs, one process per GPU)."""
        return self.kind == "cpu" or processes <= self.gpus

    def describe(self) -> str:
        if self.kind == "cpu":
            return "cpu"
        return f"{torch.cuda.get_device_name(0)} x{self.gpus} ({self.gpu.name})"
