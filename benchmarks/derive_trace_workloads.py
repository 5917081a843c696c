"""Derive the ``chat`` and ``code`` workload presets from the Azure LLM inference traces.

Reads splitwise_conv.csv and splitwise_code.csv (from ``--data``, default
``$EXEGPT_TRACE_DATA`` or /work/shared/data/vidur/traces) and prints the Python
constants to paste into planner/workload_presets.py (between ``# fmt: off`` and
``# fmt: on``). With ``--check`` it instead compares them with the committed constants
and exits 1 when they differ.

    python benchmarks/derive_trace_workloads.py [--data DIR] [--check]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from exegpt.planner import workload_presets
from exegpt.planner.traces import derive_trace_preset, trace_data_dir, trace_preset_source

# (preset name, variable in workload_presets.py, trace file)
TRACE_PRESETS = (
    ("chat", "CHAT", "splitwise_conv.csv"),
    ("code", "CODE", "splitwise_code.csv"),
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None, help="folder holding the traces")
    parser.add_argument("--check", action="store_true", help="compare with the committed constants")
    parser.add_argument(
        "--percentile",
        type=float,
        default=99.9,
        help="truncate each side at this percentile of the trace (default 99.9)",
    )
    args = parser.parse_args(argv)
    data: Path = args.data or trace_data_dir()
    status = 0
    for name, variable, filename in TRACE_PRESETS:
        derived = derive_trace_preset(data / filename, name, percentile=args.percentile)
        if args.check:
            committed = getattr(workload_presets, variable)
            same = committed == derived
            print(f"{variable}: {'matches' if same else 'DIFFERS from'} {data / filename}")
            status |= 0 if same else 1
        else:
            print(trace_preset_source(derived, variable))
    return status


if __name__ == "__main__":
    sys.exit(main())
