"""Calibration of the analytic cost model against real GPU timings.

The reference data are the per-operator kernel timings and NCCL timings published with
microsoft/vidur (MIT), kept outside the repository (``../shared/data/vidur`` relative to
the repository root, or ``$EXEGPT_CALIBRATION_DATA``):

- ``profiling/compute/{a100,h100}/meta-llama/Llama-2-{7b,70b}-hf/mlp.csv``: per
  (num_tokens, num_tensor_parallel_workers), the median milliseconds of each operator of
  ONE layer shard (fp16). Where a (tokens, TP) pair appears twice we average the medians.
- ``profiling/network/{a100,h100}_dgx/{all_reduce,send_recv}.csv``: NCCL kernel
  milliseconds by message ``size``. vidur's profiler writes ``size`` as the buffer's
  *bytes* (fp16 elements x 2), so we read it as bytes.

This module reads files (it is not part of the simulator core) and fits the
:class:`~exegpt.planner.analytic.Efficiency` constants that are hard-coded in
``analytic.py``: a deterministic Levenberg-Marquardt least-squares fit on the log of
predicted / measured time, with the discrete parameters (soft-roofline exponent,
minimum GEMM rows) chosen on a small grid.
"""

from __future__ import annotations

import csv
import math
import os
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from .analytic import (
    Efficiency,
    all_reduce_times,
    efficiency_for,
    layer_gemm_shapes,
    layer_op_times,
    linear_times,
    send_recv_times,
)
from .architecture import get_architecture
from .hardware import GpuType, get_gpu

DATA_ENV = "EXEGPT_CALIBRATION_DATA"

OpGroup = Literal["linear", "elementwise"]
CommKind = Literal["all_reduce", "send_recv_intra", "send_recv_inter"]

# (data folder, model folder) -> (GPU type, architecture preset)
COMPUTE_SOURCES: tuple[tuple[str, str, str, str], ...] = (
    ("a100", "Llama-2-7b-hf", "nvidia-a100-80gb", "llama-2-7b"),
    ("a100", "Llama-2-70b-hf", "nvidia-a100-80gb", "llama-2-70b"),
    ("h100", "Llama-2-7b-hf", "nvidia-h100-80gb", "llama-2-7b"),
)
NETWORK_SOURCES: tuple[tuple[str, str], ...] = (
    ("a100_dgx", "nvidia-a100-80gb"),
    ("h100_dgx", "nvidia-h100-80gb"),
)
# vidur operator -> (our operator in layer_op_times, group)
OPS: Mapping[str, tuple[str, OpGroup]] = {
    "attn_pre_proj": ("qkv_proj", "linear"),
    "attn_post_proj": ("out_proj", "linear"),
    "mlp_up_proj": ("mlp_up", "linear"),
    "mlp_down_proj": ("mlp_down", "linear"),
    "input_layernorm": ("norm_attn", "elementwise"),
    "post_attention_layernorm": ("norm_mlp", "elementwise"),
    "attn_rope": ("rope", "elementwise"),
    "mlp_act": ("mlp_act", "elementwise"),
    "add": ("residual_attn", "elementwise"),
}
OVERLAP_GRID = (1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 4.0)
MIN_ROWS_GRID = (1, 16, 32, 64)

FloatArray = NDArray[np.float64]


def default_data_dir() -> Path:
    """``$EXEGPT_CALIBRATION_DATA``, else ``../shared/data/vidur`` from the repository root."""
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env)
    root = Path(__file__).resolve().parent.parent
    return (root / ".." / "shared" / "data" / "vidur").resolve()


def data_available(data_dir: Path) -> bool:
    return (data_dir / "profiling" / "compute").is_dir() and (
        data_dir / "profiling" / "network"
    ).is_dir()


# -- measurements -------------------------------------------------------------------------------
@dataclass(frozen=True)
class OpMeasurement:
    gpu: str
    model: str
    op: str
    group: OpGroup
    tokens: int
    tp: int
    seconds: float


@dataclass(frozen=True)
class CommMeasurement:
    gpu: str
    kind: CommKind
    workers: int
    nbytes: int
    seconds: float


