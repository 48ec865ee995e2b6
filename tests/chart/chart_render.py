"""Render the rpcscope-stack chart offline and take the result apart (shared by the chart tests).

Everything here is plain functions over helm-python-sdk (the Helm v4 SDK in a wheel), so any
chart test can do::

    from chart_render import render, SCENARIOS
    r = render(SCENARIOS["defaults"])
    sts = r.get("StatefulSet", r.name("prometheus"))

No cluster is involved: ``lookup`` returns nothing when rendering offline, exactly as in
``helm template``. :func:`with_existing_secrets` works around that for the upgrade tests by
swapping the chart's single lookup helper for one that reads files (see its docstring).
"""

from __future__ import annotations

import base64
import copy
import json
import re
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import helm_python
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART_DIR = REPO / "charts" / "rpcscope-stack"
RELEASE = "rpcscope"
NAMESPACE = "observability"
CHART_NAME = "rpcscope-stack"

#: Kinds that live in a namespace (everything the chart renders except cluster-scoped RBAC).
CLUSTER_SCOPED = frozenset({"ClusterRole", "ClusterRoleBinding", "Namespace", "PersistentVolume"})
#: Workload kinds and where their pod template sits.
WORKLOAD_KINDS = frozenset({"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "Pod"})
#: Kinds from the Prometheus Operator CRDs; not in the Kubernetes OpenAPI schemas.
OPERATOR_KINDS = frozenset({"ServiceMonitor", "PodMonitor", "PrometheusRule"})
#: Every CRD kind the chart can render (not in the Kubernetes OpenAPI schemas).
CRD_KINDS = OPERATOR_KINDS | {"HTTPRoute"}


def _deep_merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def merge(*layers: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge value layers left to right (later wins), like repeated ``-f`` files."""
    out: dict[str, Any] = {}
    for layer in layers:
        out = _deep_merge(out, layer)
    return out


#: Value sets the suite renders. Each is a realistic install, not a toggle soup: external
#: endpoints come with their credentials, disabled alerting is acknowledged, and so on.
EXTERNAL_ES: dict[str, Any] = {
    "elasticsearch": {
        "enabled": False,
        "external": {
            "url": "https://es.example.internal:9243",
            "caSecret": "corp-es-ca",
            "credentialsSecret": "corp-es-writer",
            "readerCredentialsSecret": "corp-es-reader",
        },
    },
    "kibana": {"elasticsearchCredentialsSecret": "corp-es-kibana-system"},
}
_LOGS_OFF: dict[str, Any] = {
    "elasticsearch": {"enabled": False},
    "kibana": {"enabled": False},
    "fluentd": {"enabled": False},
    "elasticsearchExporter": {"enabled": False},
    "grafana": {"datasources": {"elasticsearch": {"enabled": False}}},
}
_METRICS_OFF: dict[str, Any] = {
    "prometheus": {"enabled": False},
    "alertmanager": {"enabled": False},
    "grafana": {"enabled": False},
}
RECEIVERS: list[dict[str, Any]] = [
    {
        "name": "team-chat",
        "slack": {
            "apiUrlSecret": {"secretName": "am-slack", "key": "url"},
            "channel": "#grpc-alerts",
            "sendResolved": True,
        },
        "email": {
            "to": "oncall@example.com",
            "from": "alertmanager@example.com",
            "smarthost": "smtp.example.com:587",
            "authUsername": "alertmanager",
            "authPasswordSecret": {"secretName": "am-smtp", "key": "password"},
        },
    },
    {
        "name": "pager",
        "pagerduty": {"routingKeySecret": {"secretName": "am-pagerduty", "key": "routing-key"}},
        "webhook": {
            "url": "https://hooks.example.com/alerts",
            "bearerTokenSecret": {"secretName": "am-webhook", "key": "token"},
        },
    },
]

#: Per-component extension points (issue 17): every workload's values section gets these.
_COMPONENT_SECTIONS = [
    ("prometheus",),
    ("alertmanager",),
    ("grafana",),
    ("elasticsearch",),
    ("kibana",),
    ("fluentd", "daemonset"),
    ("fluentd", "aggregator"),
    ("elasticsearchExporter",),
]


def _per_component(path: tuple[str, ...]) -> dict[str, Any]:
    extras: dict[str, Any] = {
        "podLabels": {"team": "observability"},
        "priorityClassName": "observability-high",
        "topologySpreadConstraints": [
            {
                "maxSkew": 1,
                "topologyKey": "topology.kubernetes.io/zone",
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": {"team": "observability"}},
            }
        ],
        "extraEnv": [
            {"name": "HTTPS_PROXY", "value": "http://proxy.corp:3128"},
            {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        ],
        "extraVolumes": [{"name": "corp-ca-bundle", "configMap": {"name": "corp-ca-bundle"}}],
        "extraVolumeMounts": [
            {"name": "corp-ca-bundle", "mountPath": "/etc/corp-ca", "readOnly": True}
        ],
        "serviceAccount": {"annotations": {"iam.gke.io/gcp-service-account": "obs@p.iam"}},
    }
    out: dict[str, Any] = extras
    for key in reversed(path):
        out = {key: out}
    return out


def _exposed(component: str) -> dict[str, Any]:
    host = f"{component}.example.com"
    return {
        component: {
            "ingress": {
                "enabled": True,
                "className": "nginx",
                "annotations": {"cert-manager.io/cluster-issuer": "corp"},
                "hosts": [host],
                "tls": [{"secretName": f"{component}-web-tls", "hosts": [host]}],
            },
            "httpRoute": {
                "enabled": True,
                "parentRefs": [{"name": "public", "namespace": "gateways", "sectionName": "https"}],
                "hostnames": [host],
            },
        }
    }


#: Where the ingress controller / gateway pods run, in the extension scenario.
INGRESS_PEER = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress"}}}

EXTENSIONS: dict[str, Any] = merge(
    *(_per_component(p) for p in _COMPONENT_SECTIONS),
    *(_exposed(c) for c in ("grafana", "prometheus", "alertmanager", "kibana")),
    {"networkPolicy": {"ingressController": {"from": [INGRESS_PEER]}}},
    {
        "grafana": {
            "plugins": ["grafana-polystat-panel", "marcusolsson-json-datasource@1.3.24"],
            "dashboards": {"sidecar": {"enabled": True, "namespaces": ["shop", "payments"]}},
            "oidc": {
                "enabled": True,
                "clientId": "grafana",
                "clientSecret": {"secretName": "grafana-oidc", "key": "client-secret"},
                "authUrl": "https://sso.example.com/realms/corp/protocol/openid-connect/auth",
                "tokenUrl": "https://sso.example.com/realms/corp/protocol/openid-connect/token",
                "apiUrl": "https://sso.example.com/realms/corp/protocol/openid-connect/userinfo",
                "roleAttributePath": "contains(groups[*], 'sre') && 'Admin' || 'Viewer'",
            },
            "datasources": {
                "extra": [
                    {
                        "name": "Tempo",
                        "type": "tempo",
                        "uid": "tempo",
                        "url": "http://tempo.tracing:3200",
                        "access": "proxy",
                    }
                ]
            },
        }
    },
    {
        "prometheus": {
            "remoteWrite": [
                {
                    "url": "https://mimir.example.com/api/v1/push",
                    "name": "mimir",
                    "basicAuth": {
                        "username": "tenant-1",
                        "passwordSecret": {"secretName": "mimir-auth", "key": "password"},
                    },
                    "caSecret": {"secretName": "mimir-ca", "key": "ca.crt"},
                    "headers": {"X-Scope-OrgID": "tenant-1"},
                    "writeRelabelConfigs": [
                        {"source_labels": ["__name__"], "regex": "go_.*", "action": "drop"}
                    ],
                    "queueConfig": {"max_samples_per_send": 2000},
                },
                {
                    "url": "http://thanos-receive.thanos:19291/api/v1/receive",
                    "bearerTokenSecret": {"secretName": "thanos-token", "key": "token"},
                },
            ],
            "extraRules": {
                "shop": [
                    {
                        "name": "shop.rules",
                        "rules": [
                            {
                                "record": "shop:grpc_requests:rate5m",
                                "expr": "sum(rate(grpc_server_handled_total[5m]))",
                            },
                            {
                                "alert": "ShopDown",
                                "expr": 'absent(up{job="shop"} == 1)',
                                "for": "5m",
                                "labels": {"severity": "critical"},
                                "annotations": {"summary": "shop is down"},
                            },
                        ],
                    }
                ]
            },
        }
    },
)

SCENARIOS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "prometheus-only": merge(
        _LOGS_OFF,
        {
            "alertmanager": {"enabled": False, "allowNoAlerting": True},
            "grafana": {"enabled": False},
        },
    ),
    "alertmanager-only": merge(
        _LOGS_OFF, {"prometheus": {"enabled": False}, "grafana": {"enabled": False}}
    ),
    "grafana-only": merge(
        _LOGS_OFF,
        {
            "prometheus": {"enabled": False, "external": {"url": "http://prom.monitoring:9090"}},
            "alertmanager": {"enabled": False},
        },
    ),
    "elasticsearch-only": merge(
        _METRICS_OFF,
        {
            "kibana": {"enabled": False},
            "fluentd": {"enabled": False},
            "elasticsearchExporter": {"enabled": False},
        },
    ),
    "kibana-only": merge(
        _METRICS_OFF,
        EXTERNAL_ES,
        {"fluentd": {"enabled": False}, "elasticsearchExporter": {"enabled": False}},
    ),
    "fluentd-only": merge(
        _METRICS_OFF,
        EXTERNAL_ES,
        {"kibana": {"enabled": False}, "elasticsearchExporter": {"enabled": False}},
    ),
    "external-es": EXTERNAL_ES,
    "multi-node-es": {"elasticsearch": {"replicas": 3}},
    "external-prometheus": {
        "prometheus": {
            "enabled": False,
            "external": {"url": "https://prometheus.monitoring.example.com"},
            "operator": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
        },
        "alertmanager": {"enabled": False},
        "networkPolicy": {
            "prometheusScrapeFrom": [
                {
                    "namespaceSelector": {
                        "matchLabels": {"kubernetes.io/metadata.name": "monitoring"}
                    }
                }
            ]
        },
    },
    "all-on": {
        "prometheus": {
            "replicas": 2,
            "discovery": {"namespaces": ["shop", "payments"]},
            "externalLabels": {"cluster": "test"},
            "operator": {"enabled": True, "labels": {"release": "kps"}},
        },
        "alertmanager": {
            "replicas": 3,
            "receivers": RECEIVERS,
            "route": {
                "receiver": "team-chat",
                "routes": [{"matchers": ['severity="critical"'], "receiver": "pager"}],
            },
        },
        "grafana": {"grafana.ini": {"server": {"root_url": "https://grafana.example.com"}}},
        "elasticsearch": {"replicas": 3},
        "kibana": {"replicas": 2},
        "networkPolicy": {
            "grafanaFrom": [
                {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress"}}}
            ],
            "kibanaFrom": [
                {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress"}}}
            ],
        },
    },
    "extensions": EXTENSIONS,
    "no-persistence-no-netpol": {
        "prometheus": {"persistence": {"enabled": False}},
        "alertmanager": {"persistence": {"enabled": False}},
        "grafana": {"persistence": {"enabled": False}},
        "networkPolicy": {"enabled": False},
    },
}


def register_scenario_values(name: str, values: Mapping[str, Any]) -> None:
    """Add a scenario, or deep-merge more values into an existing one (for other test files)."""
    SCENARIOS[name] = merge(SCENARIOS.get(name, {}), values)


@dataclass
class Rendered:
    """One offline render: template path -> text, and the parsed Kubernetes objects."""

    files: dict[str, str]
    values: dict[str, Any]
    release: str = RELEASE
    namespace: str = NAMESPACE
    objects: list[dict[str, Any]] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        for path, text in sorted(self.files.items()):
            if not path.endswith((".yaml", ".yml")):
                continue
            for doc in yaml.safe_load_all(text):
                if doc:
                    self.objects.append(doc)
                    self.sources.append(path)

    @property
    def notes(self) -> str:
        return next((t for p, t in self.files.items() if p.endswith("NOTES.txt")), "")

    @property
    def fullname(self) -> str:
        name = self.values.get("fullnameOverride") or (
            self.release if CHART_NAME in self.release else f"{self.release}-{CHART_NAME}"
        )
        return str(name)[:63].rstrip("-")

    def name(self, component: str) -> str:
        """The object name of a component (``rpcscope-stack.componentName``)."""
        return f"{self.fullname}-{component}"[:63].rstrip("-")

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o.get("kind") == kind]

    def find(self, kind: str, name: str) -> dict[str, Any] | None:
        for o in self.of_kind(kind):
            if o["metadata"]["name"] == name:
                return o
        return None

    def get(self, kind: str, name: str) -> dict[str, Any]:
        obj = self.find(kind, name)
        if obj is None:
            have = sorted(o["metadata"]["name"] for o in self.of_kind(kind))
            raise KeyError(f"no {kind} {name!r}; rendered {kind}s: {have}")
        return obj

    def job(self, component: str) -> dict[str, Any]:
        """The one Job of a component (Job names carry a hash of what they do)."""
        jobs = [
            o
            for o in self.of_kind("Job")
            if o["metadata"].get("labels", {}).get("app.kubernetes.io/component") == component
        ]
        if len(jobs) != 1:
            raise KeyError(f"{len(jobs)} Jobs of component {component!r}")
        return jobs[0]

    def components(self) -> set[str]:
        """``app.kubernetes.io/component`` of every workload rendered (hooks included)."""
        return {
            labels["app.kubernetes.io/component"]
            for _, labels, _ in self.pods()
            if "app.kubernetes.io/component" in labels
        }

    def pods(self) -> Iterator[tuple[dict[str, Any], dict[str, str], dict[str, Any]]]:
        """(workload object, pod labels, pod spec) for every workload."""
        for obj in self.objects:
            kind = obj.get("kind")
            if kind not in WORKLOAD_KINDS:
                continue
            if kind == "Pod":
                yield obj, obj["metadata"].get("labels", {}), obj["spec"]
                continue
            spec = obj["spec"]
            if kind == "CronJob":
                spec = spec["jobTemplate"]["spec"]
            tmpl = spec["template"]
            yield obj, tmpl.get("metadata", {}).get("labels", {}), tmpl["spec"]

    def configmap_data(self, name: str, key: str) -> str:
        """One key of a rendered ConfigMap (raises KeyError naming what exists)."""
        data = self.get("ConfigMap", name).get("data") or {}
        if key not in data:
            raise KeyError(f"ConfigMap {name} has no key {key!r}; keys: {sorted(data)}")
        return str(data[key])

    def secret_data(self, name: str) -> dict[str, bytes]:
        """Decoded ``data`` (and ``stringData``) of a rendered Secret."""
        sec = self.get("Secret", name)
        out = {k: base64.b64decode(v) for k, v in (sec.get("data") or {}).items()}
        out.update({k: v.encode() for k, v in (sec.get("stringData") or {}).items()})
        return out

    def write(self, directory: Path) -> list[Path]:
        """Write every rendered manifest to ``directory`` (one file per template) for CLI tools."""
        directory.mkdir(parents=True, exist_ok=True)
        written = []
        for path, text in sorted(self.files.items()):
            if path.endswith((".yaml", ".yml")) and text.strip():
                out = directory / path.replace("/", "__")
                out.write_text(text)
                written.append(out)
        return written


_charts: dict[Path, Any] = {}


def _chart(chart_dir: Path) -> Any:
    # Loading is cheap, but a test session renders dozens of times; keep one handle per dir.
    key = chart_dir.resolve()
    if key not in _charts:
        _charts[key] = helm_python.Chart.load(str(key))
    return _charts[key]


def render(
    values: Mapping[str, Any] | None = None,
    *,
    chart_dir: Path = CHART_DIR,
    release: str = RELEASE,
    namespace: str = NAMESPACE,
    is_upgrade: bool = False,
) -> Rendered:
    """Render like ``helm template`` (values are schema-checked first, as helm install does).

    Raises ``helm_python.HelmValuesError`` for schema violations and
    ``helm_python.HelmRenderError`` for template errors, including ``fail`` messages.
    """
    vals = dict(values or {})
    chart = _chart(chart_dir)
    chart.validate_schema(vals)
    files = chart.render(
        vals,
        name=release,
        namespace=namespace,
        is_install=not is_upgrade,
        is_upgrade=is_upgrade,
    )
    return Rendered(files=dict(files), values=vals, release=release, namespace=namespace)


def render_error(values: Mapping[str, Any], **kwargs: Any) -> str:
    """Render expecting failure; return the error message (AssertionError if it rendered)."""
    try:
        render(values, **kwargs)
    except helm_python.HelmError as exc:
        return str(exc)
    raise AssertionError(f"render succeeded but was expected to fail for {values!r}")


def copy_chart(dest: Path) -> Path:
    """A private copy of the chart to modify (add rule files, stub lookup...)."""
    target = dest / CHART_NAME
    shutil.copytree(CHART_DIR, target)
    return target


#: The one template through which the chart calls ``lookup`` (see _helpers.tpl).
LOOKUP_DEFINE = re.compile(
    r'\{\{- define "rpcscope-stack\.lookupSecret" -\}\}\n.*?\n\{\{- end -\}\}\n', re.DOTALL
)
_LOOKUP_STUB = """{{- define "rpcscope-stack.lookupSecret" -}}
{{- $kind := .kind | default "Secret" -}}
{{- $prefix := ternary "" (printf "%s-" $kind) (eq $kind "Secret") -}}
{{- $raw := .ctx.Files.Get (printf "files/_existing/%s%s.json" $prefix .name) -}}
{{- if $raw -}}{{- $raw -}}{{- else -}}{}{{- end -}}
{{- end -}}
"""


def with_existing_secrets(chart_copy: Path, secrets: list[dict[str, Any]]) -> Path:
    """Make ``chart_copy`` render as if ``secrets`` (or other objects, e.g. a StatefulSet)
    already existed in the release namespace.

    helm-python-sdk renders offline, where Helm's ``lookup`` always returns an empty map, so an
    upgrade cannot be rendered as-is. The chart routes every lookup through the single helper
    ``rpcscope-stack.lookupSecret``; here that helper (only) is replaced by one that returns
    ``files/_existing/<name>.json``. Everything that decides whether to reuse or regenerate a
    value is the chart's real template code. What this does not test is Helm's ``lookup``
    function itself.
    """
    helpers = chart_copy / "templates" / "_helpers.tpl"
    text = helpers.read_text()
    new, count = LOOKUP_DEFINE.subn(_LOOKUP_STUB, text)
    if count != 1:
        raise AssertionError("rpcscope-stack.lookupSecret not found exactly once in _helpers.tpl")
    helpers.write_text(new)
    existing = chart_copy / "files" / "_existing"
    if existing.exists():
        shutil.rmtree(existing)
    existing.mkdir(parents=True)
    for sec in secrets:
        kind = sec.get("kind", "Secret")
        prefix = "" if kind == "Secret" else f"{kind}-"
        (existing / f"{prefix}{sec['metadata']['name']}.json").write_text(json.dumps(sec))
    _charts.pop(chart_copy.resolve(), None)
    return chart_copy
