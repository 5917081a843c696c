"""The profile: the data contract between the XProfiler (or the analytic cost model)
and the XSimulator.

A profile holds, for one model on one GPU type and dtype, the time of ONE layer of
each phase, per tensor-parallel degree, over a sparse grid, plus communication times
and the memory the model needs. Every time is in seconds and is one TP shard's compute
time; the all-reduce a TP layer needs is in ``comm`` and is added by the simulator.

The JSON form (``Profile.to_json``) is versioned (``schema_version``) and
content-addressed: ``profile_key`` depends only on the model's architecture, the GPU
type, the dtype and the profiler version, and for a profile of vLLM on the engine and
its version, so deployments that share these share a profile.
"""

from __future__ import annotations

import hashlib
import json
from bisect import bisect_right
from datetime import datetime
from itertools import pairwise
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from .architecture import Architecture, Dtype
from .plan import Engine

SCHEMA_VERSION = 1
# The version of the measured profiler (``exegpt profile``); part of a measured profile's
# content key, so a new profiler invalidates cached profiles.
MEASURED_PROFILER_VERSION = "xprofiler-3"
# The version of the profiler that times vLLM's own steps (``exegpt profile --engine vllm``);
# 2: every step is the median of its timings (the least on the CPU before).
VLLM_PROFILER_VERSION = "xprofiler-vllm-3"
# The vLLM release the runtime image carries: the engine version of the profile key the
# operator looks up for a deployment that runs on vLLM.
VLLM_VERSION = "0.32.0"
Source = Literal["analytic", "measured"]


def _interp_index(axis: np.ndarray, x: float) -> tuple[int, float]:
    """Index ``i`` and weight ``w`` so that x ~ axis[i]*(1-w) + axis[i+1]*w.

    Outside the axis the weight extrapolates linearly from the nearest segment.
    """
    n = axis.shape[0]
    if n == 1:
        return 0, 0.0
    i = int(np.searchsorted(axis, x, side="right")) - 1
    i = min(max(i, 0), n - 2)
    lo, hi = float(axis[i]), float(axis[i + 1])
    return i, (x - lo) / (hi - lo)


class CurveFn:
    """A plain-Python evaluator of a ``Curve`` (fast scalar lookups for search loops)."""

    __slots__ = ("xs", "ys")

    def __init__(self, xs: list[float], ys: list[float]) -> None:
        self.xs, self.ys = xs, ys

    def __call__(self, x: float) -> float:
        xs, ys = self.xs, self.ys
        if len(xs) == 1:
            return ys[0] * x / xs[0] if xs[0] else ys[0]
        i = min(max(bisect_right(xs, x) - 1, 0), len(xs) - 2)
        w = (x - xs[i]) / (xs[i + 1] - xs[i])
        y = ys[i] + (ys[i + 1] - ys[i]) * w
        return y if y > 0.0 else 0.0


class GridFn:
    """A plain-Python evaluator of a ``Grid`` (bilinear, linear beyond the edges)."""

    __slots__ = ("bs", "ls", "t")

    def __init__(self, bs: list[float], ls: list[float], t: list[list[float]]) -> None:
        self.bs, self.ls, self.t = bs, ls, t

    def __call__(self, batch: float, length: float) -> float:
        bs, ls, t = self.bs, self.ls, self.t
        nb, nl = len(bs), len(ls)
        if nb == 1:
            row = CurveFn(ls, t[0])(length) if nl > 1 else t[0][0]
            return row * batch / bs[0]
        i = min(max(bisect_right(bs, batch) - 1, 0), nb - 2)
        wi = (batch - bs[i]) / (bs[i + 1] - bs[i])
        if nl == 1:
            y = t[i][0] + (t[i + 1][0] - t[i][0]) * wi
        else:
            j = min(max(bisect_right(ls, length) - 1, 0), nl - 2)
            wj = (length - ls[j]) / (ls[j + 1] - ls[j])
            r0, r1 = t[i], t[i + 1]
            a = r0[j] + (r0[j + 1] - r0[j]) * wj
            b = r1[j] + (r1[j + 1] - r1[j]) * wj
            y = a + (b - a) * wi
        return y if y > 0.0 else 0.0


