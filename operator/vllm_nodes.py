"""The pods of a vLLM server that spans nodes (docs/vllm.md, "Servers over several
nodes").

A server of ``nnodes`` nodes runs in ``nnodes`` pods with vLLM's multiprocessing backend
(no Ray). Node rank 0 is the pod ``<name>-<role>-<r>`` of replica ``r`` (the same
StatefulSet as a server on one node): it serves the API, hosts torch.distributed's store
on ``MASTER_PORT`` and gives its own stable name on the headless Service as
``--master-addr``. Node ranks 1 .. nnodes-1 are the pods of ``<name>-<role>-n``: pod
ordinal ``o`` is node rank ``o % (nnodes-1) + 1`` of replica ``o // (nnodes-1)``; its
start script (``node_script``) works both out from the pod's name and runs
``serve --headless`` against its replica's rank-0 pod.

Failure semantics (the pods of one server restart together):

- rank 0 restarts: every other node's liveness probe (``node_probes``) fails once the
  rank-0 pod it served with stops answering ``/health``, so they restart and join the
  new rank 0 (which waits for them);
- another node restarts: its start script waits while its rank 0 still answers
  ``/health`` (a running server cannot take a node back) and the pod stays NotReady;
  rank 0's engine fails on its next step (the node's answer never comes), its
  ``/health`` fails, it restarts, and the nodes join it.

Pure functions returning plain dicts and strings.
"""

from __future__ import annotations

import shlex
from typing import Any

from exegpt.planner.vllm_args import HEADLESS_MODULE

from . import names
from .podspec import CACHE_DIR

Obj = dict[str, Any]

JOINED = f"{CACHE_DIR}/exegpt-vllm-joined"
"""Written just before the node's vLLM process starts (its readiness)."""
SERVED = f"{CACHE_DIR}/exegpt-vllm-served"
"""Written once the node's rank 0 answered ``/health`` (from then on it must keep to)."""
HEALTH_CHECK = "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=3)"
"""Exits 0 when the URL answers 200, 1 otherwise (any HTTP error or connection error)."""


def rank0_address(name: str) -> str:
    """Node rank 0's ``--master-addr``, as its own pod's arguments give it: its stable
    name on the headless Service (Kubernetes expands ``$(POD_NAME)``)."""
    return f"$(POD_NAME).{names.headless_service(name)}"


def _locate(name: str, role: str, nodes: int) -> str:
    """Shell that sets ``rank`` and ``rank0`` (the replica's rank-0 pod) of this pod of
    ``names.nodes_of(role)`` from the ordinal ending its name."""
    others = nodes - 1
    rank0 = f"{names.statefulset(name, role)}-$((o / {others})).{names.headless_service(name)}"
    return f'o="${{POD_NAME##*-}}"; rank=$((o % {others} + 1)); rank0="{rank0}"; '


def _check(port: int) -> str:
    return f'python3 -c {shlex.quote(HEALTH_CHECK)} "http://$rank0:{port}/health" 2>/dev/null'


def node_script(name: str, role: str, nodes: int, port: int) -> str:
    """What a pod of node rank 1 or above runs (``sh -c SCRIPT vllm ARGS...``, ARGS the
    server's arguments without ``--node-rank`` and ``--master-addr``): find its rank and
    rank 0 from the pod's name, wait while that rank 0 already serves (a server that
    lost a node does not take it back; it restarts first), then run vLLM's headless
    workers for that rank."""
    return (
        _locate(name, role, nodes)
        + f"rm -f {JOINED} {SERVED}; "
        + f"while {_check(port)}; do "
        + 'echo "node rank $rank: $rank0 serves without this node; waiting for it to restart"; '
        + "sleep 5; done; "
        + f"touch {JOINED}; "
        + f'exec python3 -m {HEADLESS_MODULE} serve --headless "$@" '
        + '--node-rank "$rank" --master-addr "$rank0"'
    )


def node_probes(name: str, role: str, nodes: int, port: int) -> Obj:
    """Probes of a pod of node rank 1 or above, which serves no HTTP of its own.

    Readiness: its vLLM process started (``JOINED``). Liveness: fails once the rank-0
    pod that answered ``/health`` since this node joined stops answering (a rank 0 still
    loading the model, which may take many minutes, is not a failure)."""
    liveness = (
        _locate(name, role, nodes)
        + f"if {_check(port)}; then touch {SERVED}; exit 0; fi; test ! -e {SERVED}"
    )

    def probe(script: str, period: int) -> Obj:
        return {
            "exec": {"command": ["sh", "-c", script]},
            "failureThreshold": 3,
            "periodSeconds": period,
            "timeoutSeconds": 5,
        }

    return {
        "livenessProbe": probe(liveness, 10),
        "readinessProbe": probe(f"test -e {JOINED}", 5),
    }
