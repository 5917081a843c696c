"""``exegpt bench profile``: how well a measured profile predicts real steps.

For each model, the XProfiler measures a profile on this machine (random weights);
then whole forward steps of the model, at batch sizes and lengths off the profile's
grid, are timed directly and compared with what the planner's cost model
(``exegpt.planner.costs.CostModel``, the simulator's) predicts from the profile:
``layers x per-layer time + LM head`` (plus the all-reduces, at TP > 1). A step is:

- encode: the prefill of ``batch`` prompts of ``length`` tokens, through every layer,
  and the choice of each prompt's first token (decoder-only); T5's encoder over the
  inputs and every decoder layer's cross-attention K/V projection;
- decode: one token for each of ``batch`` sequences with ``length`` tokens of context
  (T5: encoder output and generated tokens), through every layer, and the choice of
  the next token.

Error is ``(predicted - measured) / measured``; the summary gives the median and worst
absolute percent error. Target: under 10 % on the CPU, under 5 % on a GPU.

On the CPU (no GPU here) the models are small versions of each family (OPT, Llama,
T5), run with one thread (a shared machine's other load makes multi-threaded timings
erratic). On a GPU they are the presets ``llama-2-7b`` and ``opt-13b`` in float16
(``--model`` picks others). ``--quick`` profiles a coarse grid and times fewer points
(under a minute on the CPU). ``--json`` prints one JSON object and nothing else.

Also runnable as ``python -m exegpt.bench.profile``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any

import torch

from exegpt.bench.device import gpu_type_here
from exegpt.planner.architecture import Architecture, Dtype, get_architecture
from exegpt.planner.costs import CostModel, Group
from exegpt.planner.hardware import GpuType
from exegpt.planner.profile import Profile
from exegpt.runner.config import ModelConfig
from exegpt.runner.kvcache import SlotKVCache
from exegpt.runner.model import DTYPES, Transformer
from exegpt.runner.profiler import CPU_GPU_TYPE, ProfileOptions, XProfiler, choose_sampled
from exegpt.runner.timing import Timer
from exegpt.runner.weights import random_weights

TARGET_PCT = {"cpu": 10.0, "cuda": 5.0}
ROUNDS = {"cpu": 3, "cuda": 1}


def _small(name: str, **kw: Any) -> Architecture:
    base: dict[str, Any] = dict(
        name=name, num_layers=4, hidden_size=128, num_heads=4, ffn_size=512,
        vocab_size=2048, max_positions=512,
    )  # fmt: skip
    return Architecture.model_validate({**base, **kw})


CPU_MODELS: dict[str, Architecture] = {
    "opt-small": _small("opt-small"),
    "llama-small": _small(
        "llama-small",
        num_kv_heads=2,
        ffn_size=352,
        gated_mlp=True,
        norm="rmsnorm",
        position="rope",
    ),
    "t5-small": _small(
        "t5-small",
        family="encoder-decoder",
        num_encoder_layers=4,
        head_dim=32,
        norm="rmsnorm",
        position="relative",
    ),
}
GPU_MODELS = ["llama-2-7b", "opt-13b"]


@dataclass(frozen=True)
class Scale:
    """Grid and test points for one kind of machine."""

    max_batch: int
    max_length: int
    encode_points: list[tuple[int, int]]  # (batch, length), off the grid
    decode_points: list[tuple[int, int, int]]  # (batch, input, generated)


def _scale(device: str, quick: bool) -> Scale:
    if device == "cpu":
        if quick:
            return Scale(
                8, 128, [(3, 24), (5, 48), (7, 96), (3, 100)],
                [(3, 40, 8), (6, 90, 6), (5, 24, 20)],
            )  # fmt: skip
        return Scale(
            16, 256, [(3, 24), (5, 48), (7, 96), (3, 100), (11, 40), (13, 180)],
            [(3, 40, 8), (6, 90, 6), (5, 24, 20), (11, 150, 30), (13, 60, 12)],
        )  # fmt: skip
    if quick:
        return Scale(
            64, 1024, [(3, 100), (12, 300), (40, 200)],
            [(3, 300, 20), (24, 500, 100), (50, 200, 50)],
        )  # fmt: skip
    return Scale(
        128, 2048, [(3, 100), (12, 300), (40, 200), (7, 700), (20, 1100)],
        [(3, 300, 20), (24, 500, 100), (50, 200, 50), (90, 700, 150), (13, 1300, 200)],
    )  # fmt: skip


def _time_steps(
    model: Transformer, timer: Timer, scale: Scale
) -> list[tuple[str, int, int, int, float]]:
    """(phase, batch, input, generated, seconds) of whole steps timed directly."""
    cfg = model.config
    dev = model.device
    out: list[tuple[str, int, int, int, float]] = []
    cross: SlotKVCache | None
    for b, n in scale.encode_points:
        ids = list(range(b))
        tokens = torch.randint(0, cfg.vocab_size, (b, n), device=dev)
        if cfg.encoder_decoder:
            cross = model.new_cross_cache(b, n)

            def reset_cross(cross: Any = cross, ids: list[int] = ids) -> None:
                for s in ids:
                    if s in cross:
                        cross.remove(s)

            def encode(tokens: Any = tokens, cross: Any = cross, ids: list[int] = ids,
                       n: int = n) -> None:  # fmt: skip
                encoded = model.encode(ids, tokens, [n] * len(ids))
                model.project_cross(ids, encoded, [n] * len(ids), cross)

            t = timer.time(encode, reset_cross)
        else:
            cache = model.new_cache(b, n)

            def reset(cache: Any = cache, ids: list[int] = ids) -> None:
                for s in ids:
                    if s in cache:
                        cache.remove(s)
                    cache.add(s)

            def prefill(tokens: Any = tokens, cache: Any = cache, ids: list[int] = ids,
                        n: int = n) -> None:  # fmt: skip
                logits = model.forward_step(ids, tokens, cache, new=[n] * len(ids))
                choose_sampled(logits)

            t = timer.time(prefill, reset)
        out.append(("encode", b, n, 0, t.median))
    for b, n, g in scale.decode_points:
        ids = list(range(b))
        tokens = torch.randint(0, cfg.vocab_size, (b,), device=dev)
        cross = None
        own = n + g
        if cfg.encoder_decoder:
            cross = model.new_cross_cache(b, n)
            for s in ids:
                cross.add(s)
                cross.set_length(s, n)
            own = g
        cache = model.new_cache(b, own + 1)
        for s in ids:
            cache.add(s)
            cache.set_length(s, own)

        def reset_len(cache: Any = cache, ids: list[int] = ids, own: int = own) -> None:
            for s in ids:
                cache.set_length(s, own)

        def decode(tokens: Any = tokens, cache: Any = cache, cross: Any = cross,
                   ids: list[int] = ids) -> None:  # fmt: skip
            logits = model.decode(ids, tokens, cache, cross)
            choose_sampled(logits)

        t = timer.time(decode, reset_len)
        out.append(("decode", b, n, g, t.median))
    return out


def _predict(
    profile: Profile, gpu: GpuType, dtype: Dtype, phase: str, b: int, n: int, g: int
) -> float:
    costs = CostModel(profile, gpu, gpus_per_node=8, dtype=dtype)
    group = Group(stages=1, tp=1)
    engine = costs.engine_step(b)  # what serving adds: not in a bare model step
    if phase == "encode":
        return costs.encode_stage(group, b, n) - engine
    # the planner's context: the input plus the tokens generated before this step
    return costs.decode_stage(group, b, n + g) - engine


def bench_model(
    architecture: Architecture,
    *,
    device: str,
    dtype: Dtype,
    quick: bool,
    profile_seconds: float,
    log: Any,
) -> dict[str, Any]:
    scale = _scale(device, quick)
    gpu = CPU_GPU_TYPE if device == "cpu" else gpu_type_here()
    config = ModelConfig.from_architecture(architecture)
    cpu = device == "cpu"
    options = ProfileOptions(
        max_batch=scale.max_batch, max_length=scale.max_length, max_seconds=profile_seconds,
        warmup=1 if cpu else 2, repeats=3 if cpu else 5, midpoints=not quick,
        min_point_seconds=0.03 if cpu else 0.05, passes=3 if cpu else 1,
    )  # fmt: skip
    start = time.monotonic()
    profile = XProfiler(
        config, gpu_type=gpu.name, dtype=dtype, device=device, options=options, log=log,
        check_gpu=False,
    ).run()  # fmt: skip
    profiled = time.monotonic() - start
    model = random_weights(
        Transformer(config, dtype=DTYPES[dtype], device=device), seed=1, std=0.02
    )
    timer = Timer(
        device, warmup=options.warmup, repeats=options.repeats,
        min_seconds=options.min_point_seconds,
    )  # fmt: skip
    # every step is timed in ROUNDS passes over all of them; each keeps its lowest
    # median, as the profiler does (a pass slowed by other load is discarded)
    rounds = [_time_steps(model, timer, scale) for _ in range(ROUNDS[device])]
    points = []
    for row in zip(*rounds, strict=True):
        phase, b, n, g, _ = row[0]
        measured = min(r[4] for r in row)
        predicted = _predict(profile, gpu, dtype, phase, b, n, g)
        points.append(
            {
                "phase": phase,
                "batch": b,
                "input": n,
                "generated": g,
                "measured_s": measured,
                "predicted_s": predicted,
                "error_pct": 100.0 * (predicted - measured) / measured,
            }
        )
    del model
    errors = [abs(p["error_pct"]) for p in points]
    return {
        "model": architecture.name,
        "profile_seconds": profiled,
        "grid_points": {
            "encode": len(profile.tables(1).encode.batch) * len(profile.tables(1).encode.length),
            "decode": len(profile.tables(1).decode.batch) * len(profile.tables(1).decode.length),
        },
        "points": points,
        "median_abs_error_pct": statistics.median(errors),
        "worst_abs_error_pct": max(errors),
    }


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="exegpt bench profile", description=__doc__)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quick", action="store_true", help="a coarse grid, fewer points")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument(
        "--model", action="append", metavar="NAME",
        help="a preset (GPU) or opt-small/llama-small/t5-small (repeatable)",
    )  # fmt: skip
    parser.add_argument("--profile-seconds", type=float, default=None, metavar="S",
                        help="profiling budget per model")  # fmt: skip
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default 1)")
    args = parser.parse_args(argv)
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA device", file=sys.stderr)
        return 2
    dtype: Dtype = "float32" if device == "cpu" else "float16"
    if device == "cpu":
        torch.set_num_threads(args.threads or 1)
    names = args.model or (list(CPU_MODELS) if device == "cpu" else GPU_MODELS)
    archs = []
    for name in names:
        try:
            archs.append(CPU_MODELS[name] if name in CPU_MODELS else get_architecture(name))
        except KeyError as exc:
            print(f"error: {str(exc).strip(chr(39))}", file=sys.stderr)
            return 2
    budget = args.profile_seconds or (
        (12.0 if args.quick else 100.0) if device == "cpu" else (120.0 if args.quick else 900.0)
    )

    def log(message: str) -> None:
        if not args.json:
            print(message, file=sys.stderr, flush=True)

    start = time.monotonic()
    models = [
        bench_model(
            a, device=device, dtype=dtype, quick=args.quick, profile_seconds=budget, log=log
        )
        for a in archs
    ]
    errors = [abs(p["error_pct"]) for m in models for p in m["points"]]
    target = TARGET_PCT[device]
    summary = {
        "device": device,
        "device_name": torch.cuda.get_device_name(0) if device == "cuda" else platform.machine(),
        "threads": torch.get_num_threads(),
        "dtype": dtype,
        "points": len(errors),
        "median_abs_error_pct": statistics.median(errors),
        "worst_abs_error_pct": max(errors),
        "target_pct": target,
        "target_met": max(errors) < target,
        "seconds": time.monotonic() - start,
        "torch": torch.__version__,
    }
    if args.json:
        print(json.dumps({"models": models, "summary": summary}))
        return 0
    print(f"{'model':14} {'phase':7} {'batch':>5} {'input':>5} {'gen':>4} "
          f"{'measured ms':>11} {'predicted ms':>12} {'error %':>8}")  # fmt: skip
    for m in models:
        for p in m["points"]:
            print(
                f"{m['model']:14} {p['phase']:7} {p['batch']:5d} {p['input']:5d} "
                f"{p['generated']:4d} {p['measured_s'] * 1e3:11.3f} "
                f"{p['predicted_s'] * 1e3:12.3f} {p['error_pct']:+8.1f}"
            )
    s = summary
    print(
        f"\n{s['points']} steps off the grid on {device} ({s['device_name']}, {dtype}): "
        f"error {s['median_abs_error_pct']:.1f} % median, {s['worst_abs_error_pct']:.1f} % "
        f"worst; target < {target:g} %: {'met' if s['target_met'] else 'missed'} "
        f"({s['seconds']:.0f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