def load_compute(data_dir: Path) -> list[OpMeasurement]:
    """Every (GPU, model, operator, tokens, TP) median, in seconds."""
    out: list[OpMeasurement] = []
    for folder, model_folder, gpu, model in COMPUTE_SOURCES:
        path = data_dir / "profiling" / "compute" / folder / "meta-llama" / model_folder / "mlp.csv"
        acc: dict[tuple[str, int, int], list[float]] = defaultdict(list)
        with path.open(newline="") as f:
            for row in csv.DictReader(f):
                tokens = int(row["num_tokens"])
                tp = int(row["num_tensor_parallel_workers"])
                for vidur_op in OPS:
                    acc[(vidur_op, tokens, tp)].append(
                        float(row[f"time_stats.{vidur_op}.median"]) * 1e-3
                    )
        for (vidur_op, tokens, tp), values in sorted(acc.items()):
            op, group = OPS[vidur_op]
            out.append(OpMeasurement(gpu, model, op, group, tokens, tp, float(np.mean(values))))
    return out


def load_network(data_dir: Path) -> list[CommMeasurement]:
    """Intra-node all-reduce (2, 4, 8 GPUs of one node) and send/recv within a node and
    between two nodes, in seconds by bytes."""
    out: list[CommMeasurement] = []
    for folder, gpu in NETWORK_SOURCES:
        base = data_dir / "profiling" / "network" / folder
        with (base / "all_reduce.csv").open(newline="") as f:
            for row in csv.DictReader(f):
                workers, per_node = int(row["num_workers"]), int(row["devices_per_node"])
                if workers < 2 or workers != per_node:
                    continue
                seconds = float(row["time_stats.all_reduce.median"]) * 1e-3
                out.append(CommMeasurement(gpu, "all_reduce", workers, int(row["size"]), seconds))
        with (base / "send_recv.csv").open(newline="") as f:
            for row in csv.DictReader(f):
                workers, per_node = int(row["num_workers"]), int(row["devices_per_node"])
                kind: CommKind = "send_recv_intra" if per_node >= workers else "send_recv_inter"
                seconds = float(row["time_stats.send_recv.median"]) * 1e-3
                out.append(CommMeasurement(gpu, kind, workers, int(row["size"]), seconds))
    return out


# -- predictions ------------------------------------------------------------------------------
def _efficiency(gpu: str, efficiencies: Mapping[str, Efficiency] | None) -> Efficiency:
    if efficiencies is not None and gpu in efficiencies:
        return efficiencies[gpu]
    return efficiency_for(gpu)


def predict_compute(
    measurements: Sequence[OpMeasurement],
    efficiencies: Mapping[str, Efficiency] | None = None,
) -> FloatArray:
    """The analytic time of each measured operator, from :func:`layer_op_times` (a prefill
    of ``tokens`` tokens in one sequence: the GEMM and elementwise shapes vidur timed)."""
    out = np.empty(len(measurements))
    index: dict[tuple[str, str, int], dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for i, m in enumerate(measurements):
        index[(m.gpu, m.model, m.tp)][m.op].append(i)
    for (gpu_name, model, tp), by_op in index.items():
        gpu, arch = get_gpu(gpu_name), get_architecture(model)
        tokens = sorted({measurements[i].tokens for rows in by_op.values() for i in rows})
        column = {t: j for j, t in enumerate(tokens)}
        ops = layer_op_times(
            arch,
            gpu,
            "encode",
            1.0,
            np.asarray(tokens, dtype=np.float64),
            tp,
            "float16",
            _efficiency(gpu_name, efficiencies),
        )
        for op, rows in by_op.items():
            cols = [column[measurements[i].tokens] for i in rows]
            out[rows] = ops[op][cols]
    return out


def predict_comm(
    measurements: Sequence[CommMeasurement],
    efficiencies: Mapping[str, Efficiency] | None = None,
) -> FloatArray:
    """The analytic time of each measured collective."""
    out = np.empty(len(measurements))
    index: dict[tuple[str, CommKind, int], list[int]] = defaultdict(list)
    for i, m in enumerate(measurements):
        index[(m.gpu, m.kind, m.workers)].append(i)
    for (gpu_name, kind, workers), rows in index.items():
        gpu, eff = get_gpu(gpu_name), _efficiency(gpu_name, efficiencies)
        nbytes = np.asarray([measurements[i].nbytes for i in rows], dtype=np.float64)
        if kind == "all_reduce":
            out[rows] = all_reduce_times(gpu, workers, nbytes, eff)
        else:
            out[rows] = send_recv_times(gpu, nbytes, kind == "send_recv_inter", eff)
    return out


# -- error statistics --------------------------------------------------------------------------
@dataclass(frozen=True)
class ErrorStats:
    n: int
    median_pct_err: float
    p90_pct_err: float
    worst_pct_err: float
    bias_pct: float  # median of signed (predicted / measured - 1)
    worst_at: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "median_pct_err": round(self.median_pct_err, 2),
            "p90_pct_err": round(self.p90_pct_err, 2),
            "worst_pct_err": round(self.worst_pct_err, 2),
            "bias_pct": round(self.bias_pct, 2),
            "worst_at": self.worst_at,
        }


