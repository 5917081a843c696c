"""Request traces: reading CSV files of (input, output) lengths into workloads, and
deriving the histogram constants of the trace presets (``chat``, ``code``).

All file I/O of the workload model lives here; the simulator only ever sees
``Workload`` objects.
"""

from __future__ import annotations

import csv
import json
import os
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .workload import (
    FloatArray,
    IntArray,
    LengthDistribution,
    Workload,
    copula_pearson,
    pairs_pearson,
)
from .workload_presets import TraceHistogram, TracePreset

DEFAULT_INPUT_COLUMN = "num_prefill_tokens"
DEFAULT_OUTPUT_COLUMN = "num_decode_tokens"
DEFAULT_ARRIVAL_COLUMN = "arrived_at"
TRACE_DATA_ENV = "EXEGPT_TRACE_DATA"
DEFAULT_TRACE_DATA = "/work/shared/data/vidur/traces"

# Cumulative probabilities at which the derived histograms put bin edges: every 2 %
# up to 96 %, then finer through the tail so the p99 (the latency bound's output
# length) is reproduced closely.
HISTOGRAM_LEVELS: tuple[float, ...] = (
    *(round(0.02 * i, 2) for i in range(49)),
    0.97,
    0.98,
    0.985,
    0.99,
    0.9925,
    0.995,
    0.9975,
    1.0,
)


class TraceError(ValueError):
    """A trace file that cannot be read as (input, output) lengths."""


@dataclass(frozen=True)
class Trace:
    """The rows of a trace kept after filtering."""

    path: str
    inputs: IntArray
    outputs: IntArray
    arrived_at: FloatArray | None
    rows: int  # data rows in the file
    dropped: int  # rows dropped: a length < 1 or above max_input / max_output

    @property
    def pearson(self) -> float:
        return pairs_pearson(self.inputs, self.outputs)

    def workload(self, name: str | None = None) -> Workload:
        """Empirical marginals, the empirical joint pairs and the measured Pearson
        correlation."""
        return Workload.from_pairs(self.inputs, self.outputs, name or Path(self.path).stem)


def trace_data_dir() -> Path:
    """Where the reference traces live: ``$EXEGPT_TRACE_DATA`` or the default."""
    return Path(os.environ.get(TRACE_DATA_ENV, DEFAULT_TRACE_DATA))


