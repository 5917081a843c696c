"""The CRD fuzzed: specs generated from the CRD's own schema (hypothesis-jsonschema)
are reconciled against the in-memory API. Whatever the schema admits must end in a
plan, ``Infeasible`` or ``InvalidSpec`` with a message, never an exception, and no pass
may hold the event loop for a second.

The schema is the structural one the API server checks (the CEL rules are left out, so
the generated specs are a superset of what a cluster admits); fields it does not
declare are pruned by the server, so none are generated. Profiles are analytic: a
measured profile differs only in where the per-layer times come from. A fixed,
derandomised budget of examples keeps the test to well under a minute on two cores.
"""

from __future__ import annotations

import asyncio
import copy
from pathlib import Path
from typing import Any

import yaml
from builders import spec as valid_spec
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.internal.conjecture import utils as conjecture_utils
from hypothesis_jsonschema import from_schema

from exegpt.operator.memkube import MemoryKube
from exegpt.operator.reconcile import Context, reconcile
from exegpt.operator.settings import OperatorSettings

CRD = Path(__file__).resolve().parents[2] / "crds" / "exegpt.dev_exegptdeployments.yaml"
EXAMPLES = 150
OUTCOMES = {"Planned", "Infeasible", "InvalidSpec"}
SETTINGS = OperatorSettings(plan_time_limit_seconds=2.0)


def _more(self: Any) -> bool:
    """``many.more()``, which hypothesis-jsonschema 0.23 calls and newer hypothesis
    releases replaced by iterating inside a ``with`` block: the same, one step a call."""
    it = getattr(self, "_compat_iter", None)
    if it is None:
        self.__enter__()
        it = self._compat_iter = iter(self)
    try:
        next(it)
    except StopIteration:
        self.__exit__(None, None, None)
        return False
    return True


if not hasattr(conjecture_utils.many, "more"):
    conjecture_utils.many.more = _more  # type: ignore[attr-defined]


def _admitted(schema: Any) -> Any:
    """A JSON schema of what the API server stores: the structural schema, without the
    Kubernetes extensions, and no undeclared fields (the server prunes them)."""
    if isinstance(schema, list):
        return [_admitted(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _admitted(v) for k, v in schema.items() if not k.startswith("x-kubernetes-")}
    if "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


def _spec_schema() -> dict[str, Any]:
    crd = yaml.safe_load(CRD.read_text(encoding="utf-8"))
    [version] = crd["spec"]["versions"]
    return dict(_admitted(version["schema"]["openAPIV3Schema"]["properties"]["spec"]))


SPEC = _spec_schema()


def _with(field: str, value: Any) -> dict[str, Any]:
    out = copy.deepcopy(valid_spec())
    out[field] = value
    return out


def _analytic(spec: dict[str, Any]) -> dict[str, Any]:
    out = dict(spec)
    out["profiling"] = {**(out.get("profiling") or {}), "mode": "Analytic"}
    return out


# Whole specs (mostly invalid ones), and valid specs with one part fuzzed (they reach
# the planner): the workload, the SLO, the hardware, the strategy.
SPECS = st.one_of(
    from_schema(SPEC),
    *(
        from_schema(SPEC["properties"][part]).map(lambda v, part=part: _with(part, v))
        for part in ("workload", "slo", "hardware", "strategy")
    ),
).map(_analytic)


async def _reconcile_watching_the_loop(spec: dict[str, Any]) -> tuple[dict[str, Any], float]:
    """Reconcile a deployment of ``spec``; its status, and the longest the event loop
    went without running another task."""
    kube = MemoryKube()
    key = ("exegptdeployments", "default", "fuzz")
    kube.objects[key] = {
        "apiVersion": "exegpt.dev/v1alpha1",
        "kind": "ExeGPTDeployment",
        "metadata": {"name": "fuzz", "namespace": "default", "uid": "u", "generation": 1},
        "spec": spec,
    }
    ctx = Context(kube=kube, settings=SETTINGS, events=lambda *_: None)
    worst = 0.0
    done = False

    async def watch() -> None:
        nonlocal worst
        loop = asyncio.get_running_loop()
        while not done:
            start = loop.time()
            await asyncio.sleep(0.005)
            worst = max(worst, loop.time() - start - 0.005)

    watcher = asyncio.create_task(watch())
    await asyncio.sleep(0)
    try:
        await reconcile(kube.objects[key], ctx)
    finally:
        done = True
        await watcher
    return dict(kube.objects[key].get("status") or {}), worst


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
@given(spec=SPECS)
# The audit's specs, at the schema's bounds: a huge std, and a huge max alone.
@example(
    spec=_analytic(
        _with("model", {"name": "t5-11b"})
        | {"workload": {"input": {"mean": 1000, "std": 524288, "max": 1 << 20},
                        "output": {"mean": 64, "std": 30, "max": 160}}}
    )
)  # fmt: skip
@example(
    spec=_analytic(
        _with("model", {"name": "t5-11b"})
        | {"workload": {"input": {"mean": 1000, "std": 400, "max": 1 << 20},
                        "output": {"mean": 64, "std": 30, "max": 160}}}
    )
)  # fmt: skip
def test_every_admitted_spec_ends_planned_infeasible_or_invalid(spec: dict[str, Any]) -> None:
    status, worst_lag = asyncio.run(_reconcile_watching_the_loop(spec))

    planned = next((c for c in status.get("conditions", []) if c["type"] == "Planned"), None)
    assert planned is not None, f"no Planned condition: {status}"
    assert planned["reason"] in OUTCOMES, planned
    assert planned["message"], planned
    assert status.get("observedGeneration") == 1
    assert worst_lag < 1.0, f"the event loop was held {worst_lag:.2f} s"


def test_the_schema_refuses_what_used_to_overflow() -> None:
    import jsonschema  # type: ignore[import-untyped]

    side = {"mean": 5872.58, "std": 1.797e308, "min": 2917, "max": 5992}
    spec = _with("workload", {"input": side, "output": {"mean": 64, "std": 30, "max": 160}})
    errors = list(jsonschema.Draft4Validator(SPEC).iter_errors(spec))
    assert any(list(e.absolute_path)[-1:] == ["std"] for e in errors), errors