def error_stats(predicted: FloatArray, measured: FloatArray, labels: Sequence[str]) -> ErrorStats:
    signed = (predicted / measured - 1.0) * 100.0
    err = np.abs(signed)
    worst = int(np.argmax(err))
    return ErrorStats(
        n=int(err.size),
        median_pct_err=float(np.median(err)),
        p90_pct_err=float(np.percentile(err, 90)),
        worst_pct_err=float(err[worst]),
        bias_pct=float(np.median(signed)),
        worst_at=labels[worst],
    )


def _op_label(m: OpMeasurement) -> str:
    return f"{m.model} {m.op} tokens={m.tokens} tp={m.tp}"


def _comm_label(m: CommMeasurement) -> str:
    return f"{m.kind} workers={m.workers} bytes={m.nbytes}"


def _stats_by(
    items: Sequence[Any],
    predicted: FloatArray,
    key: Callable[[Any], str],
    label: Callable[[Any], str],
) -> dict[str, ErrorStats]:
    groups: dict[str, list[int]] = defaultdict(list)
    for i, item in enumerate(items):
        groups[key(item)].append(i)
    measured = np.asarray([item.seconds for item in items])
    return {
        k: error_stats(predicted[idx], measured[idx], [label(items[i]) for i in idx])
        for k, idx in sorted(groups.items())
    }


def compute_report(
    measurements: Sequence[OpMeasurement],
    efficiencies: Mapping[str, Efficiency] | None = None,
) -> dict[str, dict[str, ErrorStats]]:
    """Error statistics ``{gpu: {key: stats}}`` and ``{"all": {group: stats}}``.

    Keys: ``linear`` and ``elementwise`` (each operator timing on its own), ``layer``
    (the sum of all measured operators of one layer at one (tokens, TP) point: the
    layer without attention) and ``<group>/<model>/<op>``.
    """
    pred = predict_compute(measurements, efficiencies)
    out: dict[str, dict[str, ErrorStats]] = {}
    by_gpu: dict[str, list[int]] = defaultdict(list)
    for i, m in enumerate(measurements):
        by_gpu[m.gpu].append(i)
    layers = _layer_sums(measurements, pred)
    for gpu, idx in sorted(by_gpu.items()):
        ms = [measurements[i] for i in idx]
        stats = _stats_by(ms, pred[idx], lambda m: m.group, _op_label)
        stats["layer"] = _layer_stats([x for x in layers if x[0].gpu == gpu])
        stats.update(_stats_by(ms, pred[idx], lambda m: f"{m.group}/{m.model}/{m.op}", _op_label))
        out[gpu] = stats
    out["all"] = _stats_by(measurements, pred, lambda m: m.group, _op_label)
    out["all"]["layer"] = _layer_stats(layers)
    return out


