"""``spec.workload`` of an ExeGPTDeployment: the declared traffic, as a pydantic model.

One of::

    {preset: summarization}                         # or S, T, G, C1, C2, chat, code
    {input: {mean, std, max}, output: {mean, std, max}, correlation}
    {input: {histogram: {lengths: [...], weights: [...]}}, output: {...}}
    {input: {histogram: {edges: [...], weights: [...]}}, output: {...}}

A side may be a normal and the other a histogram. ``mean`` and ``std`` are the
moments of the lengths themselves: the underlying normal is fitted so that, truncated
to [min, max] (min defaults to 1) and rounded to whole tokens, it has exactly that mean
and std. ``correlation`` (default 0, or the preset's) couples the two sides through a
Gaussian copula; given with a preset it overrides the preset's.

The schema is kept structural for a CRD: optional fields and validators, no unions of
objects; the cross-field rules are also given as CEL (``x-kubernetes-validations``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator
from pydantic.alias_generators import to_camel

from .workload import LengthDistribution, Workload, fit_truncated_normal
from .workload_presets import get_workload

PresetName = Literal[
    "summarization",
    "translation",
    "code-generation",
    "conversation-1",
    "conversation-2",
    "chat",
    "code",
    "S",
    "T",
    "G",
    "C1",
    "C2",
]

MAX_HISTOGRAM_POINTS = 4096
MAX_LENGTH = 1 << 20  # tokens; far beyond any model's context
MAX_WEIGHT = 1e15  # a histogram weight (e.g. a count of requests); keeps sums finite

_CONFIG = ConfigDict(
    extra="forbid",
    frozen=True,
    alias_generator=to_camel,
    validate_by_name=True,
    validate_by_alias=True,
    serialize_by_alias=True,
)

Length = Annotated[int, Field(ge=1, le=MAX_LENGTH)]
Weight = Annotated[float, Field(ge=0, le=MAX_WEIGHT)]


class HistogramSpec(BaseModel):
    """Point masses (``lengths``) or bins (``edges``), with relative ``weights``."""

    model_config = ConfigDict(
        **_CONFIG,
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "has(self.lengths) != has(self.edges)",
                    "message": "give either histogram.lengths or histogram.edges",
                },
                {
                    "rule": "!has(self.lengths) || size(self.weights) == size(self.lengths)",
                    "message": "histogram.weights needs one entry per length",
                },
                {
                    "rule": "!has(self.edges) || size(self.weights) + 1 == size(self.edges)",
                    "message": "histogram.weights needs one entry per bin (len(edges) - 1)",
                },
            ]
        },
    )

    lengths: list[Length] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_HISTOGRAM_POINTS,
        description="distinct lengths (tokens), each a point mass with its weight",
    )
    edges: list[Length] | None = Field(
        default=None,
        min_length=2,
        max_length=MAX_HISTOGRAM_POINTS + 1,
        description=(
            "strictly increasing bin edges: the lengths in [edges[i], edges[i+1]) share "
            "weights[i] uniformly"
        ),
    )
    weights: list[Weight] = Field(
        min_length=1,
        max_length=MAX_HISTOGRAM_POINTS,
        description="relative weights (e.g. counts), one per length or per bin",
    )


class LengthSpec(BaseModel):
    """The lengths of one side: ``mean``, ``std``, ``max`` (optional ``min``), or a
    ``histogram``."""

    model_config = ConfigDict(
        **_CONFIG,
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "has(self.histogram) != has(self.mean)",
                    "message": "give either mean/std/max or a histogram",
                },
                {
                    "rule": "!has(self.mean) || (has(self.std) && has(self.max))",
                    "message": "mean needs std and max",
                },
                {
                    "rule": "!has(self.mean) || !has(self.max) || double(self.max) >= self.mean",
                    "message": "max must be >= mean",
                },
                {
                    "rule": "!has(self.mean) || !has(self.min) || double(self.min) <= self.mean",
                    "message": "min must be <= mean",
                },
            ]
        },
    )

    mean: float | None = Field(
        default=None, ge=1, le=MAX_LENGTH, description="mean length (tokens)"
    )
    std: float | None = Field(
        default=None,
        ge=0,
        le=MAX_LENGTH // 2,
        description="standard deviation (tokens); at most half the range max - min",
    )
    min: Length | None = Field(default=None, description="shortest length (default 1)")
    max: Length | None = Field(default=None, description="longest length (tokens)")
    histogram: HistogramSpec | None = None


class WorkloadSpec(BaseModel):
    """The distribution of input and output lengths of the traffic."""

    model_config = ConfigDict(
        **_CONFIG,
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "has(self.preset) || (has(self.input) && has(self.output))",
                    "message": "give a preset, or both input and output",
                },
                {
                    "rule": "!(has(self.preset) && (has(self.input) || has(self.output)))",
                    "message": "give either a preset or input and output, not both",
                },
            ]
        },
    )

    preset: PresetName | None = Field(
        default=None, description="a named workload: S, T, G, C1, C2 of the paper, chat, code"
    )
    input: LengthSpec | None = Field(default=None, description="input (prompt) lengths")
    output: LengthSpec | None = Field(default=None, description="output (generated) lengths")
    correlation: float | None = Field(
        default=None,
        ge=-1,
        le=1,
        description="copula correlation of input and output lengths (default 0 or the preset's)",
    )

    _built: _Built = PrivateAttr(default_factory=lambda: _Built())

    @model_validator(mode="after")
    def _check(self) -> WorkloadSpec:
        # Every check, and the fit of normal sides, happen here; the (immutable) result
        # is kept, so building the workload again costs nothing.
        self._built = _Built(_build(self, "workload"))
        return self

    def build(self) -> Workload:
        """The workload this spec declares."""
        workload = self._built.workload
        if workload is None:
            workload = _build(self, "workload")
            self._built = _Built(workload)
        return workload


class _Built:
    """The workload a spec built, kept beside it: a cache, not part of the spec's value
    (any two compare equal, so specs compare by their fields alone)."""

    __slots__ = ("workload",)

    def __init__(self, workload: Workload | None = None) -> None:
        self.workload = workload

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Built)

    def __hash__(self) -> int:
        return 0


def _build(spec: WorkloadSpec, where: str) -> Workload:
    has_custom = spec.input is not None or spec.output is not None
    if spec.preset is not None:
        if has_custom:
            raise ValueError(
                f"{where}: give either preset or input and output, not both "
                f"(remove {where}.preset to use your own distributions)"
            )
        workload = get_workload(spec.preset)
        if spec.correlation is not None:
            workload = workload.with_correlation(spec.correlation)
        return workload
    if not has_custom:
        raise ValueError(
            f"{where}: give a preset (summarization, translation, code-generation, "
            "conversation-1, conversation-2, chat, code, or S, T, G, C1, C2) or both "
            "input and output"
        )
    errors: list[str] = []
    sides: dict[str, LengthDistribution] = {}
    for side in ("input", "output"):
        length = getattr(spec, side)
        if length is None:
            errors.append(
                f"{where}.{side} is missing: give {where}.{side} {{mean, std, max}} or "
                f"{where}.{side}.histogram"
            )
            continue
        try:
            sides[side] = _build_side(length, f"{where}.{side}")
        except ValueError as e:
            errors.append(str(e))
    if errors:
        raise ValueError("; ".join(errors))
    return Workload(
        sides["input"],
        sides["output"],
        correlation=spec.correlation or 0.0,
        name="custom",
    )


def _build_side(spec: LengthSpec, where: str) -> LengthDistribution:
    normal = [f for f in ("mean", "std", "min", "max") if getattr(spec, f) is not None]
    if spec.histogram is not None:
        if normal:
            raise ValueError(
                f"{where}: give either {where}.histogram or mean/std/max, not both "
                f"(remove {', '.join(f'{where}.{f}' for f in normal)})"
            )
        return _build_histogram(spec.histogram, f"{where}.histogram")
    if not normal:
        raise ValueError(f"{where}: give mean, std and max, or a histogram")
    missing = [f for f in ("mean", "std", "max") if getattr(spec, f) is None]
    if missing:
        hints = {
            "mean": "the mean length in tokens",
            "std": "the standard deviation (0 for a fixed length)",
            "max": "the longest length in tokens",
        }
        raise ValueError("; ".join(f"{where}.{f} is missing: give {hints[f]}" for f in missing))
    assert spec.mean is not None and spec.std is not None and spec.max is not None
    lo = spec.min if spec.min is not None else 1
    if spec.max < spec.mean:
        raise ValueError(
            f"{where}.max must be >= {where}.mean (got max={spec.max}, mean={spec.mean:g}): "
            "raise max or lower mean"
        )
    if lo > spec.mean:
        raise ValueError(
            f"{where}.min must be <= {where}.mean (got min={lo}, mean={spec.mean:g}): "
            "lower min or raise mean"
        )
    try:
        mu, sigma = fit_truncated_normal(spec.mean, spec.std, spec.max, lo)
    except ValueError as e:
        raise ValueError(f"{where}.std={spec.std:g} is not reachable: {e}") from e
    dist = LengthDistribution.truncated_normal(mu, sigma, spec.max, lo)
    dist.description = f"truncated normal(mean={spec.mean:g}, std={spec.std:g}, max={spec.max})"
    return dist


def _build_histogram(spec: HistogramSpec, where: str) -> LengthDistribution:
    if (spec.lengths is None) == (spec.edges is None):
        raise ValueError(
            f"{where}: give either {where}.lengths (point masses) or {where}.edges (bins), "
            "exactly one"
        )
    if spec.lengths is not None:
        if len(spec.weights) != len(spec.lengths):
            raise ValueError(
                f"{where}.weights must have one entry per length (got {len(spec.weights)} "
                f"weights for {len(spec.lengths)} lengths)"
            )
        if len(set(spec.lengths)) != len(spec.lengths):
            raise ValueError(f"{where}.lengths must be distinct: merge repeated lengths' weights")
        values = spec.lengths
    else:
        assert spec.edges is not None
        if len(spec.weights) + 1 != len(spec.edges):
            raise ValueError(
                f"{where}.weights must have one entry per bin, len(edges) - 1 = "
                f"{len(spec.edges) - 1} (got {len(spec.weights)})"
            )
        if any(b <= a for a, b in zip(spec.edges, spec.edges[1:], strict=False)):
            raise ValueError(f"{where}.edges must be strictly increasing")
        values = spec.edges
    if sum(spec.weights) <= 0:
        raise ValueError(f"{where}.weights must not all be zero")
    return LengthDistribution.histogram(values, spec.weights)


def workload_spec_example() -> dict[str, Any]:
    """An example ``spec.workload`` (the custom form), for docs and CRD examples."""
    return {
        "input": {"mean": 256, "std": 115, "max": 512},
        "output": {"mean": 64, "std": 30, "max": 160},
        "correlation": 0.15,
    }


__all__ = [
    "MAX_HISTOGRAM_POINTS",
    "HistogramSpec",
    "LengthSpec",
    "PresetName",
    "WorkloadSpec",
    "workload_spec_example",
]
