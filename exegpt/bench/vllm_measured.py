"""What ``exegpt bench vllm`` measures before it plans (the XProfiler's profile of vLLM's
steps, the server's overhead per step, and what a request joining a step adds to it),
kept between runs so that ``--quick`` can reuse the last measurement on this machine,
as the operator reuses a cached profile.

A measurement is kept in one JSON file per key: the vLLM and torch versions, the
profiler's version and how the server's steps are measured (:data:`MEASUREMENT`), the
model, the profile's largest batch, and the machine (its processor and the cores this process
may use); a measurement of another machine, engine or model is never reused. The file
says when it was measured, and a report that reuses it says so.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exegpt.bench.vllm_overhead import (
    Churn,
    Point,
    churn_from_json,
    describe,
    describe_cost,
)
from exegpt.planner.architecture import Architecture
from exegpt.planner.profile import VLLM_PROFILER_VERSION, Profile

# How the server's steps are measured (``vllm_overhead``); a change makes kept
# measurements stale. 2: the median of the repeated runs at each batch (the least before);
# 3: batches 1, 2, 4, 8, 16, 32 and 96 (--quick 1, 4, 8, 32), joined point to point;
# 4: each batch's requests' end-to-end latency kept (what the server adds to a request);
# 5: the batches measured in turn, seven times over (three runs of one batch in a row);
# 6: what a join costs the server's steps (loads of short and of long outputs).
MEASUREMENT = 6


@dataclass(frozen=True)
class Measured:
    """The in-process profile, the server's steps at a few batches, and the seconds each
    took to measure."""

    bare: Profile
    points: list[Point]
    engine_start_s: float
    profile_s: float
    overhead_s: float
    measured_at: str
    # what a request joining a step adds to it (``vllm_overhead.join_cost``), and the
    # loads it was read from
    join_s: float
    joins: tuple[tuple[Churn, Churn], ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "bare": self.bare.model_dump(mode="json"),
            "points": describe(self.points),
            "join": describe_cost(self.join_s, self.joins),
            "engine_start_s": self.engine_start_s,
            "profile_s": self.profile_s,
            "overhead_s": self.overhead_s,
            "measured_at": self.measured_at,
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Measured:
        points = [
            Point(int(p["batch"]), float(p["steps"]), float(p["server_step_s"]),
                  float(p["model_step_s"]), int(p.get("stages", 1)),
                  float(p.get("request_e2e_s", math.nan)))
            for p in doc["points"]
        ]  # fmt: skip
        join = doc["join"]
        joins = tuple(
            (churn_from_json(pair["short"]), churn_from_json(pair["long"]))
            for pair in join["loads"]
        )
        return cls(
            Profile.model_validate(doc["bare"]), points, float(doc["engine_start_s"]),
            float(doc["profile_s"]), float(doc["overhead_s"]), str(doc["measured_at"]),
            float(join["seconds"]), joins,
        )  # fmt: skip


def now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def _processor() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def key(architecture: Architecture, engine_version: str, torch_version: str, max_batch: int) -> str:
    """The file name a measurement is kept under (see the module)."""
    parts = {
        "architecture": architecture.model_dump(mode="json"),
        "vllm": engine_version,
        "torch": torch_version,
        "profiler": VLLM_PROFILER_VERSION,
        "measurement": MEASUREMENT,
        "max_batch": max_batch,
        "processor": _processor(),
        "cores": len(os.sched_getaffinity(0)),
    }
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]
    return f"{architecture.name}-{digest}.json"


def load(path: Path) -> Measured | None:
    """The measurement kept at ``path``; ``None`` when there is none or it cannot be
    read (it is then measured again)."""
    try:
        return Measured.from_json(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def save(path: Path, measured: Measured) -> None:
    """Keep ``measured`` at ``path`` (written whole, then renamed into place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(measured.to_json()))
    tmp.replace(path)
