"""The chart renders for every supported value set, and renders what an operator relies on.

Each test names the behaviour: pods are hardened, workloads have probes and resources, Services
reach their pods, data persists by default, Prometheus finds what the schema module says it
finds, Grafana is wired to the rendered Services.
"""

from __future__ import annotations

import configparser
import json
import re
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import helm_python
import pytest
import yaml
from chart_render import (
    CHART_DIR,
    CHART_NAME,
    CLUSTER_SCOPED,
    NAMESPACE,
    SCENARIOS,
    Rendered,
    copy_chart,
    render,
)

from rpcscope import schema

Get = Callable[[str], Rendered]

#: Containers that run to completion (hooks, jobs): no probes expected.
ONE_SHOT_KINDS = {"Pod", "Job", "CronJob"}
#: The in-chart metrics port of each component, as Prometheus's rpcscope-stack job keeps it.
METRICS_PORTS = {
    "alertmanager": 9093,
    "grafana": 3000,
    "fluentd": 24231,
    "fluentd-aggregator": 24231,
    "elasticsearch-exporter": 9114,
}
#: Init containers that run as root (and why): the kubelet creates a missing hostPath directory
#: as root 0755, so the tailer's uid could not write its tail positions there.
ROOT_INIT_CONTAINERS = {("fluentd", "positions-dir"): "chown the tail-positions hostPath"}
#: Long-running containers without a port to probe (and why).
NO_PORT_CONTAINERS = {"dashboard-sidecar": "watches ConfigMaps and writes files; serves nothing"}
#: Components that need a Kubernetes API token (and why).
NEEDS_API_TOKEN = {
    "prometheus": "kubernetes_sd_configs discovery",
    "fluentd": "kubernetes_metadata filter",
}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_scenario_renders_well_formed_objects(rendered: Get, scenario: str) -> None:
    r = rendered(scenario)
    assert r.objects, "nothing rendered"
    seen: set[tuple[str, str, str]] = set()
    for obj in r.objects:
        kind, meta = obj["kind"], obj["metadata"]
        key = (kind, meta.get("namespace", ""), meta["name"])
        assert key not in seen, f"duplicate {key}"
        seen.add(key)
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", meta["name"]), meta["name"]
        assert len(meta["name"]) <= 63, meta["name"]
        if kind not in CLUSTER_SCOPED:
            # Explicit namespace: rendered manifests applied by GitOps land in the release's.
            assert meta.get("namespace") == NAMESPACE or (kind in {"Role", "RoleBinding"}), (
                f"{kind}/{meta['name']} namespace {meta.get('namespace')!r}"
            )
        labels = meta.get("labels", {})
        assert labels.get("app.kubernetes.io/name") == CHART_NAME, f"{kind}/{meta['name']}"
        assert labels.get("app.kubernetes.io/instance") == r.release, f"{kind}/{meta['name']}"


def test_defaults_run_every_component(rendered: Get) -> None:
    """`helm install` with no values gives the whole stack (plus the setup and test hooks)."""
    assert rendered("defaults").components() == {
        "prometheus",
        "alertmanager",
        "grafana",
        "elasticsearch",
        "elasticsearch-setup",
        "kibana",
        "fluentd",
        "fluentd-aggregator",
        "elasticsearch-exporter",
        "test",
    }


@pytest.mark.parametrize(
    "scenario", ["defaults", "all-on", "external-es", "fluentd-only", "multi-node-es", "extensions"]
)
def test_helm_lint_is_clean(scenario: str) -> None:
    report = helm_python.lint(str(CHART_DIR), SCENARIOS[scenario], strict=True, namespace=NAMESPACE)
    # Severity 1 is INFO ("icon is recommended"); warnings and errors must be zero.
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not problems and not report["errors"], report