def _layer_sums(
    measurements: Sequence[OpMeasurement], predicted: FloatArray
) -> list[tuple[OpMeasurement, float]]:
    """One (measured sum as an OpMeasurement, predicted sum) per (GPU, model, tokens, TP)."""
    sums: dict[tuple[str, str, int, int], list[float]] = defaultdict(lambda: [0.0, 0.0])
    for m, p in zip(measurements, predicted, strict=True):
        acc = sums[(m.gpu, m.model, m.tokens, m.tp)]
        acc[0] += m.seconds
        acc[1] += float(p)
    return [
        (OpMeasurement(gpu, model, "layer", "linear", tokens, tp, acc[0]), acc[1])
        for (gpu, model, tokens, tp), acc in sorted(sums.items())
    ]


def _layer_stats(layers: Sequence[tuple[OpMeasurement, float]]) -> ErrorStats:
    return error_stats(
        np.asarray([p for _, p in layers]),
        np.asarray([m.seconds for m, _ in layers]),
        [_op_label(m) for m, _ in layers],
    )


def comm_report(
    measurements: Sequence[CommMeasurement],
    efficiencies: Mapping[str, Efficiency] | None = None,
) -> dict[str, dict[str, ErrorStats]]:
    """``{gpu: {kind: stats, "all_reduce/tpN": stats, "all_reduce/<1MiB": stats, ...}}``."""
    pred = predict_comm(measurements, efficiencies)
    out: dict[str, dict[str, ErrorStats]] = {}
    by_gpu: dict[str, list[int]] = defaultdict(list)
    for i, m in enumerate(measurements):
        by_gpu[m.gpu].append(i)
    for gpu, idx in sorted(by_gpu.items()):
        ms = [measurements[i] for i in idx]
        stats = _stats_by(ms, pred[idx], lambda m: m.kind, _comm_label)
        ar = [i for i in idx if measurements[i].kind == "all_reduce"]
        ar_ms = [measurements[i] for i in ar]
        stats.update(_stats_by(ar_ms, pred[ar], lambda m: f"all_reduce/tp{m.workers}", _comm_label))
        stats.update(
            _stats_by(
                ar_ms,
                pred[ar],
                lambda m: "all_reduce/<1MiB" if m.nbytes < 2**20 else "all_reduce/>=1MiB",
                _comm_label,
            )
        )
        out[gpu] = stats
    return out


# -- fitting ---------------------------------------------------------------------------------
def levenberg_marquardt(
    residuals: Callable[[FloatArray], FloatArray],
    theta0: Sequence[float],
    iterations: int = 100,
) -> tuple[FloatArray, float]:
    """Minimise ``sum(residuals(theta)**2)``; deterministic, forward-difference Jacobian.
    Returns the parameters and the final sum of squares."""
    theta = np.asarray(theta0, dtype=np.float64)
    r = residuals(theta)
    cost = float(r @ r)
    lam = 1e-2
    gain = 0.0
    for _ in range(iterations):
        jac = np.empty((r.size, theta.size))
        for j in range(theta.size):
            step = np.zeros_like(theta)
            step[j] = 1e-6
            jac[:, j] = (residuals(theta + step) - r) / 1e-6
        a = jac.T @ jac
        g = jac.T @ r
        improved = False
        while lam < 1e10:
            delta = np.linalg.solve(a + lam * np.diag(np.diag(a) + 1e-12), -g)
            r_new = residuals(theta + delta)
            cost_new = float(r_new @ r_new)
            if np.isfinite(cost_new) and cost_new < cost:
                gain = cost - cost_new
                theta, r, cost = theta + delta, r_new, cost_new
                lam = max(lam / 3.0, 1e-12)
                improved = True
                break
            lam *= 4.0
        if not improved or gain < 1e-12 * max(cost, 1e-30):
            break
    return theta, cost


def _round_sig(x: float, digits: int = 4) -> float:
    return float(f"{x:.{digits}g}")


@dataclass(frozen=True)
class _GemmSamples:
    m: FloatArray
    k: FloatArray
    n: FloatArray
    seconds: FloatArray


