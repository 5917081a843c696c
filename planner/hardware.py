"""GPU types: peak throughput, memory, and the links between GPUs."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

GIB = 1024**3


class GpuType(BaseModel):
    """One GPU model as the cost model sees it.

    Bandwidths are bytes per second in one direction. ``intra_node_bandwidth`` is what one
    GPU can send to a peer in the same node (NVLink, or PCIe where there is none);
    ``inter_node_bandwidth`` is one GPU's share of the network between nodes.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    peak_flops: float = Field(gt=0, description="dense fp16/bf16 tensor FLOP/s")
    memory_bandwidth: float = Field(gt=0, description="HBM/GDDR bytes/s")
    memory_bytes: int = Field(gt=0)
    intra_node_bandwidth: float = Field(gt=0)
    inter_node_bandwidth: float = Field(gt=0)
    gpus_per_node: int = Field(default=8, gt=0)
    nvlink: bool = True

    @property
    def memory_gib(self) -> float:
        return self.memory_bytes / GIB


def _gb(x: float) -> int:
    return int(x * 1e9)


PRESETS: dict[str, GpuType] = {
    g.name: g
    for g in [
        GpuType(
            name="nvidia-a100-40gb",
            peak_flops=312e12,
            memory_bandwidth=1555e9,
            memory_bytes=40 * GIB,
            intra_node_bandwidth=300e9,
            inter_node_bandwidth=25e9,
        ),
        GpuType(
            name="nvidia-a100-80gb",
            peak_flops=312e12,
            memory_bandwidth=2039e9,
            memory_bytes=80 * GIB,
            intra_node_bandwidth=300e9,
            inter_node_bandwidth=25e9,
        ),
        GpuType(
            name="nvidia-h100-80gb",
            peak_flops=989e12,
            memory_bandwidth=3350e9,
            memory_bytes=80 * GIB,
            intra_node_bandwidth=450e9,
            inter_node_bandwidth=50e9,
        ),
        GpuType(
            name="nvidia-h200",
            peak_flops=989e12,
            memory_bandwidth=4800e9,
            memory_bytes=141 * GIB,
            intra_node_bandwidth=450e9,
            inter_node_bandwidth=50e9,
        ),
        # PCIe cards: the paper's A40 cluster had PCIe 4.0 within a node, 100 Gb/s between.
        GpuType(
            name="nvidia-a40",
            peak_flops=149.7e12,
            memory_bandwidth=696e9,
            memory_bytes=48 * GIB,
            intra_node_bandwidth=25e9,
            inter_node_bandwidth=12.5e9,
            nvlink=False,
        ),
        GpuType(
            name="nvidia-l4",
            peak_flops=121e12,
            memory_bandwidth=300e9,
            memory_bytes=24 * GIB,
            intra_node_bandwidth=25e9,
            inter_node_bandwidth=12.5e9,
            nvlink=False,
        ),
    ]
}

ALIASES = {
    "a100-40gb": "nvidia-a100-40gb",
    "a100-80gb": "nvidia-a100-80gb",
    "a100": "nvidia-a100-80gb",
    "h100-80gb": "nvidia-h100-80gb",
    "h100": "nvidia-h100-80gb",
    "h200": "nvidia-h200",
    "a40": "nvidia-a40",
    "l4": "nvidia-l4",
}


def get_gpu(name: str) -> GpuType:
    """Look up a GPU type by its name (``nvidia-a100-80gb``) or short alias (``a100-80gb``)."""
    key = name.lower()
    key = ALIASES.get(key, key)
    try:
        return PRESETS[key]
    except KeyError:
        known = ", ".join(sorted(PRESETS))
        raise KeyError(f"unknown GPU type {name!r}; known types: {known}") from None
