"""The chart ships the generated CRDs byte for byte (``charts/sync-crds.sh`` copies
them), Helm sees them as CRDs, and they match the official schema of a
CustomResourceDefinition."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from helmchart import CHART, ROOT, chart

CRDS = ROOT / "crds"
CHART_CRDS = CHART / "crds"
SYNC = ROOT / "charts" / "sync-crds.sh"


def test_chart_crds_are_the_generated_crds() -> None:
    generated = {p.name: p.read_bytes() for p in CRDS.glob("*.yaml")}
    shipped = {p.name: p.read_bytes() for p in CHART_CRDS.glob("*.yaml")}
    assert generated, "crds/ holds no CRD"
    assert sorted(shipped) == sorted(generated), "run charts/sync-crds.sh"
    stale = sorted(name for name in generated if shipped[name] != generated[name])
    assert not stale, f"charts/exegpt/crds/ differs from crds/ in {stale}: run charts/sync-crds.sh"


def test_helm_loads_them_as_crds() -> None:
    names = sorted(c["filename"] for c in chart().crds)
    assert names == sorted(f"exegpt/crds/{p.name}" for p in CRDS.glob("*.yaml"))
    for crd in chart().crds:
        assert yaml.safe_load(crd["data"])["kind"] == "CustomResourceDefinition"


@pytest.mark.parametrize("version", ["1.29", kubernetes_validate.utils.latest_version()])
def test_crds_match_the_kubernetes_schema(version: str) -> None:
    for path in sorted(CHART_CRDS.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            kubernetes_validate.validate(doc, version, strict=True)


def test_sync_script_copies_the_crds(tmp_path: Path) -> None:
    """``charts/sync-crds.sh`` run in a copy of the layout it works on."""
    shutil.copytree(CRDS, tmp_path / "crds")
    (tmp_path / "charts" / "exegpt" / "crds").mkdir(parents=True)
    (tmp_path / "charts" / "exegpt" / "crds" / "stale.yaml").write_text("kind: Stale\n")
    shutil.copy2(SYNC, tmp_path / "charts" / "sync-crds.sh")
    assert os.access(SYNC, os.X_OK), "charts/sync-crds.sh must be executable"
    subprocess.run([tmp_path / "charts" / "sync-crds.sh"], check=True, capture_output=True)
    synced = sorted((tmp_path / "charts" / "exegpt" / "crds").iterdir())
    assert [p.name for p in synced] == sorted(p.name for p in CRDS.glob("*.yaml"))
    for p in synced:
        assert p.read_bytes() == (CRDS / p.name).read_bytes()
