"""The configs embedded in rendered ConfigMaps pass the real tools: promtool and amtool.

Debian's promtool (the one `make os-deps` installs) is built without Kubernetes service
discovery, so it rejects `kubernetes_sd_configs` as an unknown field. When that happens, and
only then, each `kubernetes_sd_configs` block is checked here against the fields Prometheus
documents for it and replaced by an empty `static_configs` before promtool checks the rest
(global settings, every relabel rule's regex and action, alerting, rule_files). The README
says so too.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart_render import CHART_DIR, SCENARIOS, Rendered, copy_chart, render

Get = Callable[[str], Rendered]

#: Fields Prometheus documents for kubernetes_sd_config (configuration.md), and roles.
K8S_SD_FIELDS = {
    "api_server",
    "role",
    "kubeconfig_file",
    "namespaces",
    "selectors",
    "attach_metadata",
    "basic_auth",
    "authorization",
    "oauth2",
    "proxy_url",
    "follow_redirects",
    "enable_http2",
    "tls_config",
}
K8S_SD_ROLES = {"node", "service", "pod", "endpoints", "endpointslice", "ingress"}


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)


def _check_k8s_sd(block: list[dict[str, Any]]) -> None:
    for sd in block:
        assert set(sd) <= K8S_SD_FIELDS, set(sd) - K8S_SD_FIELDS
        assert sd["role"] in K8S_SD_ROLES
        if "namespaces" in sd:
            assert set(sd["namespaces"]) <= {"names", "own_namespace"}
            assert all(isinstance(n, str) and n for n in sd["namespaces"].get("names", []))
        for sel in sd.get("selectors", []):
            assert set(sel) <= {"role", "label", "field"} and sel["role"] in K8S_SD_ROLES


def _without_k8s_sd(cfg: dict[str, Any]) -> dict[str, Any]:
    """Swap every kubernetes_sd_configs for an empty static_configs, checking it first."""
    blocks = list(cfg.get("scrape_configs", []))
    blocks += (cfg.get("alerting") or {}).get("alertmanagers", [])
    for block in blocks:
        if "kubernetes_sd_configs" in block:
            _check_k8s_sd(block.pop("kubernetes_sd_configs"))
            block.setdefault("static_configs", [{"targets": []}])
    return cfg


def promtool_check_config(promtool: str, text: str, tmp: Path) -> None:
    """``promtool check config`` on ``text``; fails the test with promtool's output."""
    path = tmp / "prometheus.yml"
    path.write_text(text)
    res = _run([promtool, "check", "config", str(path)])
    if res.returncode != 0 and "field kubernetes_sd_configs not found" in res.stdout + res.stderr:
        path.write_text(yaml.safe_dump(_without_k8s_sd(yaml.safe_load(text))))
        res = _run([promtool, "check", "config", str(path)])
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize("scenario", ["defaults", "all-on", "prometheus-only", "external-es"])
def test_promtool_accepts_the_rendered_prometheus_config(
    rendered: Get, promtool: str, tmp_path: Path, scenario: str
) -> None:
    r = rendered(scenario)
    promtool_check_config(
        promtool, r.configmap_data(r.name("prometheus"), "prometheus.yml"), tmp_path
    )


def test_promtool_accepts_config_with_external_alertmanager_and_extra_jobs(
    promtool: str, tmp_path: Path
) -> None:
    r = render(
        {
            "alertmanager": {"enabled": False, "external": {"url": "https://am.corp/prefix"}},
            "prometheus": {
                "extraScrapeConfigs": [
                    {"job_name": "node", "static_configs": [{"targets": ["node:9100"]}]}
                ]
            },
        }
    )
    promtool_check_config(
        promtool, r.configmap_data(r.name("prometheus"), "prometheus.yml"), tmp_path
    )


def test_promtool_catches_a_broken_relabel_rule(promtool: str, tmp_path: Path) -> None:
    """The check above can fail: an invalid regex in the rendered config is reported."""
    r = render({})
    cfg = yaml.safe_load(r.configmap_data(r.name("prometheus"), "prometheus.yml"))
    cfg["scrape_configs"][1]["relabel_configs"][0]["regex"] = "(unclosed"
    with pytest.raises(AssertionError):
        promtool_check_config(promtool, yaml.safe_dump(cfg), tmp_path)


