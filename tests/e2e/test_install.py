"""The install path on a real cluster, as docs/install.md describes it: apply the CRD,
``helm install`` the chart, apply an example in Analytic mode (no GPU needed to plan),
wait for ``Planned``, edit the SLO and see the new plan, uninstall.

Runs only with ``--with-e2e`` and a kubeconfig (tests/e2e/conftest.py). It works in a
namespace of its own and removes what it created, the CRD too unless it was there
before.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from typing import Any

import pytest
import yaml
from e2ecluster import ROOT, Cluster

pytestmark = pytest.mark.e2e

CRD = "exegptdeployments.exegpt.dev"
EXAMPLE = ROOT / "examples" / "opt-13b-summarization.yaml"
RELEASE = "exegpt-e2e"


def wait_for(what: str, probe: Callable[[], Any], timeout: float) -> Any:
    """Poll ``probe`` until it returns something truthy; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(2)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


def condition(body: dict[str, Any], kind: str) -> dict[str, Any]:
    for c in (body.get("status") or {}).get("conditions") or []:
        if c.get("type") == kind:
            return dict(c)
    return {}


def test_install_plan_replan_uninstall(cluster: Cluster) -> None:
    ns = f"exegpt-e2e-{secrets.token_hex(3)}"
    crd_existed = cluster.kubectl("get", "crd", CRD, check=False).returncode == 0
    manifest = yaml.safe_load(EXAMPLE.read_text())
    name = manifest["metadata"]["name"]
    manifest["metadata"]["namespace"] = ns
    assert manifest["spec"]["profiling"]["mode"] == "Analytic"

    def get() -> dict[str, Any]:
        out = cluster.kubectl("get", "egd", name, "-n", ns, "-o", "json").stdout
        return dict(json.loads(out))

    cluster.kubectl("create", "namespace", ns)
    try:
        # Install: the CRD first (Helm never upgrades crds/), then the chart.
        cluster.kubectl("apply", "--server-side", "-f", "crds/")
        cluster.kubectl("wait", "--for=condition=Established", f"crd/{CRD}", "--timeout=60s")
        cluster.helm(
            "install", RELEASE, "charts/exegpt", "--namespace", ns,
            "--set", f"watchNamespaces={{{ns}}}",
            "--wait", "--timeout", f"{int(cluster.timeout)}s", *cluster.helm_args,
        )  # fmt: skip
        cluster.kubectl(
            "rollout", "status", f"deployment/{RELEASE}", "-n", ns,
            f"--timeout={int(cluster.timeout)}s",
        )  # fmt: skip

        # Apply the example and wait for its plan.
        cluster.kubectl("apply", "-f", "-", stdin=json.dumps(manifest))

        def planned() -> dict[str, Any] | None:
            b = get()
            return b if condition(b, "Planned").get("status") == "True" else None

        body = wait_for("Planned=True", planned, cluster.timeout)
        first = body["status"]["plan"]
        assert body["status"]["endpoint"] == f"http://{name}.{ns}.svc:8000"
        assert first["predicted"]["latencySeconds"] <= 3.1
        cluster.kubectl("get", "configmap", f"{name}-plan", "-n", ns)
        cluster.kubectl("get", "service", name, "-n", ns)

        # Tighten the SLO: the operator replans from the same (analytic) profile.
        patch = {"spec": {"slo": {"latency": "2s"}}}
        cluster.kubectl("patch", "egd", name, "-n", ns, "--type", "merge", "-p", json.dumps(patch))

        def replanned() -> dict[str, Any] | None:
            b = get()
            status = b.get("status") or {}
            current = status.get("observedGeneration") == b["metadata"]["generation"]
            ok = condition(b, "Planned").get("status") == "True"
            new = (status.get("plan") or {}).get("inputsHash") != first["inputsHash"]
            return b if current and ok and new else None

        second = wait_for("the new plan", replanned, cluster.timeout)["status"]["plan"]
        assert second["predicted"]["latencySeconds"] <= 2.0
        events = cluster.kubectl("get", "events", "-n", ns, "-o", "json").stdout
        reasons = {e.get("reason") for e in json.loads(events)["items"]}
        assert {"PlanChosen", "Replanned"} <= reasons, reasons

        # Uninstall: the deployment first (the operator removes its finalizer), then
        # the release.
        cluster.kubectl("delete", "egd", name, "-n", ns, f"--timeout={int(cluster.timeout)}s")
        cluster.helm("uninstall", RELEASE, "--namespace", ns, "--wait")
        gone = cluster.kubectl("get", "deployment", RELEASE, "-n", ns, check=False)
        assert gone.returncode != 0
        roles = cluster.kubectl("get", "clusterrole", f"{RELEASE}-discovery", check=False)
        assert roles.returncode != 0
    finally:
        cleanup(cluster, ns, name, crd_existed)


def cleanup(cluster: Cluster, ns: str, name: str, crd_existed: bool) -> None:
    """Remove whatever the test left, whatever state it stopped in."""
    unblock = json.dumps({"metadata": {"finalizers": None}})
    cluster.kubectl(
        "patch", "egd", name, "-n", ns, "--type", "merge", "-p", unblock, check=False
    )  # fmt: skip
    cluster.helm("uninstall", RELEASE, "--namespace", ns, check=False)
    cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
    if not crd_existed:
        cluster.kubectl("delete", "crd", CRD, "--wait=false", check=False)
