"""What a production install depends on: it converges under `helm install --wait`, `--atomic`,
Argo CD and Flux; it renders the same twice for GitOps; it refuses likely mistakes at render
time. Each test here failed against the chart before the change it guards (issue 17).

Scripts the chart puts into pods (Kibana's credential wait, Elasticsearch's readiness check)
are run for real with the machine's `sh` and `curl` against a local HTTPS stand-in that presents
the chart's own generated Elasticsearch certificate.
"""

from __future__ import annotations

import base64
import configparser
import fnmatch
import json
import re
import shutil
import ssl
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import helm_python
import kubernetes_validate
import pytest
import yaml
from chart_netpol import Endpoint, allowed
from chart_render import (
    CHART_DIR,
    SCENARIOS,
    Rendered,
    copy_chart,
    merge,
    render,
    render_error,
    with_existing_secrets,
)
from test_chart_configs import promtool_check_config

Get = Callable[[str], Rendered]

needs_curl = pytest.mark.skipif(
    shutil.which("curl") is None or shutil.which("sh") is None,
    reason="needs sh and curl to run the chart's scripts",
)


# ---- A scripted HTTPS stand-in -------------------------------------------------------------


class _Scripted(BaseHTTPRequestHandler):
    """Answers each request with the next status of ``statuses`` (the last one repeats)."""

    statuses: list[tuple[int, bytes]]
    calls: list[dict[str, str]]

    def do_GET(self) -> None:
        self.calls.append({"path": self.path, "auth": self.headers.get("Authorization", "")})
        index = min(len(self.calls), len(self.statuses)) - 1
        status, body = self.statuses[index]
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@contextmanager
def _stand_in(
    tmp: Path, r: Rendered, statuses: list[tuple[int, bytes]]
) -> Iterator[tuple[str, list[dict[str, str]], Path]]:
    """(URL, recorded calls, CA file) of an HTTPS server with the chart's ES certificate."""
    tls = r.secret_data(r.name("elasticsearch") + "-tls")
    (tmp / "server.crt").write_bytes(tls["tls.crt"])
    (tmp / "server.key").write_bytes(tls["tls.key"])
    (tmp / "ca.crt").write_bytes(tls["ca.crt"])
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp / "server.crt", tmp / "server.key")
    calls: list[dict[str, str]] = []
    handler = type("Handler", (_Scripted,), {"calls": calls, "statuses": statuses})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}", calls, tmp / "ca.crt"
    finally:
        server.shutdown()
        server.server_close()


def _container(r: Rendered, kind: str, component: str, name: str) -> dict[str, Any]:
    spec = r.get(kind, r.name(component))["spec"]["template"]["spec"]
    for c in spec.get("initContainers", []) + spec["containers"]:
        if c["name"] == name:
            return dict(c)
    raise KeyError(name)


# ---- 1. Installs converge under --wait / --atomic / GitOps ---------------------------------


@pytest.mark.parametrize("scenario", ["defaults", "all-on", "external-es"])
def test_nothing_but_helm_test_is_a_hook(rendered: Get, scenario: str) -> None:
    """Helm waits for readiness before post-install hooks and Argo CD runs PostSync hooks only
    once everything is healthy: a workload whose readiness needs a hook never converges."""
    for obj in rendered(scenario).objects:
        hook = (obj["metadata"].get("annotations") or {}).get("helm.sh/hook")
        assert hook in (None, "test"), f"{obj['kind']}/{obj['metadata']['name']} is a {hook} hook"


def test_setup_job_is_replaced_only_when_what_it_does_changes() -> None:
    """A Job's pod template is immutable: a changed setup must come as a new Job (new name),
    an unchanged one must keep its name so a completed Job is not re-run on every sync."""
    a, b = render({}), render({})
    changed = render({"elasticsearch": {"logs": {"retention": "30d"}}})
    name = a.job("elasticsearch-setup")["metadata"]["name"]
    assert b.job("elasticsearch-setup")["metadata"]["name"] == name
    assert changed.job("elasticsearch-setup")["metadata"]["name"] != name
    assert len(name) <= 63
    assert "ttlSecondsAfterFinished" not in a.job("elasticsearch-setup")["spec"]


