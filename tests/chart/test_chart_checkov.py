"""checkov finds nothing on the rendered manifests beyond the justified list in checkov_skips.yaml.

Runs the real checkov CLI (``--framework kubernetes --skip-download``: no network, bundled
checks only) over several renders at once. Skipped only if checkov is not installed.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart_render import Rendered

Get = Callable[[str], Rendered]

pytest.importorskip("checkov", reason="checkov is not installed in this environment")

SKIPS_FILE = Path(__file__).with_name("checkov_skips.yaml")
SCANNED = [
    "defaults",
    "all-on",
    "external-es",
    "extensions",
    "external-prometheus",
    "fluentd-only",
    "multi-node-es",
]


def _checkov() -> list[str]:
    exe = Path(sys.executable).with_name("checkov")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "checkov.main"]


def _failures(directory: Path) -> list[dict[str, Any]]:
    res = subprocess.run(
        [
            *_checkov(),
            "-d",
            str(directory),
            "--framework",
            "kubernetes",
            "--skip-download",
            "--quiet",
            "--compact",
            "-o",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    # Exit code 1 means "findings"; anything else (or no JSON) is checkov itself failing.
    assert res.returncode in (0, 1), res.stderr[-3000:]
    report = json.loads(res.stdout)
    reports = report if isinstance(report, list) else [report]
    assert all(rep["summary"]["parsing_errors"] == 0 for rep in reports), reports
    assert sum(rep["summary"]["resource_count"] for rep in reports) > 0
    return [f for rep in reports for f in rep["results"]["failed_checks"]]


def test_checkov_finds_nothing_outside_the_justified_skips(rendered: Get, tmp_path: Path) -> None:
    for scenario in SCANNED:
        rendered(scenario).write(tmp_path / scenario)
    skips = yaml.safe_load(SKIPS_FILE.read_text())
    assert all(s.get("reason", "").strip() for s in skips), "every skip needs a reason"
    used = [False] * len(skips)
    unexpected = []
    for f in _failures(tmp_path):
        hits = [
            i
            for i, s in enumerate(skips)
            if s["check"] == f["check_id"] and re.fullmatch(s["resources"], f["resource"])
        ]
        for i in hits:
            used[i] = True
        if not hits:
            unexpected.append(
                f"{f['check_id']} {f['resource']} ({f['check_name']}) "
                f"in {Path(f['file_path']).name}"
            )
    assert not unexpected, "\n".join(sorted(set(unexpected)))
    stale = [s["check"] + " " + s["resources"] for s, u in zip(skips, used, strict=True) if not u]
    assert not stale, f"skip entries that match no finding (remove them): {stale}"