def _read_columns(
    path: str | os.PathLike[str], columns: dict[str, str | None]
) -> tuple[dict[str, list[str]], int]:
    """The named columns of a CSV file as strings. ``columns`` maps a role (used in
    error messages, e.g. ``input_column``) to a column name; ``None`` means "if
    present"."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"trace file not found: {p}")
    with p.open(newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise TraceError(f"trace {p} is empty: expected a header row of column names")
        names = [h.strip() for h in header]
        index: dict[str, int] = {}
        for role, column in columns.items():
            if column is None:
                continue
            if column not in names:
                raise TraceError(
                    f"trace {p} has no column {column!r} (its columns: {', '.join(names)}); "
                    f"pass {role}= to name the right one"
                )
            index[role] = names.index(column)
        out: dict[str, list[str]] = {role: [] for role in index}
        rows = 0
        for line, row in enumerate(reader, start=2):
            if not row or all(not c.strip() for c in row):
                continue
            rows += 1
            for role, i in index.items():
                if i >= len(row):
                    raise TraceError(
                        f"trace {p}, line {line}: no value for column {columns[role]!r}"
                    )
                out[role].append(row[i])
    if rows == 0:
        raise TraceError(f"trace {p} has a header but no rows")
    return out, rows


def _lengths(p: str | os.PathLike[str], column: str, values: list[str]) -> IntArray:
    try:
        x = np.array([float(v) for v in values], dtype=np.float64)
    except ValueError as e:
        raise TraceError(f"trace {p}: column {column!r} has a non-numeric value ({e})") from e
    bad = ~np.isfinite(x) | (x != np.round(x))
    if bad.any():
        i = int(np.argmax(bad))
        raise TraceError(
            f"trace {p}, line {i + 2}: column {column!r} must hold whole token counts, "
            f"got {values[i]!r}"
        )
    return x.astype(np.int64)


def read_trace(
    path: str | os.PathLike[str],
    input_column: str = DEFAULT_INPUT_COLUMN,
    output_column: str = DEFAULT_OUTPUT_COLUMN,
    max_input: int | None = None,
    max_output: int | None = None,
    arrival_column: str | None = DEFAULT_ARRIVAL_COLUMN,
) -> Trace:
    """Read a CSV trace with a header row.

    Rows whose input or output length is below 1, or above ``max_input`` /
    ``max_output``, are dropped (the distribution is truncated, not clipped).
    Arrival times are read from ``arrival_column`` when the file has it.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"trace file not found: {p}")
    with p.open(newline="") as f:
        header = [h.strip() for h in next(csv.reader(f), [])]
    columns: dict[str, str | None] = {
        "input_column": input_column,
        "output_column": output_column,
    }
    if arrival_column is not None and arrival_column in header:
        columns["arrival_column"] = arrival_column
    raw, rows = _read_columns(p, columns)
    inputs = _lengths(p, input_column, raw["input_column"])
    outputs = _lengths(p, output_column, raw["output_column"])
    keep = (inputs >= 1) & (outputs >= 1)
    if max_input is not None:
        keep &= inputs <= max_input
    if max_output is not None:
        keep &= outputs <= max_output
    if not keep.any():
        raise TraceError(
            f"trace {p}: no row has input in [1, {max_input or 'any'}] and output in "
            f"[1, {max_output or 'any'}]; raise max_input / max_output"
        )
    arrived: FloatArray | None = None
    if "arrival_column" in raw:
        try:
            arrived = np.array([float(v) for v in raw["arrival_column"]])[keep]
        except ValueError as e:
            raise TraceError(
                f"trace {p}: column {arrival_column!r} has a non-numeric value ({e})"
            ) from e
    kept_inputs, kept_outputs = inputs[keep], outputs[keep]
    for a in (kept_inputs, kept_outputs):
        a.flags.writeable = False
    return Trace(
        path=str(p),
        inputs=kept_inputs,
        outputs=kept_outputs,
        arrived_at=arrived,
        rows=rows,
        dropped=int(rows - keep.sum()),
    )


def load_trace(
    path: str | os.PathLike[str],
    input_column: str = DEFAULT_INPUT_COLUMN,
    output_column: str = DEFAULT_OUTPUT_COLUMN,
    max_input: int | None = None,
    max_output: int | None = None,
    *,
    name: str | None = None,
) -> Workload:
    """A workload from a CSV trace: empirical marginals, the empirical (input, output)
    pairs (``Workload.pairs``, which sampling draws from) and the measured Pearson
    correlation. See ``read_trace`` for the filtering."""
    trace = read_trace(
        path, input_column, output_column, max_input, max_output, arrival_column=None
    )
    return trace.workload(name)


def arrival_times(path: str | os.PathLike[str], column: str = DEFAULT_ARRIVAL_COLUMN) -> FloatArray:
    """The arrival times (seconds) of a trace's requests, in file order."""
    raw, _rows = _read_columns(path, {"column": column})
    try:
        return np.array([float(v) for v in raw["column"]], dtype=np.float64)
    except ValueError as e:
        raise TraceError(f"trace {path}: column {column!r} has a non-numeric value ({e})") from e


# -- deriving the trace presets ----------------------------------------------------------
def derive_histogram(
    samples: IntArray, levels: tuple[float, ...] = HISTOGRAM_LEVELS
) -> TraceHistogram:
    """Bins with edges at the samples' quantiles ``levels`` (duplicates merged), and
    the count of samples in each bin [edge_i, edge_{i+1})."""
    x = np.sort(np.asarray(samples, dtype=np.int64))
    if x.size == 0:
        raise ValueError("no samples")
    inner = np.quantile(x, np.asarray(levels[1:-1]), method="inverted_cdf").astype(np.int64)
    edges = np.unique(np.concatenate(([x[0]], inner, [x[-1] + 1])))
    counts = np.histogram(x, bins=edges)[0]
    return TraceHistogram(edges=tuple(int(e) for e in edges), counts=tuple(int(c) for c in counts))


