"""A benchmark result as valid JSON: numbers that are not finite (``inf`` for what ran
past its deadline, ``nan`` for what is undefined) become ``null``, and the result lists
where (``null_numbers``), since JSON has no such numbers (Python's ``json`` would
write ``Infinity`` and ``NaN``, which JSON parsers refuse)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

NULL_NUMBERS = "null_numbers"


def finite(value: Any, path: str = "") -> tuple[Any, list[str]]:
    """``value`` with every non-finite float replaced by None, and the paths of those
    replaced (``a.b[2]``)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None, [path or "(value)"]
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        paths: list[str] = []
        for key, item in value.items():
            out[key], found = finite(item, f"{path}.{key}" if path else str(key))
            paths += found
        return out, paths
    if isinstance(value, list | tuple):
        items: list[Any] = []
        paths = []
        for i, item in enumerate(value):
            clean, found = finite(item, f"{path}[{i}]")
            items.append(clean)
            paths += found
        return items, paths
    return value, []


def dumps(result: Mapping[str, Any]) -> str:
    """``result`` as one line of strict JSON, with ``null_numbers`` listing the numbers
    that became null (empty when none did)."""
    clean, paths = finite(result)
    clean[NULL_NUMBERS] = paths
    return json.dumps(clean, allow_nan=False)
