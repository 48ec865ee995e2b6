"""Fixtures for the chart tests: cached renders per scenario and the real CLI tools.

Helpers live in ``chart_render`` (importable from any test in this folder); this file only
wires them into pytest.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from chart_render import SCENARIOS, Rendered, render

_cache: dict[str, Rendered] = {}


@pytest.fixture(scope="session")
def rendered() -> Callable[[str], Rendered]:
    """``rendered("defaults")``: the scenario's render, computed once per session.

    Generated secrets differ between renders, so tests comparing two renders must call
    ``chart_render.render`` themselves.
    """

    def get(scenario: str) -> Rendered:
        if scenario not in _cache:
            _cache[scenario] = render(SCENARIOS[scenario])
        return _cache[scenario]

    return get


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not on PATH (make os-deps installs it from Debian's packages)")
    return path


@pytest.fixture(scope="session")
def promtool() -> str:
    return _tool("promtool")


@pytest.fixture(scope="session")
def amtool() -> str:
    return _tool("amtool")