def _gemm_samples(measurements: Iterable[OpMeasurement]) -> _GemmSamples:
    m, k, n, s = [], [], [], []
    shapes: dict[tuple[str, int], dict[str, tuple[int, int]]] = {}
    for x in measurements:
        if x.group != "linear":
            continue
        key = (x.model, x.tp)
        if key not in shapes:
            shapes[key] = layer_gemm_shapes(get_architecture(x.model), x.tp)
        kk, nn = shapes[key][x.op]
        m.append(x.tokens)
        k.append(kk)
        n.append(nn)
        s.append(x.seconds)
    f = np.asarray
    return _GemmSamples(f(m, float), f(k, float), f(n, float), f(s, float))


def _gemm_efficiency(
    base: Efficiency, theta: FloatArray, overlap: float, rows: int, rounded: bool = False
) -> Efficiency:
    ec, em, ov = (float(v) for v in np.exp(theta))
    return base.model_copy(
        update={
            "gemm_compute": _round_sig(ec, 4) if rounded else ec,
            "gemm_memory": _round_sig(em, 4) if rounded else em,
            "kernel_overhead": _round_sig(ov, 3) if rounded else ov,
            "overlap": overlap,
            "min_gemm_rows": rows,
        }
    )


def fit_linear(gpu: GpuType, measurements: Sequence[OpMeasurement], base: Efficiency) -> Efficiency:
    """Fit ``gemm_compute``, ``gemm_memory``, ``kernel_overhead`` (continuous, in log
    space) and ``overlap``, ``min_gemm_rows`` (on a grid) to the GEMM timings; fits with
    an efficiency above 1 are rejected as unphysical."""
    data = _gemm_samples(measurements)
    log_y = np.log(data.seconds)
    best: tuple[float, Efficiency] | None = None
    for overlap in OVERLAP_GRID:
        for rows in MIN_ROWS_GRID:

            def residuals(
                theta: FloatArray, overlap: float = overlap, rows: int = rows
            ) -> FloatArray:
                eff = _gemm_efficiency(base, theta, overlap, rows)
                pred = linear_times(gpu, data.m, data.k, data.n, "float16", eff)
                return np.asarray(np.log(pred) - log_y, dtype=np.float64)

            theta, cost = levenberg_marquardt(
                residuals, [math.log(0.7), math.log(0.8), math.log(5e-6)]
            )
            if theta[0] >= 0.0 or theta[1] >= 0.0:
                continue
            if best is None or cost < best[0]:
                best = (cost, _gemm_efficiency(base, theta, overlap, rows, rounded=True))
    if best is None:
        raise RuntimeError(f"no physical GEMM fit for {gpu.name}")
    return best[1]


def fit_elementwise(
    gpu: GpuType, measurements: Sequence[OpMeasurement], base: Efficiency
) -> Efficiency:
    """Fit ``elementwise_memory`` and ``elementwise_overhead``."""
    ms = [m for m in measurements if m.group == "elementwise"]
    log_y = np.log(np.asarray([m.seconds for m in ms]))

    def make(theta: FloatArray, digits: int = 17) -> Efficiency:
        return base.model_copy(
            update={
                "elementwise_memory": _round_sig(float(np.exp(min(theta[0], 0.0))), digits),
                "elementwise_overhead": _round_sig(float(np.exp(theta[1])), digits),
            }
        )

    def residuals(theta: FloatArray) -> FloatArray:
        return np.asarray(np.log(predict_compute(ms, {gpu.name: make(theta)})) - log_y)

    theta, _ = levenberg_marquardt(residuals, [math.log(0.5), math.log(2e-6)])
    return make(theta, 3)


