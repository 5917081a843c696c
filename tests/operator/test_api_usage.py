"""``api_usage.json``: the API calls the operator makes, as RBAC names them. The chart's
RBAC is checked against it; the operator tests fail on a call it does not list."""

from __future__ import annotations

import json
from pathlib import Path

API_USAGE = Path(__file__).with_name("api_usage.json")

VERBS = {"get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"}


def test_the_recorded_api_usage_is_explicit_and_sorted() -> None:
    calls = json.loads(API_USAGE.read_text())["calls"]
    triples = [(c["apiGroup"], c["resource"], c["verb"]) for c in calls]
    assert triples == sorted(set(triples)), "sorted, no duplicates"
    for group, resource, verb in triples:
        assert "*" not in group + resource + verb, "no wildcards"
        assert verb in VERBS, verb
        assert resource and resource == resource.lower()


def test_the_operator_deletes_only_stale_workers_and_given_up_profiling_jobs() -> None:
    """StatefulSets of the other strategy after a replan, and failed profiling Jobs once
    their failure is recorded (test_profiling_failures.py); never a deployment, a
    ConfigMap (the shared profile cache, the plan) or a Service."""
    calls = json.loads(API_USAGE.read_text())["calls"]
    deletes = {(c["apiGroup"], c["resource"]) for c in calls if c["verb"] == "delete"}
    assert deletes == {("apps", "statefulsets"), ("batch", "jobs")}