@needs_curl
def test_kibana_starts_only_once_elasticsearch_accepts_its_credentials(tmp_path: Path) -> None:
    r = render({})
    init = _container(r, "Deployment", "kibana", "wait-for-credentials")
    creds = r.secret_data(r.name("kibana") + "-credentials")
    mounts = tmp_path / "creds"
    mounts.mkdir()
    (mounts / "username").write_bytes(creds["username"])
    (mounts / "password").write_bytes(creds["password"])
    script = init["command"][2].replace("/etc/kibana-secrets/elasticsearch", str(mounts))
    unauthorized = (401, b'{"error":"unable to authenticate user [kibana_system]"}')
    with _stand_in(tmp_path, r, [unauthorized, unauthorized, (200, b"{}")]) as (url, calls, ca):
        proc = subprocess.run(
            ["sh", "-c", script],
            env={"PATH": "/usr/bin:/bin", "ES_URL": url, "ES_CA_FILE": str(ca)}
            | {"WAIT_SECONDS": "0"},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(calls) == 3, calls  # kept waiting through both refusals
    assert {c["path"] for c in calls} == {"/_security/_authenticate"}
    expected = "Basic " + base64.b64encode(creds["username"] + b":" + creds["password"]).decode()
    assert {c["auth"] for c in calls} == {expected}
    env = {e["name"]: e.get("value") for e in init["env"]}
    assert env["ES_URL"].startswith(f"https://{r.name('elasticsearch')}.")


# ---- 4. Chart bumps do not restart workloads; the tailer resumes after a restart -----------


def test_a_chart_version_bump_changes_no_pod_template(tmp_path: Path) -> None:
    """Any change to a pod template restarts its pods; a chart (or app) version bump alone,
    with the same values, must not restart anything."""
    bumped = copy_chart(tmp_path)
    chart_yaml = bumped / "Chart.yaml"
    meta = yaml.safe_load(chart_yaml.read_text())
    text = chart_yaml.read_text()
    text = text.replace(f"version: {meta['version']}", "version: 99.1.0")
    text = text.replace(f'appVersion: "{meta["appVersion"]}"', 'appVersion: "99.1.0"')
    chart_yaml.write_text(text)
    values = SCENARIOS["all-on"]
    before, after = render(values), render(values, chart_dir=bumped)
    assert any(
        o["metadata"]["labels"].get("helm.sh/chart", "").endswith("99.1.0") for o in after.objects
    ), "the bump did not take"
    templates = 0
    for kind in ("Deployment", "StatefulSet", "DaemonSet"):
        for obj in before.of_kind(kind):
            name = obj["metadata"]["name"]
            assert after.get(kind, name)["spec"]["template"] == obj["spec"]["template"], name
            templates += 1
    assert templates >= 8


def test_fluentd_tail_positions_live_on_the_node(rendered: Get) -> None:
    r = rendered("defaults")
    ds = r.get("DaemonSet", r.name("fluentd"))["spec"]["template"]["spec"]
    tailer = next(c for c in ds["containers"] if c["name"] == "fluentd")
    state = next(e["value"] for e in tailer["env"] if e["name"] == "FLUENT_STATE_PATH")
    tail_conf = r.configmap_data(r.name("fluentd") + "-config", "conf.d__source-tail.conf")
    assert "FLUENT_STATE_PATH" in tail_conf and "/pos/containers.log.pos" in tail_conf
    mount = next(m for m in tailer["volumeMounts"] if m["mountPath"] == f"{state}/pos")
    volume = next(v for v in ds["volumes"] if v["name"] == mount["name"])
    assert volume["hostPath"]["path"] == f"/var/lib/rpcscope-fluentd/{r.namespace}-{r.release}"
    assert volume["hostPath"]["type"] == "DirectoryOrCreate"
    # ... writable for the tailer's uid (the kubelet creates it root-owned).
    init = next(c for c in ds["initContainers"] if c["name"] == "positions-dir")
    uid = ds["securityContext"]["runAsUser"]
    assert init["command"] == ["chown", f"{uid}:0", f"{state}/pos"]
    custom = render({"fluentd": {"daemonset": {"positionsHostPath": "/data/fluentd-pos"}}})
    ds2 = custom.get("DaemonSet", custom.name("fluentd"))["spec"]["template"]["spec"]
    assert {"path": "/data/fluentd-pos", "type": "DirectoryOrCreate"} in [
        v.get("hostPath") for v in ds2["volumes"]
    ]


# ---- 3. Elasticsearch readiness waits for the cluster ---------------------------------------


def _es_probe(tmp: Path, r: Rendered, url: str, ca: Path) -> tuple[list[str], dict[str, str]]:
    """The readiness command with paths pointed at tmp, and its environment."""
    c = _container(r, "StatefulSet", "elasticsearch", "elasticsearch")
    script = c["readinessProbe"]["exec"]["command"][2]
    script = script.replace("/tmp/", f"{tmp}/")
    script = script.replace("/usr/share/elasticsearch/config/certs/ca.crt", str(ca))
    script = script.replace("https://127.0.0.1:9200", url)
    password = r.secret_data(r.name("elasticsearch") + "-credentials")["password"]
    (tmp / "elastic-password").write_bytes(password)
    env = {e["name"]: e["value"] for e in c["env"] if "value" in e}
    env |= {"PATH": "/usr/bin:/bin", "ELASTIC_PASSWORD_FILE": str(tmp / "elastic-password")}
    return ["sh", "-c", script], env


@needs_curl
@pytest.mark.parametrize(("replicas", "status"), [(3, "green"), (1, "yellow")])
def test_elasticsearch_is_ready_only_once_the_cluster_recovered(
    tmp_path: Path, replicas: int, status: str
) -> None:
    """A restarted node reports ready only when the cluster reached the status (408 until
    then), so a rolling restart waits for replicas; afterwards only the node itself counts."""
    r = render({"elasticsearch": {"replicas": replicas}})
    timeout = (408, b'{"status":"red","timed_out":true}')
    with _stand_in(tmp_path, r, [timeout, timeout, (200, b"{}")]) as (url, calls, ca):
        cmd, env = _es_probe(tmp_path, r, url, ca)
        results = [
            subprocess.run(cmd, env=env, capture_output=True, timeout=30, check=False).returncode
            for _ in range(4)
        ]
    assert results == [1, 1, 0, 0]
    wait = f"/_cluster/health?wait_for_status={status}&timeout=1s"
    assert [c["path"] for c in calls] == [wait, wait, wait, "/_cluster/health?local=true"]


def test_elasticsearch_readiness_status_can_be_chosen() -> None:
    r = render({"elasticsearch": {"replicas": 3, "readiness": {"waitForStatus": "yellow"}}})
    c = _container(r, "StatefulSet", "elasticsearch", "elasticsearch")
    assert {"name": "WAIT_FOR_STATUS", "value": "yellow"} in c["env"]


# ---- 5. External Elasticsearch: separate reader and writer credentials ----------------------


def _secret_of(r: Rendered, kind: str, component: str, volume: str) -> str:
    spec = r.get(kind, r.name(component))["spec"]["template"]["spec"]
    vol = next(v for v in spec["volumes"] if v["name"] == volume)
    return str(vol["secret"]["secretName"])


def test_external_readers_never_use_the_shipping_user(rendered: Get) -> None:
    r = rendered("external-es")
    ext = r.values["elasticsearch"]["external"]
    writer, reader = ext["credentialsSecret"], ext["readerCredentialsSecret"]
    assert writer != reader
    assert _secret_of(r, "DaemonSet", "fluentd", "elasticsearch-credentials") == writer
    assert _secret_of(r, "Deployment", "grafana", "es-credentials") == reader
    kibana = r.values["kibana"]["elasticsearchCredentialsSecret"]
    assert _secret_of(r, "Deployment", "kibana", "elasticsearch-credentials") == kibana
    assert kibana not in (writer, reader)


@pytest.mark.parametrize(
    ("missing", "words"),
    [
        (
            {"elasticsearch": {"external": {"readerCredentialsSecret": ""}}},
            ["elasticsearch.external.readerCredentialsSecret", "read"],
        ),
        (
            {"kibana": {"elasticsearchCredentialsSecret": ""}},
            ["kibana.elasticsearchCredentialsSecret", "kibana_system"],
        ),
    ],
    ids=["grafana-reader", "kibana-system"],
)
def test_external_mode_without_a_reader_is_refused(
    missing: dict[str, Any], words: list[str]
) -> None:
    message = render_error(merge(SCENARIOS["external-es"], missing))
    for word in words:
        assert word in message, message


# ---- 6. The tailer ships the namespaces it is told to -----------------------------------------


def _shipped(r: Rendered, files: list[str]) -> set[str]:
    """Which of ``files`` the tailer reads: in_tail's `path` (comma-separated globs) minus
    `exclude_path` (a JSON list of globs), as source-tail.conf takes them from the env."""
    spec = r.get("DaemonSet", r.name("fluentd"))["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in spec["containers"][0]["env"]}
    include = str(env["FLUENT_CONTAINER_TAIL_PATH"]).split(",")
    exclude = json.loads(str(env["FLUENT_CONTAINER_TAIL_EXCLUDE_PATH"]))
    return {
        f
        for f in files
        if any(fnmatch.fnmatchcase(f, p) for p in include)
        and not any(fnmatch.fnmatchcase(f, p) for p in exclude)
    }


_LOG_FILES = {
    ns: f"/var/log/containers/{pod}_{ns}_app-0123456789abcdef.log"
    for ns, pod in [
        ("shop", "shop-7d9f-abcde"),
        ("payments", "api-5c6b-xyz12"),
        ("kube-system", "coredns-5d78-q9w8e"),
        ("kube-node-lease", "lease-1"),
        ("observability", "rpcscope-rpcscope-stack-grafana-6f7-aaaaa"),
    ]
}
_SELF = "/var/log/containers/rpcscope-rpcscope-stack-fluentd-x1y2z_observability_fluentd-01.log"


def test_tailer_leaves_out_system_namespaces_by_default(rendered: Get) -> None:
    shipped = _shipped(rendered("defaults"), [*_LOG_FILES.values(), _SELF])
    assert shipped == {_LOG_FILES[ns] for ns in ("shop", "payments", "observability")}


def test_tailer_ships_only_included_namespaces() -> None:
    r = render({"fluentd": {"daemonset": {"namespaces": {"include": ["shop", "payments"]}}}})
    shipped = _shipped(r, [*_LOG_FILES.values(), _SELF])
    assert shipped == {_LOG_FILES["shop"], _LOG_FILES["payments"]}
    r = render({"fluentd": {"daemonset": {"namespaces": {"exclude": ["payments"]}}}})
    assert _LOG_FILES["kube-system"] in _shipped(r, list(_LOG_FILES.values()))
    assert _LOG_FILES["payments"] not in _shipped(r, list(_LOG_FILES.values()))


# ---- 7. GitOps renders are reproducible ------------------------------------------------------


def _gitops_values() -> dict[str, Any]:
    """Every value the README's GitOps list names, each set to a Secret name."""
    text = (CHART_DIR / "README.md").read_text()
    section = text.split("<!-- gitops:start")[1].split("<!-- gitops:end -->")[0]
    paths = re.findall(r"^\| `([a-zA-Z.]+)` \|", section, re.MULTILINE)
    assert len(paths) >= 10, paths
    values: dict[str, Any] = {}
    for path in paths:
        *parents, leaf = path.split(".")
        node = values
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = "gitops-" + path.lower().replace(".", "-")
    return values


@pytest.mark.parametrize("scenario", ["defaults", "all-on"])
def test_offline_renders_with_the_gitops_values_are_byte_identical(scenario: str) -> None:
    """Argo CD and `helm template` cannot look up: with every value the README lists set, two
    offline renders must not differ in a single byte (a generated secret anywhere would)."""
    values = merge(SCENARIOS[scenario], _gitops_values())
    first, second = render(values), render(values)
    assert first.files == second.files
    assert not first.of_kind("Secret"), [s["metadata"]["name"] for s in first.of_kind("Secret")]


def test_gitops_secrets_reach_the_pods_that_use_them() -> None:
    r = render(_gitops_values())
    mounted = {
        v["secret"]["secretName"]
        for _, _, spec in r.pods()
        for v in spec.get("volumes", [])
        if "secret" in v
    }
    listed = {
        v
        for v in _flatten(_gitops_values())
        if v != "gitops-global-tls-existingcasecret"  # the CA signs certificates; not mounted
    }
    assert listed <= mounted, listed - mounted


def _flatten(values: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for v in values.values():
        out += _flatten(v) if isinstance(v, dict) else [v]
    return out


# ---- 8. Likely mistakes are refused at render time ---------------------------------------------


@pytest.mark.parametrize(
    ("bad", "words", "fix"),
    [
        (
            {"kibana": {"resources": {"requests": {"cpu": "1 core"}}}},
            ["kibana.resources.requests.cpu", "500m"],
            {"kibana": {"resources": {"requests": {"cpu": "1"}}}},
        ),
        (
            {"elasticsearch": {"heapSize": "2g"}},
            ["elasticsearch.heapSize", "elasticsearch.resources.limits.memory", "half"],
            {"elasticsearch": {"heapSize": "1g"}},
        ),
        (
            {"fluentd": {"daemonset": {"bufferTotalLimitSize": "4GB"}}},
            ["fluentd.daemonset.bufferTotalLimitSize", "fluentd.daemonset.stateSizeLimit"],
            {"fluentd": {"daemonset": {"stateSizeLimit": "5Gi"}}},
        ),
        (
            {"fluentd": {"aggregator": {"stateSizeLimit": "512Mi"}}},
            ["fluentd.aggregator.bufferTotalLimitSize", "fluentd.aggregator.stateSizeLimit"],
            {"fluentd": {"aggregator": {"bufferTotalLimitSize": "256MB"}}},
        ),
    ],
    ids=["cpu-words", "heap-near-limit", "tailer-buffer-over-volume", "aggregator-buffer"],
)
def test_likely_mistakes_fail_naming_value_and_fix(
    bad: dict[str, Any], words: list[str], fix: dict[str, Any]
) -> None:
    message = render_error(bad)
    for word in words:
        assert word in message, f"{word!r} missing from: {message}"
    assert render(merge(bad, fix)).objects


def _with_running_elasticsearch(tmp: Path, replicas: int) -> Path:
    chart = with_existing_secrets(copy_chart(tmp), [])
    first = render({}, chart_dir=chart)
    sts = first.get("StatefulSet", first.name("elasticsearch"))
    sts["spec"]["replicas"] = replicas
    return with_existing_secrets(chart, [sts])


@pytest.mark.parametrize(("running", "wanted"), [(1, 3), (3, 1)])
def test_elasticsearch_cannot_switch_between_single_and_multi_node_on_upgrade(
    tmp_path: Path, running: int, wanted: int
) -> None:
    """Through the chart's lookup helper: the running StatefulSet's size decides."""
    chart = _with_running_elasticsearch(tmp_path, running)
    values = {"elasticsearch": {"replicas": wanted}}
    message = render_error(values, chart_dir=chart, is_upgrade=True)
    assert "elasticsearch.replicas" in message and f"elasticsearch.replicas={running}" in message
    assert "PVC" in message
    # Staying the same size renders; so does a fresh install (nothing running) of either size.
    assert render({"elasticsearch": {"replicas": running}}, chart_dir=chart, is_upgrade=True)
    assert render(values).objects


def test_elasticsearch_can_grow_a_multi_node_cluster(tmp_path: Path) -> None:
    chart = _with_running_elasticsearch(tmp_path, 3)
    assert render({"elasticsearch": {"replicas": 5}}, chart_dir=chart, is_upgrade=True).objects


def _patterns(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["pattern"]] if isinstance(node.get("pattern"), str) else []
        return own + [p for k, v in node.items() if k != "pattern" for p in _patterns(v)]
    if isinstance(node, list):
        return [p for v in node for p in _patterns(v)]
    return []


def test_every_schema_pattern_says_what_it_expects_in_words() -> None:
    """Helm prints only the failing regex; each regex starts with a named group whose name says
    in words what is expected (valid in Go's RE2 and ECMAScript regexes alike)."""
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    patterns = _patterns(schema)
    assert len(patterns) > 40
    for pattern in patterns:
        m = re.match(r"\^\(\?<([A-Za-z0-9_]+)>", pattern)
        assert m and len(m.group(1).split("_")) >= 3, pattern


def test_a_pattern_error_reads_as_words() -> None:
    chart = helm_python.Chart.load(str(CHART_DIR))
    with pytest.raises(helm_python.HelmValuesError) as err:
        chart.validate_schema({"prometheus": {"persistence": {"size": "10GB"}}})
    assert "Kubernetes_quantity_such_as_10Gi" in str(err.value)
    assert "/prometheus/persistence/size" in str(err.value)


# ---- 2. NetworkPolicies follow what the chart itself configures -----------------------------


def _pods(r: Rendered) -> dict[str, Endpoint]:
    out = {}
    for _obj, labels, spec in r.pods():
        ports = tuple(
            (p.get("name"), p["containerPort"], p.get("protocol", "TCP"))
            for c in spec["containers"]
            for p in c.get("ports", [])
        )
        comp = labels.get("app.kubernetes.io/component", "")
        out[comp] = Endpoint(comp, r.namespace, labels, {}, "10.244.0.5", ports)
    return out


_OUTSIDE = Endpoint("outside", ip="198.51.100.7")


def test_prometheus_may_reach_the_static_targets_it_is_configured_with() -> None:
    r = render(
        {
            "prometheus": {
                "extraScrapeConfigs": [
                    {"job_name": "node", "static_configs": [{"targets": ["10.0.0.9:9100"]}]},
                    {
                        "job_name": "blackbox",
                        "scheme": "https",
                        "static_configs": [{"targets": ["probe.example.com"]}],
                    },
                ]
            }
        }
    )
    prom, policies = _pods(r)["prometheus"], r.of_kind("NetworkPolicy")
    assert allowed(policies, prom, _OUTSIDE, (9100, "TCP"))
    assert allowed(policies, prom, _OUTSIDE, (443, "TCP"))  # https without a port
    assert not allowed(policies, prom, _OUTSIDE, (9101, "TCP"))


def test_receiver_ports_come_from_the_receivers() -> None:
    receivers = [
        {"name": "hook", "webhook": {"url": "https://hooks.example.com:8443/alerts"}},
        {
            "name": "mail",
            "email": {"to": "a@example.com", "from": "b@example.com", "smarthost": "smtp:2525"},
        },
    ]
    r = render({"alertmanager": {"receivers": receivers}})
    am, policies = _pods(r)["alertmanager"], r.of_kind("NetworkPolicy")
    for port in (8443, 2525, 443, 587):
        assert allowed(policies, am, _OUTSIDE, (port, "TCP")), port
    assert not allowed(policies, am, _OUTSIDE, (8080, "TCP"))


def test_grafana_may_reach_its_sso_provider_and_smtp_server_only_when_configured() -> None:
    plain = render({})
    grafana = _pods(plain)["grafana"]
    assert not allowed(plain.of_kind("NetworkPolicy"), grafana, _OUTSIDE, (443, "TCP"))
    ini = {
        "auth.generic_oauth": {
            "enabled": True,
            "auth_url": "https://sso.example.com/authorize",
            "token_url": "https://sso.example.com:8443/token",
        },
        "smtp": {"enabled": True, "host": "smtp.example.com:587"},
    }
    r = render(
        {
            "grafana": {"grafana.ini": ini},
            "networkPolicy": {
                "grafanaEgress": {"to": [{"ipBlock": {"cidr": "198.51.100.0/24"}}], "ports": [636]}
            },
        }
    )
    policies = r.of_kind("NetworkPolicy")
    for port in (443, 8443, 587, 636):
        assert allowed(policies, grafana, _OUTSIDE, (port, "TCP")), port
    elsewhere = Endpoint("elsewhere", ip="203.0.113.9")
    assert not allowed(policies, grafana, elsewhere, (443, "TCP"))


# ---- Extension points -----------------------------------------------------------------------


def test_every_workload_takes_the_per_component_extensions(rendered: Get) -> None:
    r = rendered("extensions")
    checked = set()
    for obj, labels, spec in r.pods():
        component = labels.get("app.kubernetes.io/component", "")
        if obj["kind"] not in ("Deployment", "StatefulSet", "DaemonSet"):
            continue
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        assert labels["team"] == "observability", where
        assert spec["priorityClassName"] == "observability-high", where
        assert spec["topologySpreadConstraints"][0]["maxSkew"] == 1, where
        main = spec["containers"][0]
        env = {e["name"]: e for e in main["env"]}
        assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName", where
        assert "HTTPS_PROXY" in env, where
        assert {"name": "corp-ca-bundle", "configMap": {"name": "corp-ca-bundle"}} in spec[
            "volumes"
        ], where
        assert any(m["mountPath"] == "/etc/corp-ca" for m in main["volumeMounts"]), where
        sa = r.get("ServiceAccount", spec["serviceAccountName"])
        assert sa["metadata"]["annotations"]["iam.gke.io/gcp-service-account"] == "obs@p.iam"
        checked.add(component)
    assert checked == {
        "prometheus",
        "alertmanager",
        "grafana",
        "elasticsearch",
        "kibana",
        "fluentd",
        "fluentd-aggregator",
        "elasticsearch-exporter",
    }


def test_pod_labels_cannot_override_the_selector() -> None:
    r = render({"grafana": {"podLabels": {"app.kubernetes.io/component": "other", "x": "y"}}})
    dep = r.get("Deployment", r.name("grafana"))
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert labels["app.kubernetes.io/component"] == "grafana" and labels["x"] == "y"
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()


_EXPOSED = {"grafana": 3000, "prometheus": 9090, "alertmanager": 9093, "kibana": 5601}


def test_ingresses_route_each_host_to_its_service(rendered: Get) -> None:
    r = rendered("extensions")
    services = {s["metadata"]["name"]: s for s in r.of_kind("Service")}
    for component, port in _EXPOSED.items():
        ing = r.get("Ingress", r.name(component))
        spec = ing["spec"]
        assert spec["ingressClassName"] == "nginx"
        assert ing["metadata"]["annotations"]["cert-manager.io/cluster-issuer"] == "corp"
        assert spec["tls"] == [
            {"secretName": f"{component}-web-tls", "hosts": [f"{component}.example.com"]}
        ]
        (rule,) = spec["rules"]
        assert rule["host"] == f"{component}.example.com"
        backend = rule["http"]["paths"][0]["backend"]["service"]
        svc = services[backend["name"]]
        assert backend["port"]["number"] == port
        assert port in [p["port"] for p in svc["spec"]["ports"]]


def test_httproutes_have_the_documented_shape(rendered: Get) -> None:
    """HTTPRoute is a CRD (not in kubernetes-validate's schemas): check the fields against the
    Gateway API v1 reference (spec.parentRefs, hostnames, rules[].matches/backendRefs)."""
    r = rendered("extensions")
    routes = r.of_kind("HTTPRoute")
    assert {rt["metadata"]["name"] for rt in routes} == {r.name(c) for c in _EXPOSED}
    for rt in routes:
        assert rt["apiVersion"] == "gateway.networking.k8s.io/v1"
        assert set(rt["spec"]) == {"parentRefs", "hostnames", "rules"}
        assert rt["spec"]["parentRefs"][0] == {
            "name": "public",
            "namespace": "gateways",
            "sectionName": "https",
        }
        (rule,) = rt["spec"]["rules"]
        assert set(rule) == {"matches", "backendRefs"}
        assert rule["matches"] == [{"path": {"type": "PathPrefix", "value": "/"}}]
        (ref,) = rule["backendRefs"]
        component = rt["metadata"]["labels"]["app.kubernetes.io/component"]
        assert ref == {"name": r.name(component), "port": _EXPOSED[component]}


def test_ingress_controller_reaches_exactly_the_exposed_components(rendered: Get) -> None:
    controller = Endpoint(
        "ingress",
        "ingress",
        {"app": "ingress-nginx"},
        {"kubernetes.io/metadata.name": "ingress"},
        "10.244.8.1",
    )
    r = rendered("extensions")
    pods, policies = _pods(r), r.of_kind("NetworkPolicy")
    for component, port in _EXPOSED.items():
        assert allowed(policies, controller, pods[component], (port, "TCP")), component
    assert not allowed(policies, controller, pods["elasticsearch"], (9200, "TCP"))
    plain = rendered("defaults")
    pods, policies = _pods(plain), plain.of_kind("NetworkPolicy")
    for component, port in _EXPOSED.items():
        assert not allowed(policies, controller, pods[component], (port, "TCP")), component


def test_remote_write_reads_credentials_from_mounted_secrets(
    rendered: Get, promtool: str, tmp_path: Path
) -> None:
    r = rendered("extensions")
    text = r.configmap_data(r.name("prometheus"), "prometheus.yml")
    cfg = yaml.safe_load(text)
    mimir, thanos = cfg["remote_write"]
    assert mimir["basic_auth"] == {
        "username": "tenant-1",
        "password_file": "/etc/prometheus/secrets/mimir-auth/password",
    }
    assert mimir["tls_config"]["ca_file"] == "/etc/prometheus/secrets/mimir-ca/ca.crt"
    assert (
        thanos["authorization"]["credentials_file"] == "/etc/prometheus/secrets/thanos-token/token"
    )
    spec = r.get("StatefulSet", r.name("prometheus"))["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: volumes.get(m["name"]) for m in spec["containers"][0]["volumeMounts"]}
    for secret in ("mimir-auth", "mimir-ca", "thanos-token"):
        assert mounts[f"/etc/prometheus/secrets/{secret}"]["secret"]["secretName"] == secret
    promtool_check_config(promtool, text, tmp_path)
    # ... and the NetworkPolicy lets Prometheus reach both receivers.
    prom, policies = _pods(r)["prometheus"], r.of_kind("NetworkPolicy")
    assert allowed(policies, prom, _OUTSIDE, (443, "TCP"))
    assert allowed(policies, prom, _OUTSIDE, (19291, "TCP"))


def test_user_rules_reach_prometheus_and_pass_promtool(
    rendered: Get, promtool: str, tmp_path: Path
) -> None:
    r = rendered("extensions")
    rules = r.configmap_data(r.name("prometheus") + "-rules", "user-shop.yaml")
    (tmp_path / "user-shop.yaml").write_text(rules)
    res = subprocess.run(
        [promtool, "check", "rules", str(tmp_path / "user-shop.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "2 rules found" in res.stdout
    broken = render(
        {
            "prometheus": {
                "extraRules": {"bad": [{"name": "g", "rules": [{"record": "x", "expr": "sum(("}]}]}
            }
        }
    )
    (tmp_path / "bad.yaml").write_text(
        broken.configmap_data(broken.name("prometheus") + "-rules", "user-bad.yaml")
    )
    res = subprocess.run(
        [promtool, "check", "rules", str(tmp_path / "bad.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert res.returncode != 0


def test_alertmanager_can_take_its_whole_config_from_a_secret() -> None:
    r = render({"alertmanager": {"existingConfigSecret": "am-config"}})
    assert r.find("ConfigMap", r.name("alertmanager")) is None
    spec = r.get("StatefulSet", r.name("alertmanager"))["spec"]["template"]["spec"]
    config = next(v for v in spec["volumes"] if v["name"] == "config")
    assert config["secret"] == {
        "secretName": "am-config",
        "items": [{"key": "alertmanager.yml", "path": "alertmanager.yml"}],
    }
    args = spec["containers"][0]["args"]
    assert "--config.file=/etc/alertmanager/config/alertmanager.yml" in args
    # Receivers live in the Secret: notification egress follows networkPolicy.alertmanagerReceivers.
    am, policies = _pods(r)["alertmanager"], r.of_kind("NetworkPolicy")
    assert allowed(policies, am, _OUTSIDE, (443, "TCP"))
    kubernetes_validate.validate(
        r.get("StatefulSet", r.name("alertmanager")), "1.29.0", strict=True
    )


def _ini(r: Rendered) -> dict[str, dict[str, str]]:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(r.configmap_data(r.name("grafana"), "grafana.ini"))
    return {s: dict(parser[s]) for s in parser.sections()}


def test_grafana_sso_reads_its_client_secret_from_a_mounted_secret(rendered: Get) -> None:
    r = rendered("extensions")
    oauth = _ini(r)["auth.generic_oauth"]
    assert oauth["enabled"] == "true" and oauth["client_id"] == "grafana"
    assert oauth["client_secret"] == "$__file{/etc/grafana/secrets/oidc/client-secret}"
    assert oauth["role_attribute_path"].startswith("contains(groups")
    spec = r.get("Deployment", r.name("grafana"))["spec"]["template"]["spec"]
    volume = next(v for v in spec["volumes"] if v["name"] == "oidc")
    assert volume["secret"]["secretName"] == "grafana-oidc"
    mount = next(m for m in spec["containers"][0]["volumeMounts"] if m["name"] == "oidc")
    assert mount["mountPath"] == "/etc/grafana/secrets/oidc" and mount["readOnly"] is True
    assert "grafana-oidc" not in json.dumps(r.get("ConfigMap", r.name("grafana"))["data"])


def test_grafana_plugins_and_extra_datasources(rendered: Get) -> None:
    r = rendered("extensions")
    plugins = _ini(r)["plugins"]
    assert plugins["preinstall_disabled"] == "false"
    assert plugins["preinstall"] == "grafana-polystat-panel,marcusolsson-json-datasource@1.3.24"
    ds = yaml.safe_load(r.configmap_data(r.name("grafana"), "datasources.yaml"))["datasources"]
    assert [d["uid"] for d in ds] == ["prometheus", "alertmanager", "elasticsearch", "tempo"]
    # Plugin downloads and the SSO provider get egress on 443 only because they are configured.
    grafana, policies = _pods(r)["grafana"], r.of_kind("NetworkPolicy")
    assert allowed(policies, grafana, _OUTSIDE, (443, "TCP"))
    assert not allowed(policies, grafana, _OUTSIDE, (80, "TCP"))
    assert _ini(rendered("defaults"))["plugins"] == {"preinstall_disabled": "true"}


def test_dashboard_sidecar_alone_gets_an_api_token_and_read_only_rbac(rendered: Get) -> None:
    r = rendered("extensions")
    spec = r.get("Deployment", r.name("grafana"))["spec"]["template"]["spec"]
    assert spec["automountServiceAccountToken"] is False
    containers = {c["name"]: c for c in spec["containers"]}
    token_path = "/var/run/secrets/kubernetes.io/serviceaccount"
    sidecar_mounts = {
        m["mountPath"]: m["name"] for m in containers["dashboard-sidecar"]["volumeMounts"]
    }
    grafana_mounts = {m["mountPath"]: m["name"] for m in containers["grafana"]["volumeMounts"]}
    assert token_path in sidecar_mounts and token_path not in grafana_mounts
    # What the sidecar writes, Grafana provisions from.
    shared = sidecar_mounts["/var/lib/grafana-sidecar-dashboards"]
    assert grafana_mounts["/var/lib/grafana-sidecar-dashboards"] == shared
    providers = yaml.safe_load(r.configmap_data(r.name("grafana"), "dashboards.yaml"))["providers"]
    assert {"path": "/var/lib/grafana-sidecar-dashboards"} in [p["options"] for p in providers]
    env = {e["name"]: e["value"] for e in containers["dashboard-sidecar"]["env"]}
    assert env["LABEL"] == "grafana_dashboard" and env["NAMESPACE"] == "shop,payments"
    roles = [o for o in r.of_kind("Role") if o["metadata"]["name"].endswith("-dashboards")]
    assert sorted(o["metadata"]["namespace"] for o in roles) == ["payments", "shop"]
    for role in roles:
        assert role["rules"] == [
            {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "watch"]}
        ]
    # ... and Grafana's pod may reach the API server (the sidecar's watch).
    grafana = _pods(r)["grafana"]
    api = Endpoint("kube-api", ip="10.96.0.1")
    assert allowed(r.of_kind("NetworkPolicy"), grafana, api, (443, "TCP"))
    plain = rendered("defaults")
    assert not allowed(plain.of_kind("NetworkPolicy"), _pods(plain)["grafana"], api, (443, "TCP"))


# ---- 6b. ... and the pods it is told to, by label ------------------------------------------------


def _mounted_fluentd_config(r: Rendered, tmp: Path) -> Path:
    """The tailer's config directory as the pod sees it (ConfigMap keys -> paths)."""
    data = r.get("ConfigMap", r.name("fluentd") + "-config")["data"]
    for key, text in data.items():
        path = tmp / key.replace("__", "/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp / "daemonset.conf"


def _grep_keeps(grep: Any, record: dict[str, Any]) -> bool:
    """fluent-plugin grep's documented semantics: every <regexp> must match the value at its
    record_accessor key (a missing key does not match), any matching <exclude> drops."""

    def value(key: str) -> str | None:
        node: Any = record
        for part in re.findall(r"\['([^']*)'\]", key):
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        return str(node)

    def hit(section: Any) -> bool:
        v = value(section.params["key"])
        return v is not None and re.search(section.params["pattern"].strip("/"), v) is not None

    sections = grep.children
    keep = all(hit(s) for s in sections if s.name == "regexp")
    return keep and not any(hit(s) for s in sections if s.name == "exclude")


def _pod_record(**labels: str) -> dict[str, Any]:
    return {"message": "x", "kubernetes": {"namespace_name": "shop", "labels": labels}}


def test_tailer_selects_pods_by_label_after_kubernetes_metadata(tmp_path: Path) -> None:
    sys.path.insert(0, str(CHART_DIR.parents[1] / "tests" / "fluentd"))
    from fluentd_checks import all_problems
    from fluentd_conf import parse_file

    selector = {
        "matchLabels": {"app.kubernetes.io/part-of": "shop"},
        "excludeLabels": {"rpcscope.io/logs": "false"},
    }
    r = render({"fluentd": {"daemonset": {"podSelector": selector}}})
    root = parse_file(_mounted_fluentd_config(r, tmp_path))
    assert all_problems(root) == []
    filters = [d for d in root.walk() if d.name == "filter"]
    ids = [d.params.get("@id") for d in filters]
    # After the metadata is attached, before it is mapped to ECS and removed.
    assert ids.index("filter_kubernetes_metadata") < ids.index("filter_select_pods")
    assert ids.index("filter_select_pods") < ids.index("filter_kubernetes_to_ecs")
    grep = filters[ids.index("filter_select_pods")]
    assert grep.type == "grep"
    # kubernetes_metadata stores label keys de-dotted: app.kubernetes.io/x -> app_kubernetes_io/x.
    assert _grep_keeps(grep, _pod_record(**{"app_kubernetes_io/part-of": "shop"}))
    assert not _grep_keeps(grep, _pod_record(**{"app_kubernetes_io/part-of": "shopx"}))
    assert not _grep_keeps(grep, _pod_record(team="shop"))
    opted_out = {"app_kubernetes_io/part-of": "shop", "rpcscope_io/logs": "false"}
    assert not _grep_keeps(grep, _pod_record(**opted_out))
    # Without a selector the file is fluentd-config's empty default: nothing filtered.
    plain = render({})
    default = plain.configmap_data(plain.name("fluentd") + "-config", "conf.d__select-pods.conf")
    assert default == (CHART_DIR.parents[1] / "fluentd-config/conf.d/select-pods.conf").read_text()
    assert "filter_select_pods" not in default.replace("# ", "")