class Curve(BaseModel):
    """Seconds as a piecewise-linear function of one variable (tokens, or bytes)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    x: list[float] = Field(min_length=1)
    seconds: list[float] = Field(min_length=1)

    _xa: np.ndarray = PrivateAttr()
    _ya: np.ndarray = PrivateAttr()

    @model_validator(mode="after")
    def _check(self) -> Curve:
        if len(self.x) != len(self.seconds):
            raise ValueError("x and seconds must have the same length")
        if any(b <= a for a, b in pairwise(self.x)):
            raise ValueError("x must be strictly increasing")
        if any(s < 0 for s in self.seconds):
            raise ValueError("seconds must be non-negative")
        self._xa = np.asarray(self.x, dtype=float)
        self._ya = np.asarray(self.seconds, dtype=float)
        return self

    def __eq__(self, other: object) -> bool:
        # compare the fields only: the cached numpy arrays have no single truth value
        if not isinstance(other, Curve):
            return NotImplemented
        return self.x == other.x and self.seconds == other.seconds

    def fn(self) -> CurveFn:
        return CurveFn([float(v) for v in self.x], [float(v) for v in self.seconds])

    def at(self, x: float) -> float:
        i, w = _interp_index(self._xa, x)
        if self._xa.shape[0] == 1:
            # One point: scale proportionally (a rate), the only sensible extrapolation.
            return float(self._ya[0] * x / self._xa[0]) if self._xa[0] else float(self._ya[0])
        y = self._ya[i] * (1.0 - w) + self._ya[i + 1] * w
        return max(float(y), 0.0)


class Grid(BaseModel):
    """Seconds over (batch size, sequence length), bilinear between grid points and
    linear beyond the edges (clamped at zero)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    batch: list[int] = Field(min_length=1)
    length: list[int] = Field(min_length=1)
    seconds: list[list[float]] = Field(min_length=1)

    _b: np.ndarray = PrivateAttr()
    _l: np.ndarray = PrivateAttr()
    _t: np.ndarray = PrivateAttr()

    @model_validator(mode="after")
    def _check(self) -> Grid:
        for name, axis in (("batch", self.batch), ("length", self.length)):
            if any(b <= a for a, b in pairwise(axis)):
                raise ValueError(f"{name} must be strictly increasing")
            if axis[0] < 1:
                raise ValueError(f"{name} values must be >= 1")
        if len(self.seconds) != len(self.batch) or any(
            len(row) != len(self.length) for row in self.seconds
        ):
            raise ValueError("seconds must have shape [len(batch)][len(length)]")
        self._b = np.asarray(self.batch, dtype=float)
        self._l = np.asarray(self.length, dtype=float)
        self._t = np.asarray(self.seconds, dtype=float)
        if (self._t < 0).any() or not np.isfinite(self._t).all():
            raise ValueError("seconds must be finite and non-negative")
        return self

    def __eq__(self, other: object) -> bool:
        # compare the fields only: the cached numpy arrays have no single truth value
        if not isinstance(other, Grid):
            return NotImplemented
        return (
            self.batch == other.batch
            and self.length == other.length
            and self.seconds == other.seconds
        )

    def fn(self) -> GridFn:
        return GridFn(
            [float(b) for b in self.batch],
            [float(v) for v in self.length],
            [[float(v) for v in row] for row in self.seconds],
        )

    def at(self, batch: float, length: float) -> float:
        t = self._t
        nb, nl = t.shape
        if nb == 1 and nl == 1:
            return float(t[0, 0] * batch / self._b[0])
        i, wi = _interp_index(self._b, batch)
        j, wj = _interp_index(self._l, length)
        if nb == 1:
            row = t[0]
            y = row[j] * (1 - wj) + row[j + 1] * wj
            return max(float(y * batch / self._b[0]), 0.0)
        if nl == 1:
            y = t[i, 0] * (1 - wi) + t[i + 1, 0] * wi
            return max(float(y), 0.0)
        y = (
            t[i, j] * (1 - wi) * (1 - wj)
            + t[i + 1, j] * wi * (1 - wj)
            + t[i, j + 1] * (1 - wi) * wj
            + t[i + 1, j + 1] * wi * wj
        )
        return max(float(y), 0.0)


