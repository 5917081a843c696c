"""Where ``exegpt bench runner`` runs: the CPU, or a node's GPUs (``--device cuda``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from planner_builders import DEFAULT_GPU, DEFAULT_MODEL, profile_for
from tiny import tiny_architecture

from exegpt.bench import runner as bench
from exegpt.bench.device import BenchDevice, gpu_type_of
from exegpt.bench.speed import BENCH_MAX_LENGTH, bench_profiler
from exegpt.cli import main
from exegpt.planner.hardware import GIB, get_gpu
from exegpt.planner.workload_presets import get_workload


def gpus(n: int, gpu: str = DEFAULT_GPU) -> BenchDevice:
    """A node of ``n`` GPUs, as ``BenchDevice.cuda()`` would find it."""
    return BenchDevice("cuda", get_gpu(gpu), "float16", n, 5.0)


@pytest.mark.parametrize(
    ("name", "memory_gib", "expected"),
    [
        ("NVIDIA H100 80GB HBM3", 79.6, "nvidia-h100-80gb"),
        ("NVIDIA H200", 139.8, "nvidia-h200"),
        ("NVIDIA A100-SXM4-40GB", 39.4, "nvidia-a100-40gb"),
    ],
)
def test_a_known_gpu_gets_its_catalog_type(name: str, memory_gib: float, expected: str) -> None:
    assert gpu_type_of(name, int(memory_gib * GIB)).name == expected


def test_an_unknown_gpu_is_named_as_the_device_names_itself() -> None:
    assert gpu_type_of("Some Accelerator X1", 16 * GIB).name == "some-accelerator-x1"


def test_cpu_and_gpu_devices() -> None:
    cpu = BenchDevice.cpu()
    assert (cpu.kind, cpu.dtype, cpu.backend) == ("cpu", "float32", "gloo")
    assert cpu.target_error_pct == 10.0
    assert cpu.fits(2) and cpu.torch_device(1) == torch.device("cpu")
    one = gpus(1)
    assert (one.dtype, one.backend, one.target_error_pct) == ("float16", "nccl", 5.0)
    assert one.fits(1) and not one.fits(2) and gpus(2).fits(2)
    assert one.torch_device(1) == torch.device("cuda", 1)  # one process per GPU


def test_profiles_stop_at_the_longest_request_the_bench_sends() -> None:
    wl = bench.bench_workload()
    assert wl.input.max + wl.output.max <= BENCH_MAX_LENGTH
    big = bench_profiler(bench.GPU_ARCHITECTURE, seconds=1, midpoints=False, passes=1)
    assert bench.GPU_ARCHITECTURE.max_positions > BENCH_MAX_LENGTH == big.max_length
    small = bench_profiler(bench.ARCHITECTURE, seconds=1, midpoints=False, passes=1)
    assert small.max_length == bench.ARCHITECTURE.max_positions <= BENCH_MAX_LENGTH


def test_plan_request_is_for_the_device() -> None:
    wl = get_workload("chat").scaled(1 / 32, 1 / 4)
    req = bench.plan_request(bench.GPU_ARCHITECTURE, wl, device=gpus(1, "nvidia-h100-80gb"))
    assert req.gpu.name == "nvidia-h100-80gb" and req.dtype == "float16"
    assert bench.plan_request(bench.ARCHITECTURE, wl).gpu.name == "cpu"
    assert bench.default_architecture(gpus(1)) == bench.GPU_ARCHITECTURE
    assert bench.default_architecture(BenchDevice.cpu()) == bench.ARCHITECTURE


def test_workload_aware_needs_a_gpu_per_process() -> None:
    profile = profile_for(DEFAULT_MODEL, DEFAULT_GPU)
    arch = profile.architecture
    wl = get_workload("chat").scaled(1 / 4, 1 / 2)
    full = bench.FULL
    one, notes = bench._configs(full, arch, wl, profile, 30.0, gpus(1))
    assert [e.role for e in one] == ["plan", "static", "continuous"]
    assert any("pipeline and workload-aware need two GPUs" in n for n in notes)
    two, _ = bench._configs(full, arch, wl, profile, 30.0, gpus(2))
    assert [e.role for e in two][-2:] == ["pipeline", "workload-aware"]
    assert two[-2].config.pipeline_stages == 2 and two[-2].chosen == "fixed"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without a GPU")
def test_cuda_without_a_gpu_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "runner", "--device", "cuda", "--quick"]) == 2
    assert "--device cuda: no CUDA device here" in capsys.readouterr().err


@pytest.mark.gpu
def test_the_bench_runs_on_a_gpu() -> None:
    arch = tiny_architecture("opt", num_layers=2, hidden_size=64, vocab_size=512, max_positions=256)
    mode = bench.Mode("test", 3.0, False, 1, 80, 40, ("plan", "static"))
    wl = get_workload("chat").scaled(1 / 32, 1 / 16)
    report: dict[str, Any] = bench.bench(
        mode, seed=1, architecture=arch, workload=wl, device=BenchDevice.cuda()
    )
    assert report["environment"]["dtype"] == "float16"
    assert report["summary"]["target_error_pct"] == 5.0
    for c in report["configs"]:
        for key in ("throughput_qps", "latency_s", "e2e_p99_s"):
            assert c["measured"][key] > 0 and c["predicted"][key] > 0


def test_a_cpu_is_named_by_the_kernels_model_name(tmp_path: Path) -> None:
    from exegpt.bench.device import cpu_model

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC\n\n")
    assert cpu_model(info) == "AMD EPYC"
    info.write_text("processor\t: 0\n")
    assert cpu_model(info) == "unknown"
    assert cpu_model(tmp_path / "absent") == "unknown"
