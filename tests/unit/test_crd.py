"""The generated ExeGPTDeployment CRD: ``crds/`` is up to date, the schema is structural,
defaults are valid, the CEL rules are sound, and the CRD and the models judge specs
alike.

The API server is emulated with what it does to a create request: prune nulls, apply
defaults, validate the OpenAPI schema (``jsonschema``'s draft 4 is OpenAPI v3.0's
subset; unknown fields are errors, as with kubectl's strict field validation) and
evaluate the CEL rules with a small evaluator of the CEL subset the rules use.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from builders import DELETE, deployment
from jsonschema import Draft4Validator
from pydantic import BaseModel, ValidationError

from exegpt.operator import crd as crd_module
from exegpt.operator.crd import (
    ALLOWED_KEYWORDS,
    CRD_NAME,
    HEADER,
    build_crd,
    describe,
    render_crd,
)
from exegpt.operator.names import MAX_DEPLOYMENT_NAME
from exegpt.operator.spec import parse_manifest
from exegpt.operator.status import (
    CONDITION_TYPES,
    AlternativeStatus,
    ExeGPTDeploymentStatus,
    PlanStatus,
    PredictedStatus,
    ProfileStatus,
    ReplicasStatus,
    set_condition,
)

ROOT = Path(__file__).resolve().parents[2]
CRD_FILE = ROOT / "crds" / "exegpt.dev_exegptdeployments.yaml"
DOC = ROOT / "docs" / "crd.md"
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))

CRD = build_crd()
VERSION = CRD["spec"]["versions"][0]
SCHEMA: dict[str, Any] = VERSION["schema"]["openAPIV3Schema"]
SPEC = SCHEMA["properties"]["spec"]
STATUS = SCHEMA["properties"]["status"]


# -- a small CEL evaluator (the subset the rules use) ------------------------------------------


class CelError(Exception):
    """A rule that does not parse, or an evaluation error (no such key, bad operand)."""


_TOKEN = re.compile(
    r"""\s*(?:
      (?P<num>\d+\.\d*|\.\d+|\d+)
    | (?P<str>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
    | (?P<id>[A-Za-z_][A-Za-z0-9_]*)
    | (?P<op>&&|\|\||==|!=|<=|>=|[-+*/%<>!().,?:\[\]])
    )""",
    re.VERBOSE,
)
_TYPE_NAMES = {"int", "uint", "double", "string", "bool", "list", "map", "null_type"}

Node = tuple[Any, ...]


def _tokens(text: str) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    pos = 0
    while pos < len(text.rstrip()):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise CelError(f"cannot tokenize {text[pos:]!r}")
        pos = m.end()
        kind = m.lastgroup
        assert kind is not None
        value: Any = m.group(kind)
        if kind == "num":
            value = float(value) if "." in value else int(value)
        elif kind == "str":
            value = value[1:-1].replace("\\'", "'").replace('\\"', '"')
        out.append((kind, value))
    return out


class _Parser:
    def __init__(self, text: str) -> None:
        self.toks = _tokens(text)
        self.i = 0

    def peek(self) -> Any:
        return self.toks[self.i][1] if self.i < len(self.toks) else None

    def take(self, expected: str | None = None) -> Any:
        if self.i >= len(self.toks):
            raise CelError("unexpected end of rule")
        kind, value = self.toks[self.i]
        if expected is not None and (kind not in ("op", "id") or value != expected):
            raise CelError(f"expected {expected!r}, got {value!r}")
        self.i += 1
        return value

    def parse(self) -> Node:
        node = self.cond()
        if self.i != len(self.toks):
            raise CelError(f"unexpected {self.peek()!r}")
        return node

    def cond(self) -> Node:
        c = self.binary(0)
        if self.peek() == "?":
            self.take("?")
            a = self.cond()
            self.take(":")
            return ("cond", c, a, self.cond())
        return c

    LEVELS = (("||",), ("&&",), ("==", "!=", "<", "<=", ">", ">="), ("+", "-"), ("*", "/", "%"))

    def binary(self, level: int) -> Node:
        if level == len(self.LEVELS):
            return self.unary()
        node = self.binary(level + 1)
        while self.peek() in self.LEVELS[level] and self.toks[self.i][0] == "op":
            op = self.take()
            node = ("bin", op, node, self.binary(level + 1))
        return node

    def unary(self) -> Node:
        if self.peek() == "!":
            self.take()
            return ("not", self.unary())
        if self.peek() == "-":
            self.take()
            return ("neg", self.unary())
        return self.member()

    def args(self) -> list[Node]:
        self.take("(")
        out: list[Node] = []
        while self.peek() != ")":
            out.append(self.cond())
            if self.peek() == ",":
                self.take(",")
        self.take(")")
        return out

    def member(self) -> Node:
        node = self.primary()
        while self.peek() in (".", "["):
            if self.take() == ".":
                name = self.take()
                if self.peek() == "(":
                    node = ("method", node, name, self.args())
                else:
                    node = ("sel", node, name)
            else:
                index = self.cond()
                self.take("]")
                node = ("idx", node, index)
        return node

    def primary(self) -> Node:
        kind, value = self.toks[self.i] if self.i < len(self.toks) else ("", None)
        self.i += 1
        if kind in ("num", "str"):
            return ("lit", value)
        if kind == "id":
            if value in ("true", "false", "null"):
                return ("lit", {"true": True, "false": False, "null": None}[value])
            if self.peek() == "(":
                args = self.args()
                if value == "has":
                    if len(args) != 1 or args[0][0] != "sel":
                        raise CelError("has() takes one field selection")
                    return ("has", args[0][1], args[0][2])
                return ("call", value, args)
            return ("id", value)
        if value == "(":
            node = self.cond()
            self.take(")")
            return node
        raise CelError(f"unexpected {value!r}")


def _type_of(v: Any) -> str:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "double"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "list"
    if isinstance(v, dict):
        return "map"
    return "null_type"


def _eval(node: Node, env: dict[str, Any]) -> Any:
    op = node[0]
    if op == "lit":
        return node[1]
    if op == "id":
        if node[1] in env:
            return env[node[1]]
        if node[1] in _TYPE_NAMES:
            return ("type", node[1])
        raise CelError(f"undeclared reference {node[1]!r}")
    if op == "sel":
        target = _eval(node[1], env)
        if not isinstance(target, dict) or node[2] not in target:
            raise CelError(f"no such key: {node[2]}")
        return target[node[2]]
    if op == "has":
        target = _eval(node[1], env)
        return isinstance(target, dict) and node[2] in target
    if op == "idx":
        return _eval(node[1], env)[_eval(node[2], env)]
    if op == "not":
        v = _eval(node[1], env)
        if not isinstance(v, bool):
            raise CelError("! needs a bool")
        return not v
    if op == "neg":
        return -_eval(node[1], env)
    if op == "cond":
        return _eval(node[2] if _eval(node[1], env) else node[3], env)
    if op == "bin" and node[1] in ("&&", "||"):
        # CEL's logical operators are commutative over errors: true || error == true.
        results: list[Any] = []
        for side in node[2:]:
            try:
                results.append(_eval(side, env))
            except CelError as exc:
                results.append(exc)
        decisive = node[1] == "||"
        if decisive in results:
            return decisive
        for r in results:
            if isinstance(r, CelError):
                raise r
        return not decisive
    if op == "bin":
        a, b = _eval(node[2], env), _eval(node[3], env)
        return _binary(node[1], a, b)
    if op == "call":
        args = [_eval(a, env) for a in node[2]]
        funcs: dict[str, Callable[..., Any]] = {
            "size": len,
            "double": float,
            "int": int,
            "string": str,
            "type": lambda v: ("type", _type_of(v)),
        }
        if node[1] not in funcs:
            raise CelError(f"unknown function {node[1]}")
        return funcs[node[1]](*args)
    if op == "method":
        name = node[2]
        if name in ("exists", "all"):
            target = _eval(node[1], env)
            var, pred = node[3]
            if var[0] != "id":
                raise CelError(f"{name}() needs a variable")
            values = [_eval(pred, {**env, var[1]: item}) for item in target]
            return any(values) if name == "exists" else all(values)
        target = _eval(node[1], env)
        args = [_eval(a, env) for a in node[3]]
        if name == "size" and not args:
            return len(target)
        if name == "matches" and isinstance(target, str):
            return re.search(args[0], target) is not None
        if name in ("startsWith", "endsWith", "contains") and isinstance(target, str):
            return {
                "startsWith": target.startswith,
                "endsWith": target.endswith,
                "contains": target.__contains__,
            }[name](args[0])
        raise CelError(f"no method {name} on {_type_of(target)}")
    raise CelError(f"cannot evaluate {op}")


def _binary(op: str, a: Any, b: Any) -> Any:
    numbers = (int, float)
    if op == "==":  # heterogeneous equality: numbers by value, other types never equal
        return isinstance(a, bool) == isinstance(b, bool) and a == b
    if op == "!=":
        return not _binary("==", a, b)
    if op in ("<", "<=", ">", ">="):
        if not (isinstance(a, numbers) and isinstance(b, numbers)) and type(a) is not type(b):
            raise CelError(f"no such overload: {_type_of(a)} {op} {_type_of(b)}")
        return {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[op]
    if not (isinstance(a, numbers) and isinstance(b, numbers)):
        if op == "+" and type(a) is type(b):
            return a + b
        raise CelError(f"no such overload: {_type_of(a)} {op} {_type_of(b)}")
    if op == "%":
        if isinstance(a, float) or isinstance(b, float):
            raise CelError("% is defined on integers only")
        if b == 0:
            raise CelError("modulus by zero")
        return int(math.fmod(a, b))
    if op == "/":
        if b == 0:
            raise CelError("division by zero")
        return a / b if isinstance(a, float) or isinstance(b, float) else int(a / b)
    return {"+": a + b, "-": a - b, "*": a * b}[op]


def cel(rule: str, value: Any) -> Any:
    return _eval(_Parser(rule).parse(), {"self": value})


def test_cel_evaluator() -> None:
    assert cel("1 + 2 == 3 && 7 % 4 == 3", None) is True
    assert cel("has(self.a) && !has(self.b)", {"a": 1}) is True
    assert cel("has(self.b) || self.a > 0", {"a": 1}) is True
    assert cel("self.b > 0 || true", {}) is True  # errors give way to a decisive side
    with pytest.raises(CelError, match="no such key"):
        cel("self.b > 0 || false", {})
    assert cel("type(self) == int || self.matches('[1-9]')", "0s") is False
    assert cel("type(self) == int || self.matches('[1-9]')", 3) is True
    assert cel("self.w.exists(x, x > 0.0) && size(self.w) == 2", {"w": [0.0, 1.0]}) is True
    assert cel("self.name.size() <= 3 ? 'short' : 'long'", {"name": "abcd"}) == "long"
    with pytest.raises(CelError):
        cel("self.a ==", {"a": 1})


# -- emulating the API server ------------------------------------------------------------------


def walk(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema node with its path (``spec.hardware.tolerations[*].key``)."""
    yield path, node
    for name, sub in node.get("properties", {}).items():
        yield from walk(sub, f"{path}.{name}" if path else name)
    if isinstance(node.get("items"), dict):
        yield from walk(node["items"], f"{path}[*]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}.*")


def prune_nulls(value: Any, schema: dict[str, Any]) -> Any:
    """Nulls of fields that are not ``nullable`` are dropped before defaulting."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            sub = schema.get("properties", {}).get(k) or schema.get("additionalProperties")
            if v is None and not (isinstance(sub, dict) and sub.get("nullable")):
                continue
            out[k] = prune_nulls(v, sub) if isinstance(sub, dict) else v
        return out
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [prune_nulls(v, schema["items"]) for v in value]
    return value


def apply_defaults(value: Any, schema: dict[str, Any]) -> Any:
    """Structural defaulting: a missing field with a default gets it, then is defaulted."""
    if isinstance(value, dict):
        for k, sub in schema.get("properties", {}).items():
            if k not in value and "default" in sub:
                value[k] = copy.deepcopy(sub["default"])
            if k in value:
                apply_defaults(value[k], sub)
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for v in value.values():
                apply_defaults(v, extra)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for v in value:
            apply_defaults(v, schema["items"])
    return value


def strict(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with unknown fields as errors (kubectl's default strict field validation)."""
    out = copy.deepcopy(schema)
    for _, node in walk(out):
        if "properties" in node:
            node["additionalProperties"] = False
    return out


STRICT = Draft4Validator(strict(SCHEMA))


def cel_errors(value: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    errors: list[str] = []
    for rule in schema.get("x-kubernetes-validations", []):
        try:
            ok = cel(rule["rule"], value)
        except CelError as exc:
            errors.append(f"{path or '<root>'}: rule {rule['rule']!r} failed: {exc}")
            continue
        if ok is not True:
            errors.append(f"{path or '<root>'}: {rule['message']}")
    if isinstance(value, dict):
        for k, v in value.items():
            sub = schema.get("properties", {}).get(k) or schema.get("additionalProperties")
            if isinstance(sub, dict):
                errors += cel_errors(v, sub, f"{path}.{k}" if path else k)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, v in enumerate(value):
            errors += cel_errors(v, schema["items"], f"{path}[{i}]")
    return errors


def admit(obj: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """What the API server stores for a create of ``obj``, and its errors."""
    stored = apply_defaults(prune_nulls(copy.deepcopy(obj), SCHEMA), SCHEMA)
    errors = [
        f"{'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}"
        for e in STRICT.iter_errors(stored)
    ]
    if not errors:  # CEL runs on well-typed objects only
        errors = cel_errors(stored, SCHEMA)
    return stored, errors


def crd_errors(obj: dict[str, Any]) -> list[str]:
    return admit(obj)[1]


def model_rejects(obj: dict[str, Any]) -> bool:
    try:
        parse_manifest(obj)
    except ValidationError:
        return True
    return False


# -- crds/ is the generator's output -----------------------------------------------------------


def test_crds_file_is_up_to_date() -> None:
    assert CRD_FILE.exists(), "run `exegpt crd > crds/exegpt.dev_exegptdeployments.yaml`"
    assert CRD_FILE.read_text(encoding="utf-8") == render_crd(), (
        "crds/ is out of date with the models: "
        "run `exegpt crd > crds/exegpt.dev_exegptdeployments.yaml`"
    )


def test_render_is_stable_yaml_with_a_header() -> None:
    text = render_crd()
    assert text.startswith(HEADER) and text == render_crd()
    assert yaml.safe_load(text) == build_crd()


def test_crd_shape() -> None:
    assert CRD["apiVersion"] == "apiextensions.k8s.io/v1"
    assert CRD["kind"] == "CustomResourceDefinition"
    assert CRD["metadata"]["name"] == CRD_NAME == "exegptdeployments.exegpt.dev"
    spec = CRD["spec"]
    assert spec["group"] == "exegpt.dev" and spec["scope"] == "Namespaced"
    assert spec["names"] == {
        "kind": "ExeGPTDeployment",
        "listKind": "ExeGPTDeploymentList",
        "plural": "exegptdeployments",
        "singular": "exegptdeployment",
        "shortNames": ["egd"],
        "categories": ["exegpt"],
    }
    assert [v["name"] for v in spec["versions"]] == ["v1alpha1"]
    assert VERSION["served"] is True and VERSION["storage"] is True
    assert VERSION["subresources"] == {"status": {}}
    assert SCHEMA["required"] == ["spec"]
    assert SCHEMA["properties"]["metadata"] == {"type": "object"}
    assert SPEC["required"] == ["model", "hardware", "workload"]


def test_printer_columns() -> None:
    columns = {c["name"]: c for c in VERSION["additionalPrinterColumns"]}
    assert list(columns) == ["Strategy", "Throughput", "Bound", "Ready", "Planned-For", "Age"]
    # shown by `kubectl get -o wide` only
    assert [c for c in columns if columns[c].get("priority")] == ["Planned-For"]
    assert columns["Age"] == {
        "name": "Age",
        "type": "date",
        "jsonPath": ".metadata.creationTimestamp",
    }
    assert columns["Ready"]["jsonPath"] == '.status.conditions[?(@.type=="Available")].status'
    types = {"string": ("string", None), "number": ("number", "integer")}
    for name in ("Strategy", "Throughput", "Bound", "Planned-For"):
        column = columns[name]
        node = SCHEMA
        for part in column["jsonPath"].strip(".").split("."):
            node = node["properties"][part]
        if node.get("x-kubernetes-int-or-string"):
            assert column["type"] == "string", name
        else:
            assert node["type"] in types[column["type"]], name
    condition = STATUS["properties"]["conditions"]["items"]["properties"]
    assert "Available" in condition["type"]["enum"] and condition["status"]["type"] == "string"


# -- structural schema -------------------------------------------------------------------------


NODES = list(walk(SCHEMA))


def test_schema_is_structural() -> None:
    problems: list[str] = []
    for path, node in NODES:
        where = path or "<root>"
        for key in node:
            if key not in ALLOWED_KEYWORDS:
                problems.append(f"{where}: keyword {key}")
        for key in ("$ref", "$defs", "title", "allOf", "oneOf", "not", "const"):
            if key in node:
                problems.append(f"{where}: {key}")
        if node.get("x-kubernetes-int-or-string"):
            if "type" in node:
                problems.append(f"{where}: int-or-string with a type")
            if node.get("anyOf", [{"type": "integer"}, {"type": "string"}]) != [
                {"type": "integer"},
                {"type": "string"},
            ]:
                problems.append(f"{where}: int-or-string with another anyOf")
        elif "anyOf" in node:
            problems.append(f"{where}: anyOf")
        elif "type" not in node and not node.get("x-kubernetes-preserve-unknown-fields"):
            problems.append(f"{where}: no type")
        if "additionalProperties" in node and (
            "properties" in node or not isinstance(node["additionalProperties"], dict)
        ):
            problems.append(f"{where}: additionalProperties beside properties, or not a schema")
        if node.get("type") == "array" and not isinstance(node.get("items"), dict):
            problems.append(f"{where}: an array needs items")
        if node.get("exclusiveMinimum") is not None and not isinstance(
            node["exclusiveMinimum"], bool
        ):
            problems.append(f"{where}: exclusiveMinimum must be a flag in OpenAPI v3.0")
        if node.get("uniqueItems"):
            problems.append(f"{where}: uniqueItems")
        for name in node.get("required", []):
            if name not in node.get("properties", {}):
                problems.append(f"{where}: required {name} is not a property")
        if "description" in node and (
            not node["description"] or "\n" in node["description"] or "``" in node["description"]
        ):
            problems.append(f"{where}: description is not one trimmed paragraph")
    assert problems == []


def test_no_preserve_unknown_fields_anywhere() -> None:
    assert [p for p, n in NODES if "x-kubernetes-preserve-unknown-fields" in n] == []


def test_every_spec_field_has_a_description() -> None:
    # Architecture fields are self-explanatory model dimensions; everything else says what
    # it is, since kubectl explain shows it.
    missing = [
        path
        for path, node in NODES
        if path.startswith("spec")
        and "description" not in node
        and not path.startswith("spec.model.architecture.")
        and not path.endswith("[*]")
        and not path.endswith(".*")
    ]
    assert missing == []


def test_optional_fields_are_not_nullable() -> None:
    # Optional fields are simply not required; the API server drops their nulls.
    assert [p for p, n in NODES if "nullable" in n] == []


@pytest.mark.parametrize(
    ("path", "default"),
    [(p, n["default"]) for p, n in NODES if "default" in n],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_defaults_are_valid(path: str, default: Any) -> None:
    node = dict(walk(SCHEMA))[path]
    value = apply_defaults(copy.deepcopy(default), node)
    assert list(Draft4Validator(strict(node)).iter_errors(value)) == []
    assert cel_errors(value, node, path) == []


def test_defaults_only_in_spec_and_match_the_models() -> None:
    paths = {p for p, n in NODES if "default" in n}
    assert all(p.startswith("spec.") for p in paths)
    assert {"spec.slo", "spec.profiling", "spec.runner"} <= paths
    # The stored form of a minimal spec, read back by the models, is the same spec.
    body = deployment("x", "default", **{"slo": DELETE, "profiling": DELETE, "strategy": DELETE})
    stored, errors = admit(body)
    assert errors == []
    assert stored["spec"]["profiling"] == {"mode": "Analytic", "timeout": "2h", "maxRetries": 3}
    assert parse_manifest(stored).spec == parse_manifest(body).spec


def test_enums_match_their_type() -> None:
    for path, node in NODES:
        for value in node.get("enum", []):
            assert Draft4Validator({"type": node["type"]}).is_valid(value), (path, value)


def test_string_maps_and_lists() -> None:
    hardware = SPEC["properties"]["hardware"]["properties"]
    assert hardware["nodeSelector"] == {
        "type": "object",
        "additionalProperties": {"type": "string"},
        "description": hardware["nodeSelector"]["description"],
    }
    assert hardware["tolerations"]["maxItems"] == 64


def test_durations_accept_numbers_and_strings() -> None:
    for field in ("slo.latency", "profiling.timeout"):
        for value in (3, "3", "3.1s", "500ms", "1h30m"):
            assert crd_errors(deployment(**{field: value})) == [], (field, value)
            assert not model_rejects(deployment(**{field: value})), (field, value)


def test_generator_refuses_what_is_not_structural() -> None:
    class IntOrStr(BaseModel):
        x: int | str

    class IntSet(BaseModel):
        x: set[int]

    for model in (IntOrStr, IntSet):
        raw = model.model_json_schema(by_alias=True)
        with pytest.raises(ValueError, match=r"x: "):
            crd_module._Converter({}, keep_defaults=True).convert(raw, "x")


def test_describe_keeps_the_first_paragraph() -> None:
    assert describe("  The ``a``\n  field.\n\n  More.  ") == "The `a` field."


# -- status ------------------------------------------------------------------------------------


def test_status_follows_the_api_conventions() -> None:
    props = STATUS["properties"]
    assert STATUS["type"] == "object" and "phase" not in props
    assert props["observedGeneration"]["type"] == "integer"
    conditions = props["conditions"]
    assert conditions["type"] == "array"
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    assert conditions["maxItems"] == len(CONDITION_TYPES)
    item = conditions["items"]
    assert item["type"] == "object"
    assert set(item["required"]) == {"type", "status", "reason", "lastTransitionTime"}
    assert set(item["properties"]) >= {
        "type",
        "status",
        "reason",
        "message",
        "lastTransitionTime",
        "observedGeneration",
    }
    assert item["properties"]["type"]["enum"] == list(CONDITION_TYPES)
    assert item["properties"]["status"]["enum"] == ["True", "False", "Unknown"]
    assert item["properties"]["lastTransitionTime"]["format"] == "date-time"
    assert all("default" not in n for p, n in NODES if p.startswith("status"))


def sample_status() -> ExeGPTDeploymentStatus:
    conditions: list[Any] = []
    for t in CONDITION_TYPES:
        conditions = set_condition(
            conditions, t, "True", "Reason", "msg", 3, "2024-05-01T00:00:00Z"
        )
    predicted = PredictedStatus(
        throughput_qps=12.5,
        throughput_tps=400.0,
        latency_seconds=2.9,
        e2e_p99_seconds=3.4,
        memory_per_gpu_gib=61.0,
    )
    return ExeGPTDeploymentStatus(
        observed_generation=3,
        conditions=conditions,
        profile=ProfileStatus(key="opt-13b-abc", source="analytic", gpu_type="nvidia-a100-80gb"),
        plan=PlanStatus(
            strategy="RoundRobin",
            replicas=1,
            tensor_parallel=2,
            tp_scope="all",
            pipeline_stages=4,
            micro_batches=4,
            encode_batch=8,
            decode_batch=128,
            decode_steps_per_encode=12,
            predicted=predicted,
            baselines={"Static": predicted},
            alternatives=[
                AlternativeStatus(
                    strategy="WorkloadAware",
                    throughput_qps=11.0,
                    latency_seconds=2.5,
                    summary="...",
                )
            ],
            search_seconds=0.4,
            hash="h",
            inputs_hash="i",
            config_map="x-plan",
        ),
        endpoint="http://x.default.svc:8000",
        pods=ReplicasStatus(desired=4, ready=4),
    )


def test_status_written_by_the_models_validates() -> None:
    body = deployment()
    for exclude_none in (True, False):
        status = sample_status().model_dump(by_alias=True, mode="json", exclude_none=exclude_none)
        stored, errors = admit({**body, "status": status})
        assert errors == []
        assert ExeGPTDeploymentStatus.model_validate(stored["status"]) == sample_status()


def test_status_rejects_a_malformed_condition() -> None:
    status = sample_status().model_dump(by_alias=True, mode="json", exclude_none=True)
    del status["conditions"][0]["reason"]
    errors = crd_errors({**deployment(), "status": status})
    assert any("reason" in e for e in errors)


# -- CEL rules ---------------------------------------------------------------------------------


RULES = [(p, r) for p, n in NODES for r in n.get("x-kubernetes-validations", [])]


@pytest.mark.parametrize(("path", "rule"), RULES, ids=lambda v: v if isinstance(v, str) else "")
def test_cel_rule_is_sound(path: str, rule: dict[str, str]) -> None:
    assert set(rule) == {"rule", "message"}
    assert rule["rule"].strip() and rule["message"].strip()
    tree = _Parser(rule["rule"]).parse()  # parses
    node = dict(walk(SCHEMA))[path]
    fields = set(_self_fields(tree))
    assert fields <= set(node.get("properties", {})), f"unknown fields {fields}"
    # The message names the field at fault (a field of the rule, or the node itself).
    names = fields | {path.rsplit(".", 1)[-1].removesuffix("[*]")}
    assert any(name in rule["message"] for name in names), rule["message"]


def _self_fields(node: Any) -> Iterator[str]:
    if isinstance(node, tuple):
        if node[0] in ("sel", "has") and node[1] == ("id", "self"):
            yield node[2]
        for part in node[1:]:
            yield from _self_fields(part)
    elif isinstance(node, list):
        for part in node:
            yield from _self_fields(part)


def test_cel_rules_are_not_repeated() -> None:
    for path, node in NODES:
        rules = [r["rule"] for r in node.get("x-kubernetes-validations", [])]
        assert len(rules) == len(set(rules)), path


def test_rules_under_lists_are_bounded() -> None:
    # CEL cost: a rule under a list runs once per item, so the list needs maxItems; a
    # rule iterating a list (exists/all) needs that list bounded.
    for path, node in NODES:
        if not node.get("x-kubernetes-validations"):
            continue
        parts = path.split("[*]")[:-1]
        for i in range(len(parts)):
            list_path = "[*]".join(parts[: i + 1])
            assert "maxItems" in dict(walk(SCHEMA))[list_path], list_path
        for rule in node["x-kubernetes-validations"]:
            for name in re.findall(r"self\.(\w+)\.(?:exists|all)\(", rule["rule"]):
                assert "maxItems" in node["properties"][name], (path, name)


def test_cross_field_rules_are_carried() -> None:
    rules = {r["rule"] for _, r in RULES}
    assert "self.gpus <= self.gpusPerNode || self.gpus % self.gpusPerNode == 0" in rules
    assert "has(self.name) != has(self.architecture)" in rules
    assert f"self.metadata.name.size() <= {MAX_DEPLOYMENT_NAME}" in rules
    assert sum("self.matches('[1-9]')" in r for _, r in RULES for r in [r["rule"]]) == 2


# -- the CRD and the models judge specs alike --------------------------------------------------


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_examples_are_admitted(path: Path) -> None:
    for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
        if doc is None:
            continue
        stored, errors = admit(doc)
        assert errors == []
        assert parse_manifest(stored).spec == parse_manifest(doc).spec


ARCH = {
    "name": "tiny",
    "numLayers": 2,
    "hiddenSize": 64,
    "numHeads": 4,
    "ffnSize": 256,
    "vocabSize": 1000,
}
HIST = {"lengths": [10, 20], "weights": [1, 3]}

GOOD: list[tuple[str, dict[str, Any]]] = [
    ("defaults", {}),
    ("architecture", {"model.name": DELETE, "model.architecture": ARCH}),
    (
        "gqa-architecture",
        {"model.name": DELETE, "model.architecture": {**ARCH, "numKvHeads": 2, "headDim": 32}},
    ),
    (
        "t5-like",
        {
            "model.name": DELETE,
            "model.architecture": {**ARCH, "family": "encoder-decoder", "numEncoderLayers": 2},
        },
    ),
    ("weights", {"model.weights": {"pvc": "models", "path": "/opt-13b"}}),
    ("histograms", {"workload": {"input": {"histogram": HIST}, "output": {"histogram": HIST}}}),
    (
        "edges",
        {
            "workload": {
                "input": {"histogram": {"edges": [1, 8, 64], "weights": [0, 2]}},
                "output": {"mean": 20, "std": 5, "max": 40, "min": 2},
                "correlation": -0.5,
            }
        },
    ),
    ("no-bound", {"slo": {}}),
    ("whole-nodes", {"hardware.gpus": 16, "hardware.gpusPerNode": 8}),
    ("part-of-a-node", {"hardware.gpus": 3}),
    (
        "tolerations",
        {
            "hardware.tolerations": [
                {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
                {"operator": "Exists"},
                {"key": "k", "value": "v", "effect": "NoExecute", "tolerationSeconds": 30},
            ],
            "hardware.nodeSelector": {"pool": "gpu"},
        },
    ),
    ("measured", {"profiling": {"mode": "Measured", "timeout": 3600, "maxRetries": 0}}),
    ("runner", {"runner": {"image": "exegpt:1", "port": 9000}}),
]


@pytest.mark.parametrize(("case", "overrides"), GOOD, ids=[c for c, _ in GOOD])
def test_good_specs_are_accepted_by_both(case: str, overrides: dict[str, Any]) -> None:
    body = deployment("good", "default", **overrides)
    assert not model_rejects(body)
    stored, errors = admit(body)
    assert errors == []
    assert parse_manifest(stored).spec == parse_manifest(body).spec


# (case, spec overrides, a fragment of the CRD's error)
BAD: list[tuple[str, dict[str, Any], str]] = [
    ("no-gpus", {"hardware.gpus": 0}, "hardware.gpus"),
    ("negative-gpus", {"hardware.gpus": -1}, "hardware.gpus"),
    ("too-many-gpus", {"hardware.gpus": 5000}, "hardware.gpus"),
    ("gpus-not-whole-nodes", {"hardware.gpus": 12}, "multiple of gpusPerNode"),
    ("gpus-not-a-number", {"hardware.gpus": "eight"}, "hardware.gpus"),
    ("unknown-gpu", {"hardware.gpuType": "tpu-v5"}, "gpuType"),
    ("no-gpu-type", {"hardware.gpuType": DELETE}, "gpuType"),
    ("gpus-per-node-0", {"hardware.gpusPerNode": 0}, "gpusPerNode"),
    ("node-selector-not-strings", {"hardware.nodeSelector": {"pool": 1}}, "nodeSelector"),
    ("no-model", {"model": {}}, "set exactly one of model.name"),
    ("name-and-architecture", {"model.architecture": ARCH}, "set exactly one of model.name"),
    ("unknown-model", {"model.name": "gpt-5"}, "model.name"),
    ("unknown-dtype", {"model.dtype": "int8"}, "model.dtype"),
    ("bad-pvc", {"model.weights": {"pvc": "My_PVC"}}, "model.weights.pvc"),
    ("relative-path", {"model.weights": {"pvc": "m", "path": "opt"}}, "model.weights.path"),
    (
        "zero-layers",
        {"model.name": DELETE, "model.architecture": {**ARCH, "numLayers": 0}},
        "numLayers",
    ),
    (
        "encoder-decoder-without-encoder",
        {"model.name": DELETE, "model.architecture": {**ARCH, "family": "encoder-decoder"}},
        "numEncoderLayers must be > 0",
    ),
    (
        "decoder-with-encoder",
        {"model.name": DELETE, "model.architecture": {**ARCH, "numEncoderLayers": 2}},
        "numEncoderLayers must be 0",
    ),
    (
        "kv-heads",
        {"model.name": DELETE, "model.architecture": {**ARCH, "numKvHeads": 3}},
        "multiple of numKvHeads",
    ),
    (
        "hidden-size",
        {"model.name": DELETE, "model.architecture": {**ARCH, "hiddenSize": 66}},
        "hiddenSize must be a multiple of numHeads",
    ),
    ("no-workload", {"workload": {}}, "give a preset, or both input and output"),
    ("unknown-preset", {"workload.preset": "poetry"}, "workload.preset"),
    (
        "preset-and-input",
        {"workload.input": {"mean": 10, "std": 1, "max": 20}},
        "not both",
    ),
    (
        "input-only",
        {"workload": {"input": {"mean": 10, "std": 1, "max": 20}}},
        "both input and output",
    ),
    (
        "mean-without-std",
        {"workload": {"input": {"mean": 10, "max": 20}, "output": {"histogram": HIST}}},
        "mean needs std and max",
    ),
    (
        "max-below-mean",
        {"workload": {"input": {"mean": 30, "std": 1, "max": 20}, "output": {"histogram": HIST}}},
        "max must be >= mean",
    ),
    (
        "min-above-mean",
        {
            "workload": {
                "input": {"mean": 10, "std": 1, "max": 20, "min": 15},
                "output": {"histogram": HIST},
            }
        },
        "min must be <= mean",
    ),
    (
        "histogram-and-max",
        {"workload": {"input": {"histogram": HIST, "max": 30}, "output": {"histogram": HIST}}},
        "give either a histogram or mean/std/min/max",
    ),
    (
        "lengths-and-edges",
        {
            "workload": {
                "input": {"histogram": {**HIST, "edges": [1, 2, 3]}},
                "output": {"histogram": HIST},
            }
        },
        "histogram.lengths or histogram.edges",
    ),
    (
        "weights-per-length",
        {
            "workload": {
                "input": {"histogram": {"lengths": [1, 2], "weights": [1]}},
                "output": {"histogram": HIST},
            }
        },
        "one entry per length",
    ),
    (
        "weights-per-bin",
        {
            "workload": {
                "input": {"histogram": {"edges": [1, 2, 3], "weights": [1]}},
                "output": {"histogram": HIST},
            }
        },
        "one entry per bin",
    ),
    (
        "zero-weights",
        {
            "workload": {
                "input": {"histogram": {"lengths": [1, 2], "weights": [0, 0]}},
                "output": {"histogram": HIST},
            }
        },
        "must not all be zero",
    ),
    (
        "negative-weight",
        {
            "workload": {
                "input": {"histogram": {"lengths": [1, 2], "weights": [-1, 2]}},
                "output": {"histogram": HIST},
            }
        },
        "weights",
    ),
    ("correlation", {"workload.correlation": 1.5}, "workload.correlation"),
    ("latency-word", {"slo.latency": "fast"}, "slo.latency"),
    ("latency-unit", {"slo.latency": "3 sec"}, "slo.latency"),
    ("latency-zero", {"slo.latency": 0}, "slo.latency"),
    ("latency-negative", {"slo.latency": -3}, "slo.latency"),
    ("latency-zero-string", {"slo.latency": "0s"}, "spec.slo.latency must be positive"),
    ("latency-zero-parts", {"slo.latency": "0h0m"}, "spec.slo.latency must be positive"),
    ("timeout-zero", {"profiling.timeout": "0"}, "spec.profiling.timeout must be positive"),
    ("strategy", {"strategy": "Fastest"}, "strategy"),
    ("profiling-mode", {"profiling.mode": "Guess"}, "profiling.mode"),
    ("retries", {"profiling.maxRetries": 21}, "profiling.maxRetries"),
    ("empty-image", {"runner.image": ""}, "runner.image"),
    ("port", {"runner.port": 70000}, "runner.port"),
    (
        "exists-with-value",
        {"hardware.tolerations": [{"key": "k", "operator": "Exists", "value": "v"}]},
        "operator Exists must not set value",
    ),
    (
        "no-key-equal",
        {"hardware.tolerations": [{"value": "v"}]},
        "without key must use operator Exists",
    ),
    (
        "seconds-without-noexecute",
        {"hardware.tolerations": [{"key": "k", "tolerationSeconds": 5}]},
        "tolerationSeconds needs effect NoExecute",
    ),
    ("unknown-effect", {"hardware.tolerations": [{"key": "k", "effect": "Maybe"}]}, "effect"),
    ("unknown-field", {"replicas": 3}, "replicas"),
    ("unknown-nested-field", {"hardware.gpu": 3}, "gpu"),
    ("no-hardware", {"hardware": DELETE}, "hardware"),
]


@pytest.mark.parametrize(("case", "overrides", "fragment"), BAD, ids=[c for c, _, _ in BAD])
def test_bad_specs_are_rejected_by_both(
    case: str, overrides: dict[str, Any], fragment: str
) -> None:
    body = deployment("bad", "default", **overrides)
    assert model_rejects(body), "the models accept it"
    errors = crd_errors(body)
    assert errors, "the CRD accepts it"
    assert any(fragment in e for e in errors), errors


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("x" * (MAX_DEPLOYMENT_NAME + 1), f"at most {MAX_DEPLOYMENT_NAME} characters"),
        ("opt.13b", "DNS-1035 label"),
        ("13b", "DNS-1035 label"),
    ],
)
def test_names_the_operator_cannot_derive_from_are_rejected(name: str, fragment: str) -> None:
    errors = crd_errors(deployment(name))
    assert any(e.startswith("<root>: metadata.name") and fragment in e for e in errors), errors
    assert crd_errors(deployment("x" * MAX_DEPLOYMENT_NAME)) == []


# Where one side judges and the other cannot (or normalises first); kept explicit so that
# closing a gap shows up here.
DIFFERENCES: list[tuple[str, dict[str, Any], bool, bool]] = [
    # (case, overrides, the models reject, the CRD rejects)
    ("fractional-seconds-as-number", {"slo.latency": 3.5}, False, True),
    ("number-as-string", {"hardware.gpus": "8"}, False, True),
    ("gpu-type-case", {"hardware.gpuType": "NVIDIA-A100-80GB"}, False, True),
    ("model-name-case", {"model.name": "OPT-13B"}, False, True),
    (
        "repeated-lengths",
        {"workload": {"input": {"histogram": {"lengths": [5, 5], "weights": [1, 1]}}}},
        True,
        False,
    ),
    (
        "decreasing-edges",
        {"workload": {"input": {"histogram": {"edges": [9, 5, 7], "weights": [1, 1]}}}},
        True,
        False,
    ),
    (
        "unreachable-std",
        {"workload": {"input": {"mean": 10, "std": 500, "max": 20}}},
        True,
        False,
    ),
    ("many-tolerations", {"hardware.tolerations": [{"operator": "Exists"}] * 65}, False, True),
]


@pytest.mark.parametrize(
    ("case", "overrides", "model", "server"), DIFFERENCES, ids=[c for c, *_ in DIFFERENCES]
)
def test_known_differences(case: str, overrides: dict[str, Any], model: bool, server: bool) -> None:
    if "workload" in overrides:
        overrides = {
            "workload": {**overrides["workload"], "output": {"histogram": HIST}},
        }
    body = deployment("diff", "default", **overrides)
    assert (model_rejects(body), bool(crd_errors(body))) == (model, server)


# -- docs --------------------------------------------------------------------------------------


def test_docs_cover_every_field_condition_and_column() -> None:
    text = DOC.read_text(encoding="utf-8")
    for path, _ in NODES:
        if path.startswith("spec.") and "[*]" not in path and not path.endswith(".*"):
            leaf = path.removeprefix("spec.")
            if leaf.startswith("model.architecture."):
                continue
            if leaf.startswith("workload.output."):  # "the same fields as workload.input"
                leaf = leaf.replace("workload.output.", "workload.input.")
            assert f"`{leaf}`" in text, leaf
    for t in CONDITION_TYPES:
        assert f"`{t}`" in text, t
    for column in VERSION["additionalPrinterColumns"]:
        assert column["name"] in text
    assert "kubectl apply --server-side -f crds/" in text
    assert "exegpt crd > crds/exegpt.dev_exegptdeployments.yaml" in text
