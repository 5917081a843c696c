"""Runner tests: tiny models on the CPU. Tests marked ``gpu`` need a CUDA device and are
skipped without one. Helpers live in ``tiny.py`` beside this file (importable as
``tiny``)."""

from __future__ import annotations

import pytest
import torch


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _few_threads() -> None:
    # tiny models: more threads only add overhead, and the CI machines have two cores
    torch.set_num_threads(1)