def _containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return list(spec.get("initContainers", [])) + list(spec["containers"])


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_every_pod_is_hardened(rendered: Get, scenario: str) -> None:
    r = rendered(scenario)
    for obj, labels, spec in r.pods():
        where = f"{scenario}: {obj['kind']}/{obj['metadata']['name']}"
        psc = spec.get("securityContext", {})
        assert psc.get("runAsNonRoot") is True, where
        assert psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
        assert not spec.get("hostNetwork") and not spec.get("hostPID"), where
        component = labels.get("app.kubernetes.io/component", "")
        if component not in NEEDS_API_TOKEN:
            assert spec.get("automountServiceAccountToken") is False, where
        for c in _containers(spec):
            csc = c.get("securityContext", {})
            cwhere = f"{where} container {c['name']}"
            if (component, c["name"]) in ROOT_INIT_CONTAINERS:
                # The one root container: chowns a hostPath directory, one capability, then exits.
                assert c["command"][0] == "chown", cwhere
                assert csc["capabilities"] == {"drop": ["ALL"], "add": ["CHOWN"]}, cwhere
                assert csc["readOnlyRootFilesystem"] is True, cwhere
                assert csc["allowPrivilegeEscalation"] is False, cwhere
                continue
            assert csc.get("readOnlyRootFilesystem") is True, cwhere
            assert csc.get("allowPrivilegeEscalation") is False, cwhere
            assert csc.get("privileged") in (None, False), cwhere
            assert "ALL" in csc.get("capabilities", {}).get("drop", []), cwhere
            assert not csc.get("capabilities", {}).get("add"), cwhere
            uid = csc.get("runAsUser", psc.get("runAsUser"))
            assert uid is None or uid != 0, cwhere


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_every_container_has_resources_probes_and_a_pinned_image(
    rendered: Get, scenario: str
) -> None:
    r = rendered(scenario)
    for obj, _, spec in r.pods():
        for c in _containers(spec):
            where = f"{scenario}: {obj['kind']}/{obj['metadata']['name']} {c['name']}"
            res = c.get("resources", {})
            for section in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(res.get(section, {})), f"{where} {section}"
            image = c["image"]
            tag = image.rsplit("/", 1)[-1].split("@")[0]
            assert ":" in tag and not tag.endswith(":latest"), f"{where}: unpinned {image}"
            if (
                obj["kind"] not in ONE_SHOT_KINDS
                and c in spec["containers"]
                and c["name"] not in NO_PORT_CONTAINERS
            ):
                assert "readinessProbe" in c and "livenessProbe" in c, where


def test_metrics_images_are_the_official_upstream_ones(rendered: Get) -> None:
    r = rendered("defaults")
    images = {
        labels["app.kubernetes.io/component"]: spec["containers"][0]["image"]
        for _, labels, spec in r.pods()
    }
    assert re.fullmatch(r"quay\.io/prometheus/prometheus:v\d+\.\d+\.\d+", images["prometheus"])
    assert re.fullmatch(r"quay\.io/prometheus/alertmanager:v\d+\.\d+\.\d+", images["alertmanager"])
    assert re.fullmatch(r"docker\.io/grafana/grafana:\d+\.\d+\.\d+", images["grafana"])


