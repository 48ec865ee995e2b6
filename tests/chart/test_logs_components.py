"""The log side of the chart: Elasticsearch, Kibana, Fluentd and the elasticsearch-exporter.

Offline renders with helm-python-sdk (chart_render). What a user depends on: discovery settings
that let a cluster form, external mode wiring every client to the external URL and Secrets,
generated passwords and certificates that survive upgrades, certificates valid for the names
clients use, least-privilege users, and Fluentd running exactly fluentd-config/.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart_render import (
    EXTERNAL_ES,
    REPO,
    SCENARIOS,
    Rendered,
    copy_chart,
    merge,
    render,
    render_error,
    with_existing_secrets,
)

LOG_COMPONENTS = {
    "elasticsearch",
    "elasticsearch-setup",
    "kibana",
    "fluentd",
    "fluentd-aggregator",
    "elasticsearch-exporter",
}
#: External Elasticsearch, with the credentials Kibana needs there too.
EXTERNAL = merge(EXTERNAL_ES, {"kibana": {"elasticsearchCredentialsSecret": "corp-kibana-system"}})


def _pod(r: Rendered, kind: str, component: str) -> dict[str, Any]:
    spec: dict[str, Any] = r.get(kind, r.name(component))["spec"]["template"]["spec"]
    return spec


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def _secret_volumes(spec: dict[str, Any]) -> dict[str, str]:
    return {v["name"]: v["secret"]["secretName"] for v in spec.get("volumes", []) if "secret" in v}


def _es_yml(r: Rendered) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(
        r.configmap_data(r.name("elasticsearch"), "elasticsearch.yml")
    )
    return loaded


# --- Elasticsearch discovery -----------------------------------------------------------------


def test_single_node_uses_single_node_discovery_and_no_replicas(rendered: Any) -> None:
    r = rendered("defaults")
    yml = _es_yml(r)
    assert yml["discovery.type"] == "single-node"
    assert "discovery.seed_hosts" not in yml and "cluster.initial_master_nodes" not in yml
    sts = r.get("StatefulSet", r.name("elasticsearch"))
    assert sts["spec"]["replicas"] == 1
    # One node cannot hold a replica: without this every data stream would stay yellow.
    custom = json.loads(r.configmap_data(r.name("elasticsearch") + "-setup", "logs-custom.json"))
    assert custom["template"]["settings"]["index.number_of_replicas"] == 0
    assert custom["template"]["settings"]["index.lifecycle.name"] == "rpcscope-logs"


def test_multi_node_discovers_through_the_headless_service() -> None:
    r = render({"elasticsearch": {"replicas": 3}})
    es = r.name("elasticsearch")
    yml = _es_yml(r)
    assert "discovery.type" not in yml
    assert yml["discovery.seed_hosts"] == [f"{es}-headless"]
    # node.name is the pod name, so the initial masters are exactly the StatefulSet's pods.
    assert yml["node.name"] == "${POD_NAME}"
    assert yml["cluster.initial_master_nodes"] == [f"{es}-0", f"{es}-1", f"{es}-2"]
    sts = r.get("StatefulSet", es)
    assert sts["spec"]["replicas"] == 3
    assert sts["spec"]["serviceName"] == f"{es}-headless"
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    headless = r.get("Service", f"{es}-headless")
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is True
    assert {p["port"] for p in headless["spec"]["ports"]} == {9200, 9300}
    custom = json.loads(r.configmap_data(es + "-setup", "logs-custom.json"))
    assert custom["template"]["settings"]["index.number_of_replicas"] == 1


def test_two_nodes_are_refused_with_the_value_to_set() -> None:
    msg = render_error({"elasticsearch": {"replicas": 2}})
    assert "elasticsearch.replicas" in msg and "3" in msg


def test_security_and_tls_cannot_be_switched_off_through_extra_config() -> None:
    r = render(
        {
            "elasticsearch": {
                "extraConfig": {
                    "xpack.security.enabled": False,
                    "xpack.security.http.ssl.enabled": False,
                    "indices.memory.index_buffer_size": "20%",
                }
            }
        }
    )
    yml = _es_yml(r)
    assert yml["xpack.security.enabled"] is True
    assert yml["xpack.security.http.ssl.enabled"] is True
    assert yml["xpack.security.transport.ssl.enabled"] is True
    assert yml["indices.memory.index_buffer_size"] == "20%"


def test_no_privileged_init_and_mmap_off_by_default(rendered: Any) -> None:
    r = rendered("defaults")
    spec = _pod(r, "StatefulSet", "elasticsearch")
    assert _es_yml(r)["node.store.allow_mmap"] is False
    for c in spec.get("initContainers", []):
        sc = c["securityContext"]
        assert sc.get("privileged") is False and sc["runAsUser"] != 0
        assert sc["capabilities"]["drop"] == ["ALL"]
    assert "sysctls" not in spec.get("securityContext", {})


def test_elasticsearch_persists_by_default(rendered: Any) -> None:
    on = rendered("defaults").get("StatefulSet", rendered("defaults").name("elasticsearch"))
    assert [t["metadata"]["name"] for t in on["spec"]["volumeClaimTemplates"]] == ["data"]
    off = render({"elasticsearch": {"persistence": {"enabled": False}}})
    sts = off.get("StatefulSet", off.name("elasticsearch"))
    assert "volumeClaimTemplates" not in sts["spec"]
    vols = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
    assert "emptyDir" in vols["data"]


# --- external mode ---------------------------------------------------------------------------


def test_external_elasticsearch_renders_no_elasticsearch_and_wires_every_client() -> None:
    r = render(EXTERNAL)
    url = EXTERNAL["elasticsearch"]["external"]["url"]
    assert r.find("StatefulSet", r.name("elasticsearch")) is None
    assert not r.of_kind("Job")
    assert not [
        s for s in r.of_kind("Secret") if "elasticsearch-credentials" in s["metadata"]["name"]
    ]
    assert "elasticsearch-setup" not in r.components()

    for kind, component in (("DaemonSet", "fluentd"), ("Deployment", "fluentd-aggregator")):
        spec = _pod(r, kind, component)
        env = _env(spec["containers"][0])
        assert env["FLUENT_ELASTICSEARCH_HOSTS"] == url
        assert env["FLUENT_ELASTICSEARCH_CA_FILE"] == "/etc/fluent/elasticsearch-ca/ca.crt"
        vols = _secret_volumes(spec)
        assert vols["elasticsearch-credentials"] == "corp-es-writer"
        assert vols["elasticsearch-ca"] == "corp-es-ca"

    exporter = _pod(r, "Deployment", "elasticsearch-exporter")["containers"][0]
    assert f"--es.uri={url}" in exporter["args"]
    assert (
        _secret_volumes(_pod(r, "Deployment", "elasticsearch-exporter"))[
            "elasticsearch-credentials"
        ]
        == "corp-es-writer"
    )

    kibana = _pod(r, "Deployment", "kibana")
    kyml = yaml.safe_load(r.configmap_data(r.name("kibana"), "kibana.yml"))
    assert kyml["elasticsearch.hosts"] == [url]
    assert _secret_volumes(kibana)["elasticsearch-credentials"] == "corp-kibana-system"
    assert _secret_volumes(kibana)["elasticsearch-ca"] == "corp-es-ca"


def test_external_elasticsearch_without_ca_uses_the_system_trust_store() -> None:
    values = merge(EXTERNAL, {"elasticsearch": {"external": {"caSecret": ""}}})
    r = render(values)
    spec = _pod(r, "DaemonSet", "fluentd")
    env = _env(spec["containers"][0])
    assert env["FLUENT_ELASTICSEARCH_CA_FILE"] == "/etc/ssl/certs/ca-certificates.crt"
    assert "elasticsearch-ca" not in _secret_volumes(spec)
    exporter = _pod(r, "Deployment", "elasticsearch-exporter")["containers"][0]
    assert "--es.ca=/etc/ssl/certs/ca-certificates.crt" in exporter["args"]


def test_kibana_never_falls_back_to_the_shipping_user() -> None:
    values = merge(EXTERNAL, {"kibana": {"elasticsearchCredentialsSecret": ""}})
    assert "kibana.elasticsearchCredentialsSecret" in render_error(values)


# --- every Secret a pod needs is there ----------------------------------------------------------


@pytest.mark.parametrize("scenario", ["defaults", "all-on", "external-es", "fluentd-only"])
def test_every_secret_a_log_pod_mounts_is_rendered_or_user_provided(
    rendered: Any, scenario: str
) -> None:
    r = rendered(scenario)
    rendered_secrets = {s["metadata"]["name"] for s in r.of_kind("Secret")}
    external = {
        r.values.get("elasticsearch", {}).get("external", {}).get(k)
        for k in ("caSecret", "credentialsSecret", "readerCredentialsSecret")
    } - {None, ""}
    external |= {r.values.get("kibana", {}).get("elasticsearchCredentialsSecret")} - {None, ""}
    checked = 0
    for obj, labels, spec in r.pods():
        if labels.get("app.kubernetes.io/component") not in LOG_COMPONENTS:
            continue
        names = set(_secret_volumes(spec).values())
        for c in spec["containers"] + spec.get("initContainers", []):
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    names.add(ref["name"])
        for name in names:
            checked += 1
            assert name in rendered_secrets | external, f"{obj['metadata']['name']}: {name}"
    assert checked


def test_setup_job_creates_a_user_for_each_enabled_client_only() -> None:
    r = render({"elasticsearchExporter": {"enabled": False}})
    script = r.configmap_data(r.name("elasticsearch") + "-setup", "setup.sh")
    # user ROLE DIR: the user name comes from the Secret (generated: rpcscope_fluentd).
    assert "user rpcscope_fluentd_writer /secrets/fluentd" in script
    assert r.secret_data(r.name("fluentd") + "-credentials")["username"] == b"rpcscope_fluentd"
    assert "/secrets/elasticsearch-exporter" not in script
    assert "/_security/user/kibana_system/_password" in script
    assert r.find("Secret", r.name("elasticsearch-exporter") + "-credentials") is None
    # The writer role can only append to rpcscope's own data streams.
    role = json.loads(
        r.configmap_data(r.name("elasticsearch") + "-setup", "role-rpcscope_fluentd_writer.json")
    )
    assert role == {
        "indices": [
            {"names": ["logs-rpcscope.*-*"], "privileges": ["create_doc", "auto_configure"]}
        ]
    }


def test_retention_reaches_the_ilm_policy() -> None:
    r = render({"elasticsearch": {"logs": {"retention": "30d", "rolloverMaxAge": "12h"}}})
    policy = json.loads(r.configmap_data(r.name("elasticsearch") + "-setup", "ilm-policy.json"))
    phases = policy["policy"]["phases"]
    assert phases["delete"]["min_age"] == "30d"
    assert phases["hot"]["actions"]["rollover"]["max_age"] == "12h"


# --- upgrade safety --------------------------------------------------------------------------

GENERATED = [
    ("elasticsearch-credentials", "password"),
    ("elasticsearch-tls", "tls.key"),
    ("fluentd-credentials", "password"),
    ("kibana-credentials", "password"),
    ("elasticsearch-exporter-credentials", "password"),
    ("kibana-encryption-keys", "saved-objects"),
    ("kibana-tls", "tls.crt"),
    ("fluentd-aggregator-credentials", "shared-key"),
    ("fluentd-aggregator-tls", "tls.key"),
]


def test_generated_secrets_and_certificates_survive_an_upgrade(tmp_path: Path) -> None:
    first = render()
    again = render()
    # Generation really is random (otherwise the next check would prove nothing).
    for suffix, key in GENERATED:
        name = f"{first.fullname}-{suffix}"
        assert first.secret_data(name)[key] != again.secret_data(name)[key], name
    existing = [s for s in first.of_kind("Secret")]
    chart = with_existing_secrets(copy_chart(tmp_path), existing)
    upgraded = render(chart_dir=chart, is_upgrade=True)
    for suffix, _key in GENERATED:
        name = f"{first.fullname}-{suffix}"
        assert upgraded.secret_data(name) == first.secret_data(name), name


def test_generated_secrets_are_kept_on_uninstall(rendered: Any) -> None:
    r = rendered("defaults")
    for suffix, _ in GENERATED:
        sec = r.get("Secret", f"{r.fullname}-{suffix}")
        assert sec["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


def test_existing_secrets_replace_generated_ones() -> None:
    r = render(
        {
            "elasticsearch": {"auth": {"existingSecret": "my-elastic"}},
            "fluentd": {"aggregator": {"sharedKeySecret": "my-forward-key"}},
        }
    )
    assert r.find("Secret", r.name("elasticsearch") + "-credentials") is None
    assert r.find("Secret", r.name("fluentd-aggregator") + "-credentials") is None
    es = _pod(r, "StatefulSet", "elasticsearch")
    assert _secret_volumes(es)["elastic-password"] == "my-elastic"
    agg = _pod(r, "Deployment", "fluentd-aggregator")
    assert _secret_volumes(agg)["shared-key"] == "my-forward-key"


# --- certificates ----------------------------------------------------------------------------

OPENSSL = shutil.which("openssl")


def _openssl(args: list[str], pem: bytes) -> str:
    assert OPENSSL is not None
    return subprocess.run(
        [OPENSSL, *args], input=pem, capture_output=True, check=True, timeout=30
    ).stdout.decode()


@pytest.mark.skipif(OPENSSL is None, reason="openssl is not installed: certificates not inspected")
@pytest.mark.parametrize("component", ["elasticsearch", "kibana", "fluentd-aggregator"])
def test_certificates_cover_the_names_clients_use_and_chain_to_the_ca(
    rendered: Any, component: str, tmp_path: Path
) -> None:
    r = rendered("defaults")
    data = r.secret_data(f"{r.name(component)}-tls")
    sans = _openssl(["x509", "-noout", "-ext", "subjectAltName"], data["tls.crt"])
    svc = r.name(component)
    for name in (svc, f"{svc}.{r.namespace}.svc", f"{svc}.{r.namespace}.svc.cluster.local"):
        assert f"DNS:{name}" in sans, (name, sans)
    if component == "elasticsearch":
        # Nodes by pod DNS name, and the readiness probe on 127.0.0.1.
        assert f"DNS:*.{svc}-headless.{r.namespace}.svc" in sans
        assert "IP Address:127.0.0.1" in sans
    ca = r.secret_data(f"{r.fullname}-ca")["tls.crt"]
    assert data["ca.crt"] == ca
    (tmp_path / "ca.pem").write_bytes(ca)
    out = _openssl(["verify", "-CAfile", str(tmp_path / "ca.pem")], data["tls.crt"])
    assert out.strip().endswith("OK")


def test_clients_reach_elasticsearch_by_a_name_on_its_certificate(rendered: Any) -> None:
    r = rendered("defaults")
    es = r.name("elasticsearch")
    url = f"https://{es}.{r.namespace}.svc.cluster.local:9200"
    env = _env(_pod(r, "DaemonSet", "fluentd")["containers"][0])
    assert env["FLUENT_ELASTICSEARCH_HOSTS"] == url
    kyml = yaml.safe_load(r.configmap_data(r.name("kibana"), "kibana.yml"))
    assert kyml["elasticsearch.hosts"] == [url]
    assert kyml["elasticsearch.ssl.verificationMode"] == "full"
    script = r.configmap_data(es + "-setup", "setup.sh")
    assert "--cacert /ca/ca.crt" in script
    job = r.job("elasticsearch-setup")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert _env(container)["ES_URL"] == f"https://{es}.{r.namespace}.svc:9200"


# --- Fluentd ---------------------------------------------------------------------------------


def test_fluentd_runs_exactly_fluentd_config(rendered: Any) -> None:
    r = rendered("defaults")
    cm = r.get("ConfigMap", r.name("fluentd") + "-config")["data"]
    source = REPO / "fluentd-config"
    files = {str(p.relative_to(source)): p.read_text() for p in source.rglob("*.conf")}
    assert {k.replace("__", "/"): v for k, v in cm.items()} == files
    for kind, component, entry in (
        ("DaemonSet", "fluentd", "daemonset.conf"),
        ("Deployment", "fluentd-aggregator", "aggregator.conf"),
    ):
        spec = _pod(r, kind, component)
        (vol,) = [v for v in spec["volumes"] if v["name"] == "config"]
        assert {i["path"] for i in vol["configMap"]["items"]} == set(files)
        assert spec["containers"][0]["command"][-1] == f"/fluentd/etc/rpcscope/{entry}"


def test_each_fluentd_role_gets_its_overflow_policy_and_the_aggregator_its_tls(
    rendered: Any,
) -> None:
    r = rendered("defaults")
    ds = _env(_pod(r, "DaemonSet", "fluentd")["containers"][0])
    agg_spec = _pod(r, "Deployment", "fluentd-aggregator")
    agg = _env(agg_spec["containers"][0])
    assert ds["FLUENT_BUFFER_OVERFLOW_ACTION"] == "block"
    assert agg["FLUENT_BUFFER_OVERFLOW_ACTION"] == "throw_exception"
    vols = _secret_volumes(agg_spec)
    assert vols["tls"] == r.name("fluentd-aggregator") + "-tls"
    assert vols["shared-key"] == r.name("fluentd-aggregator") + "-credentials"
    assert agg["FLUENT_FORWARD_SHARED_KEY_FILE"] == "/etc/fluent/forward/shared-key"
    svc = r.get("Service", r.name("fluentd-aggregator"))
    assert [p["port"] for p in svc["spec"]["ports"]] == [24224]
    # The tailer never reads its own (or the aggregator's) log files.
    excluded = json.loads(ds["FLUENT_CONTAINER_TAIL_EXCLUDE_PATH"])
    assert excluded[0] == f"/var/log/containers/{r.fullname}-fluentd*_{r.namespace}_*.log"


def test_fluentd_tailer_reads_logs_without_root_or_capabilities(rendered: Any) -> None:
    r = rendered("defaults")
    spec = _pod(r, "DaemonSet", "fluentd")
    psc = spec["securityContext"]
    assert psc["runAsNonRoot"] is True and psc["runAsUser"] != 0
    # containerd's log files are root:root 0640: group 0 reads them, no capability needed.
    assert psc["supplementalGroups"] == [0]
    hostpaths = {v["hostPath"]["path"]: v["name"] for v in spec["volumes"] if "hostPath" in v}
    # The log directory, read-only, and the tail positions of this release (test_chart_production).
    assert set(hostpaths) == {"/var/log", f"/var/lib/rpcscope-fluentd/{r.namespace}-{r.release}"}
    mounts = {m["name"]: m for m in spec["containers"][0]["volumeMounts"]}
    assert mounts[hostpaths["/var/log"]]["readOnly"] is True
    rules = r.get("ClusterRole", f"{r.name('fluentd')}-{r.namespace}")["rules"]
    assert rules == [
        {"apiGroups": [""], "resources": ["pods", "namespaces"], "verbs": ["get", "list", "watch"]}
    ]


def test_fluentd_only_without_aggregator_or_tailer_is_refused() -> None:
    msg = render_error(
        {"fluentd": {"daemonset": {"enabled": False}, "aggregator": {"enabled": False}}}
    )
    assert "fluentd.daemonset.enabled" in msg and "fluentd.aggregator.enabled" in msg


def test_kibana_and_elasticsearch_versions_must_match() -> None:
    msg = render_error({"kibana": {"image": {"tag": "8.18.0"}}})
    assert "kibana.image.tag" in msg and "elasticsearch.image.tag" in msg


def test_setup_job_cannot_be_dropped_while_clients_need_its_users() -> None:
    msg = render_error({"elasticsearch": {"setup": {"enabled": False}}})
    assert "elasticsearch.setup.enabled" in msg


def test_schema_rejects_unknown_keys_in_the_log_sections() -> None:
    for section in ("elasticsearch", "kibana", "fluentd", "elasticsearchExporter"):
        msg = render_error({section: {"enabeld": True}})
        assert "enabeld" in msg, msg


def test_fluentd_only_scenario_ships_logs_to_the_external_cluster(rendered: Any) -> None:
    r = rendered("fluentd-only")
    assert {"fluentd", "fluentd-aggregator"} <= r.components()
    assert not {"elasticsearch", "kibana", "elasticsearch-exporter"} & r.components()
    url = SCENARIOS["fluentd-only"]["elasticsearch"]["external"]["url"]
    env = _env(_pod(r, "DaemonSet", "fluentd")["containers"][0])
    assert env["FLUENT_ELASTICSEARCH_HOSTS"] == url


def test_log_pods_take_secrets_from_files_not_the_pod_spec(rendered: Any) -> None:
    r = rendered("defaults")
    for obj, labels, spec in r.pods():
        if labels.get("app.kubernetes.io/component") not in LOG_COMPONENTS:
            continue
        for c in spec["containers"] + spec.get("initContainers", []):
            refs = [e for e in c.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})]
            assert refs == [], f"{obj['metadata']['name']}/{c['name']}: {refs}"


def test_kibana_config_references_every_variable_its_start_script_sets(rendered: Any) -> None:
    r = rendered("defaults")
    script = _pod(r, "Deployment", "kibana")["containers"][0]["command"][-1]
    kyml = r.configmap_data(r.name("kibana"), "kibana.yml")
    exported = set(re.findall(r"^(RPCSCOPE_[A-Z_]+)=", script, flags=re.M))
    referenced = set(re.findall(r"\$\{(RPCSCOPE_[A-Z_]+)\}", kyml))
    assert exported == referenced and len(exported) == 5


def test_elastic_password_never_appears_in_a_pod_spec(rendered: Any) -> None:
    r = rendered("defaults")
    password = r.secret_data(r.name("elasticsearch") + "-credentials")["password"].decode()
    for obj in r.objects:
        if obj["kind"] in {"Secret"}:
            continue
        assert password not in json.dumps(obj), f"{obj['kind']}/{obj['metadata']['name']}"
    assert base64.b64encode(password.encode()).decode() not in json.dumps(
        [o for o in r.objects if o["kind"] != "Secret"]
    )


def test_grafana_gets_a_read_only_elasticsearch_user(rendered: Any) -> None:
    r = rendered("defaults")
    name = r.name("grafana-elasticsearch") + "-credentials"
    assert r.secret_data(name)["username"] == b"rpcscope_grafana"
    setup = r.name("elasticsearch") + "-setup"
    script = r.configmap_data(setup, "setup.sh")
    assert "user rpcscope_logs_reader /secrets/grafana-elasticsearch" in script
    role = json.loads(r.configmap_data(setup, "role-rpcscope_logs_reader.json"))
    assert role["indices"][0]["privileges"] == ["read", "view_index_metadata"]
    assert "cluster" not in role
    job = r.job("elasticsearch-setup")["spec"]["template"]["spec"]
    assert _secret_volumes(job)["user-grafana-elasticsearch"] == name


@pytest.mark.skipif(shutil.which("sh") is None, reason="no sh to syntax-check the scripts")
def test_every_shell_script_in_a_log_pod_parses(rendered: Any) -> None:
    """Init, start and probe scripts are checked with `sh -n` (they run under busybox/dash sh)."""
    r = rendered("all-on")
    scripts = []
    for obj, labels, spec in r.pods():
        if labels.get("app.kubernetes.io/component") not in LOG_COMPONENTS:
            continue
        for c in spec["containers"] + spec.get("initContainers", []):
            commands = [c.get("command", [])]
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                commands.append(c.get(probe, {}).get("exec", {}).get("command", []))
            for cmd in commands:
                if "-c" in cmd or "-ec" in cmd:
                    flag = "-c" if "-c" in cmd else "-ec"
                    scripts.append(
                        (f"{obj['metadata']['name']}/{c['name']}", cmd[cmd.index(flag) + 1])
                    )
    assert len(scripts) >= 4
    for where, script in scripts:
        proc = subprocess.run(
            ["sh", "-n", "-c", script], capture_output=True, text=True, timeout=30, check=False
        )
        assert proc.returncode == 0, f"{where}: {proc.stderr}"