def fit_comm(gpu: GpuType, measurements: Sequence[CommMeasurement], base: Efficiency) -> Efficiency:
    """Fit bandwidth fraction and latency of all-reduce, send/recv intra and inter."""
    update: dict[str, float] = {}
    for kind, bw_field, lat_field in (
        ("all_reduce", "all_reduce_bandwidth", "all_reduce_latency"),
        ("send_recv_intra", "p2p_intra_bandwidth", "p2p_intra_latency"),
        ("send_recv_inter", "p2p_inter_bandwidth", "p2p_inter_latency"),
    ):
        ms = [m for m in measurements if m.kind == kind]
        if not ms:
            continue
        log_y = np.log(np.asarray([m.seconds for m in ms]))

        def make(
            theta: FloatArray, bw_field: str = bw_field, lat_field: str = lat_field
        ) -> Efficiency:
            return base.model_copy(
                update={
                    bw_field: float(np.exp(min(theta[0], 0.0))),
                    lat_field: float(np.exp(theta[1])),
                }
            )

        def residuals(
            theta: FloatArray,
            ms: list[CommMeasurement] = ms,
            log_y: FloatArray = log_y,
            make: Callable[[FloatArray], Efficiency] = make,
        ) -> FloatArray:
            return np.asarray(np.log(predict_comm(ms, {gpu.name: make(theta)})) - log_y)

        theta, _ = levenberg_marquardt(residuals, [math.log(0.6), math.log(2e-5)])
        update[bw_field] = _round_sig(float(np.exp(min(theta[0], 0.0))), 2)
        update[lat_field] = _round_sig(float(np.exp(theta[1])), 2)
    return base.model_copy(update=update)


def fit_gpu(
    gpu_name: str,
    compute: Sequence[OpMeasurement],
    network: Sequence[CommMeasurement],
    models: Sequence[str] | None = None,
) -> Efficiency:
    """All fitted constants of one GPU type (``models`` restricts the compute data)."""
    gpu = get_gpu(gpu_name)
    ops = [m for m in compute if m.gpu == gpu.name and (models is None or m.model in models)]
    eff = efficiency_for(gpu)
    eff = fit_linear(gpu, ops, eff)
    eff = fit_elementwise(gpu, ops, eff)
    return fit_comm(gpu, [m for m in network if m.gpu == gpu.name], eff)


def fit_all(data_dir: Path) -> dict[str, Efficiency]:
    """Fit every GPU type the data covers."""
    compute, network = load_compute(data_dir), load_network(data_dir)
    gpus = sorted({m.gpu for m in compute})
    return {g: fit_gpu(g, compute, network) for g in gpus}


def holdout_check(
    compute: Sequence[OpMeasurement],
    gpu: str = "nvidia-a100-80gb",
    fit_on: str = "llama-2-7b",
    test_on: str = "llama-2-70b",
) -> ErrorStats:
    """Out-of-sample check: GEMM constants fitted on one model, error on another."""
    g = get_gpu(gpu)
    train = [m for m in compute if m.gpu == g.name and m.model == fit_on]
    test = [m for m in compute if m.gpu == g.name and m.model == test_on and m.group == "linear"]
    eff = fit_linear(g, train, efficiency_for(g))
    pred = predict_compute(test, {g.name: eff})
    return error_stats(pred, np.asarray([m.seconds for m in test]), [_op_label(m) for m in test])


_FITTED_FIELDS = (
    "gemm_compute",
    "gemm_memory",
    "overlap",
    "min_gemm_rows",
    "kernel_overhead",
    "elementwise_memory",
    "elementwise_overhead",
    "all_reduce_bandwidth",
    "all_reduce_latency",
    "p2p_intra_bandwidth",
    "p2p_intra_latency",
    "p2p_inter_bandwidth",
    "p2p_inter_latency",
)


def format_constants(efficiencies: Mapping[str, Efficiency]) -> str:
    """The fitted fields as Python keyword arguments, ready to paste into analytic.py."""
    lines: list[str] = []
    for gpu, eff in sorted(efficiencies.items()):
        lines.append(f"# {gpu}")
        for field in _FITTED_FIELDS:
            lines.append(f"    {field}={getattr(eff, field)!r},")
    return "\n".join(lines)


def fitted_fields(eff: Efficiency) -> dict[str, float | int]:
    """The fitted constants of ``eff`` by field name."""
    out: dict[str, float | int] = {}
    for f in _FITTED_FIELDS:
        value = getattr(eff, f)
        out[f] = int(value) if isinstance(value, int) else float(value)
    return out
