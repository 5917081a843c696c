"""Small builders of ExeGPTDeployment bodies for tests.

``deployment(name="x", gpus=4)`` gives a valid manifest (a plain dict, as kopf or
``yaml.safe_load`` would hand it over); keyword overrides are applied to ``spec``
with dotted paths for nested fields: ``deployment(**{"hardware.gpus": 12})``, and a
value of ``DELETE`` removes the field.
"""

from __future__ import annotations

import copy
from typing import Any

API_VERSION = "exegpt.dev/v1alpha1"
KIND = "ExeGPTDeployment"


class _Delete:
    def __repr__(self) -> str:
        return "DELETE"


DELETE: Any = _Delete()


def spec(**overrides: Any) -> dict[str, Any]:
    """A valid, small spec (OPT-13B on one 8-GPU A100 node, summarization, 3.1 s)."""
    body: dict[str, Any] = {
        "model": {"name": "opt-13b", "dtype": "float16"},
        "hardware": {"gpus": 8, "gpuType": "nvidia-a100-80gb", "gpusPerNode": 8},
        "workload": {"preset": "summarization"},
        "slo": {"latency": "3.1s"},
        "strategy": "Auto",
        "profiling": {"mode": "Analytic"},
    }
    for path, value in overrides.items():
        set_path(body, path, value)
    return body


def deployment(name: str = "x", namespace: str = "default", /, **overrides: Any) -> dict[str, Any]:
    """A valid ExeGPTDeployment manifest whose spec has ``overrides`` applied."""
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec(**overrides),
    }


def set_path(body: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """Set (or with ``DELETE`` remove) ``body[a][b][c]`` for the path ``"a.b.c"``."""
    *parents, leaf = path.split(".")
    node = body
    for part in parents:
        node = node.setdefault(part, {})
    if value is DELETE:
        node.pop(leaf, None)
    else:
        node[leaf] = copy.deepcopy(value)
    return body
