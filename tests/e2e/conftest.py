"""Tests against a real cluster: skipped unless pytest runs with ``--with-e2e``, a
kubeconfig exists (``$KUBECONFIG`` or ``~/.kube/config``) and ``helm`` and ``kubectl``
are on ``PATH``. docs/install.md has a kind recipe.

``EXEGPT_E2E_HELM_ARGS`` adds arguments to ``helm install`` (for example the images a
kind cluster was loaded with); ``EXEGPT_E2E_TIMEOUT`` is the seconds each wait allows
(default 300).
"""

from __future__ import annotations

import os
import shlex
import shutil

import pytest
from e2ecluster import Cluster, kubeconfig


@pytest.fixture
def cluster(request: pytest.FixtureRequest) -> Cluster:
    if not request.config.getoption("--with-e2e"):
        pytest.skip("needs a real cluster: run with --with-e2e (docs/install.md)")
    if kubeconfig() is None:
        pytest.skip("no kubeconfig ($KUBECONFIG or ~/.kube/config)")
    missing = [tool for tool in ("kubectl", "helm") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not on PATH")
    return Cluster(
        helm_args=tuple(shlex.split(os.environ.get("EXEGPT_E2E_HELM_ARGS", ""))),
        timeout=float(os.environ.get("EXEGPT_E2E_TIMEOUT", "300")),
    )
