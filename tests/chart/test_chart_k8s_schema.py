"""Every rendered object validates (strict: unknown fields are errors) against the OpenAPI
schemas of the oldest and the newest Kubernetes release the chart supports.

The oldest is Chart.yaml's kubeVersion floor; the newest is the newest schema set
kubernetes-validate bundles that we have checked, named here so a package upgrade cannot
silently change what "supported" means.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from chart_render import CHART_DIR, CRD_KINDS, SCENARIOS, Rendered

Get = Callable[[str], Rendered]

OLDEST = "1.29.0"
NEWEST = "1.37.0"


def test_oldest_version_is_the_charts_kube_version_floor() -> None:
    chart = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
    assert chart["kubeVersion"] == f">={OLDEST}-0"


@pytest.mark.parametrize("version", [OLDEST, NEWEST])
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_rendered_objects_validate_strictly(rendered: Get, scenario: str, version: str) -> None:
    checked = 0
    for obj in rendered(scenario).objects:
        if obj["kind"] in CRD_KINDS:
            continue  # CRD kinds: not in the Kubernetes schemas (structure tested elsewhere)
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} on {version}: {exc.message}")
        checked += 1
    assert checked > 0


def test_strict_validation_rejects_an_unknown_field(rendered: Get) -> None:
    r = rendered("defaults")
    sts = copy.deepcopy(r.get("StatefulSet", r.name("prometheus")))
    sts["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(sts, NEWEST, strict=True)


def test_operator_objects_have_the_documented_shape(rendered: Get, tmp_path: Path) -> None:
    r = rendered("all-on")
    monitors = r.of_kind("PodMonitor")
    assert len(monitors) == 2
    for pm in monitors:
        assert pm["apiVersion"] == "monitoring.coreos.com/v1"
        assert set(pm["spec"]) <= {"selector", "namespaceSelector", "podMetricsEndpoints"}
        for ep in pm["spec"]["podMetricsEndpoints"]:
            assert set(ep) <= {"port", "path", "relabelings", "interval"}
            for rl in ep.get("relabelings", []):
                assert set(rl) <= {"sourceLabels", "separator", "regex", "action", "targetLabel"}
