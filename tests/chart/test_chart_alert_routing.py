"""Alertmanager as the chart configures it routes pages and tickets apart, checked by amtool.

``amtool config routes test`` walks the rendered route tree for a label set and prints the
receiver(s) it reaches; inhibition (warnings held back under a critical alert of the same
service) is proven live in tests/test_alert_e2e.py.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml
from chart_render import RECEIVERS, render


def _routes(amtool: str, config: Path, *labels: str) -> str:
    res = subprocess.run([amtool, "config", "routes", "test", f"--config.file={config}", *labels],
                         capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout.strip()


def _config(tmp: Path, route: dict[str, object]) -> Path:
    r = render({"alertmanager": {"receivers": RECEIVERS, "route": route}})
    path = tmp / "alertmanager.yml"
    path.write_text(r.configmap_data(r.name("alertmanager"), "alertmanager.yml"))
    return path


def test_pages_and_tickets_reach_their_receivers(amtool: str, tmp_path: Path) -> None:
    cfg = _config(tmp_path, {"receiver": "team-chat", "pageReceiver": "pager"})
    assert _routes(amtool, cfg, "severity=critical", "service=shop") == "pager"
    assert _routes(amtool, cfg, "severity=warning", "service=shop") == "team-chat"
    assert _routes(amtool, cfg, "service=shop") == "team-chat"


def test_your_own_routes_come_before_the_page_route(amtool: str, tmp_path: Path) -> None:
    cfg = _config(tmp_path, {
        "receiver": "team-chat", "pageReceiver": "pager",
        "routes": [{"matchers": ['service="payments"'], "receiver": "team-chat"}],
    })
    assert _routes(amtool, cfg, "severity=critical", "service=payments") == "team-chat"
    assert _routes(amtool, cfg, "severity=critical", "service=shop") == "pager"


def test_default_grouping_and_inhibition_are_by_service(tmp_path: Path) -> None:
    r = render({})
    cfg = yaml.safe_load(r.configmap_data(r.name("alertmanager"), "alertmanager.yml"))
    assert cfg["route"]["group_by"] == ["alertname", "namespace", "service"]
    assert cfg["inhibit_rules"] == [{
        "source_matchers": ['severity="critical"'],
        "target_matchers": ['severity="warning"'],
        "equal": ["namespace", "service"],
    }]
