"""``exegpt bench vllm_profile``: a profile of vLLM's steps, how well it predicts whole
vLLM steps, and how it compares with the analytic profile.

One vLLM engine (TP 1, random weights) is started; the XProfiler for vLLM measures its
profile within ``--budget`` seconds (the engine's start-up is not in the budget); then
whole steps at points off the profile's grid are timed directly, in rounds interleaved
with a measured grid point beside each (the machine's drift), and compared with the
profile's prediction (``exegpt.runner.vllm_check``). Where the GPU type has an
analytic model, the analytic profile's prediction of the same steps, and of the
measured grid points, is reported beside (its ratio to the measured time).

On the CPU the model is a small Llama (float32, one thread); on a GPU the preset
``llama-2-7b`` in float16 (``--model`` picks another). ``--save-profile FILE`` writes
the measured profile; ``--json`` prints one JSON object and nothing else.

Also runnable as ``python -m exegpt.bench.vllm_profile``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from exegpt.bench.device import gpu_type_here
from exegpt.planner.analytic import analytic_profile
from exegpt.planner.architecture import Architecture, Dtype, get_architecture
from exegpt.planner.profile import Profile
from exegpt.runner.config import ModelConfig
from exegpt.runner.errors import RunnerError
from exegpt.runner.profiler import ProfileOptions
from exegpt.runner.vllm_check import check_steps, off_grid_cases
from exegpt.runner.vllm_model import write_model_dir
from exegpt.runner.vllm_profiler import VllmProfiler, step_prediction
from exegpt.runner.vllm_steps import VllmEngine

CPU_MODEL = Architecture(
    name="llama-small", num_layers=4, hidden_size=256, num_heads=4, num_kv_heads=2,
    ffn_size=512, gated_mlp=True, vocab_size=2048, norm="rmsnorm", position="rope",
    max_positions=512,
)  # fmt: skip


def analytic_ratios(measured: Profile, analytic: Profile) -> dict[str, Any]:
    """The analytic profile's whole step over the measured profile's, at the measured
    grid points of each phase (TP 1): median, min and max of the ratio."""
    out: dict[str, Any] = {}
    for phase in ("encode", "decode"):
        points = measured.provenance.measured_points.get(f"{phase}/tp1", [])
        ratios = [
            step_prediction(analytic, 1, phase, b, n) / step_prediction(measured, 1, phase, b, n)
            for b, n in points
        ]
        if ratios:
            out[phase] = {
                "points": len(ratios),
                "median": statistics.median(ratios),
                "min": min(ratios),
                "max": max(ratios),
            }
    return out


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="exegpt bench vllm_profile", description=__doc__)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--model", metavar="NAME", help="a preset (default: by device)")
    parser.add_argument("--budget", type=float, metavar="S", help="profiling seconds")
    parser.add_argument("--max-batch", type=int, metavar="B", help="largest batch")
    parser.add_argument("--max-length", type=int, metavar="N", help="longest length")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the step check")
    parser.add_argument("--save-profile", metavar="FILE", help="write the measured profile")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    dtype: Dtype = "float16" if cuda else "float32"
    if not cuda:
        torch.set_num_threads(args.threads)
    try:
        arch = get_architecture(args.model) if args.model else (
            get_architecture("llama-2-7b") if cuda else CPU_MODEL
        )  # fmt: skip
    except KeyError as exc:
        print(f"error: {str(exc).strip(chr(39))}", file=sys.stderr)
        return 2
    gpu = gpu_type_here() if cuda else None
    options = ProfileOptions(
        max_seconds=args.budget or (300.0 if cuda else 60.0),
        max_batch=args.max_batch or (256 if cuda else 16),
        max_length=args.max_length or (2048 if cuda else 256),
        warmup=1,
        repeats=3,
        comm="analytic",
    )

    def log(message: str) -> None:
        if not args.json:
            print(message, file=sys.stderr, flush=True)

    config = ModelConfig.from_architecture(arch)
    rng = np.random.default_rng(0)
    start = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="exegpt-bench-vllm-") as tmp:
            profiler = VllmProfiler(
                config, gpu_type=gpu.name if gpu else "cpu", dtype=dtype, options=options,
                log=log, rng=rng, check_gpu=False,
            )  # fmt: skip
            model_dir = write_model_dir(config, Path(tmp), dtype)
            engine = VllmEngine(profiler.settings(1, model_dir), rng)
            started = time.monotonic() - start
            profiler.adopt(1, engine)
            profile = profiler.run()
            checks = check_steps(engine, profile, off_grid_cases(profile), rounds=args.rounds)
            engine.close()
    except RunnerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.save_profile:
        profile.save(args.save_profile)
    analytic = analytic_profile(arch, gpu, dtype, [1]) if gpu is not None else None
    points = []
    for c in checks:
        point: dict[str, Any] = {
            "phase": c.case.phase,
            "batch": c.case.batch,
            "length": c.case.length,
            "measured_s": c.measured_s,
            "predicted_s": c.predicted_s,
            "drift_pct": 100 * (c.drift - 1),
            "raw_error_pct": 100 * c.raw_error,
            "error_pct": 100 * c.error,
        }
        if analytic is not None:
            a = step_prediction(analytic, 1, c.case.phase, c.case.batch, c.case.length)
            point["analytic_s"] = a
            point["analytic_over_measured"] = a / c.measured_s
        points.append(point)
    errors = [abs(p["error_pct"]) for p in points]
    summary = {
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "model": arch.name,
        "dtype": dtype,
        "vllm": profile.provenance.engine_version,
        "profile_key": profile.key,
        "profile_notes": profile.provenance.notes,
        "startup_s": started,
        "seconds": time.monotonic() - start,
        "median_abs_error_pct": statistics.median(errors) if errors else None,
        "worst_abs_error_pct": max(errors) if errors else None,
        "median_drift_pct": statistics.median(p["drift_pct"] for p in points) if points else None,
        "analytic_over_measured": analytic_ratios(profile, analytic) if analytic else None,
    }
    if args.json:
        print(json.dumps({"points": points, "summary": summary}))
        return 0
    for c in checks:
        print(c.describe())
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(run(sys.argv[1:]))
