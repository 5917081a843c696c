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


def test_the_operator_never_deletes_its_profiling_jobs_or_the_deployments() -> None:
    calls = json.loads(API_USAGE.read_text())["calls"]
    deletes = {(c["apiGroup"], c["resource"]) for c in calls if c["verb"] == "delete"}
    assert ("batch", "jobs") not in deletes
    assert ("exegpt.dev", "exegptdeployments") not in deletes