def test_global_image_registry_and_digest_rewrite_references() -> None:
    r = render(
        {
            "global": {"imageRegistry": "mirror.example.com/"},
            "prometheus": {"image": {"digest": "sha256:" + "a" * 64}},
        }
    )
    sts = r.get("StatefulSet", r.name("prometheus"))
    image = sts["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image.startswith("mirror.example.com/prometheus/prometheus:v")
    assert image.endswith("@sha256:" + "a" * 64)


def test_persistence_is_on_by_default_and_off_means_emptydir(rendered: Get) -> None:
    on, off = rendered("defaults"), rendered("no-persistence-no-netpol")
    for comp in ("prometheus", "alertmanager"):
        sts = on.get("StatefulSet", on.name(comp))
        assert [v["metadata"]["name"] for v in sts["spec"]["volumeClaimTemplates"]] == ["data"]
        sts_off = off.get("StatefulSet", off.name(comp))
        assert "volumeClaimTemplates" not in sts_off["spec"]
        vols = {v["name"]: v for v in sts_off["spec"]["template"]["spec"]["volumes"]}
        assert "emptyDir" in vols["data"]
    assert on.find("PersistentVolumeClaim", on.name("grafana")) is not None
    assert off.find("PersistentVolumeClaim", off.name("grafana")) is None
    # RWO volume: the new Grafana pod must not start before the old one released it.
    dep = on.get("Deployment", on.name("grafana"))
    assert dep["spec"]["strategy"]["type"] == "Recreate"


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


@pytest.mark.parametrize("scenario", ["defaults", "all-on"])
def test_every_pdb_and_service_selects_pods_and_ports_exist(rendered: Get, scenario: str) -> None:
    r = rendered(scenario)
    pods = [(labels, spec) for _, labels, spec in r.pods()]
    for pdb in r.of_kind("PodDisruptionBudget"):
        sel = pdb["spec"]["selector"]["matchLabels"]
        assert any(_selects(sel, lb) for lb, _ in pods), pdb["metadata"]["name"]
    for svc in r.of_kind("Service"):
        sel = svc["spec"].get("selector", {})
        matched = [spec for lb, spec in pods if _selects(sel, lb)]
        assert matched, f"Service {svc['metadata']['name']} selects no pod"
        for port in svc["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            declared = {
                (p.get("name"), p["containerPort"])
                for spec in matched
                for c in spec["containers"]
                for p in c.get("ports", [])
            }
            assert any(target in (n, num) for n, num in declared), (
                f"Service {svc['metadata']['name']} port {target} not declared by its pods"
            )


def test_metrics_components_have_a_pdb_by_default(rendered: Get) -> None:
    r = rendered("defaults")
    names = {p["metadata"]["name"] for p in r.of_kind("PodDisruptionBudget")}
    assert {r.name(c) for c in ("prometheus", "alertmanager", "grafana")} <= names


def _scrape_config(r: Rendered) -> dict[str, Any]:
    cfg = yaml.safe_load(r.configmap_data(r.name("prometheus"), "prometheus.yml"))
    return {job["job_name"]: job for job in cfg["scrape_configs"]}


def _meta_label(role: str, annotation: str) -> str:
    # Prometheus's kubernetes SD turns every non-[a-zA-Z0-9_] character into "_".
    return f"__meta_kubernetes_{role}_annotation_" + re.sub(r"[^a-zA-Z0-9_]", "_", annotation)


def test_prometheus_discovers_by_the_schema_annotations(rendered: Get) -> None:
    jobs = _scrape_config(rendered("defaults"))
    for job, role in (("kubernetes-pods", "pod"), ("kubernetes-services", "service")):
        relabels = jobs[job]["relabel_configs"]
        sources = {tuple(rc.get("source_labels", ())): rc for rc in relabels}
        keep = sources[(_meta_label(role, schema.SCRAPE_ANNOTATION),)]
        assert keep["action"] == "keep" and keep["regex"] == "true"
        path = sources[(_meta_label(role, schema.PATH_ANNOTATION),)]
        assert path["target_label"] == "__metrics_path__"
        port_rules = [
            rc
            for rc in relabels
            if _meta_label(role, schema.PORT_ANNOTATION) in rc.get("source_labels", ())
        ]
        assert port_rules and all(rc["target_label"] == "__address__" for rc in port_rules)
        # Simulate the IPv4 address rewrite exactly as Prometheus applies it (joined by ";").
        v4 = re.compile(port_rules[0]["regex"])
        m = v4.fullmatch("10.1.2.3:8080;9464")
        assert m is not None
        assert port_rules[0]["replacement"].replace("$1", m[1]).replace("$2", m[2]) == (
            "10.1.2.3:9464"
        )


def test_notes_tell_users_the_schema_annotations_and_port(rendered: Get) -> None:
    notes = rendered("defaults").notes
    for ann in (schema.SCRAPE_ANNOTATION, schema.PORT_ANNOTATION, schema.PATH_ANNOTATION):
        assert ann in notes
    assert f'"{schema.DEFAULT_METRICS_PORT}"' in notes
    assert schema.METRICS_PATH in notes


def test_prometheus_scrapes_each_stack_component_on_its_declared_port(rendered: Get) -> None:
    r = rendered("defaults")
    job = _scrape_config(r)["rpcscope-stack"]
    keep = next(
        rc
        for rc in job["relabel_configs"]
        if rc.get("action") == "keep" and len(rc.get("source_labels", [])) == 2
    )
    pattern = re.compile(keep["regex"])
    declared: dict[str, set[int]] = {}
    for _, labels, spec in r.pods():
        comp = labels.get("app.kubernetes.io/component", "")
        for c in spec["containers"]:
            for p in c.get("ports", []):
                declared.setdefault(comp, set()).add(p["containerPort"])
    for comp, port in METRICS_PORTS.items():
        if comp not in declared:
            continue  # component not rendered by default (covered by the graph tests)
        assert port in declared[comp], f"{comp} does not declare its metrics port {port}"
        assert pattern.fullmatch(f"{comp}{keep['separator']}{port}"), comp
    # Non-metrics ports are not scraped (ES HTTPS API, Fluentd forward, Kibana UI).
    for other in ("elasticsearch:9200", "fluentd-aggregator:24224", "kibana:5601"):
        assert not pattern.fullmatch(other)
    # The annotation jobs drop this release's pods, so nothing is scraped twice.
    drop = next(
        rc
        for rc in _scrape_config(r)["kubernetes-pods"]["relabel_configs"]
        if rc.get("action") == "drop" and "instance" in "".join(rc["source_labels"])
    )
    assert re.fullmatch(drop["regex"], f"{CHART_NAME};{r.release}")


def test_prometheus_alerts_go_to_our_alertmanager_or_the_external_one() -> None:
    ours = yaml.safe_load((r := render({})).configmap_data(r.name("prometheus"), "prometheus.yml"))
    sd = ours["alerting"]["alertmanagers"][0]["kubernetes_sd_configs"][0]
    assert "app.kubernetes.io/component=alertmanager" in sd["selectors"][0]["label"]
    ext = render(
        {"alertmanager": {"enabled": False, "external": {"url": "https://am.corp:8443/am"}}}
    )
    cfg = yaml.safe_load(ext.configmap_data(ext.name("prometheus"), "prometheus.yml"))
    am = cfg["alerting"]["alertmanagers"][0]
    assert am["scheme"] == "https" and am["path_prefix"] == "/am"
    assert am["static_configs"][0]["targets"] == ["am.corp:8443"]


def test_discovery_rbac_is_read_only_and_namespaced_when_asked(rendered: Get) -> None:
    cluster = rendered("defaults")
    prom = cluster.name("prometheus")
    roles = [ro for ro in cluster.of_kind("ClusterRole") if ro["metadata"]["name"].endswith(prom)]
    assert len(roles) == 1
    assert not [ro for ro in cluster.of_kind("Role") if ro["metadata"]["name"] == prom]
    for rule in roles[0]["rules"]:
        assert set(rule["verbs"]) <= {"get", "list", "watch"}
        assert "secrets" not in rule["resources"] and "*" not in rule["resources"]
    scoped = rendered("all-on")
    assert not [ro for ro in scoped.of_kind("ClusterRole") if ro["metadata"]["name"].endswith(prom)]
    prom_roles = [ro for ro in scoped.of_kind("Role") if ro["metadata"]["name"] == prom]
    assert {ro["metadata"]["namespace"] for ro in prom_roles} >= {
        "shop",
        "payments",
        NAMESPACE,
    }


def test_rule_files_reach_prometheus_and_operator_objects(tmp_path: Path) -> None:
    chart = copy_chart(tmp_path)
    rules = {"groups": [{"name": "t", "rules": [{"alert": "X", "expr": "up == 0"}]}]}
    # git keeps no empty folder: on a fresh clone files/rules/ does not exist yet.
    (chart / "files" / "rules").mkdir(parents=True, exist_ok=True)
    (chart / "files" / "rules" / "zz-test.yaml").write_text(yaml.safe_dump(rules))
    r = render(
        {"prometheus": {"operator": {"enabled": True, "labels": {"release": "kps"}}}},
        chart_dir=chart,
    )
    assert yaml.safe_load(r.configmap_data(f"{r.name('prometheus')}-rules", "zz-test.yaml")) == (
        rules
    )
    prs = {p["metadata"]["name"]: p for p in r.of_kind("PrometheusRule")}
    pr = prs[f"{r.fullname}-zz-test"]
    assert pr["spec"]["groups"] == rules["groups"]
    assert pr["metadata"]["labels"]["release"] == "kps"
    # A rules change rolls Prometheus (no reloader sidecar).
    before = render({}).get("StatefulSet", r.name("prometheus"))
    after = r.get("StatefulSet", r.name("prometheus"))
    key = "checksum/rules"
    assert (
        before["spec"]["template"]["metadata"]["annotations"][key]
        != after["spec"]["template"]["metadata"]["annotations"][key]
    )


def _datasources(r: Rendered) -> dict[str, dict[str, Any]]:
    ds = yaml.safe_load(r.configmap_data(r.name("grafana"), "datasources.yaml"))
    return {d["uid"]: d for d in ds["datasources"]}


def _service_url(r: Rendered, component: str, scheme: str) -> str:
    svc = r.get("Service", r.name(component))
    port = svc["spec"]["ports"][0]["port"]
    return f"{scheme}://{svc['metadata']['name']}.{NAMESPACE}.svc.cluster.local:{port}"


def test_grafana_datasources_point_at_the_rendered_services(rendered: Get) -> None:
    r = rendered("defaults")
    ds = _datasources(r)
    assert ds["prometheus"]["url"] == _service_url(r, "prometheus", "http")
    assert ds["prometheus"]["isDefault"] is True
    assert ds["alertmanager"]["url"] == _service_url(r, "alertmanager", "http")
    es = ds["elasticsearch"]
    assert es["url"].startswith("https://") and es["url"].endswith(":9200")
    if r.find("Service", r.name("elasticsearch")) is not None:
        assert es["url"] == _service_url(r, "elasticsearch", "https")
    assert es["jsonData"]["index"].startswith("logs-")
    assert es["jsonData"]["timeField"] == "@timestamp"
    link = es["jsonData"]["dataLinks"][0]
    assert link["field"] == "trace.id" and "${__value.raw}" in link["url"]
    # Credentials only by file reference, never inline.
    assert es["secureJsonData"]["basicAuthPassword"].startswith("$__file{")


def test_grafana_uses_external_prometheus_and_elasticsearch(rendered: Get) -> None:
    ds = _datasources(rendered("grafana-only"))
    assert ds["prometheus"]["url"] == "http://prom.monitoring:9090"
    assert "alertmanager" not in ds and "elasticsearch" not in ds
    r = rendered("external-es")
    es = _datasources(r)["elasticsearch"]
    assert es["url"] == "https://es.example.internal:9243"
    vols = {
        v["name"]: v
        for v in r.get("Deployment", r.name("grafana"))["spec"]["template"]["spec"]["volumes"]
    }
    assert vols["es-credentials"]["secret"]["secretName"] == "corp-es-reader"
    assert vols["es-ca"]["secret"]["secretName"] == "corp-es-ca"


def _file_mounts(spec: dict[str, Any]) -> dict[str, tuple[str, dict[str, Any]]]:
    """mountPath -> (volume name, volume) for the first container."""
    # Volumes not in the pod spec come from a StatefulSet's volumeClaimTemplates.
    vols: dict[str, Any] = defaultdict(lambda: {"volumeClaimTemplate": True})
    vols.update({v["name"]: v for v in spec["volumes"]})
    return {
        m["mountPath"]: (m["name"], vols[m["name"]]) for m in spec["containers"][0]["volumeMounts"]
    }


def _resolve(spec: dict[str, Any], path: str) -> tuple[dict[str, Any], str]:
    """The volume a file path lives in and the file's path inside that volume."""
    mounts = _file_mounts(spec)
    best = max((m for m in mounts if path.startswith(m.rstrip("/") + "/")), key=len)
    return mounts[best][1], path[len(best) :].lstrip("/")


def test_grafana_reads_every_credential_from_a_mounted_secret(rendered: Get) -> None:
    r = rendered("defaults")
    spec = r.get("Deployment", r.name("grafana"))["spec"]["template"]["spec"]
    env = {e["name"]: e for e in spec["containers"][0]["env"]}
    assert not any(
        "PASSWORD" in n and "value" in e and not n.endswith("__FILE") for n, e in env.items()
    )
    vol, key = _resolve(spec, env["GF_SECURITY_ADMIN_PASSWORD__FILE"]["value"])
    assert vol["secret"]["secretName"] == f"{r.name('grafana')}-credentials"
    assert key in r.secret_data(f"{r.name('grafana')}-credentials")
    ds_text = r.configmap_data(r.name("grafana"), "datasources.yaml")
    for ref in re.findall(r"\$__file\{([^}]+)\}", ds_text):
        vol, key = _resolve(spec, ref)
        assert key in [i["key"] for i in vol["secret"]["items"]], ref
    # The generated password is long and random-looking, never a known default.
    pw = r.secret_data(f"{r.name('grafana')}-credentials")["admin-password"]
    assert len(pw) == 32 and pw not in (b"admin", b"changeme", b"prom-operator")


def test_grafana_existing_admin_secret_replaces_the_generated_one() -> None:
    r = render({"grafana": {"admin": {"existingSecret": "my-grafana-admin"}}})
    assert r.find("Secret", f"{r.name('grafana')}-credentials") is None
    spec = r.get("Deployment", r.name("grafana"))["spec"]["template"]["spec"]
    vols = {v["name"]: v for v in spec["volumes"]}
    assert vols["admin"]["secret"]["secretName"] == "my-grafana-admin"
    assert "my-grafana-admin" in r.notes


def test_grafana_provisions_every_generated_dashboard(rendered: Get) -> None:
    r = rendered("defaults")
    files = sorted((CHART_DIR / "files" / "dashboards").glob("*.json"))
    spec = r.get("Deployment", r.name("grafana"))["spec"]["template"]["spec"]
    sources = {
        s["configMap"]["name"]
        for v in spec["volumes"]
        if v["name"] == "dashboards"
        for s in v["projected"]["sources"]
    }
    provider = yaml.safe_load(r.configmap_data(r.name("grafana"), "dashboards.yaml"))
    mounts = _file_mounts(spec)
    assert mounts[provider["providers"][0]["options"]["path"]][0] == "dashboards"
    found = {}
    for cm in r.of_kind("ConfigMap"):
        for key, text in (cm.get("data") or {}).items():
            if key.endswith(".json"):
                found[key] = (cm["metadata"]["name"], json.loads(text))
    for f in files:
        assert f.name in found, f"{f.name} not provisioned"
        cm_name, dash = found[f.name]
        assert cm_name in sources
        assert dash == json.loads(f.read_text())


def test_alertmanager_secrets_are_files_from_mounted_secrets(rendered: Get) -> None:
    r = rendered("all-on")
    cfg_text = r.configmap_data(r.name("alertmanager"), "alertmanager.yml")
    spec = r.get("StatefulSet", r.name("alertmanager"))["spec"]["template"]["spec"]
    refs = re.findall(r"_file: \"?([^\"\n]+)", cfg_text)
    assert len(refs) == 4  # slack url, smtp password, pagerduty key, webhook token
    wanted = {
        (ref["secretName"], ref["key"])
        for rcv in SCENARIOS["all-on"]["alertmanager"]["receivers"]
        for integ in rcv.values()
        if isinstance(integ, dict)
        for ref in integ.values()
        if isinstance(ref, dict)
    }
    got = set()
    for path in refs:
        vol, key = _resolve(spec, path)
        got.add((vol["secret"]["secretName"], key))
    assert got == wanted
    # No values from Secrets in the ConfigMap, and nothing notifies by default.
    default_cfg = yaml.safe_load(
        (d := rendered("defaults")).configmap_data(d.name("alertmanager"), "alertmanager.yml")
    )
    assert default_cfg["route"]["receiver"] == "null"
    assert default_cfg["receivers"] == [{"name": "null"}]


def test_alertmanager_replicas_form_a_cluster(rendered: Get) -> None:
    r = rendered("all-on")
    args = r.get("StatefulSet", r.name("alertmanager"))["spec"]["template"]["spec"]["containers"][
        0
    ]["args"]
    peers = [a for a in args if a.startswith("--cluster.peer=")]
    assert len(peers) == 3
    headless = r.get("Service", f"{r.name('alertmanager')}-headless")
    assert all(f".{headless['metadata']['name']}.{NAMESPACE}.svc" in p for p in peers)
    single = rendered("defaults")
    args1 = single.get("StatefulSet", single.name("alertmanager"))["spec"]["template"]["spec"][
        "containers"
    ][0]["args"]
    assert "--cluster.listen-address=" in args1


def test_helm_test_hook_checks_each_enabled_metrics_component(rendered: Get) -> None:
    r = rendered("defaults")
    pod = r.get("Pod", r.name("test"))
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    script = pod["spec"]["containers"][0]["args"][0]
    for comp, path in (
        ("prometheus", "/-/ready"),
        ("alertmanager", "/-/ready"),
        ("grafana", "/api/health"),
    ):
        assert f"{_service_url(r, comp, 'http')}{path}" in script
    only = rendered("prometheus-only")
    script = only.get("Pod", only.name("test"))["spec"]["containers"][0]["args"][0]
    assert "grafana" not in script and "alertmanager" not in script


def _datasource_refs(node: Any) -> Iterator[tuple[str, str]]:
    """(uid, type) of every fixed datasource reference in a dashboard (variables skipped)."""
    if isinstance(node, dict):
        ds = node.get("datasource")
        if isinstance(ds, dict) and "uid" in ds and not str(ds["uid"]).startswith("$"):
            yield str(ds["uid"]), str(ds.get("type", ""))
        for value in node.values():
            yield from _datasource_refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _datasource_refs(value)


def test_dashboards_only_reference_provisioned_datasources(rendered: Get) -> None:
    r = rendered("defaults")
    provisioned = {uid: d["type"] for uid, d in _datasources(r).items()}
    refs = {
        ref
        for f in (CHART_DIR / "files" / "dashboards").glob("*.json")
        for ref in _datasource_refs(json.loads(f.read_text()))
    }
    for uid, kind in refs:
        assert uid in provisioned, f"dashboard datasource {uid!r} is not provisioned"
        assert kind in ("", provisioned[uid]), (uid, kind)


def _referenced_secrets(spec: dict[str, Any]) -> set[str]:
    names = set()
    for v in spec.get("volumes", []):
        if "secret" in v:
            names.add(v["secret"]["secretName"])
        for src in v.get("projected", {}).get("sources", []):
            if "secret" in src:
                names.add(src["secret"]["name"])
    for c in _containers(spec):
        for e in c.get("env", []):
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                names.add(ref["name"])
    return names


@pytest.mark.parametrize("scenario", ["defaults", "all-on"])
def test_every_secret_a_pod_mounts_is_rendered_or_named_in_values(
    rendered: Get, scenario: str
) -> None:
    """A missing Secret leaves a pod in ContainerCreating forever; catch it at render time."""
    r = rendered(scenario)
    rendered_secrets = {s["metadata"]["name"] for s in r.of_kind("Secret")}
    user_given = json.dumps(SCENARIOS[scenario])
    for obj, _, spec in r.pods():
        for name in _referenced_secrets(spec):
            assert name in rendered_secrets or f'"{name}"' in user_given, (
                f"{obj['kind']}/{obj['metadata']['name']} mounts Secret {name}, never rendered"
            )


def test_grafana_reads_logs_as_the_read_only_user_not_elastic(rendered: Get) -> None:
    r = rendered("defaults")
    spec = r.get("Deployment", r.name("grafana"))["spec"]["template"]["spec"]
    vols = {v["name"]: v for v in spec["volumes"]}
    secret = vols["es-credentials"]["secret"]["secretName"]
    if r.find("Secret", secret) is None:
        pytest.skip("in-chart Elasticsearch not rendered")
    assert r.secret_data(secret)["username"] != b"elastic"


@pytest.mark.parametrize("scenario", ["defaults", "all-on"])
def test_notes_password_commands_name_rendered_secrets_and_keys(
    rendered: Get, scenario: str
) -> None:
    r = rendered(scenario)
    commands = re.findall(r"get secret (\S+) -o jsonpath='\{\.data\.([^}]+)\}'", r.notes)
    assert len(commands) >= 2  # Grafana and Kibana
    for secret, key in commands:
        assert key in r.secret_data(secret), (secret, key)
    for secret in re.findall(r"Secret (\S+), key", r.notes):
        assert r.find("Secret", secret.rstrip(";,")) is not None, secret


def _claims(r: Rendered) -> dict[str, dict[str, Any]]:
    """Every PVC spec the render asks for: PVC objects and StatefulSet claim templates."""
    out = {p["metadata"]["name"]: p["spec"] for p in r.of_kind("PersistentVolumeClaim")}
    for sts in r.of_kind("StatefulSet"):
        for tmpl in sts["spec"].get("volumeClaimTemplates", []):
            out[f"{sts['metadata']['name']}/{tmpl['metadata']['name']}"] = tmpl["spec"]
    return out


def test_storage_class_global_default_component_override_and_dash() -> None:
    r = render(
        {"global": {"storageClass": "fast"}, "grafana": {"persistence": {"storageClass": "-"}}}
    )
    claims = _claims(r)
    assert len(claims) >= 3
    for name, spec in claims.items():
        want = "" if name == r.name("grafana") else "fast"
        assert spec.get("storageClassName") == want, name
    assert all("storageClassName" not in s for s in _claims(render({})).values())


def _ini(text: str) -> dict[str, dict[str, str]]:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(text)
    return {s: dict(parser[s]) for s in parser.sections()}


def test_grafana_ini_is_hardened_and_user_settings_merge_over_it(rendered: Get) -> None:
    r = rendered("all-on")
    ini = _ini(r.configmap_data(r.name("grafana"), "grafana.ini"))
    assert ini["users"]["allow_sign_up"] == "false"
    assert ini["auth.anonymous"]["enabled"] == "false"
    assert ini["analytics"]["reporting_enabled"] == "false"
    assert ini["server"]["root_url"] == "https://grafana.example.com"  # from values
    assert ini["server"]["http_port"] == "3000"  # default kept beside it
    assert "admin_password" not in ini.get("security", {})
    override = render({"grafana": {"grafana.ini": {"users": {"allow_sign_up": "true"}}}})
    ini2 = _ini(override.configmap_data(override.name("grafana"), "grafana.ini"))
    assert ini2["users"]["allow_sign_up"] == "true"