def test_promtool_accepts_every_rendered_rule_file(
    rendered: Get, promtool: str, tmp_path: Path
) -> None:
    """Rules from files/rules/ (generated from alerts/) and the default SLO's rules (slos.yaml,
    rendered from alerting.slos) as they reach Prometheus."""
    r = rendered("defaults")
    data = r.get("ConfigMap", f"{r.name('prometheus')}-rules").get("data") or {}
    sources = sorted(p.name for p in (CHART_DIR / "files" / "rules").glob("*.yaml"))
    assert sorted(data) == sorted([*sources, "slos.yaml"])
    if not data:
        pytest.skip("files/rules/ is empty so far (alerts/ not generated yet)")
    paths = []
    for key, text in data.items():
        (tmp_path / key).write_text(text)
        paths.append(str(tmp_path / key))
    res = _run([promtool, "check", "rules", *paths])
    assert res.returncode == 0, res.stdout + res.stderr


def test_rule_plumbing_delivers_valid_rules_and_rejects_broken_ones(
    promtool: str, tmp_path: Path
) -> None:
    """Independent of alerts/: a rule file dropped in files/rules/ comes out intact."""
    chart = copy_chart(tmp_path)
    good = {
        "groups": [
            {
                "name": "grpc",
                "rules": [
                    {
                        "record": "grpc:handled:rate5m",
                        "expr": "sum by (job) (rate(grpc_server_handled_total[5m]))",
                    },
                    {
                        "alert": "GRPCDown",
                        "expr": 'up{job="shop"} == 0',
                        "for": "5m",
                        "labels": {"severity": "critical"},
                        "annotations": {"summary": "{{ $labels.job }} is down"},
                    },
                ],
            }
        ]
    }
    bad = {"groups": [{"name": "broken", "rules": [{"alert": "X", "expr": "rate(up[5m]"}]}]}
    # git keeps no empty folder: on a fresh clone files/rules/ does not exist yet.
    (chart / "files" / "rules").mkdir(parents=True, exist_ok=True)
    (chart / "files" / "rules" / "good.yaml").write_text(yaml.safe_dump(good))
    (chart / "files" / "rules" / "bad.yaml").write_text(yaml.safe_dump(bad))
    r = render({}, chart_dir=chart)
    cm = f"{r.name('prometheus')}-rules"
    for key, expect_ok in (("good.yaml", True), ("bad.yaml", False)):
        path = tmp_path / key
        path.write_text(r.configmap_data(cm, key))
        res = _run([promtool, "check", "rules", str(path)])
        assert (res.returncode == 0) is expect_ok, res.stdout + res.stderr


@pytest.mark.parametrize("scenario", ["defaults", "all-on"])
def test_amtool_accepts_the_rendered_alertmanager_config(
    rendered: Get, amtool: str, tmp_path: Path, scenario: str
) -> None:
    r = rendered(scenario)
    text = r.configmap_data(r.name("alertmanager"), "alertmanager.yml")
    # amtool resolves *_file paths only at send time; the check is on structure and fields.
    path = tmp_path / "alertmanager.yml"
    path.write_text(text)
    res = _run([amtool, "check-config", str(path)])
    assert res.returncode == 0, res.stdout + res.stderr
    receivers = {rc["name"] for rc in yaml.safe_load(text)["receivers"]}
    expected = {"null"} | {
        rc["name"] for rc in SCENARIOS[scenario].get("alertmanager", {}).get("receivers", [])
    }
    assert receivers == expected


def test_amtool_catches_an_unknown_receiver_field(amtool: str, tmp_path: Path) -> None:
    r = render({})
    cfg = yaml.safe_load(r.configmap_data(r.name("alertmanager"), "alertmanager.yml"))
    cfg["receivers"][0]["slack_configs"] = [{"api_url_fle": "/x", "channel": "#a"}]
    path = tmp_path / "alertmanager.yml"
    path.write_text(yaml.safe_dump(cfg))
    assert _run([amtool, "check-config", str(path)]).returncode != 0
