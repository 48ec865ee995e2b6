"""Shared fixtures for the Fluentd configuration tests."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
# The helper modules live beside the tests (tests/ is not a package).
sys.path.insert(0, str(HERE))

from fluentd_conf import CONFIG_DIR, ENTRY_FILES, Directive, parse_file  # noqa: E402


@pytest.fixture(params=ENTRY_FILES)
def entry(request: pytest.FixtureRequest) -> Path:
    return CONFIG_DIR / request.param


@pytest.fixture
def parsed(entry: Path) -> Directive:
    return parse_file(entry)
