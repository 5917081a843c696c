"""values.schema.json accepts the documented values and rejects bad ones, naming the
value and what is wrong, before anything is rendered; values.yaml and docs/install.md
document every value."""

from __future__ import annotations

import json
import re
from typing import Any

import helm_python as helm
import pytest
import yaml
from helmchart import CHART, ROOT, VARIANTS, chart, render_raw, values

SCHEMA = json.loads((CHART / "values.schema.json").read_text())
DEFAULTS: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_documented_values_pass(variant: str) -> None:
    chart().validate_schema(values(variant))


# (values, the location Helm's message names, words of the message)
BAD: list[tuple[dict[str, Any], str, str]] = [
    ({"watchNamespaces": "team-a"}, "/watchNamespaces", "want array"),
    ({"watchNamespaces": ["Team_A"]}, "/watchNamespaces/0", "does not match pattern"),
    ({"watchNamespaces": ["a", "a"]}, "/watchNamespaces", "are equal"),
    ({"watchNamespace": ["a"]}, "", "additional properties 'watchNamespace' not allowed"),
    ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy", "must be one of"),
    ({"image": {"repository": ""}}, "/image/repository", "minLength"),
    ({"image": {"tag": "1.0 beta"}}, "/image/tag", "does not match pattern"),
    ({"image": {"digest": "sha256:abc"}}, "/image/digest", "does not match pattern"),
    ({"image": {"registry": "ghcr.io"}}, "/image", "additional properties 'registry'"),
    ({"runtime": {"repository": "img@sha256:0"}}, "/runtime/repository", "pattern"),
    ({"resources": {"limits": {"memory": "1GB"}}}, "/resources/limits/memory", "pattern"),
    ({"resources": {"requests": {"cpu": -1}}}, "/resources/requests/cpu", "minimum"),
    ({"resources": {"limits": None}}, "/resources", "missing property 'limits'"),
    ({"operator": {"resyncSeconds": 0}}, "/operator/resyncSeconds", "minimum"),
    ({"operator": {"watchServerTimeout": 2.5}}, "/operator/watchServerTimeout", "integer"),
    ({"operator": {"plannerThreads": 0}}, "/operator/plannerThreads", "minimum"),
    ({"operator": {"plannerThreads": 1.5}}, "/operator/plannerThreads", "integer"),
    ({"operator": {"apiTimeoutSeconds": 0}}, "/operator/apiTimeoutSeconds", "exclusiveMinimum"),
    ({"operator": {"errorRetrySeconds": -1}}, "/operator/errorRetrySeconds", "exclusiveMinimum"),
    (
        {"operator": {"errorRetryMaxSeconds": 0}},
        "/operator/errorRetryMaxSeconds",
        "exclusiveMinimum",
    ),
    ({"operator": {"resync": 5}}, "/operator", "additional properties 'resync'"),
    ({"profiler": {"allowedImages": ["a b"]}}, "/profiler/allowedImages/0", "pattern"),
    ({"rbac": {"create": "yes"}}, "/rbac/create", "want boolean"),
    ({"livenessProbe": {"periodSeconds": 0}}, "/livenessProbe/periodSeconds", "minimum"),
    ({"podLabels": {"team": 1}}, "/podLabels/team", "want string"),
]


@pytest.mark.parametrize(("bad", "where", "words"), BAD, ids=[b[1] or "/" for b in BAD])
def test_bad_values_are_rejected_with_a_clear_message(
    bad: dict[str, Any], where: str, words: str
) -> None:
    with pytest.raises(helm.HelmValuesError) as render_error:
        render_raw(bad)
    message = str(render_error.value)
    assert f"at '{where}'" in message and words in message, message
    # The same check without rendering (the values are merged with the defaults first).
    with pytest.raises(helm.HelmValuesError):
        chart().validate_schema(bad)


def test_schema_describes_exactly_the_values() -> None:
    """Every value of values.yaml is in the schema, and the schema has no value that
    values.yaml lacks (``global`` is Helm's own)."""

    def keys(schema: dict[str, Any], node: Any, path: str) -> None:
        props = schema.get("properties")
        if not isinstance(node, dict) or props is None:
            return
        assert set(props) - {"global"} == set(node), f"{path or '/'}: schema vs values.yaml"
        for key, value in node.items():
            keys(props[key], value, f"{path}/{key}")

    keys(SCHEMA, DEFAULTS, "")
    assert SCHEMA["additionalProperties"] is False


def test_values_yaml_explains_every_value() -> None:
    """Each top-level value, or the group of values it starts or belongs to, has a
    comment right above it."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    for i, line in enumerate(lines):
        if not re.match(r"[A-Za-z]\w*:", line):
            continue
        j = i - 1
        while j >= 0 and re.match(r"[A-Za-z]\w*:", lines[j]):
            j -= 1  # a group of values under one comment
        assert j >= 0 and lines[j].startswith("#"), f"values.yaml:{i + 1} {line!r}: no comment"


# Values shaped like a Kubernetes field: the guide describes them as a whole.
KUBERNETES_SHAPED = {"resources", "livenessProbe"}


def leaves(node: Any, path: str = "") -> list[str]:
    """Dotted paths of the scalars and empty maps and lists of ``node``."""
    if isinstance(node, dict) and node:
        return [p for k, v in node.items() for p in leaves(v, f"{path}.{k}" if path else k)]
    return [path]


def test_install_guide_lists_every_value() -> None:
    guide = (ROOT / "docs" / "install.md").read_text()
    top = {p: p.split(".")[0] for p in leaves(DEFAULTS)}
    wanted = {t if t in KUBERNETES_SHAPED else p for p, t in top.items()}
    missing = sorted(p for p in wanted if f"`{p}`" not in guide)
    assert not missing, f"docs/install.md does not describe: {missing}"
