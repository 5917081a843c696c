"""Shared pytest configuration. Test helpers live in ``builders.py`` beside this file
(importable as ``builders``: pytest puts this directory on ``sys.path``)."""

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--with-e2e",
        action="store_true",
        help="run tests/e2e against the cluster of the current kubeconfig (docs/install.md)",
    )