def fit_copula_correlation(
    input: LengthDistribution, output: LengthDistribution, pearson: float
) -> float:
    """The Gaussian-copula parameter under which the two marginals have the given
    Pearson correlation (clipped to what the marginals can reach)."""
    lo, hi = -0.999, 0.999
    if pearson <= copula_pearson(input, output, lo):
        return lo
    if pearson >= copula_pearson(input, output, hi):
        return hi
    for _ in range(24):  # to 1e-7, below the 4 decimals committed
        mid = 0.5 * (lo + hi)
        if copula_pearson(input, output, mid) < pearson:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def derive_trace_preset(
    path: str | os.PathLike[str],
    name: str,
    percentile: float = 99.9,
    input_column: str = DEFAULT_INPUT_COLUMN,
    output_column: str = DEFAULT_OUTPUT_COLUMN,
) -> TracePreset:
    """The constants of a histogram preset derived from a trace.

    Each side is truncated at its ``percentile``-th percentile (an observed value);
    rows beyond either are dropped. Histograms per ``derive_histogram``; the copula
    correlation is fitted so the preset's marginals have the trace's Pearson
    correlation. Floats are rounded to 4 decimals (what gets committed).
    """
    full = read_trace(path, input_column, output_column, arrival_column=None)
    max_input = int(np.percentile(full.inputs, percentile, method="higher"))
    max_output = int(np.percentile(full.outputs, percentile, method="higher"))
    trace = read_trace(path, input_column, output_column, max_input, max_output, None)
    hin = derive_histogram(trace.inputs)
    hout = derive_histogram(trace.outputs)
    pearson = trace.pearson
    rho = fit_copula_correlation(hin.distribution(), hout.distribution(), pearson)
    return TracePreset(
        name=name,
        source=Path(path).name,
        rows=trace.rows,
        kept=int(trace.inputs.size),
        percentile=percentile,
        input=hin,
        output=hout,
        pearson=round(pearson, 4),
        correlation=round(rho, 4),
        trace_input_mean=round(float(trace.inputs.mean()), 2),
        trace_output_mean=round(float(trace.outputs.mean()), 2),
        trace_output_p99=int(np.percentile(trace.outputs, 99, method="inverted_cdf")),
    )


def trace_preset_source(preset: TracePreset, variable: str) -> str:
    """Python source that rebuilds ``preset`` (pasted into workload_presets.py between
    ``# fmt: off`` and ``# fmt: on``, so the long tuples stay compact)."""

    def ints(xs: tuple[int, ...], indent: str) -> str:
        body = textwrap.fill(
            ", ".join(str(x) for x in xs) + ",",
            width=100,
            initial_indent=indent,
            subsequent_indent=indent,
            break_on_hyphens=False,
        )
        return body

    def hist(h: TraceHistogram) -> str:
        return (
            "TraceHistogram(\n"
            f"        edges=(\n{ints(h.edges, ' ' * 12)}\n        ),\n"
            f"        counts=(\n{ints(h.counts, ' ' * 12)}\n        ),\n"
            "    )"
        )

    fields = [
        f"name={json.dumps(preset.name)}",
        f"source={json.dumps(preset.source)}",
        f"rows={preset.rows}",
        f"kept={preset.kept}",
        f"percentile={preset.percentile!r}",
        f"input={hist(preset.input)}",
        f"output={hist(preset.output)}",
        f"pearson={preset.pearson!r}",
        f"correlation={preset.correlation!r}",
        f"trace_input_mean={preset.trace_input_mean!r}",
        f"trace_output_mean={preset.trace_output_mean!r}",
        f"trace_output_p99={preset.trace_output_p99!r}",
    ]
    return f"{variable} = TracePreset(\n" + "".join(f"    {f},\n" for f in fields) + ")\n"


__all__ = [
    "DEFAULT_ARRIVAL_COLUMN",
    "DEFAULT_INPUT_COLUMN",
    "DEFAULT_OUTPUT_COLUMN",
    "DEFAULT_TRACE_DATA",
    "HISTOGRAM_LEVELS",
    "TRACE_DATA_ENV",
    "Trace",
    "TraceError",
    "arrival_times",
    "derive_histogram",
    "derive_trace_preset",
    "fit_copula_correlation",
    "load_trace",
    "read_trace",
    "trace_data_dir",
    "trace_preset_source",
]