class PhaseTables(BaseModel):
    """Per-layer times of one TP degree."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    encode: Grid = Field(description="one encoding layer: (batch, input length)")
    decode: Grid = Field(description="one decoder layer, one step: (batch, context length)")
    head: Curve = Field(description="LM head and sampling, by tokens that need logits")


class Comm(BaseModel):
    """Communication times by message bytes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    all_reduce: dict[int, Curve] = Field(description="intra-node all-reduce, by TP degree")
    send_recv_intra: Curve
    send_recv_inter: Curve
    source: Source = "analytic"

    def all_reduce_at(self, tp: int, nbytes: float) -> float:
        if tp <= 1:
            return 0.0
        curve = self.all_reduce.get(tp)
        if curve is None:
            raise KeyError(f"profile has no all-reduce times for TP degree {tp}")
        return curve.at(nbytes)

    def send_recv_at(self, nbytes: float, inter_node: bool) -> float:
        return (self.send_recv_inter if inter_node else self.send_recv_intra).at(nbytes)


class MemoryProfile(BaseModel):
    """Bytes the model needs, unsharded (the simulator divides by the TP degree)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    encode_layer_weight_bytes: int = Field(ge=0)
    decode_layer_weight_bytes: int = Field(ge=0)
    embedding_bytes: int = Field(ge=0, description="token and position embeddings + LM head")
    kv_bytes_per_token: int = Field(gt=0, description="keys + values, one token, one layer")
    activation_bytes_per_token: int = Field(
        ge=0, description="peak transient activation bytes per token in flight, one layer"
    )


class EngineOverhead(BaseModel):
    """What serving adds to a step, beyond the model's step as the tables price it: the
    engine's loop choosing the batch, building the step's command and handing every
    sequence its token; the chain's handling of the command; and what the model's step
    loses to the caches all this leaves behind. The cost model charges it once per step
    to every pipeline stage (the driver runs the engine's loop; another stage receives
    and unpacks the command). Beside it, what a request spends in the server outside the
    steps, which only its end-to-end latency sees."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    step: Curve = Field(description="seconds per step, by the sequences in the step")
    request_s: float = Field(
        default=0.0,
        ge=0.0,
        description="seconds each request spends in the server beyond the engine's steps "
        "(the API server's handling of it before the engine sees it, and the delivery of "
        "its tokens): added to every request's end-to-end latency",
    )
    handover_s: float = Field(
        default=0.0,
        ge=0.0,
        description="seconds a WorkloadAware decode instance's steps grow by for each "
        "request handed over to it (taking in the prompt's KV cache, computing its last "
        "token, and where the instances share a host's cores, the prefill side's work for "
        "it): charged to the decode step the request joins",
    )
    join_s: float = Field(
        default=0.0,
        ge=0.0,
        description="seconds a step grows by for each request whose prompt it encodes, "
        "beyond the prompt's encoding as the tables price it (the server's admission of "
        "a new request: its input processing, the scheduler taking it in, its output's "
        "set-up), where that work shares the cores with the model's steps: charged once "
        "per prompt to the step that encodes it",
    )


