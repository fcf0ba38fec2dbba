"""Shared fixtures of the chart tests: the generator script, loaded from hack/ by path."""

from __future__ import annotations

import importlib.util
import sys

import pytest
from chart import REPO, helm_binary


@pytest.fixture(scope="session")
def helm_bin():
    path = helm_binary()
    if not path.exists():
        pytest.fail(f"pinned helm missing at {path}: run hack/install-binaries.sh")
    return path


@pytest.fixture(scope="session")
def generator():
    """hack/render-chart-artifacts.py as a module (its name has dashes)."""
    name = "render_chart_artifacts"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "hack" / "render-chart-artifacts.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]
