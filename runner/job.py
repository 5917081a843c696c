"""``exegpt profile``: run the XProfiler (of the own engine, or of vLLM's steps) and
deliver the profile (a file, standard output, or the profiling Job's ConfigMap)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import torch

from exegpt.planner.architecture import Architecture, Dtype
from exegpt.planner.profile import Profile

from .config import UnsupportedModel
from .configmap import ConfigMapApi, check_access, write_profile
from .errors import RunnerError
from .profiler import ProfileOptions, ProfilerError, XProfiler, resolve_config
from .weights import WeightsError

ProfiledEngine = Literal["exegpt", "vllm"]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def profile_command(
    architecture: Architecture,
    *,
    gpu_type: str,
    dtype: Dtype,
    options: ProfileOptions,
    device: str = "auto",
    weights: str | None = None,
    output: str | None = None,
    configmap: str | None = None,
    namespace: str | None = None,
    check_gpu: bool = True,
    threads: int | None = None,
    api: ConfigMapApi | None = None,
    log: Callable[[str], None] = _stderr,
    engine: ProfiledEngine = "exegpt",
) -> Profile:
    """Measure the profile and write it where asked: ``output`` (a file, ``-`` for
    standard output) and/or ConfigMap ``namespace/configmap``. ``engine``: whose steps
    are timed, the own engine's (``XProfiler``) or vLLM's (``VllmProfiler``). Raises
    ``RunnerError`` with a message for the user on any failure."""
    if configmap and not namespace:
        raise RunnerError("--configmap needs --namespace (or POD_NAMESPACE)")
    if threads:
        torch.set_num_threads(threads)
    if configmap is not None:
        assert namespace is not None
        api = check_access(configmap, namespace, api=api)
    try:
        config = resolve_config(architecture, weights)
        if engine == "vllm":
            from .vllm_profiler import VllmProfiler

            profile = VllmProfiler(
                config, gpu_type=gpu_type, dtype=dtype, device=device, options=options,
                weights=weights, log=log, check_gpu=check_gpu,
            ).run()  # fmt: skip
        else:
            profile = XProfiler(
                config, gpu_type=gpu_type, dtype=dtype, device=device, options=options,
                weights=weights, log=log, check_gpu=check_gpu,
            ).run()  # fmt: skip
    except torch.OutOfMemoryError as exc:
        raise ProfilerError(f"out of GPU memory: {str(exc).splitlines()[0]}") from None
    except (UnsupportedModel, WeightsError) as exc:
        raise ProfilerError(str(exc)) from None
    text = profile.to_json()
    key = profile.key
    if output == "-" or (output is None and configmap is None):
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
    elif output is not None:
        try:
            Path(output).write_text(profile.model_dump_json(indent=1), encoding="utf-8")
        except OSError as exc:
            raise RunnerError(f"{output}: cannot write: {exc.strerror or exc}") from None
        log(f"wrote {output} (profile {key})")
    if configmap is not None:
        assert namespace is not None
        if key not in configmap:
            log(
                f"warning: ConfigMap {configmap} is not named after this profile's key {key} "
                "(model, GPU type, dtype or profiler version differ from the operator's)"
            )
        action = write_profile(text, configmap, namespace, key, api=api)
        log(f"{action} ConfigMap {namespace}/{configmap} (profile {key}, {len(text)} bytes)")
    return profile