class Provenance(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str
    architecture: Architecture
    gpu_type: str
    dtype: Dtype = "float16"
    source: Source
    profiler_version: str
    created_at: datetime | None = None
    host: str = ""
    notes: str = ""
    engine: Engine = Field(default="ExeGPT", description="the engine whose steps were timed")
    engine_version: str = Field(default="", description="its version (vLLM: vllm.__version__)")
    measured_points: dict[str, list[tuple[int, int]]] = Field(
        default_factory=dict,
        description="per table ('encode/tp1', 'decode/tp1'), the (batch, length) points "
        "measured; every other point of the table is interpolated or extrapolated",
    )


class Profile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: int = SCHEMA_VERSION
    provenance: Provenance
    tensor_parallel: dict[int, PhaseTables]
    comm: Comm
    memory: MemoryProfile
    engine: EngineOverhead | None = Field(
        default=None,
        description="the serving engine's time per step (measured profiles); none: zero",
    )

    @field_validator("schema_version")
    @classmethod
    def _version(cls, v: int) -> int:
        if v != SCHEMA_VERSION:
            raise ValueError(
                f"profile schema_version {v} is not supported (this build reads "
                f"{SCHEMA_VERSION}); re-run `exegpt profile` to regenerate it"
            )
        return v

    @model_validator(mode="after")
    def _check_tp(self) -> Profile:
        if 1 not in self.tensor_parallel:
            raise ValueError("tensor_parallel must include degree 1")
        missing = [tp for tp in self.tensor_parallel if tp > 1 and tp not in self.comm.all_reduce]
        if missing:
            raise ValueError(f"comm.all_reduce lacks TP degrees {missing}")
        return self

    # -- lookups used by the simulator ------------------------------------------------
    @property
    def architecture(self) -> Architecture:
        return self.provenance.architecture

    @property
    def tp_degrees(self) -> list[int]:
        return sorted(self.tensor_parallel)

    def tables(self, tp: int) -> PhaseTables:
        try:
            return self.tensor_parallel[tp]
        except KeyError:
            raise KeyError(
                f"profile has no times for TP degree {tp}; it has {self.tp_degrees}"
            ) from None

    def encode_layer(self, tp: int, batch: float, length: float) -> float:
        return self.tables(tp).encode.at(batch, length)

    def decode_layer(self, tp: int, batch: float, context: float) -> float:
        return self.tables(tp).decode.at(batch, context)

    def head(self, tp: int, tokens: float) -> float:
        return self.tables(tp).head.at(tokens)

    # -- identity and persistence --------------------------------------------------------
    @property
    def key(self) -> str:
        return profile_key(
            self.provenance.architecture,
            self.provenance.gpu_type,
            self.provenance.dtype,
            self.provenance.profiler_version,
            engine=self.provenance.engine,
            engine_version=self.provenance.engine_version,
        )

    def to_json(self) -> str:
        return self.model_dump_json(indent=None)

    @classmethod
    def from_json(cls, text: str) -> Profile:
        return cls.model_validate_json(text)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.model_dump_json(indent=1))

    @classmethod
    def load(cls, path: str | Path) -> Profile:
        return cls.from_json(Path(path).read_text())


def profile_key(
    architecture: Architecture,
    gpu_type: str,
    dtype: str,
    profiler_version: str,
    *,
    engine: Engine = "ExeGPT",
    engine_version: str = "",
) -> str:
    """Content address of a profile: ``<model>-<gpu>-<12 hex digits>``, DNS-1123 safe.

    A profile of vLLM's steps is addressed by the engine and its version as well; the
    own engine's keys are those of profiles made before engines were told apart."""
    doc = {
        "architecture": architecture.model_dump(mode="json"),
        "gpu_type": gpu_type,
        "dtype": dtype,
        "profiler_version": profiler_version,
    }
    if engine != "ExeGPT":
        doc["engine"] = engine
        doc["engine_version"] = engine_version
    digest = hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:12]
    stem = f"{architecture.name}-{gpu_type}".lower()
    stem = "".join(c if c.isalnum() or c == "-" else "-" for c in stem).strip("-")[:40]
    return f"{stem}-{digest}"


def measured_profile_key(
    architecture: Architecture, gpu_type: str, dtype: str, engine: Engine
) -> str:
    """The key of the measured profile a deployment on ``engine`` plans from: the own
    engine's profiler, or vLLM's steps timed on the release the runtime image carries."""
    if engine == "vLLM":
        return profile_key(
            architecture, gpu_type, dtype, VLLM_PROFILER_VERSION,
            engine="vLLM", engine_version=VLLM_VERSION,
        )  # fmt: skip
    return profile_key(architecture, gpu_type, dtype, MEASURED_PROFILER_VERSION)
